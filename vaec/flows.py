"""Normalizing flows as stand-alone densities: ``vaec.Flow`` and the potentials U1-U4.

A :class:`Flow` is a stack of K invertible layers of one type on a standard-normal base
of dimension ``dim``: x = f_K(...f_1(z0)), z0 ~ N(0, I). The layers and their gradients
run in C (csrc/flows.c, csrc/flow_planar.c, csrc/flow_radial.c, csrc/flow_realnvp.c,
csrc/flow_model.c); this module validates arguments, builds the named zero-copy views
of the parameters and runs the fit loops.

Flow specs:

``"planar:K"``
    f(z) = z + û tanh(wᵀz + b), with Rezende & Mohamed's (2015) reparameterization of u
    that keeps every layer invertible.
``"radial:K"``
    f(z) = z + β/(α + r) (z − z0), r = ‖z − z0‖, α > 0 and β > −α by reparameterization.
``"realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]"``
    affine coupling layers (Dinh et al. 2017) alternating between the two halves of z;
    s and t from one-hidden-layer nets of WIDTH units (default 64); s = scale·tanh(raw)
    with a learned per-dimension scale (default, starting at 0) or a fixed one. Only
    Real NVP has a closed-form inverse, hence ``inverse``, ``log_prob`` and ``fit``.

Potentials: ``vaec.flows.potentials.U1`` … ``U4`` are the four unnormalized 2-D densities
exp(−U) of Rezende & Mohamed (2015), Table 1 and Fig. 3, computed in C; they are callable
(``U, grad = potentials.U1(z)``) and ``Flow.fit_energy`` runs them without leaving C.
"""
from __future__ import annotations

import math
import numbers
import time

import numpy as np

from . import _core
from ._base import (ArenaModel, FitPlan, Progress, _data_matrix, _dist_arg, _fit_options, _float_arg, _init_seed,
                    _int_arg, _interactive, _load_as, _optimizer_args, _seed_arg, _threads_arg, fit_settings,
                    register_kind, run_fit, starting)

__all__ = ["Flow", "Potential", "potentials", "load", "load_flow"]


# ------------------------------------------------------------------ potentials
class Potential:
    """An unnormalized 2-D density exp(−U(z)) built into the C core.

    ``U, grad = potential(z)`` for z of shape (..., 2) returns U (...) and ∇U (..., 2),
    float64. ``potential.density(z)`` is exp(−U(z)). Pass the object itself to
    :meth:`Flow.fit_energy` to fit without calling back into Python.

    exp(−U2), exp(−U3) and exp(−U4) are not normalizable: every vertical slice z1 = c
    holds the same mass, so minimizing KL(q‖p) lets q spread along z1 without end.
    ``potential.in_box(4)`` is the same potential with a wall outside the square
    [−4, 4]² (U + Σ_i ½((|z_i| − 4)₊/0.25)², unchanged inside): a proper density,
    the one the paper's Fig. 3 shows."""

    def __init__(self, name, code, formula, box=0.0):
        self.name = name
        self.code = code
        self.formula = formula
        self.box = float(box)
        self.dim = 2

    def in_box(self, box=4.0):
        """This potential plus a wall outside [−box, box]² (box > 0), or without it (box = 0)."""
        box = _float_arg("box", box, 0.0)
        name = self.name.split("[")[0]
        return Potential(name + (f"[box {box:g}]" if box > 0 else ""), self.code, self.formula, box)

    def __call__(self, z):
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-1:] != (2,):
            raise ValueError(f"{self.name}: expected z of shape (..., 2), got shape {z.shape}")
        lead = z.shape[:-1]
        U, dU = _core.flow_potential(code=self.code, z=z.reshape(-1, 2), box=self.box)
        return U.reshape(lead), dU.reshape(lead + (2,))

    def density(self, z):
        """exp(−U(z)), unnormalized."""
        return np.exp(-self(z)[0])

    def __repr__(self):
        box = f", wall outside [-{self.box:g}, {self.box:g}]^2" if self.box > 0 else ""
        return f"<potential {self.name}: U(z) = {self.formula}{box}>"


class _Potentials:
    """The potentials of Rezende & Mohamed (2015), Table 1, with
    w1 = sin(2πz1/4), w2 = 3 exp(−½((z1−1)/0.6)²), w3 = 3σ((z1−1)/0.3)."""

    U1 = Potential("U1", 1, "½((‖z‖−2)/0.4)² − ln(exp(−½((z1−2)/0.6)²) + exp(−½((z1+2)/0.6)²))")
    U2 = Potential("U2", 2, "½((z2 − w1(z))/0.4)²")
    U3 = Potential("U3", 3, "−ln(exp(−½((z2 − w1)/0.35)²) + exp(−½((z2 − w1 + w2)/0.35)²))")
    U4 = Potential("U4", 4, "−ln(exp(−½((z2 − w1)/0.4)²) + exp(−½((z2 − w1 + w3)/0.35)²))")

    def __iter__(self):
        return iter((self.U1, self.U2, self.U3, self.U4))

    def __getitem__(self, name):
        for p in self:
            if p.name == name:
                return p
        raise KeyError(f"no potential named {name!r}; expected one of 'U1', 'U2', 'U3', 'U4'")

    def __repr__(self):
        return "potentials(U1, U2, U3, U4)"


potentials = _Potentials()


# ---------------------------------------------------------------------- Flow
@register_kind(_core.KIND_FLOW)
class Flow(ArenaModel):
    """A normalizing flow on a standard-normal base: x = f(z0), z0 ~ N(0, I).

    Parameters
    ----------
    dim : int
        Dimension of z (Real NVP needs at least 2).
    flow : str
        ``"planar:K"``, ``"radial:K"`` or ``"realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]"``
        (see the module's documentation).
    seed : int
        Seeds the initialization and the model's noise stream.
    threads : int or None
        Threads for the C kernels; None uses every core available.

    ``params`` and ``grads`` are dicts of zero-copy float32 views on the C buffers, named
    ``flow.{k}.{name}`` (``flow.0.u``, ``flow.0.w``, ``flow.0.b`` for planar;
    ``flow.0.s.0.weight`` … torch.nn.Linear style for Real NVP).
    """

    def __init__(self, dim, flow="planar:8", seed=0, threads=None):
        dim = _int_arg("dim", dim, 1, 2**20)
        if not isinstance(flow, str):
            raise TypeError(f"flow: expected a spec string such as 'planar:8' or 'realnvp:4', got {type(flow).__name__}")
        _core.flow_parse(spec=flow, dim=dim)   # ValueError listing the accepted forms
        seed = _init_seed(seed)
        threads = _threads_arg(threads)
        self._attach(self._core_type(dim=dim, flow=flow, seed=seed, threads=threads))

    # ------------------------------------------------------------ internals
    def _configure(self, cfg):
        self.dim = cfg["dim"]
        self.flow = cfg["flow"]
        self.kind = cfg["kind"]
        self.K = cfg["K"]
        self.seed = cfg["seed"]
        self.has_inverse = bool(cfg["has_inverse"])

    def _attach(self, core):
        super()._attach(core)
        self.history = _FlowHistory()

    def _fresh_history(self, keys):
        """fit's lists continued, and fit_energy's record kept."""
        out = _FlowHistory({k: list(self.history.get(k, [])) for k in keys})
        if "fit_energy" in self.history:
            out["fit_energy"] = self.history["fit_energy"]
        return out

    @classmethod
    def _core_kwargs(cls, c):
        return dict(dim=c["dim"], flow=c["flow"], seed=c["seed"])

    @staticmethod
    def _history_from_pickle(history):
        """A pickle of an earlier version kept fit's lists under "fit"."""
        out = _FlowHistory({k: v for k, v in history.items() if k != "fit"})
        for k, v in history.get("fit", {}).items():
            out.setdefault(k, v)
        return out

    def _need_inverse(self, what):
        if not self.has_inverse:
            raise NotImplementedError(
                f"{what} needs a closed-form inverse, which the {self.kind} flow '{self.flow}' does not have; "
                f"only Real NVP flows do (e.g. vaec.Flow({self.dim}, flow='realnvp:4'))")

    def __repr__(self):
        return f"Flow(dim={self.dim}, flow={self.flow!r}, seed={self.seed})"

    # ------------------------------------------------------------ the maps
    def transform(self, z):
        """x = f(z) for z of shape (n, dim): returns (x float32 (n, dim), log|det ∂x/∂z| float64 (n,))."""
        return self._core.transform(z=z)

    def inverse(self, x):
        """z0 = f⁻¹(x) (Real NVP): returns (z0 float32 (n, dim), log|det ∂z0/∂x| float64 (n,))."""
        self._need_inverse("inverse")
        return self._core.inverse(x=x)

    def log_prob(self, x):
        """log p(x) = log N(f⁻¹(x); 0, I) + log|det ∂f⁻¹/∂x| (Real NVP), float64 (n,)."""
        self._need_inverse("log_prob")
        return self._core.log_prob(x=x)

    def sample(self, n, seed=None, return_log_prob=False):
        """n draws x = f(z0), z0 ~ N(0, I), float32 (n, dim) (any flow type: only the
        forward pass is needed). With ``return_log_prob``, also log q(x) of each draw
        (float64), exact for every flow type. ``seed=None`` draws from the model's own
        stream (which advances)."""
        n = _int_arg("n", n, 0)
        x, lp = self._core.sample(n=n, seed=_seed_arg(seed))
        return (x, lp) if return_log_prob else x

    def vjp(self, z, g_x, g_logdet, inverse=False):
        """The backward pass by hand: for L = Σ g_x·f(z) + Σ g_logdet·log|det| (per row),
        returns dL/dz (float32 (n, dim)) and writes dL/dθ into ``grads``. With ``inverse``
        (Real NVP) the map is f⁻¹ and its log-det."""
        if inverse:
            self._need_inverse("vjp(inverse=True)")
        g_logdet = np.asarray(g_logdet, dtype=np.float64).reshape(-1)
        return self._core.vjp(z=z, g_out=g_x, c=g_logdet, inverse=bool(inverse))

    # ----------------------------------------------------- maximum likelihood
    def nll_and_grad(self, X):
        """Mean −log p(x) over the batch (Real NVP); its gradients are written into ``grads``."""
        self._need_inverse("maximum likelihood")
        return self._core.nll_step(x=X)

    def train_step(self, X, lr=1e-3):
        """One Adam step on the mean −log p(x) of batch X (Real NVP); returns the loss before it."""
        self._need_inverse("maximum likelihood")
        return self._core.nll_step(x=X, lr=_float_arg("lr", lr, 0.0))

    def fit(self, X, epochs=10, batch_size=256, lr=1e-3, seed=None, progress=True, shuffle=True, verbose=None,
            callback=None, comm=None, *, optimizer="adam", weight_decay=0.0):
        """Fit by maximum likelihood (Real NVP) with Adam (or ``optimizer="adagrad"``;
        ``weight_decay``: L2 decay, as in ``VAE.fit``) on mini-batches of X (n, dim).

        Returns the history (also ``flow.history``), per-epoch lists: ``loss`` (mean
        −log p(x) over the epoch, nats), ``lr``, ``seconds``, ``examples_per_s``; calling fit
        again appends. (Before version 0.2 these lists were under ``history["fit"]``; that
        key still reads them.) ``seed`` fixes the shuffling. ``callback(epoch, logs)``
        returning True stops training; a NaN or Inf loss raises FloatingPointError naming
        the epoch and step, the flow keeping its last finite parameters.

        ``comm``: an mpi4py communicator for data-parallel training, as in ``VAE.fit``."""
        dist = _dist_arg(comm)
        with starting(dist):
            self._need_inverse("fit (maximum likelihood)")
            epochs = _int_arg("epochs", epochs, 0)
            batch_size = _int_arg("batch_size", batch_size, 1)
            lr = _float_arg("lr", lr, 0.0)
            seed = _seed_arg(seed)
            optimizer, weight_decay = _optimizer_args(optimizer, weight_decay)
            X = self._check_rows(X, "X")
            if X.shape[0] == 0:
                raise ValueError("X: empty data set")
            _fit_options(callback, None, 1, False)
            plan = _FlowPlan(self, X, batch_size=batch_size, lr=lr, seed=seed, shuffle=shuffle)
            plan.optimizer, plan.weight_decay = optimizer, weight_decay
            plan.settings = fit_settings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, shuffle=bool(shuffle),
                                         optimizer=optimizer, weight_decay=weight_decay)
            plan.data = {"X": X}
        return run_fit(self, plan, epochs, progress=progress, verbose=verbose, callback=callback, dist=dist)

    def _check_rows(self, X, name):
        return _data_matrix(X, name, self.dim, keep_uint8=False, finite=True)

    # ------------------------------------------------------- energy (KL(q‖p))
    @staticmethod
    def _beta_fn(beta_schedule):
        if beta_schedule is None:
            return lambda t: 1.0
        if callable(beta_schedule):
            return beta_schedule
        if isinstance(beta_schedule, numbers.Real) and not isinstance(beta_schedule, bool) and beta_schedule > 0:
            T = float(beta_schedule)
            return lambda t: min(1.0, 0.01 + t / T)
        raise TypeError("beta_schedule: expected None, a callable step -> beta, or a positive number T of "
                        "annealing steps (beta_t = min(1, 0.01 + t/T), as in Rezende & Mohamed 2015)")

    def _energy_call(self, U, batch_size, beta, lr, eps=None, seed=None):
        """One evaluation of the energy loss (and with lr >= 0 an Adam step)."""
        if isinstance(U, Potential):
            return self._core.energy_step(potential=U.code, box=U.box, n=batch_size, seed=seed, eps=eps, beta=beta, lr=lr)
        zK, _ = self._core.energy_forward(n=batch_size, seed=seed, eps=eps)
        out = U(zK)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("U: the callable must return a tuple (U, dU/dz): U of shape (n,), dU of shape (n, dim)")
        Uv, dU = out
        Uv = np.asarray(Uv, dtype=np.float64).reshape(-1) if np.ndim(Uv) <= 1 else np.asarray(Uv, dtype=np.float64)
        return self._core.energy_backward(U=Uv, dU=np.asarray(dU, dtype=np.float64), beta=beta, lr=lr)

    def _check_potential(self, U):
        if isinstance(U, Potential):
            if self.dim != U.dim:
                raise ValueError(f"U: the built-in potential {U.name} is 2-D; this flow has dim {self.dim}")
        elif not callable(U):
            raise TypeError("U: expected one of vaec.flows.potentials.U1 ... U4 or a callable z -> (U, dU/dz)")

    def energy_loss_and_grad(self, U, batch_size=None, eps=None, seed=None, beta=1.0):
        """One evaluation of the reverse-KL loss mean[log q0(z0) − Σ log|det| + β U(z_K)]
        over z0 ~ N(0, I) (``eps`` (n, dim) given, or drawn under ``seed``); its gradients
        are written into ``grads``. Returns the loss."""
        self._check_potential(U)
        if eps is not None:
            eps = np.asarray(eps, dtype=np.float32)
            if eps.ndim != 2:
                raise ValueError(f"eps: expected shape (n, {self.dim}), got shape {eps.shape}")
            batch_size = eps.shape[0]
        batch_size = _int_arg("batch_size", 256 if batch_size is None else batch_size, 1)
        return self._energy_call(U, batch_size, _float_arg("beta", beta, 0.0), -1.0, eps, _seed_arg(seed))

    def fit_energy(self, U, steps=10000, batch_size=256, lr=1e-3, seed=None, beta_schedule=None, progress=True,
                   callback=None):
        """Fit q = the flow's density to p ∝ exp(−U) by minimizing KL(q‖p) (Rezende &
        Mohamed 2015): each step draws ``batch_size`` z0 ~ N(0, I) and takes one Adam step
        on mean[log q0(z0) − Σ log|det| + β_t U(z_K)] (reparameterized).

        ``U``: one of ``vaec.flows.potentials.U1 … U4`` (evaluated in C; U2–U4 are
        improper, use e.g. ``potentials.U2.in_box(4)``), or a callable
        z (n, dim) float32 -> (U (n,), dU/dz (n, dim)) called between the forward and the
        backward of each step. ``beta_schedule``: None (β = 1), a callable step -> β, or a
        number T of annealing steps (β_t = min(1, 0.01 + t/T), as in the paper).
        Returns the history: per-step ``loss`` and ``beta`` (appended on further calls).
        The loss is KL(q‖p) − log Z at β = 1. ``callback(step, loss)`` returning True stops."""
        self._check_potential(U)
        steps = _int_arg("steps", steps, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        lr = _float_arg("lr", lr, 0.0)
        seed = _seed_arg(seed)
        beta_fn = self._beta_fn(beta_schedule)
        if seed is not None:
            self._core.set_rng(seed=seed, counter=0)
        hist = self.history.setdefault("fit_energy", {"loss": [], "beta": [], "seconds": 0.0})
        bar = Progress(steps, f"fit_energy {getattr(U, 'name', 'U')}", _interactive(progress), unit="step")
        t0 = time.perf_counter()
        shown = 0
        try:
            for t in range(steps):
                beta = float(beta_fn(t))
                if not (math.isfinite(beta) and beta >= 0):
                    raise ValueError(f"beta_schedule: step {t} gave beta = {beta}; expected a finite number >= 0")
                loss = self._energy_call(U, batch_size, beta, lr)
                hist["loss"].append(loss)
                hist["beta"].append(beta)
                if (t & 63) == 0 or t == steps - 1:
                    bar.update(t + 1 - shown, loss)
                    shown = t + 1
                if callback is not None and callback(t, loss):
                    break
        finally:
            bar.close()
            hist["seconds"] += time.perf_counter() - t0
        return hist


class _FlowPlan(FitPlan):
    """The maximum-likelihood fit of a flow: one NumPy stream, default_rng([rng_seed &
    (2**63-1), rng_counter]) at the start of the call (after ``seed`` reset the model's
    RNG), draws each epoch's order."""

    epochs_from_history = True

    def __init__(self, flow, X, *, batch_size, lr, seed, shuffle):
        self.core, self.X, self.examples = flow._core, X, X.shape[0]
        self.batch_size, self.const_lr, self.seed, self.shuffle = batch_size, lr, seed, shuffle

    def start(self, state):
        self.rng = self.order_stream(self.core, self.seed)

    def batches(self, epoch):
        n = self.examples
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            rows, share = self.share_rows(order, start, stop)
            yield (self.X[rows], share), stop - start

    def step(self, batch, lr, step):
        xb, share = batch
        if share is None:
            return self.core.nll_step(x=xb, lr=lr), len(xb)
        return self.core.nll_step(x=xb, lr=lr, n_total=share[1]), share[1]

    def message(self, number, logs):
        return f"epoch {number:3d}  -log p(x) {logs['loss']:9.4f}  {logs['seconds']:6.2f}s"


class _FlowHistory(dict):
    """A flow's history: the flat per-epoch lists of ``fit`` (and ``fit_energy``'s
    per-step record under ``"fit_energy"``). ``history["fit"]``, where earlier versions
    kept fit's lists, reads the same lists."""

    def __missing__(self, key):
        if key == "fit":
            return {k: v for k, v in self.items() if k != "fit_energy"}
        raise KeyError(key)


def load(path, threads=None):
    """Load a flow written by ``Flow.save``. FileNotFoundError when the file is missing,
    ValueError when it is corrupted, truncated or holds another kind of model."""
    return _load_as(path, threads, Flow)


load_flow = load
