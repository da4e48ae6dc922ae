"""What every vaec model shares: the argument validators, the progress bar, the parameter
arena (``ArenaModel``: named zero-copy views, state_dict, optimizer settings, files,
pickling, checkpoints), the model-kind registry and the fit driver (``run_fit``).

A model's ``fit`` checks its own arguments and hands the driver a *plan*
(``FitPlan``): how an epoch's batches are drawn, how one step is taken, what is
validated and recorded. The driver owns everything else: epochs, the progress bar, the
history, callbacks, early stopping, checkpoints and exact resume, and the message when a
step meets NaN or Inf.
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

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
OPTIMIZERS = ("adam", "adagrad")
LIKELIHOODS = ("bernoulli", "gaussian")
MAX_SAMPLES = 10_000_000


# ------------------------------------------------------------------ validators
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


def _init_seed(seed):
    """A constructor's seed: as given, or 64 random bits for None."""
    seed = _seed_arg(seed)
    return int.from_bytes(os.urandom(8), "little") if seed is None else seed


def _threads_arg(threads):
    """None -> 0 (every core), else 1..256."""
    return 0 if threads is None else _int_arg("threads", threads, 1, 256)


def _widths(name, hidden):
    """Hidden-layer widths: an int (one layer) or a sequence of at most 8 positive ints."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        hidden = tuple(hidden)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of layer widths, got {type(hidden).__name__}") from None
    if len(hidden) > 8:
        raise ValueError(f"{name}: at most 8 hidden layers, got {len(hidden)}")
    return tuple(_int_arg(f"{name}[{i}]", h, 1, 2**20) for i, h in enumerate(hidden))


def _activation_arg(activation):
    return _choice("activation", activation, ACTIVATIONS)


def _likelihood_arg(likelihood):
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected 'bernoulli' or 'gaussian', got {likelihood!r}")
    return likelihood


def _data_matrix(X, name, width, *, keep_uint8=True, finite=False):
    """A data set as an (n, width) array. With ``keep_uint8`` (the autoencoders' data),
    uint8 and float32 arrays are used as they are (the C core scales uint8 itself and
    copies what is not contiguous) and anything else is converted once to float32;
    without it (a flow's points), everything becomes C-contiguous float32, and with
    ``finite`` NaN and Inf are refused. The errors name the argument."""
    if X is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(X, np.ndarray) and (X.dtype in (np.uint8, np.float32) if keep_uint8 else
                                      (X.dtype == np.float32 and X.flags.c_contiguous)):
        arr = X
    else:
        try:
            arr = np.asarray(X)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{name}: expected a 2-D array of shape (n, {width})") from e
        if arr.dtype.kind not in "biuf":
            hint = " (float32 or uint8 preferred)" if keep_uint8 else ""
            raise TypeError(f"{name}: expected a real-valued numeric array{hint}, got dtype {arr.dtype}")
        if arr.dtype != np.uint8 or not keep_uint8:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, {width}), got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf; expected finite values")
    return arr


def _optimizer_args(optimizer, weight_decay):
    """fit's optimizer ('adam' or 'adagrad') and weight decay (a number >= 0), checked."""
    return _choice("optimizer", optimizer, OPTIMIZERS), _float_arg("weight_decay", weight_decay, 0.0)


def _binarize_arg(binarize):
    if binarize in (None, False, "none"):
        return False
    if binarize in (True, "dynamic"):
        return True
    raise ValueError(f"binarize: expected None, False or 'dynamic', got {binarize!r} "
                     "(for a fixed binarization use vaec.datasets.binarize(X, 'static') once)")


# ---------------------------------------------------------------- progress bar
def _interactive(progress):
    """Whether a progress bar is wanted and has somewhere to go (a terminal or Jupyter)."""
    return bool(progress) and (sys.stderr.isatty() or "ipykernel" in sys.modules)


class Progress:
    """The progress bar of every loop: tqdm (terminal and Jupyter) when installed and
    ``enabled``, else nothing. ``update(n, loss)`` advances by n units."""

    def __init__(self, total, desc, enabled, unit="ex"):
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "ex", leave=False, dynamic_ncols=True)

    def update(self, n, loss):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------- model kinds
# kind (the number a .vaec file stores) -> (binding type, Python class). The binding's
# _core.MODEL_KINDS gives each kind's type (the C loader's own table); the classes add
# themselves with @register_kind. vaec.load, unpickling and fit(resume=...) all go
# through it.
MODEL_KINDS = {}


def register_kind(kind):
    """Class decorator: ``cls`` is the Python face of model files of ``kind``."""
    def deco(cls):
        core_type = _core.MODEL_KINDS[kind]
        if kind in MODEL_KINDS:
            raise RuntimeError(f"model kind {kind} registered twice ({MODEL_KINDS[kind][1].__name__}, {cls.__name__})")
        cls._kind = kind
        cls._core_type = core_type
        MODEL_KINDS[kind] = (core_type, cls)
        return cls
    return deco


def load(path, threads=None):
    """Load a model written by ``save`` (a VAE, Autoencoder, M2 or Flow: the file says which). Raises
    FileNotFoundError when the file is missing and ValueError when it is corrupted,
    truncated or not a vaec model."""
    return _load_as(path, threads, None)


def _load_as(path, threads, cls):
    """The model in ``path``; with ``cls``, refused (by the C loader of cls's kind) unless
    the file holds that kind."""
    threads = _threads_arg(threads)
    kind, core, _extra = _core.load(path=os.fspath(path), threads=threads,
                                    kind=None if cls is None else cls._kind)
    model_cls = MODEL_KINDS[kind][1]   # with cls given, the loader of its kind refused any other
    model = model_cls.__new__(model_cls)
    model._attach(core)
    return model


# ------------------------------------------------------------------- models
class ArenaModel:
    """What every vaec model shares: its C core's parameter arena as named zero-copy
    views (``params``, ``grads``), state_dict / load_state_dict, Adam's settings, the
    model file (``save``), pickling, and the checkpoints of ``fit``.

    A subclass is registered with ``@register_kind(kind)`` and supplies
    ``_configure(config)`` (its attributes from the core's configuration) and
    ``_core_kwargs(config)`` (the binding constructor's arguments for a configuration);
    it builds its core and calls ``_attach``."""

    _kind = None
    _core_type = None

    # ------------------------------------------------------------ internals
    def _attach(self, core):
        self._core = core
        self._configure(core.config())
        self._attach_arena(core)
        self.history = {}

    def _configure(self, config):
        raise NotImplementedError

    @classmethod
    def _core_kwargs(cls, config):
        raise NotImplementedError

    def _attach_arena(self, core):
        self._core = core
        self._arenas = {k: core.arena(which=k) for k in ("params", "grads", "adam_m", "adam_v")}
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

    def _restore_position(self, state):
        """The optimizer's settings and step, and the RNG stream position, from a state()
        dict (one from before Adagrad: Adam without weight decay); the optimizer's state
        buffers are the caller's to copy."""
        self._core.set_adam(beta1=state["beta1"], beta2=state["beta2"], eps=state["adam_eps"])
        self._core.set_optimizer(optimizer=state.get("optimizer", "adam"), weight_decay=state.get("weight_decay", 0.0))
        self._core.set_rng(seed=state["rng_seed"], counter=state["rng_counter"], step=state["step"])

    def _use_optimizer(self, optimizer, weight_decay):
        """The optimizer and weight decay of the next steps; switching optimizers zeroes
        the state (one's moments are not the other's sums of squares)."""
        if self._core.state()["optimizer"] != optimizer:
            self._core.set_optimizer(optimizer=optimizer)
            self._core.reset_optimizer()
        self._core.set_optimizer(weight_decay=weight_decay)

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

    def set_optimizer(self, beta1=0.9, beta2=0.999, eps=1e-8, reset=False, *, optimizer=None, weight_decay=None):
        """Adam's hyper-parameters (kept in the model file); ``reset`` zeroes the optimizer's
        state. ``eps`` must be at least 1e-30 (Adam adds eps * sqrt(1 - beta2^t), which has to
        stay a normal float); Adagrad uses the same ``eps`` (its sqrt(s) + eps).

        ``optimizer``: ``"adam"`` or ``"adagrad"`` for the next steps (``train_step``,
        ``adam_step``; ``fit`` sets its own); switching zeroes the state. ``weight_decay``:
        L2 weight decay, grad + weight_decay * param in every step (torch's form, either
        optimizer). None keeps either as it is. The model file keeps which optimizer its
        state belongs to, not the weight decay."""
        if optimizer is not None:
            _choice("optimizer", optimizer, OPTIMIZERS)
        if weight_decay is not None:
            weight_decay = _float_arg("weight_decay", weight_decay, 0.0)
        self._core.set_adam(beta1=_float_arg("beta1", beta1, 0.0), beta2=_float_arg("beta2", beta2, 0.0),
                            eps=_float_arg("eps", eps, 0.0, low_inclusive=False))
        if optimizer is not None:
            self._use_optimizer(optimizer, self._core.state()["weight_decay"] if weight_decay is None else weight_decay)
        elif weight_decay is not None:
            self._core.set_optimizer(weight_decay=weight_decay)
        if reset:
            self._core.reset_optimizer()

    @property
    def optimizer_state(self):
        """The optimizer (``"adam"`` or ``"adagrad"``), its step count, Adam's
        hyper-parameters, the weight decay, and the RNG stream position."""
        return self._core.state()

    # ----------------------------------------------------------------- I/O
    def save(self, path):
        """Write the model (config, parameters, optimizer and RNG state, checksum) to a
        ``.vaec`` file, atomically (a temporary file, then a rename). ``vaec.load`` reads
        it back as a model of the same class."""
        self._core.save(path=os.fspath(path))

    def _fresh_history(self, keys):
        """The history a new fit starts from: the lists of ``keys`` carried over."""
        return {k: list(self.history.get(k, [])) for k in keys}

    def _pickle_extra(self):
        """What a subclass keeps in a pickle besides the core's state and the history."""
        return {}

    def _unpickle_extra(self, d):
        pass

    def __getstate__(self):
        return {"config": self._core.config(), "arenas": {k: self._rowmajor(v) for k, v in self._arenas.items()},
                "state": self._core.state(), "history": self.history, **self._pickle_extra()}

    def __setstate__(self, d):
        self._attach(self._core_type(**self._core_kwargs(d["config"]), threads=0))
        for k, v in d["arenas"].items():
            self._arenas[k][...] = self._from_rowmajor(v)
        self._restore_position(d["state"])
        self.history = self._history_from_pickle(d.get("history", {}))
        self._unpickle_extra(d)

    @staticmethod
    def _history_from_pickle(history):
        return history

    # ---------------------------------------------------------- checkpoints
    def _checkpoint(self, path, state, best_params):
        """The model file with the trainer's state (JSON, then the best parameters) as its
        extra record: one atomic file, which vaec.load reads as a plain model."""
        blob = json.dumps(state).encode() + b"\0"
        if best_params is not None:
            blob += self._rowmajor(best_params).astype("<f4").tobytes()
        self._core.save(path=path, extra=blob)

    def _resume(self, path):
        """(trainer state, best parameters or None) from a checkpoint, whose parameters,
        Adam moments and RNG position replace this model's."""
        kind, core, extra = _core.load(path=os.fspath(path), threads=self.threads)
        # the architecture must match; the initialization seed need not (the checkpoint's
        # parameters and RNG state replace it)
        mine = {k: v for k, v in self._core.config().items() if k != "seed"}
        if kind != self._kind or {k: v for k, v in core.config().items() if k != "seed"} != mine:
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
            self._arenas[k][...] = core.arena(which=k)
        self._restore_position(core.state())
        best = None
        if tail:
            best = np.frombuffer(tail, "<f4").astype(np.float32)
            if best.size != self._arenas["params"].size:
                raise ValueError(f"resume: {os.fspath(path)} has best parameters of the wrong size")
            best = self._from_rowmajor(best)
        return state, best


# --------------------------------------------------------------- fit driver
def _check_every():
    from .distributed import CHECK_EVERY
    return CHECK_EVERY


COMMON_KEYS = ("loss", "lr", "seconds", "examples_per_s")


class FitPlan:
    """What one model's fit gives the shared driver (``run_fit``).

    ``keys``: the history's keys in their order (the common ones, ``COMMON_KEYS``, among
    them); ``examples``: examples per epoch (the progress bar's total);
    ``epochs_from_history``: whether epoch numbers (messages, callbacks) count every epoch
    of the history (M2, Flow) or those of this call (VAE, Autoencoder).

    The hooks: ``start(state)`` sets up a new run (e.g. the shuffling RNG; what it puts in
    ``state`` is saved with each checkpoint), ``restore(state)`` a resumed one;
    ``save(state)`` writes the plan's position into ``state`` before a checkpoint;
    ``lr(epoch)``; ``batches(epoch)`` yields (batch, examples); ``step(batch, lr, step)``
    takes one optimizer step and returns (loss, weight), the epoch's loss being the
    weighted mean; ``end_epoch(logs)`` adds the model's own entries to ``logs`` and returns
    the validation score for early stopping (higher is better; None without one);
    ``message(number, logs)`` is the verbose line. ``optimizer``/``weight_decay``: what the
    run's steps use (``_base.OPTIMIZERS``), set by the driver before the first step.

    Data-parallel training (``dist``, set by the driver before ``start``/``restore``: a
    ``vaec.distributed.Dist`` or None): ``batches`` then yields this rank's share of each
    global batch, its examples being the global batch's, and ``step`` computes the share's
    gradients only (lr < 0); the driver sums them over the ranks and takes the step, then
    calls ``after_step(dist)``. ``partials()`` lists the epoch's per-rank sums that the
    driver adds up over the ranks before ``end_epoch`` (``set_partials`` takes the
    totals). ``settings`` (the fit's arguments) and ``data`` (name -> array) are what every
    rank must share, checked before the first step."""

    keys = COMMON_KEYS
    examples = 0
    epochs_from_history = False
    const_lr = None
    dist = None
    settings = {}
    data = {}
    optimizer = "adam"    # the optimizer and weight decay of the run's steps (run_fit sets them)
    weight_decay = 0.0

    def start(self, state):
        pass

    def restore(self, state):
        pass

    def save(self, state):
        pass

    def lr(self, epoch):
        """The learning rate of an epoch (0-based, of this run): by default ``const_lr``."""
        return self.const_lr

    @staticmethod
    def order_stream(core, seed):
        """The NumPy stream of an M2's or a flow's shuffling: ``seed`` (when given) resets
        the model's RNG to (seed, 0), and the stream starts from that position,
        default_rng([rng_seed & (2**63-1), rng_counter])."""
        if seed is not None:
            core.set_rng(seed=seed, counter=0)
        st = core.state()
        return np.random.default_rng([st["rng_seed"] & (2**63 - 1), st["rng_counter"]])

    def batches(self, epoch):
        raise NotImplementedError

    def step(self, batch, lr, step):
        raise NotImplementedError

    def end_epoch(self, logs):
        return None

    def message(self, number, logs):
        return f"epoch {number:3d}  loss {logs['loss']:9.3f}  {logs['seconds']:6.2f}s"

    # data-parallel training
    def share_rows(self, order, start, stop):
        """The rows of batch [start, stop) of an epoch's order (None: in order) this process
        computes: the whole batch in one process, else this rank's share; with ``(row_offset,
        n_total)`` for the binding when it is a share (None otherwise)."""
        if self.dist is None:
            return (slice(start, stop) if order is None else order[start:stop]), None
        a, b = self.dist.share(stop - start)
        rows = slice(start + a, start + b) if order is None else order[start + a:start + b]
        return rows, (a, stop - start)

    def after_step(self, dist):
        pass

    def partials(self):
        return []

    def set_partials(self, values):
        pass

    def data_fingerprint(self):
        from .distributed import data_fingerprint
        return data_fingerprint(**self.data)


def _fit_setting(value):
    """A fit argument as the ranks compare it: a callable by its name (its address differs)."""
    if callable(value):
        return f"<callable {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}>"
    return value


def fit_settings(**kw):
    return {k: _fit_setting(v) for k, v in kw.items()}


def _dist_arg(comm):
    """fit's ``comm``: None, or the communicator as a ``vaec.distributed.Dist``."""
    if comm is None:
        return None
    from .distributed import Dist
    return Dist(comm)


class _Starting:
    """``with starting(dist):`` around a fit's argument checks: under a communicator, an
    error there is sent to every rank (which then all raise) before it propagates."""

    def __init__(self, dist):
        self.dist = dist

    def __enter__(self):
        return self

    def __exit__(self, tp, exc, tb):
        if exc is not None and self.dist is not None and isinstance(exc, Exception):
            self.dist.fail_start(exc)
        return False


starting = _Starting


def _fit_options(callback, patience, checkpoint_every, has_validation):
    """The driver's own arguments, checked (the names as fit takes them): (patience,
    checkpoint_every)."""
    if patience is not None:
        patience = _int_arg("patience", patience, 1)
        if not has_validation:
            raise ValueError("patience: early stopping needs validation_data")
    checkpoint_every = _int_arg("checkpoint_every", checkpoint_every, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable (epoch, logs) -> bool, got {type(callback).__name__}")
    return patience, checkpoint_every


def run_fit(model, plan, epochs, *, progress=True, verbose=None, callback=None, patience=None, checkpoint_dir=None,
            checkpoint_every=1, resume=None, dist=None):
    """Train ``model`` for ``epochs`` epochs of ``plan`` (arguments already checked) and
    return the history, a flat dict of per-epoch lists (also ``model.history``; a new
    fit continues it, a resumed one continues the checkpoint's).

    The plan's optimizer (Adam or Adagrad; switching from the model's zeroes its state) and
    weight decay are set first. Each epoch: the plan's batches, one optimizer step each (or
    the plan's own updates), under a progress bar; then
    the history's entries, early stopping (``patience`` epochs without a better
    validation score; the best parameters are restored at the end and the history gets
    ``best_epoch``), the verbose line, a checkpoint (``checkpoint_dir``/checkpoint.vaec
    every ``checkpoint_every`` epochs and at the end) and ``callback(epoch, logs)``, which
    stops training by returning True. A step whose loss or gradient is NaN or Inf raises
    FloatingPointError naming the epoch and step; the model keeps its last finite
    parameters and the last checkpoint stays valid.

    With ``dist`` (data-parallel training, vaec/distributed.py) every rank runs this loop
    on its shares of the same batches: each step's gradients are summed over the ranks
    (one Allreduce) before the one Adam step; the epoch's sums are added up over the ranks
    and rank 0's ``end_epoch`` (validation) and timing are sent to all, so every rank keeps
    the same history; rank 0 alone shows progress, prints, writes checkpoints and runs
    ``callback``, whose answer (or failure) every rank follows."""
    lead = dist is None or dist.lead
    plan.dist = dist
    if dist is not None:
        dist.start(model, plan, resume)
    if resume is not None:
        if dist is None:
            state, best_params = model._resume(resume)
            plan.restore(state)
        else:
            state, best_params = dist.resume(model, resume)
            dist.agree(lambda: plan.restore(state), "resume")
    else:
        history = model._fresh_history(plan.keys)
        state = {"epoch": 0, "step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0, "history": history}
        plan.start(state)
        best_params = None
    model._use_optimizer(plan.optimizer, plan.weight_decay)
    if dist is not None:
        dist.check_params(model, "at the start")
    hist = state["history"]
    model.history = hist
    show = lead and _interactive(progress)
    ckpt_path = None
    if checkpoint_dir is not None:
        ckpt_path = os.path.join(os.fspath(checkpoint_dir), "checkpoint.vaec")
        if lead:
            os.makedirs(checkpoint_dir, exist_ok=True)

    stopped = False
    while state["epoch"] < epochs and not stopped:
        epoch = state["epoch"]
        number = len(hist["loss"]) + 1 if plan.epochs_from_history else epoch + 1
        lr = plan.lr(epoch)
        t0 = time.perf_counter()
        total, weight, seen = 0.0, 0, 0
        with Progress(plan.examples, f"epoch {number}", show) as bar:
            for b, (batch, n) in enumerate(plan.batches(epoch)):
                try:
                    if dist is None:
                        loss, w = plan.step(batch, lr, state["step"])
                    else:
                        loss, w = dist.step(model, plan, batch, lr, state["step"])
                except FloatingPointError as e:
                    where = f" The last checkpoint, {ckpt_path}, is intact." if ckpt_path and os.path.exists(ckpt_path) else ""
                    raise FloatingPointError(
                        f"training stopped at epoch {number}, step {b + 1} (global step {state['step'] + 1}): {e}. "
                        f"The model keeps its last finite parameters.{where}") from None
                state["step"] += 1
                total += loss * w
                weight += w
                seen += n
                # under a communicator the loss is this rank's part: rank 0's bar shows it
                # times the ranks (an estimate; the history has the exact sum)
                bar.update(n, loss if dist is None else loss * dist.size)
                if dist is not None and state["step"] % _check_every() == 0:
                    dist.check_params(model, f"after global step {state['step']}")
        secs = time.perf_counter() - t0
        if dist is None:
            logs = {"loss": total / weight, "lr": lr, "seconds": secs,
                    "examples_per_s": seen / secs if secs > 0 else float("inf")}
            score = plan.end_epoch(logs)
        else:
            sums = dist.sum([total] + list(plan.partials()))
            plan.set_partials(list(sums[1:]))
            logs = {"loss": float(sums[0]) / weight, "lr": lr, "seconds": secs,
                    "examples_per_s": seen / secs if secs > 0 else float("inf")}
            out = dist.agree(lambda: (logs, plan.end_epoch(logs)) if lead else None, "end of epoch")
            logs, score = dist.bcast(out)
            dist.check_params(model, f"at the end of epoch {number}")
        for k, v in logs.items():
            hist.setdefault(k, []).append(v)
        state["epoch"] = epoch + 1
        if patience is not None and score is not None:
            if state["best_val"] is None or score > state["best_val"]:
                state.update(best_val=score, best_epoch=number, bad_epochs=0)
                best_params = model._arenas["params"].copy()
            else:
                state["bad_epochs"] += 1
                stopped = state["bad_epochs"] >= patience
        if dist is None:
            if verbose or (verbose is None and progress):
                print(plan.message(number, logs), flush=True)
            if ckpt_path and (state["epoch"] % checkpoint_every == 0 or state["epoch"] == epochs or stopped):
                plan.save(state)
                model._checkpoint(ckpt_path, state, best_params)
            if callback is not None and callback(number, {k: v[-1] for k, v in hist.items() if v}):
                break
            continue

        def lead_part():   # rank 0's: the line, the checkpoint, the callback
            if verbose or (verbose is None and progress):
                print(plan.message(number, logs), flush=True)
            if ckpt_path and (state["epoch"] % checkpoint_every == 0 or state["epoch"] == epochs or stopped):
                plan.save(state)
                model._checkpoint(ckpt_path, state, best_params)
            return bool(callback is not None and callback(number, {k: v[-1] for k, v in hist.items() if v}))
        if dist.bcast(dist.agree(lead_part if lead else (lambda: None), "rank 0's end of epoch")):
            break
    if patience is not None and best_params is not None:
        model._arenas["params"][...] = best_params
        hist["best_epoch"] = state["best_epoch"]
    return hist
