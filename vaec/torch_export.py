"""vaec.to_torch(model): the same network in PyTorch, with the same weights.

The module's state_dict has vaec's names (``encoder.0.weight``, ``encoder.mu.weight``, ...),
so ``module.load_state_dict(model.state_dict())`` and the other way round both work, and
its ``encode``/``decode`` give vaec's numbers (to float32 rounding). ``forward(x)`` is the
reconstruction through the posterior mean, ``decode(encode(x)[0])``, which is what
``torch.onnx.export`` traces. torch is imported only here, when asked for.
"""
from __future__ import annotations

import numpy as np


def _torch():
    try:
        import torch
        import torch.nn as nn
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError("vaec.to_torch needs PyTorch (pip install torch); vaec itself does not") from e
    return torch, nn


def _act(name):
    torch, _ = _torch()
    import torch.nn.functional as F
    return {"tanh": torch.tanh, "relu": F.relu, "softplus": F.softplus, "sigmoid": torch.sigmoid, "elu": F.elu,
            "leaky_relu": F.leaky_relu}[name]


def _modules(layers, shape):
    """torch modules for a vaec layer list on inputs of `shape` ((C, H, W) or (D,)), and the
    output shape."""
    from . import layers as L
    out = []
    for layer in layers:
        if isinstance(layer, L.Linear):
            n = int(np.prod(shape))
            out.append(layer.torch(n))
            shape = (layer.out_features,)
        elif isinstance(layer, (L.Conv2d, L.ConvTranspose2d)):
            mod = layer.torch(shape[0])
            out.append(mod)
            C, H, W = shape
            if isinstance(layer, L.Conv2d):
                H = (H + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
                W = (W + 2 * layer.padding[1] - layer.kernel_size[1]) // layer.stride[1] + 1
            else:
                H = (H - 1) * layer.stride[0] - 2 * layer.padding[0] + layer.kernel_size[0] + layer.output_padding[0]
                W = (W - 1) * layer.stride[1] - 2 * layer.padding[1] + layer.kernel_size[1] + layer.output_padding[1]
            shape = (layer.out_channels, H, W)
        elif isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
            out.append(layer.torch())
            C, H, W = shape
            shape = (C, (H - layer.kernel_size[0]) // layer.stride[0] + 1, (W - layer.kernel_size[1]) // layer.stride[1] + 1)
        elif isinstance(layer, L.Upsample):
            out.append(layer.torch())
            shape = (shape[0], shape[1] * layer.scale_factor, shape[2] * layer.scale_factor)
        elif isinstance(layer, L.Flatten):
            out.append(layer.torch())
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, L.Unflatten):
            out.append(layer.torch())
            shape = layer.shape
        else:
            out.append(layer.torch())
    return out, shape


def to_torch(model):
    """A torch.nn.Module with the architecture and the weights of ``model`` (a vaec.VAE or
    vaec.Autoencoder): ``encode(x)`` -> (mu, logvar) (an Autoencoder: the codes), ``decode(z)``
    -> Bernoulli probabilities or Gaussian means, ``forward(x)`` = decode(encode(x)[0]).
    Inputs are (n, input_dim) rows or, for an image model, (n, C, H, W) images. The
    posterior's flow, if any, is not part of it (its parameters, and an amortized flow's
    encoder head ``encoder.flow``, are not exported)."""
    from .models import VAE, Autoencoder
    torch, nn = _torch()
    if not isinstance(model, (VAE, Autoencoder)):
        raise TypeError(f"model: expected a vaec.VAE or vaec.Autoencoder, got {type(model).__name__}")
    deterministic = isinstance(model, Autoencoder)
    Z, D = model.latent_dim, model.input_dim
    image = len(model.input_shape) == 3
    gauss = model.likelihood == "gaussian" and not deterministic

    class Network(nn.Module):
        """Children named by their index; the MLP's activation applied after each Linear."""

        def __init__(self, mods, act=None):
            super().__init__()
            self._names = []
            for i, mod in enumerate(mods):
                self.add_module(str(i), mod)
                self._names.append(str(i))
            self._act = act

        def forward(self, h):
            for name in self._names:
                h = self._modules[name](h)
                if self._act is not None:
                    h = self._act(h)
            return h

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            if model.encoder is not None:
                enc, shape = _modules(model.encoder, model.input_shape)
                dec, out_shape = _modules(model.decoder, (Z,))
                self.encoder = Network(enc)
                self.decoder = Network(dec)
                feat = int(np.prod(shape))
            else:
                act = _act(model.activation)
                widths = (D,) + tuple(model.hidden)
                self.encoder = Network([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])], act)
                back = (Z,) + tuple(reversed(model.hidden))
                self.decoder = Network([nn.Linear(a, b) for a, b in zip(back[:-1], back[1:])], act)
                feat = widths[-1]
                self.decoder.out = nn.Linear(back[-1], D)
                if gauss:
                    self.decoder.logvar = nn.Linear(back[-1], D)
            if deterministic:
                self.encoder.code = nn.Linear(feat, Z)
            else:
                self.encoder.mu = nn.Linear(feat, Z)
                self.encoder.logvar = nn.Linear(feat, Z)
            self._mlp = model.encoder is None

        def _features(self, x):
            if image and x.dim() == 2:
                x = x.reshape((x.shape[0],) + tuple(model.input_shape))
            h = self.encoder(x)
            return h.reshape(h.shape[0], -1)

        def encode(self, x):
            h = self._features(x)
            if deterministic:
                return self.encoder.code(h), None
            return self.encoder.mu(h), self.encoder.logvar(h)

        def decode(self, z):
            h = self.decoder(z)
            if self._mlp:
                h = self.decoder.out(h)
            h = h.reshape(h.shape[0], -1)
            if model.likelihood == "bernoulli":
                out = torch.sigmoid(h)
            else:
                out = h[:, :D]   # the means (the log-variances follow)
            return out.reshape((out.shape[0],) + tuple(model.input_shape)) if image else out

        def forward(self, x):
            return self.decode(self.encode(x)[0])

    module = Module()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()
             if not k.startswith(("flow.", "encoder.flow."))}
    module.load_state_dict(state, strict=True)
    return module.eval()
