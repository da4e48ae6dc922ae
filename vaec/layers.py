"""The layers a network is written with, named and parameterised as in ``torch.nn``.

    from vaec import layers as L
    encoder = [L.Conv2d(32, 4, stride=2, padding=1), L.ReLU(), L.Flatten(), L.Linear(256), L.ReLU()]

A layer here is only a description: the C core builds the network from the list (each kind
is a file of ``csrc/``, its forward and backward passes written there). Shapes follow from
the model's ``input_shape``; a list whose shapes do not fit is a ValueError naming the
layer's index and the shapes, at construction. Tensors are NCHW and ``Flatten`` orders the
features as torch does, so parameters exchange with a ``torch.nn.Sequential`` of the same
list unchanged: ``Conv2d`` weight (out, in, kh, kw), ``ConvTranspose2d`` weight (in, out, kh,
kw), biases (out,); an activation takes an index as in torch.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["Layer", "Linear", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "Upsample", "Flatten",
           "Unflatten", "ReLU", "Tanh", "Softplus", "Sigmoid", "ELU", "LeakyReLU", "from_spec"]

# the C core's codes (csrc/vaec.h: vaec_layer_kind, vaec_act)
LINEAR, ACT, CONV2D, CONVT2D, MAXPOOL2D, AVGPOOL2D, UPSAMPLE, FLATTEN, UNFLATTEN = range(1, 10)
ACT_CODES = {"identity": 0, "tanh": 1, "relu": 2, "softplus": 3, "sigmoid": 4, "elu": 5, "leaky_relu": 6}


def _positive(name, value, high=1 << 26):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not 1 <= int(value) <= high:
        raise ValueError(f"{name}: expected an integer between 1 and {high}, got {value}")
    return int(value)


def _pair(name, value, low):
    """An int or an (h, w) pair of ints >= low, as torch's kernel_size/stride/padding."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair (h, w), got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
        if not low <= int(v) <= 1024:
            raise ValueError(f"{name}: expected values between {low} and 1024, got {value!r}")
        out.append(int(v))
    return tuple(out)


class Layer:
    """A layer of a network: its kind and parameters (see the module's doc)."""

    kind = 0
    act = "identity"

    def spec(self):
        """The 16-tuple the C core reads: (kind, act, out, kh, kw, sh, sw, ph, pw, oph, opw,
        scale, slope, C, H, W)."""
        raise NotImplementedError

    def _fields(self):
        return ()

    def __eq__(self, other):
        return type(self) is type(other) and self.spec() == other.spec()

    def __hash__(self):
        return hash(self.spec())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(self._fields())})"

    def torch(self):
        """The torch.nn module of this layer (needs torch)."""
        raise NotImplementedError


def _spec(kind, act=0, out=0, k=(0, 0), s=(0, 0), p=(0, 0), op=(0, 0), scale=0, slope=0.0, shape=(0, 0, 0)):
    return (kind, act, out, k[0], k[1], s[0], s[1], p[0], p[1], op[0], op[1], scale, float(slope),
            shape[0], shape[1], shape[2])


class Linear(Layer):
    """torch.nn.Linear(in, out_features): weight (out, in), bias (out,); the input's C*H*W
    values are its features (NCHW order, as after torch's Flatten)."""

    kind = LINEAR

    def __init__(self, out_features):
        self.out_features = _positive("out_features", out_features)

    def spec(self):
        return _spec(LINEAR, out=self.out_features)

    def _fields(self):
        return (str(self.out_features),)

    def torch(self, in_features):
        import torch.nn as nn
        return nn.Linear(in_features, self.out_features)


class Conv2d(Layer):
    """torch.nn.Conv2d(in, out_channels, kernel_size, stride=1, padding=0): weight (out, in,
    kh, kw), bias (out,). kernel_size, stride, padding: an int or an (h, w) pair."""

    kind = CONV2D

    def __init__(self, out_channels, kernel_size, stride=1, padding=0):
        self.out_channels = _positive("out_channels", out_channels, 65536)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)

    def spec(self):
        return _spec(self.kind, out=self.out_channels, k=self.kernel_size, s=self.stride, p=self.padding)

    def _fields(self):
        return (str(self.out_channels), f"kernel_size={self.kernel_size}", f"stride={self.stride}",
                f"padding={self.padding}")

    def torch(self, in_channels):
        import torch.nn as nn
        return nn.Conv2d(in_channels, self.out_channels, self.kernel_size, self.stride, self.padding)


class ConvTranspose2d(Layer):
    """torch.nn.ConvTranspose2d(in, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0): weight (in, out, kh, kw), bias (out,); the data gradient of the
    Conv2d with the same arguments. output_padding (smaller than the stride) adds rows and
    columns at the end, to reach odd sizes."""

    kind = CONVT2D

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0):
        self.out_channels = _positive("out_channels", out_channels, 65536)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.output_padding = _pair("output_padding", output_padding, 0)
        if any(o >= s for o, s in zip(self.output_padding, self.stride)):
            raise ValueError(f"output_padding: must be smaller than the stride {self.stride}, "
                             f"got {self.output_padding}")

    def spec(self):
        return _spec(CONVT2D, out=self.out_channels, k=self.kernel_size, s=self.stride, p=self.padding,
                     op=self.output_padding)

    def _fields(self):
        return (str(self.out_channels), f"kernel_size={self.kernel_size}", f"stride={self.stride}",
                f"padding={self.padding}", f"output_padding={self.output_padding}")

    def torch(self, in_channels):
        import torch.nn as nn
        return nn.ConvTranspose2d(in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                  self.output_padding)


class MaxPool2d(Layer):
    """torch.nn.MaxPool2d(kernel_size, stride=kernel_size): the largest value of each
    window (no padding; windows that do not fit are dropped, as torch's floor mode)."""

    kind = MAXPOOL2D

    def __init__(self, kernel_size, stride=None):
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", stride, 1)

    def spec(self):
        return _spec(self.kind, k=self.kernel_size, s=self.stride)

    def _fields(self):
        return (f"kernel_size={self.kernel_size}", f"stride={self.stride}")

    def torch(self):
        import torch.nn as nn
        return nn.MaxPool2d(self.kernel_size, self.stride)


class AvgPool2d(MaxPool2d):
    """torch.nn.AvgPool2d(kernel_size, stride=kernel_size): the mean of each window."""

    kind = AVGPOOL2D

    def torch(self):
        import torch.nn as nn
        return nn.AvgPool2d(self.kernel_size, self.stride)


class Upsample(Layer):
    """torch.nn.Upsample(scale_factor=scale, mode="nearest"), an integer scale: every pixel
    repeated scale x scale times."""

    kind = UPSAMPLE

    def __init__(self, scale_factor):
        self.scale_factor = _positive("scale_factor", scale_factor, 64)

    def spec(self):
        return _spec(UPSAMPLE, scale=self.scale_factor)

    def _fields(self):
        return (f"scale_factor={self.scale_factor}",)

    def torch(self):
        import torch.nn as nn
        return nn.Upsample(scale_factor=self.scale_factor, mode="nearest")


class Flatten(Layer):
    """torch.nn.Flatten(): (C, H, W) -> (C*H*W), NCHW order; no work (the same memory)."""

    kind = FLATTEN

    def spec(self):
        return _spec(FLATTEN)

    def torch(self):
        import torch.nn as nn
        return nn.Flatten()


class Unflatten(Layer):
    """torch.nn.Unflatten(1, (C, H, W)): (C*H*W) -> (C, H, W); no work."""

    kind = UNFLATTEN

    def __init__(self, channels, height, width):
        self.shape = (_positive("channels", channels), _positive("height", height), _positive("width", width))

    def spec(self):
        return _spec(UNFLATTEN, shape=self.shape)

    def _fields(self):
        return tuple(map(str, self.shape))

    def torch(self):
        import torch.nn as nn
        return nn.Unflatten(1, self.shape)


class _Activation(Layer):
    kind = ACT
    torch_name = ""

    def spec(self):
        return _spec(ACT, act=ACT_CODES[self.act])

    def torch(self):
        import torch.nn as nn
        return getattr(nn, self.torch_name)()


class ReLU(_Activation):
    act, torch_name = "relu", "ReLU"


class Tanh(_Activation):
    act, torch_name = "tanh", "Tanh"


class Softplus(_Activation):
    act, torch_name = "softplus", "Softplus"


class Sigmoid(_Activation):
    act, torch_name = "sigmoid", "Sigmoid"


class ELU(_Activation):
    """torch.nn.ELU() (alpha 1)."""
    act, torch_name = "elu", "ELU"


class LeakyReLU(_Activation):
    """torch.nn.LeakyReLU(negative_slope): x if x > 0 else slope * x (default 0.01, which
    the kernels fuse into the layer before; another slope runs as a layer of its own)."""

    act, torch_name = "leaky_relu", "LeakyReLU"

    def __init__(self, slope=0.01):
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real) or not math.isfinite(slope):
            raise TypeError(f"slope: expected a finite number, got {slope!r}")
        self.slope = float(slope)

    def spec(self):
        return _spec(ACT, act=ACT_CODES["leaky_relu"], slope=self.slope)

    def _fields(self):
        return (str(self.slope),) if self.slope != 0.01 else ()

    def torch(self):
        import torch.nn as nn
        return nn.LeakyReLU(self.slope)


_ACTIVATIONS = {cls.act: cls for cls in (ReLU, Tanh, Softplus, Sigmoid, ELU, LeakyReLU)}


def activation(name):
    """The activation layer called name ('relu', 'tanh', ...)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {', '.join(map(repr, _ACTIVATIONS))}, got {name!r}")
    return _ACTIVATIONS[name]()


def from_spec(spec):
    """The layer a C spec tuple describes (the inverse of Layer.spec)."""
    kind, act, out, kh, kw, sh, sw, ph, pw, oph, opw, scale, slope, c, h, w = spec
    if kind == LINEAR:
        return Linear(out)
    if kind == ACT:
        name = next(k for k, v in ACT_CODES.items() if v == act)
        return LeakyReLU(slope or 0.01) if name == "leaky_relu" else _ACTIVATIONS[name]()
    if kind == CONV2D:
        return Conv2d(out, (kh, kw), (sh, sw), (ph, pw))
    if kind == CONVT2D:
        return ConvTranspose2d(out, (kh, kw), (sh, sw), (ph, pw), (oph, opw))
    if kind in (MAXPOOL2D, AVGPOOL2D):
        return (MaxPool2d if kind == MAXPOOL2D else AvgPool2d)((kh, kw), (sh, sw))
    if kind == UPSAMPLE:
        return Upsample(scale)
    if kind == FLATTEN:
        return Flatten()
    if kind == UNFLATTEN:
        return Unflatten(c, h, w)
    raise ValueError(f"unknown layer kind {kind}")


def layer_list(name, layers):
    """A list of Layer objects, checked; TypeError naming the bad item."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{name}: expected a list of vaec.layers layers, got {type(layers).__name__}")
    out = list(layers)
    for i, layer in enumerate(out):
        if not isinstance(layer, Layer) or type(layer) in (Layer, _Activation):
            hint = " (a torch.nn module? use the vaec.layers class of the same name)" if hasattr(layer, "forward") else ""
            raise TypeError(f"{name}[{i}]: expected a vaec.layers layer, got {type(layer).__name__}{hint}")
    return out


def conv_preset(input_shape, likelihood="bernoulli"):
    """The convolutional VAE of ``architecture="conv"``, scaled to ``input_shape`` (C, H, W):
    encoder Conv2d(32, 4, 2, 1), ReLU, Conv2d(64, 4, 2, 1), ReLU, Flatten, Linear(256), ReLU;
    decoder Linear(256), ReLU, Linear(64 h w), ReLU, Unflatten(64, h, w), ConvTranspose2d(32,
    4, 2, 1), ReLU, ConvTranspose2d(C out, 4, 2, 1), with h, w the sizes after the two
    strided convolutions and output_padding to reach odd sizes again; C out is C (Bernoulli
    logits) or 2 C (Gaussian: the means, then the log-variances). Returns (encoder, decoder)."""
    C, H, W = input_shape
    if H < 4 or W < 4:
        raise ValueError(f"architecture: 'conv' needs images of at least 4 x 4, got input_shape {tuple(input_shape)}")
    h1, w1 = H // 2, W // 2          # (H + 2 - 4) // 2 + 1
    h2, w2 = h1 // 2, w1 // 2
    encoder = [Conv2d(32, 4, stride=2, padding=1), ReLU(), Conv2d(64, 4, stride=2, padding=1), ReLU(), Flatten(),
               Linear(256), ReLU()]
    out = 2 * C if likelihood == "gaussian" else C
    decoder = [Linear(256), ReLU(), Linear(64 * h2 * w2), ReLU(), Unflatten(64, h2, w2),
               ConvTranspose2d(32, 4, stride=2, padding=1, output_padding=(h1 - 2 * h2, w1 - 2 * w2)), ReLU(),
               ConvTranspose2d(out, 4, stride=2, padding=1, output_padding=(H - 2 * h1, W - 2 * w1))]
    return encoder, decoder
