"""The models: thin Python over the C core (vaec._core).

Everything numerical happens in C; this module validates arguments, builds the named
zero-copy parameter views, and runs the fit loop with its progress bar and history.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import time

import numpy as np

from . import _core

__all__ = ["VAE", "load"]

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian")


def _int_arg(name, value, low=1, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        hi = f" and {high}" if high is not None else ""
        raise ValueError(f"{name}: expected an integer {'>= ' + str(low) if high is None else 'between ' + str(low)}{hi}, got {value}")
    return value


def _float_arg(name, value, low=None, low_inclusive=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name}: expected a number {'>=' if low_inclusive else '>'} {low}, got {value}")
    return value


def _seed_arg(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected None or a non-negative integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed: expected an integer in [0, 2**64), got {seed}")
    return int(seed)


def _binarize_arg(binarize):
    if binarize in (None, False, "none"):
        return False
    if binarize in (True, "dynamic"):
        return True
    raise ValueError(f"binarize: expected None, False or 'dynamic', got {binarize!r} "
                     "(for a fixed binarization use vaec.datasets.binarize(X, 'static') once)")


class _Progress:
    """A progress bar: tqdm (terminal and Jupyter) when installed, else a plain line."""

    def __init__(self, total, desc, enabled):
        self.bar = None
        self.enabled = enabled
        self.total = total
        self.desc = desc
        self.n = 0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc=desc, unit="ex", unit_scale=True, leave=False, dynamic_ncols=True)

    def update(self, n, loss):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class VAE:
    """A variational autoencoder with a Gaussian encoder q(z|x) = N(mu, diag exp(logvar)).

    Parameters
    ----------
    input_dim : int
        Width of a data vector (784 for MNIST).
    latent_dim : int
        Size of z.
    hidden : tuple of int
        Widths of the encoder's hidden layers; the decoder mirrors them
        (``hidden=(500, 200)``: encoder 784-500-200, decoder z-200-500-784). ``()`` for none.
    activation : {'tanh', 'relu', 'softplus', 'sigmoid', 'elu', 'leaky_relu'}
    likelihood : {'bernoulli', 'gaussian'}
        Bernoulli on logits (data in [0, 1]), or a Gaussian with a mean and a
        log-variance layer, both linear in the decoder's last hidden layer.
    seed : int
        Seeds the initialization and the model's noise stream.
    threads : int or None
        Threads for the C kernels; None uses every core available.

    Parameters live in one contiguous float32 buffer in C; ``params`` and ``grads`` are
    dicts of zero-copy NumPy views on it, named like ``torch.nn.Linear`` modules
    (``encoder.0.weight`` has shape (out, in)).
    """

    def __init__(self, input_dim, latent_dim=20, hidden=(400,), activation="tanh", likelihood="bernoulli",
                 seed=0, threads=None):
        input_dim = _int_arg("input_dim", input_dim, 1, 2**26)
        latent_dim = _int_arg("latent_dim", latent_dim, 1, 2**20)
        if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
            hidden = (hidden,)
        try:
            hidden = tuple(hidden)
        except TypeError:
            raise TypeError(f"hidden: expected a sequence of layer widths, got {type(hidden).__name__}") from None
        if len(hidden) > 8:
            raise ValueError(f"hidden: at most 8 hidden layers, got {len(hidden)}")
        hidden = tuple(_int_arg(f"hidden[{i}]", h, 1, 2**20) for i, h in enumerate(hidden))
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
        if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected 'bernoulli' or 'gaussian', got {likelihood!r}")
        seed = _seed_arg(seed)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        threads = 0 if threads is None else _int_arg("threads", threads, 1, 256)
        core = _core.VAECore(input_dim, latent_dim, hidden, activation, likelihood, seed, threads)
        self._attach(core)

    # ------------------------------------------------------------ internals
    def _attach(self, core):
        self._core = core
        cfg = core.config()
        self.input_dim = cfg["input_dim"]
        self.latent_dim = cfg["latent_dim"]
        self.hidden = tuple(cfg["hidden"])
        self.activation = cfg["activation"]
        self.likelihood = cfg["likelihood"]
        self.seed = cfg["seed"]
        self._arenas = {k: core.arena(k) for k in ("params", "grads", "adam_m", "adam_v")}
        self._tensors = core.tensors()
        self.params = self._views("params")
        self.grads = self._views("grads")
        self.history = {}

    def _views(self, which):
        flat = self._arenas[which]
        out = {}
        for name, offset, shape in self._tensors:
            size = int(np.prod(shape))
            out[name] = flat[offset:offset + size].reshape(shape)
        return out

    @property
    def threads(self):
        return self._core.state()["threads"]

    @property
    def num_params(self):
        return sum(v.size for v in self.params.values())

    def __repr__(self):
        return (f"VAE(input_dim={self.input_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}, "
                f"activation={self.activation!r}, likelihood={self.likelihood!r}, seed={self.seed})")

    # ---------------------------------------------------------- parameters
    def state_dict(self):
        """A dict name -> float32 array (copies), in the order of ``params``."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in from a mapping name -> array-like (NumPy arrays, lists, or
        torch tensors: anything ``np.asarray`` takes). With ``strict``, the keys must match
        exactly. Shapes are checked and values must be finite; nothing is changed unless
        every entry is valid."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping name -> array, got {type(state_dict).__name__}")
        keys = set(state_dict.keys())
        missing = [k for k in self.params if k not in keys]
        unexpected = [k for k in keys if k not in self.params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {sorted(map(str, unexpected))}")
        staged = {}
        for name in self.params:
            if name not in keys:
                continue
            value = state_dict[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu()
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"state_dict[{name!r}]: expected a real-valued array, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
            if arr.shape != self.params[name].shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {self.params[name].shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state_dict[{name!r}]: contains NaN or Inf")
            staged[name] = arr
        for name, arr in staged.items():
            self.params[name][...] = arr

    # ------------------------------------------------------------ training
    def loss_and_grad(self, x, eps=None, seed=None, samples=None, binarize=None):
        """The batch mean of -ELBO (nats per example); its gradients are written into
        ``grads``. ``eps``: standard-normal noise of shape (L, n, latent_dim) or
        (n, latent_dim); without it, L = ``samples`` draws from the counter-based RNG
        under ``seed`` (or the model's own stream)."""
        return self._core.loss_grad(x, eps, samples, _seed_arg(seed), _binarize_arg(binarize))

    def train_step(self, x, lr=1e-3, eps=None, seed=None, samples=None, binarize=None):
        """One Adam step on batch x; returns the loss before the step. If the loss or a
        gradient is not finite, FloatingPointError is raised and the parameters are left
        as they were."""
        lr = _float_arg("lr", lr, 0.0)
        return self._core.loss_grad(x, eps, samples, _seed_arg(seed), _binarize_arg(binarize), lr)

    def set_optimizer(self, beta1=0.9, beta2=0.999, eps=1e-8, reset=False):
        """Adam's hyper-parameters (kept in the model file); ``reset`` zeroes its moments."""
        self._core.set_adam(_float_arg("beta1", beta1, 0.0), _float_arg("beta2", beta2, 0.0),
                            _float_arg("eps", eps, 0.0, low_inclusive=False))
        if reset:
            self._core.reset_optimizer()

    @property
    def optimizer_state(self):
        """Adam's step count and hyper-parameters, and the RNG stream position."""
        return self._core.state()

    def fit(self, X, epochs=10, batch_size=100, lr=1e-3, validation_data=None, shuffle=True, seed=None,
            progress=True, samples=1, binarize=None, verbose=None, callback=None):
        """Train with Adam on mini-batches of X.

        Returns the history, a dict of per-epoch lists: ``loss`` (mean training -ELBO),
        ``val_elbo`` (mean validation ELBO, or None without validation data), ``seconds``
        and ``examples_per_s``; calling fit again appends to it (``model.history``).
        ``validation_data`` is an array or a tuple whose first item is one; its ELBO is
        computed with a fixed seed, so epochs are compared on the same noise.
        ``binarize='dynamic'`` resamples every pixel as Bernoulli(grey level) each time an
        image is used (inside C). ``seed`` fixes the shuffling and the noise.
        ``progress`` shows a progress bar (terminal or Jupyter); ``verbose`` (default: as
        ``progress``) prints one line per epoch. ``callback(epoch, logs)`` is called after
        each epoch with that epoch's numbers; returning True stops training."""
        epochs = _int_arg("epochs", epochs, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        lr = _float_arg("lr", lr, 0.0)
        samples = _int_arg("samples", samples, 1, 1000000)
        bin_flag = _binarize_arg(binarize)
        seed = _seed_arg(seed)
        X = self._check_data(X, "X")
        if X.shape[0] == 0:
            raise ValueError("X: empty data set")
        X_val = None
        if validation_data is not None:
            X_val = validation_data[0] if isinstance(validation_data, tuple) else validation_data
            X_val = self._check_data(X_val, "validation_data")
        if seed is not None:
            self._core.set_rng(seed, 0)
        state = self._core.state()
        order_rng = np.random.default_rng([state["rng_seed"] & (2**63 - 1), state["rng_counter"]])
        n = X.shape[0]
        hist = self.history if self.history else {"loss": [], "val_elbo": [], "seconds": [], "examples_per_s": []}
        self.history = hist
        interactive = progress and (sys.stderr.isatty() or "ipykernel" in sys.modules)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            order = order_rng.permutation(n) if shuffle else np.arange(n)
            bar = _Progress(n, f"epoch {len(hist['loss']) + 1}", interactive)
            total, seen = 0.0, 0
            try:
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    xb = X[idx] if shuffle else X[start:start + batch_size]
                    loss = self._core.loss_grad(xb, None, samples, None, bin_flag, lr)
                    total += loss * len(idx)
                    seen += len(idx)
                    bar.update(len(idx), loss)
            finally:
                bar.close()
            secs = time.perf_counter() - t0
            hist["loss"].append(total / seen)
            hist["seconds"].append(secs)
            hist["examples_per_s"].append(seen / secs if secs > 0 else float("inf"))
            val = None
            if X_val is not None and X_val.shape[0] > 0:
                val = float(np.mean(self._core.elbo(X_val, None, 1, 0, bin_flag)))
            hist["val_elbo"].append(val)
            if verbose or (verbose is None and progress):
                msg = f"epoch {len(hist['loss']):3d}  loss {total / seen:9.3f}"
                if val is not None:
                    msg += f"  val ELBO {val:9.3f}"
                msg += f"  {seen / secs:9.0f} ex/s  {secs:6.2f}s"
                print(msg, flush=True)
            if callback is not None:
                logs = {k: v[-1] for k, v in hist.items()}
                if callback(len(hist["loss"]), logs):
                    break
        return hist

    def _check_data(self, X, name):
        if isinstance(X, np.ndarray) and X.dtype in (np.uint8, np.float32):
            arr = X
        else:
            try:
                arr = np.asarray(X)
            except Exception as e:  # ragged lists and the like
                raise ValueError(f"{name}: expected a 2-D array of shape (n, {self.input_dim})") from e
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name}: expected a real-valued numeric array (float32 or uint8 preferred), "
                                f"got dtype {arr.dtype}")
            if arr.dtype != np.uint8:
                arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise ValueError(f"{name}: expected a 2-D array of shape (n, {self.input_dim}), got shape {arr.shape}")
        return arr

    # ---------------------------------------------------------- evaluation
    def elbo(self, X, samples=1, eps=None, seed=None, binarize=None):
        """The per-example ELBO (float64, shape (n,)), averaged over ``samples`` draws."""
        if eps is not None and samples == 1:
            samples = None  # taken from eps
        return self._core.elbo(X, eps, samples, _seed_arg(seed), _binarize_arg(binarize))

    def encode(self, X):
        """(mu, logvar) of q(z|x), each float32 (n, latent_dim)."""
        return self._core.encode(X)

    def decode(self, Z):
        """Bernoulli probabilities or Gaussian means for latent codes Z (n, latent_dim)."""
        return self._core.decode(Z)

    def reconstruct(self, X):
        """decode(mu(x)): the reconstruction through the posterior mean."""
        return self._core.decode(self._core.encode(X)[0])

    def sample(self, n, seed=None):
        """n draws of the decoder's mean at z ~ N(0, I), float32 (n, input_dim)."""
        n = _int_arg("n", n, 0)
        rng = np.random.default_rng(_seed_arg(seed))
        z = rng.standard_normal((n, self.latent_dim), dtype=np.float32)
        return self._core.decode(z)

    # ----------------------------------------------------------------- I/O
    def save(self, path):
        """Write the model (config, parameters, optimizer and RNG state, checksum) to a
        ``.vaec`` file, atomically (a temporary file, then a rename)."""
        self._core.save(os.fspath(path))

    def __getstate__(self):
        state = self._core.state()
        return {"config": self._core.config(), "arenas": {k: v.copy() for k, v in self._arenas.items()},
                "state": state, "history": self.history}

    def __setstate__(self, d):
        c = d["config"]
        core = _core.VAECore(c["input_dim"], c["latent_dim"], tuple(c["hidden"]), c["activation"],
                             c["likelihood"], c["seed"], 0)
        self._attach(core)
        for k, v in d["arenas"].items():
            self._arenas[k][...] = v
        s = d["state"]
        core.set_adam(s["beta1"], s["beta2"], s["adam_eps"])
        core.set_rng(s["rng_seed"], s["rng_counter"], s["step"])
        self.history = d.get("history", {})


def load(path, threads=None):
    """Load a model written by ``save``. Raises FileNotFoundError when the file is
    missing and ValueError when it is corrupted, truncated or not a vaec model."""
    threads = 0 if threads is None else _int_arg("threads", threads, 1, 256)
    core = _core.load(os.fspath(path), threads)
    model = VAE.__new__(VAE)
    model._attach(core)
    return model
