"""The autoencoders: thin Python over the C core (vaec._core.VAECore).

Everything numerical happens in C; this module validates the VAE's and the
Autoencoder's arguments and supplies their plan to the shared fit driver
(vaec/_base.py, which also holds the arena views, files and checkpoints).
"""
from __future__ import annotations

import base64
import numbers

import numpy as np

from . import _core
from ._base import (ACTIVATIONS, LIKELIHOODS, MAX_SAMPLES, ArenaModel, FitPlan, _activation_arg,  # noqa: F401
                    _binarize_arg, _choice, _data_matrix, _dist_arg, _fit_options, _float_arg, _init_seed, _int_arg,
                    _likelihood_arg, _optimizer_args, _seed_arg, _threads_arg, _widths, fit_settings, load,
                    register_kind, run_fit, starting)
from ._base import Progress as _Progress  # noqa: F401  (the old name of the progress bar)
from .layers import conv_preset, from_spec, layer_list

__all__ = ["ArenaModel", "VAE", "Autoencoder", "gradient_variance", "load"]

BURDA_STAGES = 8  # 3^i epochs at lr * 10^(-i/7), i = 0..7 (Burda et al. 2016)
ESTIMATORS = ("reparam", "score")
ALGORITHMS = ("aevb", "wake-sleep", "mcem")
SAMPLE_METHODS = ("hmc",)
LL_METHODS = ("is", "hmc")
BASELINE_DECAY = 0.9  # the running-mean baseline: b <- 0.9 b + 0.1 mean log p(x|z)
MCEM_GAIN = 1.0  # MCEM's shared step size: log eps += MCEM_GAIN (batch's mean acceptance - target)
HMC_INIT_DRAWS = 1000  # a chain's start: resampled from this many prior draws by p(x|z)


def _shape_arg(input_shape):
    """input_shape as (C, H, W) ints: (D,) or D is (D, 1, 1), a flat row."""
    if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape: expected (C, H, W) or (D,), got {type(input_shape).__name__}") from None
    if len(shape) not in (1, 3):
        raise ValueError(f"input_shape: expected (C, H, W) or (D,), got {shape}")
    shape = tuple(_int_arg(f"input_shape[{i}]", v, 1, 2**26) for i, v in enumerate(shape))
    if len(shape) == 1:
        shape = (shape[0], 1, 1)
    if shape[0] * shape[1] * shape[2] > 2**26:
        raise ValueError(f"input_shape: {shape} holds more than 2^26 values")
    return shape


def _network_args(input_dim, input_shape, hidden, activation, encoder, decoder, architecture, likelihood,
                  deterministic):
    """The core's network arguments: an MLP (hidden, activation) or layer lists (encoder and
    decoder, or architecture="conv"), with input_dim and input_shape made to agree."""
    shape = None if input_shape is None else _shape_arg(input_shape)
    if input_dim is not None:
        input_dim = _int_arg("input_dim", input_dim, 1, 2**26)
        if shape is not None and shape[0] * shape[1] * shape[2] != input_dim:
            raise ValueError(f"input_dim: {input_dim} does not match input_shape {tuple(input_shape)} "
                             f"({shape[0] * shape[1] * shape[2]} values)")
    elif shape is None:
        raise TypeError("input_dim: give input_dim, or input_shape (C, H, W)")
    if architecture not in (None, "mlp", "conv"):
        raise ValueError(f"architecture: expected None, 'mlp' or 'conv', got {architecture!r}")
    lists = encoder is not None or decoder is not None or architecture == "conv"
    if not lists:
        _activation_arg(activation)
        return dict(input_dim=input_dim if input_dim is not None else shape[0] * shape[1] * shape[2],
                    hidden=_widths("hidden", hidden), activation=activation)
    if shape is None:
        shape = (input_dim, 1, 1)
    if architecture == "conv":
        if encoder is not None or decoder is not None:
            raise ValueError("architecture: 'conv' is a preset; give it or encoder and decoder lists, not both")
        if shape[1:] == (1, 1):
            raise ValueError(f"architecture: 'conv' needs an image input_shape (C, H, W), got {tuple(input_shape or ())} "
                             "(e.g. input_shape=(1, 28, 28))")
        encoder, decoder = conv_preset(shape, "bernoulli" if deterministic else likelihood)
    elif encoder is None or decoder is None:
        raise ValueError("encoder, decoder: give both layer lists (or architecture='conv')")
    encoder, decoder = layer_list("encoder", encoder), layer_list("decoder", decoder)
    if not decoder:
        raise ValueError("decoder: needs at least one layer (the output's)")
    return dict(input_dim=shape[0] * shape[1] * shape[2], hidden=(), activation="tanh", input_shape=shape,
                encoder=[layer.spec() for layer in encoder], decoder=[layer.spec() for layer in decoder])


class _Coder(ArenaModel):
    """What a VAE and an Autoencoder share: the networks' configuration, the C model,
    training (train_step, loss_and_grad, fit), decode and files."""

    _deterministic = False
    _val_key = "val_elbo"

    def __init__(self, input_dim=None, latent_dim=20, hidden=(400,), activation="tanh", likelihood="bernoulli",
                 seed=0, threads=None, flow=None, *, input_shape=None, encoder=None, decoder=None,
                 architecture=None, init_std=None):
        latent_dim = _int_arg("latent_dim", latent_dim, 1, 2**20)
        init = {} if init_std is None else {"init_std": _float_arg("init_std", init_std, 0.0, low_inclusive=False)}
        _likelihood_arg(likelihood)
        seed = _init_seed(seed)
        threads = _threads_arg(threads)
        if flow is not None and not isinstance(flow, str):
            raise TypeError(f"flow: expected None or a spec such as 'planar:10', got {type(flow).__name__}")
        net = _network_args(input_dim, input_shape, hidden, activation, encoder, decoder, architecture, likelihood,
                            self._deterministic)
        self._attach(self._core_type(latent_dim=latent_dim, likelihood=likelihood, seed=seed, threads=threads,
                                     flow=flow or "", deterministic=self._deterministic, **net, **init))

    # ------------------------------------------------------------ internals
    def _configure(self, cfg):
        self.input_dim = cfg["input_dim"]
        self.latent_dim = cfg["latent_dim"]
        self.likelihood = cfg["likelihood"]
        self.seed = cfg["seed"]
        self.flow = cfg.get("flow") or None
        shape = tuple(cfg.get("input_shape", (self.input_dim, 1, 1)))
        # a flat model's input_shape is (D,); an image model's (C, H, W), its outputs images
        self.input_shape = (self.input_dim,) if shape[1:] == (1, 1) else shape
        if cfg.get("layers"):
            self.hidden, self.activation = (), None
            self.encoder = [from_spec(t) for t in cfg["encoder"]]
            self.decoder = [from_spec(t) for t in cfg["decoder"]]
        else:
            self.hidden = tuple(cfg["hidden"])
            self.activation = cfg["activation"]
            self.encoder = self.decoder = None
        self._baseline = None  # the score estimator's running-mean baseline

    @classmethod
    def _core_kwargs(cls, c):
        kw = dict(input_dim=c["input_dim"], latent_dim=c["latent_dim"], hidden=tuple(c["hidden"]),
                  activation=c["activation"] or "tanh", likelihood=c["likelihood"], seed=c["seed"],
                  flow=c.get("flow") or "", deterministic=bool(c.get("deterministic")))
        if c.get("layers"):
            kw.update(input_shape=tuple(c["input_shape"]), encoder=list(c["encoder"]), decoder=list(c["decoder"]))
        return kw

    def _rows(self, X, name="x"):
        """Images (n, C, H, W) of an image model as rows (n, input_dim), a view; anything else
        as it is (the C core checks it)."""
        if len(self.input_shape) == 3 and isinstance(X, np.ndarray) and X.ndim != 2:
            if X.ndim != 4 or X.shape[1:] != self.input_shape:
                raise ValueError(f"{name}: expected images of shape (n, {', '.join(map(str, self.input_shape))}) or "
                                 f"rows of shape (n, {self.input_dim}), got shape {X.shape}")
            return X.reshape(X.shape[0], self.input_dim)
        return X

    def _images(self, out):
        """Rows (n, input_dim) as (n, C, H, W) for an image model (a view), else as they are."""
        return out.reshape((out.shape[0],) + self.input_shape) if len(self.input_shape) == 3 else out

    def _pickle_extra(self):
        return {"baseline": self._baseline}

    def _unpickle_extra(self, d):
        self._baseline = d.get("baseline")

    def __repr__(self):
        if self.encoder is not None:
            return (f"{type(self).__name__}(input_shape={self.input_shape}, latent_dim={self.latent_dim}, "
                    f"encoder={self.encoder!r}, decoder={self.decoder!r}, likelihood={self.likelihood!r}, "
                    f"seed={self.seed}" + (f", flow={self.flow!r})" if self.flow else ")"))
        return (f"{type(self).__name__}(input_dim={self.input_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}, "
                f"activation={self.activation!r}, likelihood={self.likelihood!r}, seed={self.seed}"
                + (f", flow={self.flow!r})" if self.flow else ")"))

    def _check_data(self, X, name):
        """(n, input_dim) rows, or for an image model (n, C, H, W) images too (a view of the
        same memory when they are C-contiguous)."""
        if len(self.input_shape) == 3 and isinstance(X, np.ndarray) and X.ndim == 4:
            if X.shape[1:] != self.input_shape:
                raise ValueError(f"{name}: expected images of shape (n, {', '.join(map(str, self.input_shape))}) or rows "
                                 f"of shape (n, {self.input_dim}), got shape {X.shape}")
            X = X.reshape(X.shape[0], self.input_dim)
        try:
            return _data_matrix(X, name, self.input_dim)
        except ValueError as e:
            if len(self.input_shape) == 3 and "expected a 2-D array" in str(e):
                raise ValueError(f"{name}: expected images of shape (n, {', '.join(map(str, self.input_shape))}) or "
                                 f"rows of shape (n, {self.input_dim}), got shape {np.shape(X)}") from None
            raise

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
        loss = self._core.loss_grad(x=self._rows(x), eps=eps, samples=samples, seed=_seed_arg(seed),
                                    binarize=_binarize_arg(binarize), lr=lr, iw=iw,
                                    beta=_float_arg("beta", beta, 0.0), free_bits=_float_arg("free_bits", free_bits, 0.0),
                                    score=score, baseline=b)
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
            baseline=None, optimizer="adam", weight_decay=0.0, leapfrog=None, updates=None, target_accept=None,
            step_size=None, comm=None):
        """Train on mini-batches of X (Adam unless ``optimizer`` says otherwise); returns the
        history (also ``model.history``).

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

        ``"mcem"``: Monte Carlo EM (Kingma & Welling 2014, section 5), which trains the
        decoder alone (no encoder: its parameters stay as they are). Each example of X has a
        persistent HMC chain on its posterior p(z|x), started at a draw from the prior; each
        step moves the batch's chains by one HMC transition of ``leapfrog`` (default 10)
        leapfrog steps, then takes ``updates`` (default 5) optimizer steps on the decoder's
        gradient of the batch mean of -log p(x|z) at those states. The chains share one step
        size (from ``step_size``, default 0.1), adapted after every batch toward a mean
        acceptance probability of ``target_accept`` (default 0.9): log eps += (the batch's mean
        acceptance probability - target). The history's ``loss`` is the mean -log p(x, z) at the chains'
        states, ``accept`` and ``step_size`` the epoch's mean acceptance and last step size.
        Without an encoder there is no validation ELBO (use a callback with
        ``log_likelihood(X, method="hmc")``). Each fit starts its chains anew; checkpoints
        keep them, so a resumed fit continues them exactly.

        ``optimizer``: ``"adam"`` (torch's defaults unless ``set_optimizer`` changed them) or
        ``"adagrad"`` (Duchi et al. 2011, as Kingma & Welling trained: s += g^2,
        p -= lr g / (sqrt(s) + eps)); a fit whose optimizer differs from the model's last one
        starts from a zeroed state. ``weight_decay``: L2 decay added to every gradient,
        g + weight_decay * param (torch's form; 1/N for N training examples is a N(0, I) prior
        on the parameters, as in the paper). Both apply to every algorithm.

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
        keeps its last finite parameters and the last checkpoint stays valid.

        ``comm``: an mpi4py communicator for data-parallel training (vaec/distributed.py):
        every rank calls fit with the same model, data and arguments; each batch is split
        over the ranks, their gradients summed by one Allreduce, and every rank takes the
        same step, training the model one process would with the same ``batch_size`` (up
        to the order of the gradient's sums). Rank 0 alone prints and writes checkpoints;
        every rank returns the same history. Not with ``free_bits`` (a statistic of whole
        chunks) nor ``algorithm='wake-sleep'`` or ``'mcem'``."""
        dist = _dist_arg(comm)
        with starting(dist):
            plan = self._fit_plan(X, epochs, batch_size, lr, validation_data, shuffle, seed, samples, binarize,
                                  callback, iw_samples, beta, warmup, free_bits, lr_schedule, lr_decay, patience,
                                  checkpoint_every, algorithm, estimator, baseline, dist, optimizer, weight_decay,
                                  dict(leapfrog=leapfrog, updates=updates, target_accept=target_accept,
                                       step_size=step_size))
        return run_fit(self, plan, plan.epochs, progress=progress, verbose=verbose, callback=callback,
                       patience=plan.patience, checkpoint_dir=checkpoint_dir, checkpoint_every=plan.checkpoint_every,
                       resume=resume, dist=dist)

    def _fit_plan(self, X, epochs, batch_size, lr, validation_data, shuffle, seed, samples, binarize, callback,
                  iw_samples, beta, warmup, free_bits, lr_schedule, lr_decay, patience, checkpoint_every, algorithm,
                  estimator, baseline, dist, optimizer, weight_decay, mcem):
        """fit's arguments checked, as a plan (with the driver's checked options on it)."""
        epochs = _int_arg("epochs", epochs, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        lr = _float_arg("lr", lr, 0.0)
        samples = _int_arg("samples", samples, 1, MAX_SAMPLES)
        beta = _float_arg("beta", beta, 0.0)
        free_bits = _float_arg("free_bits", free_bits, 0.0)
        lr_decay = _float_arg("lr_decay", lr_decay, 0.0, low_inclusive=False)
        bin_flag = _binarize_arg(binarize)
        seed = _seed_arg(seed)
        optimizer, weight_decay = _optimizer_args(optimizer, weight_decay)
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
        leapfrog, updates, target_accept, step_size = (mcem[k] for k in ("leapfrog", "updates", "target_accept",
                                                                          "step_size"))
        if algorithm != "mcem":
            given = [k for k, v in mcem.items() if v is not None]
            if given:
                raise ValueError(f"{given[0]}: only with algorithm='mcem'")
        else:
            if validation_data is not None:
                raise ValueError("validation_data: MCEM trains no encoder, so there is no validation ELBO "
                                 "(estimate log p(x) in a callback with log_likelihood(X, method='hmc'))")
            cfg = self._hmc_args(10 if leapfrog is None else leapfrog, 0.9 if target_accept is None else target_accept,
                                 0, 0.1 if step_size is None else step_size, "prior")
            mcem = dict(leapfrog=cfg["leapfrog"], target_accept=cfg["target_accept"], step_size=cfg["step_size"],
                        updates=_int_arg("updates", 5 if updates is None else updates, 1, 1_000_000))
        if not (callable(lr_schedule) or lr_schedule in ("constant", "exponential", "burda")):
            raise ValueError(f"lr_schedule: expected 'constant', 'exponential', 'burda' or a callable, got {lr_schedule!r}")
        patience, checkpoint_every = _fit_options(callback, patience, checkpoint_every, validation_data is not None)
        X = self._check_data(X, "X")
        if X.shape[0] == 0:
            raise ValueError("X: empty data set")
        X_val = None
        if validation_data is not None:
            X_val = validation_data[0] if isinstance(validation_data, tuple) else validation_data
            X_val = self._check_data(X_val, "validation_data")
        if dist is not None:
            if free_bits != 0.0:
                raise ValueError("free_bits: not with comm (each chunk's mean KL decides the floor, and a rank sees "
                                 "only its share of a batch); train without free bits or in one process")
            if algorithm == "wake-sleep":
                raise ValueError("algorithm: wake-sleep is not data-parallel (its dreams are numbered within each "
                                 "call); use 'aevb' with comm, or one process")
            if algorithm == "mcem":
                raise ValueError("algorithm: mcem is not data-parallel (its chains and their shared step size live "
                                 "in one process); use 'aevb' with comm, or one process")
        plan = _CoderPlan(self, X, X_val, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, lr_decay=lr_decay,
                          shuffle=shuffle, seed=seed, samples=samples, iw=iw, beta=beta, warmup=warmup,
                          free_bits=free_bits, bin_flag=bin_flag, algorithm=algorithm, score=score, baseline=baseline,
                          mcem=mcem)
        plan.optimizer, plan.weight_decay = optimizer, weight_decay
        plan.epochs, plan.patience, plan.checkpoint_every = epochs, patience, checkpoint_every
        plan.settings = fit_settings(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                                     lr_decay=lr_decay, shuffle=bool(shuffle), seed=seed, samples=samples, iw=iw,
                                     beta=beta, warmup=warmup, binarize=bin_flag, estimator=estimator,
                                     baseline=baseline, patience=patience, checkpoint_every=checkpoint_every,
                                     optimizer=optimizer, weight_decay=weight_decay)
        plan.data = {"X": X, "validation_data": X_val}
        return plan

    def _check_fit_options(self, algorithm, iw, samples, beta, warmup, free_bits, estimator):
        if algorithm == "wake-sleep" and self.flow:
            raise ValueError("algorithm: wake-sleep needs a diagonal Gaussian posterior, not a flow")
        if algorithm != "aevb" and (iw or samples != 1 or beta != 1.0 or warmup is not None or free_bits != 0.0 or
                                    estimator != "reparam"):
            raise ValueError(f"algorithm: {algorithm} takes none of iw_samples, samples, beta, warmup, free_bits, "
                             "estimator")


class _CoderPlan(FitPlan):
    """The fit of a VAE or an Autoencoder: epoch e's order is
    default_rng([base_seed, e]).permutation(n), base_seed being fit's seed or drawn
    once from the model's RNG position; one step per batch of the objective (AEVB with
    its estimator, or a wake-sleep pair), its KL weight annealed per step, or for MCEM
    one HMC transition of the batch's chains and the decoder's updates (the chains, one
    per example of X, drawn from the prior with default_rng([base_seed, 2**32]), and
    their shared step size are the plan's, saved with each checkpoint); the validation
    ELBO (an Autoencoder: loss) under seed 0 after each epoch."""

    def __init__(self, model, X, X_val, *, batch_size, lr, lr_schedule, lr_decay, shuffle, seed, samples, iw, beta,
                 warmup, free_bits, bin_flag, algorithm, score, baseline, mcem):
        self.model, self.core = model, model._core
        self.X, self.X_val = X, X_val
        self.examples = X.shape[0]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.base_lr, self.lr_schedule, self.lr_decay = lr, lr_schedule, lr_decay
        self.samples, self.iw, self.beta, self.warmup, self.free_bits = samples, iw, beta, warmup, free_bits
        self.bin_flag, self.algorithm, self.score, self.baseline = bin_flag, algorithm, score, baseline
        self.steps_per_epoch = -(-X.shape[0] // batch_size)
        self.keys = ("loss", model._val_key, "lr", "beta", "seconds", "examples_per_s")
        self.mcem = mcem if algorithm == "mcem" else None
        if self.mcem:
            self.keys += ("accept", "step_size")

    # the shuffling: one base seed per run, kept in the checkpoints
    def start(self, state):
        if self.seed is not None:
            self.core.set_rng(seed=self.seed, counter=0)
        st = self.core.state()
        base = self.seed if self.seed is not None else int(np.random.SeedSequence(
            [st["rng_seed"], st["rng_counter"]]).generate_state(1, np.uint64)[0])
        state["base_seed"] = int(base)
        self.base_seed = int(base)
        if self.mcem:   # the chains start at draws from the prior, one per example
            rng = np.random.default_rng([self.base_seed, 2**32])
            self.chains = rng.standard_normal((self.X.shape[0], self.model.latent_dim), dtype=np.float32)
            self.chain_step = self.mcem["step_size"]

    def restore(self, state):
        self.base_seed = state["base_seed"]
        if self.mcem:
            c = state.get("mcem")
            if c is None or c["n"] != self.X.shape[0]:
                raise ValueError("resume: the checkpoint holds no MCEM chains for this data set (it was written by "
                                 "another algorithm or for other data)")
            self.chains = np.frombuffer(base64.b64decode(c["z"]), "<f4").astype(np.float32).reshape(
                self.X.shape[0], self.model.latent_dim)
            self.chain_step = c["step"]

    def save(self, state):
        if self.mcem:
            state["mcem"] = {"n": int(self.X.shape[0]), "step": self.chain_step,
                             "z": base64.b64encode(self.chains.astype("<f4").tobytes()).decode()}

    def lr(self, epoch):
        lr_schedule, lr = self.lr_schedule, self.base_lr
        if callable(lr_schedule):
            return _float_arg("lr_schedule(epoch)", lr_schedule(epoch), 0.0)
        if lr_schedule == "exponential":
            return lr * self.lr_decay ** epoch
        if lr_schedule == "burda":
            i, end = 0, 1
            while epoch >= end and i < BURDA_STAGES - 1:
                i += 1
                end += 3 ** i
            return lr * 10 ** (-i / 7)
        return lr

    def _beta_at(self, step):
        if self.warmup is None:
            return self.beta
        if self.warmup == "rezende":
            return self.beta * min(1.0, 0.01 + step / 10000)
        return self.beta * min(1.0, (step + 1) / (self.warmup * self.steps_per_epoch))

    def batches(self, epoch):
        X, n, bs = self.X, self.X.shape[0], self.batch_size
        self.beta_t, self.sleep_total, self.accept_total = self.beta, 0.0, 0.0
        order = np.random.default_rng([self.base_seed, epoch]).permutation(n) if self.shuffle else None
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if self.mcem:   # the batch's rows index its chains (one process: comm is refused)
                idx = order[start:stop] if self.shuffle else np.arange(start, stop)
                yield ((X[idx], idx), None), stop - start
                continue
            rows, share = self.share_rows(order, start, stop)
            yield (X[rows], share), stop - start

    def step(self, batch, lr, step):
        xb, share = batch
        n = len(xb) if share is None else share[1]
        self.beta_t = self._beta_at(step)
        if self.mcem:
            (xb, idx), c = xb, self.mcem
            z = self.chains[idx]
            eps = np.full(len(idx), self.chain_step, np.float32)
            loss, accept = self.core.mcem_step(x=xb, z=z, step=eps, leapfrog=c["leapfrog"],
                                               target_accept=c["target_accept"], updates=c["updates"], lr=lr,
                                               binarize=self.bin_flag)
            self.chains[idx] = z
            # one step size for all chains (the rows' own adaptation is not kept), adapted by
            # the batch's mean acceptance probability, Kingma & Welling's acceptance rate
            self.chain_step = float(np.float32(self.chain_step * np.exp(MCEM_GAIN * (accept - c["target_accept"]))))
            self.accept_total += accept * len(idx)
            return loss, len(idx)
        if self.algorithm == "wake-sleep":
            loss, sleep_loss = self.core.wake_sleep(x=xb, binarize=self.bin_flag, lr=lr)
            self.sleep_total += sleep_loss * len(xb)
            return loss, len(xb)
        model, baseline = self.model, self.baseline
        bl = (model._baseline or 0.0) if baseline == "mean" else (baseline or 0.0)
        kw = {} if share is None else {"row_offset": share[0], "n_total": share[1]}
        loss = self.core.loss_grad(x=xb, samples=self.samples, binarize=self.bin_flag, lr=lr, iw=self.iw,
                                   beta=self.beta_t, free_bits=self.free_bits, score=self.score, baseline=bl, **kw)
        if baseline == "mean" and share is None:
            model._update_baseline(self.core.last_rec())
        return loss, n

    def after_step(self, dist):
        if self.baseline == "mean":   # the running mean of the whole batch's log p(x|z): one more (scalar) sum
            self.model._update_baseline(float(dist.sum([self.core.last_rec()])[0]))

    def end_epoch(self, logs):
        val = None
        if self.X_val is not None and self.X_val.shape[0] > 0:
            val = float(np.mean(self.core.elbo(x=self.X_val, samples=1, seed=0, binarize=self.bin_flag)))
        # the C "ELBO" of an autoencoder is minus its loss: the history keeps the loss
        logs[self.model._val_key] = None if val is None else (-val if self.model._deterministic else val)
        logs["beta"] = self.beta_t
        if self.algorithm == "wake-sleep":
            logs["sleep_loss"] = self.sleep_total / self.examples
        if self.mcem:
            logs["accept"] = self.accept_total / self.examples
            logs["step_size"] = self.chain_step
        self.val = val
        return val

    def message(self, number, logs):
        msg = f"epoch {number:3d}  loss {logs['loss']:9.3f}"
        if self.val is not None:
            msg += f"  val loss {-self.val:9.3f}" if self.model._deterministic else f"  val ELBO {self.val:9.3f}"
        return msg + f"  {logs['examples_per_s']:9.0f} ex/s  {logs['seconds']:6.2f}s"


@register_kind(_core.KIND_VAE)
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
        al. 2017). Its parameters are ``flow.{k}.*`` in ``params``. ``"planar:K:amortized"``
        is Rezende & Mohamed's own posterior: each example's u, w, b come from a third
        encoder head beside mu and logvar, ``encoder.flow`` (K (2 latent_dim + 1) outputs,
        layer k's block [u | w | b]). With a flow the KL term is estimated by Monte Carlo;
        ``encode`` returns q0's mean and log-variance.
    init_std : float or None
        None: torch's initialization (U(+-1/sqrt(fan_in)) per Linear layer); a number:
        every weight and bias drawn from N(0, init_std^2) instead (Kingma & Welling's
        N(0, 0.01) is ``init_std=0.01``), from the same seed.

    Parameters live in one contiguous float32 buffer in C; ``params`` and ``grads`` are
    dicts of zero-copy NumPy views on it, named like ``torch.nn.Linear`` modules
    (``encoder.0.weight`` has shape (out, in)).
    """

    # ---------------------------------------------------------- evaluation
    def elbo(self, X, samples=1, eps=None, seed=None, binarize=None):
        """The per-example ELBO (float64, shape (n,)), averaged over ``samples`` draws."""
        if eps is not None and samples == 1:
            samples = None  # taken from eps
        return self._core.elbo(x=self._rows(X, "X"), eps=eps, samples=samples, seed=_seed_arg(seed),
                               binarize=_binarize_arg(binarize))

    def iwae_bound(self, X, samples=5, seed=None, binarize=None, batch_size=None):
        """The k-sample importance-weighted bound log (1/k) sum_l p(x, z_l) / q(z_l|x) per
        example (Burda et al. 2016), float64 (n,); k = ``samples``. Computed in C with a
        streaming float64 log-sum-exp: memory does not grow with k."""
        return self._importance(X, samples, seed, binarize, batch_size, "samples")

    def log_likelihood(self, X, samples=None, batch_size=None, seed=None, binarize=None, method="is", *,
                       leapfrog=None, target_accept=None, burn_in=None, step_size=None, init=None, init_draws=None,
                       return_accept=False):
        """An estimate of log p(x) per example, float64 (n,).

        ``method="is"`` (the default): importance sampling from the encoder's q(z|x), the
        IWAE bound with many samples (``samples``, default 5000 as in Burda et al.), streamed
        through cache-sized chunks (never k x n x input_dim in memory).

        ``method="hmc"``: the estimator of Kingma & Welling (2014), appendix D, which needs no
        encoder: per example, an HMC chain on p(z|x) (as ``sample_posterior``; ``leapfrog``
        default 4 as in the paper, ``target_accept`` 0.9, ``burn_in`` 100 transitions,
        ``step_size`` 0.1 to start, ``init`` 'prior' with ``init_draws`` 1000) gives ``samples``
        (default 1000) states,
        to which a full-covariance Gaussian q(z) is fitted (their mean and covariance); then
        ``samples`` further states z_l of the chain give
        log p(x) ~= -log (1/L) sum_l q(z_l) / (p(z_l) p(x|z_l)). ``return_accept``: also the
        chains' mean acceptance probabilities, (estimates, acceptance).

        ``batch_size`` rows per call (default 256); each batch draws its own noise (with a
        ``seed``, the batch index goes into it)."""
        _choice("method", method, LL_METHODS)
        hmc = dict(leapfrog=leapfrog, target_accept=target_accept, burn_in=burn_in, step_size=step_size, init=init,
                   init_draws=init_draws)
        if method == "is":
            given = [k for k, v in hmc.items() if v is not None] + (["return_accept"] if return_accept else [])
            if given:
                raise ValueError(f"{given[0]}: only with method='hmc' (importance sampling has no chains)")
            return self._importance(X, 5000 if samples is None else samples, seed, binarize, batch_size, "samples")
        cfg = self._hmc_args(4 if leapfrog is None else leapfrog, 0.9 if target_accept is None else target_accept,
                             100 if burn_in is None else burn_in, 0.1 if step_size is None else step_size,
                             "prior" if init is None else init, init_draws)
        k = _int_arg("samples", 1000 if samples is None else samples, 2, 1_000_000)
        out, acc = self._batched(X, seed, binarize, batch_size, lambda x, s, b: self._core.hmc_log_likelihood(
            x=x, samples=k, seed=s, binarize=b, **cfg))
        return (out, acc) if return_accept else out

    def _importance(self, X, samples, seed, binarize, batch_size, name):
        k = _int_arg(name, samples, 1, MAX_SAMPLES)
        return self._batched(X, seed, binarize, batch_size,
                             lambda x, s, b: (self._core.iwae(x=x, samples=k, seed=s, binarize=b), None))[0]

    def _batched(self, X, seed, binarize, batch_size, call):
        """call(x, seed, binarize) -> (per-example float64 values, per-example float32 or None)
        on X in batches of ``batch_size`` rows (default 256), each batch with its own noise:
        with a seed, the batch index goes into it."""
        seed = _seed_arg(seed)
        bin_flag = _binarize_arg(binarize)
        X = self._check_data(X, "X")
        bs = 256 if batch_size is None else _int_arg("batch_size", batch_size, 1, 1 << 20)
        out, extra = np.empty(X.shape[0], np.float64), np.empty(X.shape[0], np.float32)
        for b, start in enumerate(range(0, X.shape[0], bs)):
            s = None if seed is None else int(np.random.SeedSequence([seed, b]).generate_state(1, np.uint64)[0])
            v, e = call(X[start:start + bs], s, bin_flag)
            out[start:start + bs] = v
            if e is not None:
                extra[start:start + bs] = e
        return out, extra

    @staticmethod
    def _hmc_args(leapfrog, target_accept, burn_in, step_size, init, init_draws=None):
        """The HMC keywords of the core's calls, checked (the errors name the argument);
        init_draws None: 1000 for init 'prior'."""
        leapfrog = _int_arg("leapfrog", leapfrog, 1, 100_000)
        target_accept = _float_arg("target_accept", target_accept)
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept: expected a number in (0, 1), got {target_accept}")
        burn_in = _int_arg("burn_in", burn_in, 0)
        step_size = _float_arg("step_size", step_size, 0.0, low_inclusive=False)
        _choice("init", init, ("prior", "encoder"))
        if init_draws is not None and init != "prior":
            raise ValueError("init_draws: only with init='prior' (the draws the start is resampled from)")
        draws = _int_arg("init_draws", HMC_INIT_DRAWS if init_draws is None else init_draws, 1, 10_000_000)
        return dict(leapfrog=leapfrog, target_accept=target_accept, burn_in=burn_in, step_size=step_size, init=init,
                    init_draws=draws)

    def sample_posterior(self, X, samples=1, method="hmc", leapfrog=10, target_accept=0.9, burn_in=100, seed=None, *,
                         step_size=0.1, init="prior", init_draws=None, binarize=None, return_accept=False):
        """Draws from the decoder's posterior p(z|x), proportional to N(z; 0, I) p(x|z),
        float32 (samples, n, latent_dim): the true posterior of the generative model, not the
        encoder's approximation (with a flow, of the decoder's input z_K).

        ``method="hmc"``: Hamiltonian Monte Carlo, one chain per example, ``leapfrog``
        steps per transition (their size jittered by +-20 % at each transition), the
        Metropolis rule. Each chain's step size starts at ``step_size`` and is adapted during
        the ``burn_in`` transitions so that the mean acceptance probability approaches
        ``target_accept``; then it is fixed and every transition gives one of the ``samples``
        states. Chains start (``init="prior"``) at one of ``init_draws`` (default 1000) draws
        from the prior, chosen with probability proportional to p(x|z) (sampling-importance-
        resampling: a chain started at a single prior draw can settle in a mode of little
        mass and stay there; ``init_draws=1`` is that single draw), at the encoder's mean
        (``"encoder"``), or at given points (an array (n, latent_dim)). ``seed`` fixes
        the draws (else the model's stream); the results do not depend on the thread count.
        ``return_accept``: also each chain's mean acceptance probability, (samples,
        acceptance)."""
        _choice("method", method, SAMPLE_METHODS)
        samples = _int_arg("samples", samples, 1, 1_000_000)
        z0 = None if isinstance(init, str) else init   # the chains' starting points
        if z0 is not None and init_draws is not None:
            raise ValueError("init_draws: only with init='prior' (the draws the start is resampled from)")
        cfg = self._hmc_args(leapfrog, target_accept, burn_in, step_size, "prior" if z0 is not None else init,
                             init_draws)
        if z0 is not None:
            cfg["init"] = "given"
        X = self._check_data(X, "X")
        out, acc, _ = self._core.hmc_sample(x=X, samples=samples, seed=_seed_arg(seed), binarize=_binarize_arg(binarize),
                                            z0=z0, **cfg)
        return (out, acc) if return_accept else out

    def expected_log_likelihood(self, X, samples=1, seed=None, binarize=None):
        """E_q[log p(x|z)], the reconstruction term of the ELBO (with a flow, at z_K), averaged
        over the examples of X and ``samples`` draws from q(z|x): a float (nats)."""
        samples = _int_arg("samples", samples, 1, MAX_SAMPLES)
        X = self._check_data(X, "X")
        if X.shape[0] == 0:
            raise ValueError("X: expected at least one example")
        self._core.elbo(x=X, samples=samples, seed=_seed_arg(seed), binarize=_binarize_arg(binarize))
        return float(self._core.last_rec())

    def kl_per_dim(self, X):
        """Mean over X of KL(q(z_j|x) || N(0, 1)) for each latent dimension j, float64."""
        X = self._check_data(X, "X")
        total = np.zeros(self.latent_dim)
        for start in range(0, X.shape[0], 8192):
            mu, lv = (a.astype(np.float64) for a in self._core.encode(x=X[start:start + 8192]))
            total += 0.5 * np.sum(mu * mu + np.exp(lv) - 1.0 - lv, axis=0)
        return total / max(X.shape[0], 1)

    def active_units(self, X, threshold=0.01):
        """The number of active latent units (Burda et al. 2016): dimensions whose posterior
        mean varies across the data, Cov_x(E_q[z_j]) > threshold."""
        threshold = _float_arg("threshold", threshold, 0.0)
        X = self._check_data(X, "X")
        if X.shape[0] < 2:
            raise ValueError("X: active_units needs at least 2 examples")
        mu = np.concatenate([self._core.encode(x=X[s:s + 8192])[0] for s in range(0, X.shape[0], 8192)])
        return int(np.sum(np.var(mu.astype(np.float64), axis=0) > threshold))

    def encode(self, X):
        """(mu, logvar) of q(z|x), each float32 (n, latent_dim)."""
        return self._core.encode(x=self._rows(X))

    def code(self, X):
        """One point in latent space per example, float32 (n, latent_dim): the posterior
        mean mu(x), or with a flow f_K(...f_1(mu(x))), q0's mean carried through the flow
        (the decoder's input space). Used by ``vaec.plot.interpolation``."""
        return self._core.code(x=self._rows(X))

    def flow_transform(self, Z):
        """The posterior's flow on codes Z (n, latent_dim): (z_K, log|det dz_K/dz|),
        float32 and float64; the identity (log-det 0) without a flow. An amortized flow
        (``"planar:K:amortized"``) has no map of z alone: its parameters depend on x."""
        return self._core.flow(z=Z)

    def decode(self, Z):
        """Bernoulli probabilities or Gaussian means for latent codes Z (n, latent_dim)."""
        return self._images(self._core.decode(z=Z))

    def reconstruct(self, X):
        """decode(mu(x)): the reconstruction through the posterior mean."""
        return self._images(self._core.decode(z=self._core.encode(x=self._rows(X))[0]))

    def sample(self, n, seed=None):
        """n draws of the decoder's mean at z ~ N(0, I), float32 (n, input_dim)."""
        n = _int_arg("n", n, 0)
        rng = np.random.default_rng(_seed_arg(seed))
        z = rng.standard_normal((n, self.latent_dim), dtype=np.float32)
        return self._images(self._core.decode(z=z))


@register_kind(_core.KIND_AE)
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

    def __init__(self, input_dim=None, latent_dim=2, hidden=(400,), activation="tanh", likelihood="bernoulli",
                 seed=0, threads=None, *, input_shape=None, encoder=None, decoder=None, architecture=None,
                 init_std=None):
        super().__init__(input_dim, latent_dim, hidden, activation, likelihood, seed, threads, input_shape=input_shape,
                         encoder=encoder, decoder=decoder, architecture=architecture, init_std=init_std)

    def _check_fit_options(self, algorithm, iw, samples, beta, warmup, free_bits, estimator):
        if algorithm != "aevb" or iw or samples != 1 or beta != 1.0 or warmup is not None or free_bits != 0.0:
            raise ValueError("an Autoencoder trains on its reconstruction loss: algorithm, iw_samples, samples, "
                             "beta, warmup and free_bits do not apply")

    def loss(self, X, binarize=None, seed=None):
        """The per-example reconstruction loss (float64, shape (n,))."""
        return -self._core.elbo(x=self._rows(X), samples=1, seed=_seed_arg(seed), binarize=_binarize_arg(binarize))

    def encode(self, X):
        """The codes f(x), float32 (n, latent_dim)."""
        return self._core.encode(x=self._rows(X))[0]

    def decode(self, Z):
        """Bernoulli probabilities or Gaussian means for codes Z (n, latent_dim)."""
        return self._images(self._core.decode(z=Z))

    def reconstruct(self, X):
        """decode(encode(x))."""
        return self._images(self._core.decode(z=self.encode(X)))


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
