"""The models: thin Python over the C core (vaec._core).

Everything numerical happens in C; this module validates arguments, builds the named
zero-copy parameter views, and runs the fit loop with its progress bar and history.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import sys
import time

import numpy as np

from . import _core

__all__ = ["ArenaModel", "VAE", "Autoencoder", "gradient_variance", "load"]

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
MAX_SAMPLES = 10_000_000
BURDA_STAGES = 8  # 3^i epochs at lr * 10^(-i/7), i = 0..7 (Burda et al. 2016)
LIKELIHOODS = ("bernoulli", "gaussian")
ESTIMATORS = ("reparam", "score")
ALGORITHMS = ("aevb", "wake-sleep")
BASELINE_DECAY = 0.9  # the running-mean baseline: b <- 0.9 b + 0.1 mean log p(x|z)


def _choice(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


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


def _data_matrix(X, name, width):
    """A data set as an (n, width) array: uint8 and float32 arrays as they are (the C core
    scales uint8 itself and copies what is not contiguous), anything else converted once
    to float32. The errors name the argument."""
    if X is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(X, np.ndarray) and X.dtype in (np.uint8, np.float32):
        arr = X
    else:
        try:
            arr = np.asarray(X)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{name}: expected a 2-D array of shape (n, {width})") from e
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a real-valued numeric array (float32 or uint8 preferred), "
                            f"got dtype {arr.dtype}")
        if arr.dtype != np.uint8:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, {width}), got shape {arr.shape}")
    return arr


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


class ArenaModel:
    """What every vaec model shares: its C core's parameter arena as named zero-copy
    views (``params``, ``grads``), state_dict / load_state_dict, and Adam's settings.
    A subclass sets ``self._core`` (a binding type with arena(), tensors(), state(),
    set_adam() and reset_optimizer()) and calls ``_attach_arena``."""

    def _attach_arena(self, core):
        self._core = core
        self._arenas = {k: core.arena(k) for k in ("params", "grads", "adam_m", "adam_v")}
        self._tensors = core.tensors()
        self.params = self._views("params")
        self.grads = self._views("grads")

    def _views(self, which, flat=None):
        """Name -> view of one arena buffer (or of ``flat``, an array laid out like it). A
        tensor the core keeps transposed (the VAE's first weight, as W^T for its sparse
        path) is shown in its own shape as a column-major view: still zero-copy."""
        flat = self._arenas[which] if flat is None else flat
        out = {}
        for name, offset, shape, transposed in self._tensors:
            size = int(np.prod(shape))
            block = flat[offset:offset + size]
            out[name] = block.reshape(shape[::-1]).T if transposed else block.reshape(shape)
        return out

    def _rowmajor(self, flat):
        """A copy of an arena-shaped array with every tensor row-major (the layout of the
        model file, and of anything kept across versions)."""
        out = np.array(flat, dtype=np.float32, copy=True)
        views = self._views(None, flat)
        for name, offset, shape, transposed in self._tensors:
            if transposed:
                out[offset:offset + views[name].size] = views[name].ravel()
        return out

    def _from_rowmajor(self, flat):
        """The inverse of ``_rowmajor``: a row-major arena-shaped array in the core's layout."""
        flat = np.asarray(flat, dtype=np.float32)
        out = flat.copy()
        views = self._views(None, out)
        for name, offset, shape, transposed in self._tensors:
            if transposed:
                views[name][...] = flat[offset:offset + int(np.prod(shape))].reshape(shape)
        return out

    @property
    def threads(self):
        return self._core.state()["threads"]

    @property
    def num_params(self):
        return sum(v.size for v in self.params.values())

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

    def set_optimizer(self, beta1=0.9, beta2=0.999, eps=1e-8, reset=False):
        """Adam's hyper-parameters (kept in the model file); ``reset`` zeroes its moments.
        ``eps`` must be at least 1e-30 (Adam adds eps * sqrt(1 - beta2^t), which has to stay
        a normal float)."""
        self._core.set_adam(_float_arg("beta1", beta1, 0.0), _float_arg("beta2", beta2, 0.0),
                            _float_arg("eps", eps, 0.0, low_inclusive=False))
        if reset:
            self._core.reset_optimizer()

    @property
    def optimizer_state(self):
        """Adam's step count and hyper-parameters, and the RNG stream position."""
        return self._core.state()



class _Coder(ArenaModel):
    """What a VAE and an Autoencoder share: the networks' configuration, the C model,
    training (train_step, loss_and_grad, fit), decode and files."""

    _deterministic = False
    _val_key = "val_elbo"

    def __init__(self, input_dim, latent_dim=20, hidden=(400,), activation="tanh", likelihood="bernoulli",
                 seed=0, threads=None, flow=None):
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
        if flow is not None and not isinstance(flow, str):
            raise TypeError(f"flow: expected None or a spec such as 'planar:10', got {type(flow).__name__}")
        core = _core.VAECore(input_dim, latent_dim, hidden, activation, likelihood, seed, threads, flow or "",
                             self._deterministic)
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
        self.flow = cfg.get("flow") or None
        self._attach_arena(core)
        self.history = {}
        self._baseline = None  # the score estimator's running-mean baseline

    def __repr__(self):
        return (f"{type(self).__name__}(input_dim={self.input_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}, "
                f"activation={self.activation!r}, likelihood={self.likelihood!r}, seed={self.seed}"
                + (f", flow={self.flow!r})" if self.flow else ")"))

    # ------------------------------------------------------------ training
    def loss_and_grad(self, x, eps=None, seed=None, samples=None, binarize=None, iw_samples=None, beta=1.0,
                      free_bits=0.0, estimator="reparam", baseline=None):
        """The batch mean of the negative training objective (nats per example); its
        gradients are written into ``grads``.

        The objective is the ELBO, averaged over ``samples`` reparameterized draws (KL
        analytic, weighted by ``beta``, each latent dimension's batch-mean KL floored at
        ``free_bits`` nats), or with ``iw_samples=k`` the k-sample IWAE bound of Burda et
        al. ``eps``: standard-normal noise of shape (L, n, latent_dim) or (n, latent_dim);
        without it, draws from the counter-based RNG under ``seed`` (or the model's own
        stream).

        ``estimator``: ``"reparam"`` (the reparameterization trick) or ``"score"``, the
        score-function (REINFORCE) estimator of the encoder's gradient of E_q[log p(x|z)],
        (log p(x|z) - b) * grad log q(z|x); the KL's gradient stays analytic and the
        decoder's gradient is the same for both. ``baseline`` b (score only): None (0), a
        number, or ``"mean"``, a running mean of log p(x|z) over this model's earlier
        calls (0.9 decay; it never uses the current draw, so the estimate stays unbiased)."""
        return self._loss_grad(x, -1.0, eps, seed, samples, binarize, iw_samples, beta, free_bits, estimator, baseline)

    def _loss_grad(self, x, lr, eps, seed, samples, binarize, iw_samples, beta, free_bits, estimator, baseline):
        samples, iw = self._objective_samples(samples, iw_samples, eps)
        score, b = self._estimator_args(estimator, baseline, iw)
        loss = self._core.loss_grad(x, eps, samples, _seed_arg(seed), _binarize_arg(binarize), lr, iw,
                                    _float_arg("beta", beta, 0.0), _float_arg("free_bits", free_bits, 0.0), score, b)
        if baseline == "mean":
            self._update_baseline(self._core.last_rec())
        return loss

    def _estimator_args(self, estimator, baseline, iw):
        """(score flag, baseline value) for the C call, after checking the arguments."""
        _choice("estimator", estimator, ESTIMATORS)
        if estimator == "reparam":
            if baseline is not None:
                raise ValueError("baseline: only the score-function estimator (estimator='score') takes a baseline")
            return False, 0.0
        if self._deterministic or getattr(self, "flow", None):
            raise ValueError("estimator: 'score' needs a VAE with a diagonal Gaussian posterior (no flow)")
        if iw:
            raise ValueError("estimator: 'score' is for the ELBO, not with iw_samples")
        if baseline is None:
            return True, 0.0
        if isinstance(baseline, str):
            _choice("baseline", baseline, ("mean",))
            return True, 0.0 if self._baseline is None else self._baseline
        return True, _float_arg("baseline", baseline)

    def _update_baseline(self, rec):
        self._baseline = rec if self._baseline is None else BASELINE_DECAY * self._baseline + (1 - BASELINE_DECAY) * rec

    def train_step(self, x, lr=1e-3, eps=None, seed=None, samples=None, binarize=None, iw_samples=None, beta=1.0,
                   free_bits=0.0, estimator="reparam", baseline=None):
        """One Adam step on batch x (objective as in ``loss_and_grad``); returns the loss
        before the step. If the loss or a gradient is not finite, FloatingPointError is
        raised and the parameters are left as they were."""
        lr = _float_arg("lr", lr, 0.0)
        return self._loss_grad(x, lr, eps, seed, samples, binarize, iw_samples, beta, free_bits, estimator, baseline)

    @staticmethod
    def _objective_samples(samples, iw_samples, eps):
        if iw_samples is None:
            return samples, False
        k = _int_arg("iw_samples", iw_samples, 1, MAX_SAMPLES)
        if samples not in (None, 1, k):
            raise ValueError(f"samples: give either samples (ELBO) or iw_samples (IWAE), got {samples} and {k}")
        if eps is not None and np.ndim(eps) == 3 and np.shape(eps)[0] != k:
            raise ValueError(f"eps: holds {np.shape(eps)[0]} samples, iw_samples is {k}")
        return (k if eps is None else None), True

    def fit(self, X, epochs=10, batch_size=100, lr=1e-3, validation_data=None, shuffle=True, seed=None,
            progress=True, samples=1, binarize=None, verbose=None, callback=None, *, iw_samples=None, beta=1.0,
            warmup=None, free_bits=0.0, lr_schedule="constant", lr_decay=0.97, patience=None,
            checkpoint_dir=None, checkpoint_every=1, resume=None, algorithm="aevb", estimator="reparam",
            baseline=None):
        """Train with Adam on mini-batches of X; returns the history (also ``model.history``).

        The history is a dict of per-epoch lists: ``loss`` (mean training objective, e.g.
        -ELBO), ``val_elbo`` (mean validation ELBO, or None), ``lr``, ``beta``, ``seconds``,
        ``examples_per_s``. ``validation_data`` is an array or a tuple whose first item is
        one; its ELBO uses a fixed seed so epochs are compared on the same noise.

        Objective: ``samples=L`` reparameterized ELBO samples, or ``iw_samples=k`` for the
        IWAE bound; ``beta`` weights the KL (beta-VAE); ``warmup`` anneals that weight from
        0: an int N rises linearly over N epochs, ``"rezende"`` follows Rezende & Mohamed's
        beta_t = min(1, 0.01 + t/10000) per iteration; ``free_bits`` floors each latent
        dimension's KL (nats). ``binarize='dynamic'`` resamples every pixel as Bernoulli(grey
        level) each time an image is used (inside C).

        ``algorithm``: ``"aevb"`` (Kingma & Welling: the gradient of the objective above) or
        ``"wake-sleep"`` (Hinton et al. 1995): each step the decoder follows
        grad log p(x|z), z ~ q(z|x) (wake) and the encoder follows grad log q(z|x) on as
        many pairs z ~ p(z), x ~ p(x|z) dreamt by the model (sleep); the history's ``loss``
        is still the batch -ELBO, and ``sleep_loss`` the mean -log q(z|x) of the dreams.
        ``estimator``/``baseline``: as in ``loss_and_grad`` (AEVB only).

        Learning rate: ``lr_schedule`` ``"constant"``, ``"exponential"`` (lr * lr_decay^epoch),
        ``"burda"`` (3^i epochs at lr * 10^(-i/7), i = 0..7) or a callable epoch -> lr.
        ``patience``: stop when the validation ELBO has not improved for that many epochs and
        keep the best parameters. ``checkpoint_dir``/``checkpoint_every``: an atomic
        checkpoint (``checkpoint.vaec``) every N epochs; ``fit(..., resume=path)`` continues
        from one and ends exactly where an uninterrupted run with the same seed would.

        ``seed`` fixes the shuffling and the noise. ``progress`` shows a progress bar
        (terminal or Jupyter); ``verbose`` (default: as ``progress``) prints one line per
        epoch. ``callback(epoch, logs)`` runs after each epoch; returning True stops.
        A NaN or Inf loss raises FloatingPointError naming the epoch and step; the model
        keeps its last finite parameters and the last checkpoint stays valid."""
        epochs = _int_arg("epochs", epochs, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        lr = _float_arg("lr", lr, 0.0)
        samples = _int_arg("samples", samples, 1, MAX_SAMPLES)
        beta = _float_arg("beta", beta, 0.0)
        free_bits = _float_arg("free_bits", free_bits, 0.0)
        lr_decay = _float_arg("lr_decay", lr_decay, 0.0, low_inclusive=False)
        bin_flag = _binarize_arg(binarize)
        seed = _seed_arg(seed)
        _choice("algorithm", algorithm, ALGORITHMS)
        iw = False
        if iw_samples is not None:
            samples = _int_arg("iw_samples", iw_samples, 1, MAX_SAMPLES)
            iw = True
            if beta != 1.0 or free_bits != 0.0 or warmup is not None:
                raise ValueError("beta, warmup and free_bits apply to the ELBO, not with iw_samples")
        if warmup is not None and warmup != "rezende":
            warmup = _int_arg("warmup", warmup, 1)
        self._check_fit_options(algorithm, iw, samples, beta, warmup, free_bits, estimator)
        score, _ = self._estimator_args(estimator, baseline, iw)
        if not (callable(lr_schedule) or lr_schedule in ("constant", "exponential", "burda")):
            raise ValueError(f"lr_schedule: expected 'constant', 'exponential', 'burda' or a callable, got {lr_schedule!r}")
        if patience is not None:
            patience = _int_arg("patience", patience, 1)
            if validation_data is None:
                raise ValueError("patience: early stopping needs validation_data")
        checkpoint_every = _int_arg("checkpoint_every", checkpoint_every, 1)
        X = self._check_data(X, "X")
        if X.shape[0] == 0:
            raise ValueError("X: empty data set")
        X_val = None
        if validation_data is not None:
            X_val = validation_data[0] if isinstance(validation_data, tuple) else validation_data
            X_val = self._check_data(X_val, "validation_data")
        n = X.shape[0]
        steps_per_epoch = -(-n // batch_size)

        if resume is not None:
            state, best_params = self._resume(resume)
        else:
            if seed is not None:
                self._core.set_rng(seed, 0)
            st = self._core.state()
            base = seed if seed is not None else int(np.random.SeedSequence(
                [st["rng_seed"], st["rng_counter"]]).generate_state(1, np.uint64)[0])
            # a later fit continues the model's history (the schedules start afresh)
            history = {k: list(self.history.get(k, [])) for k in
                       ("loss", self._val_key, "lr", "beta", "seconds", "examples_per_s")}
            state = {"epoch": 0, "step": 0, "base_seed": int(base), "best_val": None, "best_epoch": None,
                     "bad_epochs": 0, "history": history}
            best_params = None
        hist = state["history"]
        self.history = hist
        interactive = progress and (sys.stderr.isatty() or "ipykernel" in sys.modules)
        ckpt_path = None
        if checkpoint_dir is not None:
            os.makedirs(checkpoint_dir, exist_ok=True)
            ckpt_path = os.path.join(os.fspath(checkpoint_dir), "checkpoint.vaec")

        def lr_at(epoch):
            if callable(lr_schedule):
                return _float_arg("lr_schedule(epoch)", lr_schedule(epoch), 0.0)
            if lr_schedule == "exponential":
                return lr * lr_decay ** epoch
            if lr_schedule == "burda":
                i, end = 0, 1
                while epoch >= end and i < BURDA_STAGES - 1:
                    i += 1
                    end += 3 ** i
                return lr * 10 ** (-i / 7)
            return lr

        def beta_at(step):
            if warmup is None:
                return beta
            if warmup == "rezende":
                return beta * min(1.0, 0.01 + step / 10000)
            return beta * min(1.0, (step + 1) / (warmup * steps_per_epoch))

        stopped = False
        while state["epoch"] < epochs and not stopped:
            epoch = state["epoch"]
            lr_e = lr_at(epoch)
            t0 = time.perf_counter()
            order = (np.random.default_rng([state["base_seed"], epoch]).permutation(n) if shuffle else None)
            bar = _Progress(n, f"epoch {epoch + 1}", interactive)
            total, seen, beta_t, sleep_total = 0.0, 0, beta, 0.0
            try:
                for b, start in enumerate(range(0, n, batch_size)):
                    xb = X[order[start:start + batch_size]] if shuffle else X[start:start + batch_size]
                    beta_t = beta_at(state["step"])
                    try:
                        if algorithm == "wake-sleep":
                            loss, sleep_loss = self._core.wake_sleep(xb, None, bin_flag, lr_e)
                            sleep_total += sleep_loss * len(xb)
                        else:
                            bl = (self._baseline or 0.0) if baseline == "mean" else (baseline or 0.0)
                            loss = self._core.loss_grad(xb, None, samples, None, bin_flag, lr_e, iw, beta_t, free_bits,
                                                        score, bl)
                            if baseline == "mean":
                                self._update_baseline(self._core.last_rec())
                    except FloatingPointError as e:
                        where = f" The last checkpoint, {ckpt_path}, is intact." if ckpt_path and os.path.exists(ckpt_path) else ""
                        raise FloatingPointError(
                            f"training stopped at epoch {epoch + 1}, step {b + 1} (global step {state['step'] + 1}): {e}. "
                            f"The model keeps its last finite parameters.{where}") from None
                    state["step"] += 1
                    total += loss * len(xb)
                    seen += len(xb)
                    bar.update(len(xb), loss)
            finally:
                bar.close()
            secs = time.perf_counter() - t0
            val = None
            if X_val is not None and X_val.shape[0] > 0:
                val = float(np.mean(self._core.elbo(X_val, None, 1, 0, bin_flag)))
            # the C "ELBO" of an autoencoder is minus its loss: the history keeps the loss
            val_h = None if val is None else (-val if self._deterministic else val)
            for k, v in (("loss", total / seen), (self._val_key, val_h), ("lr", lr_e), ("beta", beta_t),
                         ("seconds", secs), ("examples_per_s", seen / secs if secs > 0 else float("inf"))):
                hist[k].append(v)
            if algorithm == "wake-sleep":
                hist.setdefault("sleep_loss", []).append(sleep_total / seen)
            state["epoch"] = epoch + 1
            if patience is not None and val is not None:
                if state["best_val"] is None or val > state["best_val"]:
                    state.update(best_val=val, best_epoch=epoch + 1, bad_epochs=0)
                    best_params = self._arenas["params"].copy()
                else:
                    state["bad_epochs"] += 1
                    stopped = state["bad_epochs"] >= patience
            if verbose or (verbose is None and progress):
                msg = f"epoch {epoch + 1:3d}  loss {total / seen:9.3f}"
                if val is not None:
                    msg += f"  val loss {-val:9.3f}" if self._deterministic else f"  val ELBO {val:9.3f}"
                msg += f"  {seen / secs:9.0f} ex/s  {secs:6.2f}s"
                print(msg, flush=True)
            if ckpt_path and (state["epoch"] % checkpoint_every == 0 or state["epoch"] == epochs or stopped):
                self._checkpoint(ckpt_path, state, best_params)
            if callback is not None and callback(epoch + 1, {k: v[-1] for k, v in hist.items()}):
                break
        if patience is not None and best_params is not None:
            self._arenas["params"][...] = best_params
            hist["best_epoch"] = state["best_epoch"]
        return hist

    def _check_fit_options(self, algorithm, iw, samples, beta, warmup, free_bits, estimator):
        if algorithm == "wake-sleep":
            if self.flow:
                raise ValueError("algorithm: wake-sleep needs a diagonal Gaussian posterior, not a flow")
            if iw or samples != 1 or beta != 1.0 or warmup is not None or free_bits != 0.0 or estimator != "reparam":
                raise ValueError("algorithm: wake-sleep takes none of iw_samples, samples, beta, warmup, free_bits, "
                                 "estimator")

    def _checkpoint(self, path, state, best_params):
        """The model file with the trainer's state (JSON, then the best parameters) as its
        extra record: one atomic file."""
        blob = json.dumps(state).encode() + b"\0"
        if best_params is not None:
            blob += self._rowmajor(best_params).astype("<f4").tobytes()
        self._core.save(path, blob)

    def _resume(self, path):
        kind, core, extra = _core.load(os.fspath(path), self.threads)
        # the architecture must match; the initialization seed need not (the checkpoint's
        # parameters and RNG state replace it)
        mine = {k: v for k, v in self._core.config().items() if k != "seed"}
        if kind not in (_core.KIND_VAE, _core.KIND_AE) or {k: v for k, v in core.config().items() if k != "seed"} != mine:
            raise ValueError(f"resume: {os.fspath(path)} holds a model of another configuration "
                             f"({core.config()}) than this one ({self._core.config()})")
        if not extra or b"\0" not in extra:
            raise ValueError(f"resume: {os.fspath(path)} is a model file without training state "
                             "(write checkpoints with fit(..., checkpoint_dir=...))")
        head, _, tail = extra.partition(b"\0")
        try:
            state = json.loads(head.decode())
        except ValueError:
            raise ValueError(f"resume: {os.fspath(path)} has an unreadable training state") from None
        for k in ("params", "adam_m", "adam_v"):
            self._arenas[k][...] = core.arena(k)
        s = core.state()
        self._core.set_adam(s["beta1"], s["beta2"], s["adam_eps"])
        self._core.set_rng(s["rng_seed"], s["rng_counter"], s["step"])
        best = None
        if tail:
            best = np.frombuffer(tail, "<f4").astype(np.float32)
            if best.size != self._arenas["params"].size:
                raise ValueError(f"resume: {os.fspath(path)} has best parameters of the wrong size")
            best = self._from_rowmajor(best)
        return state, best

    def _check_data(self, X, name):
        return _data_matrix(X, name, self.input_dim)

    # ----------------------------------------------------------------- I/O
    def save(self, path):
        """Write the model (config, parameters, optimizer and RNG state, checksum) to a
        ``.vaec`` file, atomically (a temporary file, then a rename)."""
        self._core.save(os.fspath(path))

    def __getstate__(self):
        state = self._core.state()
        return {"config": self._core.config(), "arenas": {k: self._rowmajor(v) for k, v in self._arenas.items()},
                "state": state, "history": self.history, "baseline": self._baseline}

    def __setstate__(self, d):
        c = d["config"]
        core = _core.VAECore(c["input_dim"], c["latent_dim"], tuple(c["hidden"]), c["activation"],
                             c["likelihood"], c["seed"], 0, c.get("flow") or "", bool(c.get("deterministic")))
        self._attach(core)
        self._baseline = d.get("baseline")
        for k, v in d["arenas"].items():
            self._arenas[k][...] = self._from_rowmajor(v)
        s = d["state"]
        core.set_adam(s["beta1"], s["beta2"], s["adam_eps"])
        core.set_rng(s["rng_seed"], s["rng_counter"], s["step"])
        self.history = d.get("history", {})


class VAE(_Coder):
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
    flow : str or None
        A normalizing flow on the posterior, z_K = f_K(...f_1(z_0)), z_0 ~ q0(z|x):
        ``"planar:K"``, ``"radial:K"`` or ``"realnvp:K"`` (Rezende & Mohamed 2015; Dinh et
        al. 2017). Its parameters are ``flow.{k}.*`` in ``params``. With a flow the KL term
        is estimated by Monte Carlo; ``encode`` returns q0's mean and log-variance.

    Parameters live in one contiguous float32 buffer in C; ``params`` and ``grads`` are
    dicts of zero-copy NumPy views on it, named like ``torch.nn.Linear`` modules
    (``encoder.0.weight`` has shape (out, in)).
    """

    # ---------------------------------------------------------- evaluation
    def elbo(self, X, samples=1, eps=None, seed=None, binarize=None):
        """The per-example ELBO (float64, shape (n,)), averaged over ``samples`` draws."""
        if eps is not None and samples == 1:
            samples = None  # taken from eps
        return self._core.elbo(X, eps, samples, _seed_arg(seed), _binarize_arg(binarize))

    def iwae_bound(self, X, samples=5, seed=None, binarize=None, batch_size=None):
        """The k-sample importance-weighted bound log (1/k) sum_l p(x, z_l) / q(z_l|x) per
        example (Burda et al. 2016), float64 (n,); k = ``samples``. Computed in C with a
        streaming float64 log-sum-exp: memory does not grow with k."""
        return self._importance(X, samples, seed, binarize, batch_size, "samples")

    def log_likelihood(self, X, samples=5000, batch_size=None, seed=None, binarize=None):
        """Importance-sampled estimate of log p(x) per example, float64 (n,): the IWAE bound
        with many samples (5000 as in Burda et al.), streamed through cache-sized chunks
        (never k x n x input_dim in memory). ``batch_size`` rows per call (default 256)."""
        return self._importance(X, samples, seed, binarize, batch_size, "samples")

    def _importance(self, X, samples, seed, binarize, batch_size, name):
        k = _int_arg(name, samples, 1, MAX_SAMPLES)
        seed = _seed_arg(seed)
        bin_flag = _binarize_arg(binarize)
        X = self._check_data(X, "X")
        bs = 256 if batch_size is None else _int_arg("batch_size", batch_size, 1, 1 << 20)
        out = np.empty(X.shape[0], np.float64)
        for b, start in enumerate(range(0, X.shape[0], bs)):
            # independent noise per batch: the batch index goes into the seed
            s = None if seed is None else int(np.random.SeedSequence([seed, b]).generate_state(1, np.uint64)[0])
            out[start:start + bs] = self._core.iwae(X[start:start + bs], None, k, s, bin_flag)
        return out

    def kl_per_dim(self, X):
        """Mean over X of KL(q(z_j|x) || N(0, 1)) for each latent dimension j, float64."""
        X = self._check_data(X, "X")
        total = np.zeros(self.latent_dim)
        for start in range(0, X.shape[0], 8192):
            mu, lv = (a.astype(np.float64) for a in self._core.encode(X[start:start + 8192]))
            total += 0.5 * np.sum(mu * mu + np.exp(lv) - 1.0 - lv, axis=0)
        return total / max(X.shape[0], 1)

    def active_units(self, X, threshold=0.01):
        """The number of active latent units (Burda et al. 2016): dimensions whose posterior
        mean varies across the data, Cov_x(E_q[z_j]) > threshold."""
        threshold = _float_arg("threshold", threshold, 0.0)
        X = self._check_data(X, "X")
        if X.shape[0] < 2:
            raise ValueError("X: active_units needs at least 2 examples")
        mu = np.concatenate([self._core.encode(X[s:s + 8192])[0] for s in range(0, X.shape[0], 8192)])
        return int(np.sum(np.var(mu.astype(np.float64), axis=0) > threshold))

    def encode(self, X):
        """(mu, logvar) of q(z|x), each float32 (n, latent_dim)."""
        return self._core.encode(X)

    def code(self, X):
        """One point in latent space per example, float32 (n, latent_dim): the posterior
        mean mu(x), or with a flow f_K(...f_1(mu(x))), q0's mean carried through the flow
        (the decoder's input space). Used by ``vaec.plot.interpolation``."""
        mu = self._core.encode(X)[0]
        return self._core.flow(mu)[0] if self.flow else mu

    def flow_transform(self, Z):
        """The posterior's flow on codes Z (n, latent_dim): (z_K, log|det dz_K/dz|),
        float32 and float64; the identity (log-det 0) without a flow."""
        return self._core.flow(Z)

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


class Autoencoder(_Coder):
    """A deterministic autoencoder on the same C layers as ``VAE``: code z = f(x) (one
    linear head after the encoder's hidden layers), reconstruction g(z) from the mirrored
    decoder; no noise, no KL.

    Trained on the reconstruction loss per example: the cross-entropy
    -sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] on logits for ``likelihood="bernoulli"``
    (data in [0, 1]), the squared error sum_d (x_d - mean_d)^2 for ``"gaussian"``.
    ``fit``, ``train_step``, ``loss_and_grad``, ``encode`` (the codes), ``decode``,
    ``params``/``grads`` (``encoder.code.*`` is the code layer) and ``save``/``vaec.load``
    work as for ``VAE``; the history's validation entry is ``val_loss``.
    """

    _deterministic = True
    _val_key = "val_loss"

    def __init__(self, input_dim, latent_dim=2, hidden=(400,), activation="tanh", likelihood="bernoulli",
                 seed=0, threads=None):
        super().__init__(input_dim, latent_dim, hidden, activation, likelihood, seed, threads)

    def _check_fit_options(self, algorithm, iw, samples, beta, warmup, free_bits, estimator):
        if algorithm != "aevb" or iw or samples != 1 or beta != 1.0 or warmup is not None or free_bits != 0.0:
            raise ValueError("an Autoencoder trains on its reconstruction loss: algorithm, iw_samples, samples, "
                             "beta, warmup and free_bits do not apply")

    def loss(self, X, binarize=None, seed=None):
        """The per-example reconstruction loss (float64, shape (n,))."""
        return -self._core.elbo(X, None, 1, _seed_arg(seed), _binarize_arg(binarize))

    def encode(self, X):
        """The codes f(x), float32 (n, latent_dim)."""
        return self._core.encode(X)[0]

    def decode(self, Z):
        """Bernoulli probabilities or Gaussian means for codes Z (n, latent_dim)."""
        return self._core.decode(Z)

    def reconstruct(self, X):
        """decode(encode(x))."""
        return self._core.decode(self.encode(X))


def gradient_variance(model, X, estimator="reparam", samples=100, baseline=None, mc_samples=1, seed=0,
                      binarize=None, return_mean=False):
    """The per-parameter variance of a VAE's stochastic gradient over ``samples`` draws.

    Each draw is ``model.loss_and_grad(X, estimator=..., samples=mc_samples, seed=...)``
    on the whole of X (a fixed batch) with fresh noise; the result is a dict of float64
    arrays shaped like ``model.params`` (the unbiased sample variance, Welford's
    algorithm in float64). With ``return_mean=True``, a pair (mean, variance) of such
    dicts. ``baseline="mean"`` starts from the running mean of 10 earlier calls on X
    (their draws are not counted) and updates it as training would. The model's
    parameters are not changed; its gradients are left at the last draw."""
    if not isinstance(model, VAE):
        raise TypeError(f"model: expected a vaec.VAE, got {type(model).__name__}")
    _choice("estimator", estimator, ESTIMATORS)
    S = _int_arg("samples", samples, 2, MAX_SAMPLES)
    L = _int_arg("mc_samples", mc_samples, 1, MAX_SAMPLES)
    seed = _seed_arg(seed)
    seed = 0 if seed is None else seed
    X = model._check_data(X, "X")
    if X.shape[0] == 0:
        raise ValueError("X: empty batch")
    names = list(model.grads)
    seeds = np.random.SeedSequence(seed).generate_state(S + 10, np.uint64)
    if baseline == "mean":
        for s in seeds[S:]:
            model.loss_and_grad(X, seed=int(s), samples=L, binarize=binarize, estimator=estimator, baseline=baseline)
    mean = {k: np.zeros(model.grads[k].shape) for k in names}
    m2 = {k: np.zeros(model.grads[k].shape) for k in names}
    for i in range(S):
        model.loss_and_grad(X, seed=int(seeds[i]), samples=L, binarize=binarize, estimator=estimator,
                            baseline=baseline)
        for k in names:
            g = model.grads[k].astype(np.float64)
            d = g - mean[k]
            mean[k] += d / (i + 1)
            m2[k] += d * (g - mean[k])
    var = {k: m2[k] / (S - 1) for k in names}
    return (mean, var) if return_mean else var


def load(path, threads=None):
    """Load a model written by ``save`` (a VAE, Autoencoder, M2 or Flow: the file says which). Raises
    FileNotFoundError when the file is missing and ValueError when it is corrupted,
    truncated or not a vaec model."""
    threads = 0 if threads is None else _int_arg("threads", threads, 1, 256)
    kind = _core.file_kind(os.fspath(path))
    if kind == _core.KIND_FLOW:
        from .flows import load as load_flow
        return load_flow(path, threads or None)
    if kind == _core.KIND_M2:
        from .m2 import load_m2
        return load_m2(path, threads or None)
    kind, core, _extra = _core.load(os.fspath(path), threads)
    cls = Autoencoder if kind == _core.KIND_AE else VAE
    model = cls.__new__(cls)
    model._attach(core)
    return model
