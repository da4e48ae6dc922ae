"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014): thin Python
over the C core (csrc/m2.c, bound as vaec._core.M2Core).

    classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z), p(y) uniform, p(z) = N(0, I)
    L(x,y) = log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)   (one reparameterized z,
             the z part as an analytic KL)
    U(x)   = sum_y q(y|x) L(x,y) + H(q(y|x))
    J^a    = sum_labelled [-L(x,y)] + sum_unlabelled [-U(x)] + alpha N E_labelled[-log q(y|x)]

which is the paper's eq. (9) with its "alpha = 0.1 N" written as ``alpha=0.1``: the
classification term is alpha * N times the *mean* over the N_l labelled examples, so each
labelled example's -log q(y|x) weighs a = alpha * N / N_l against its bound (N = N_l + N_u;
a = 60 for 100 of MNIST's 60,000 labelled), as in Kingma's code
(``beta = alpha * n_tot / n_labeled``). Every training step takes a labelled batch and an
unlabelled batch and takes one Adam step on one combined loss (see ``M2.fit`` for the two
ways of weighing them).
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._base import (ArenaModel, FitPlan, _activation_arg, _binarize_arg, _data_matrix, _dist_arg, _fit_options,
                    _float_arg, _init_seed, _int_arg, _likelihood_arg, _load_as, _optimizer_args, _seed_arg,
                    _threads_arg, _widths, fit_settings, register_kind, run_fit, starting)

__all__ = ["M2", "load_m2"]


@register_kind(_core.KIND_M2)
class M2(ArenaModel):
    """Semi-supervised classification with a deep generative model (M2 of Kingma et al. 2014).

    Parameters
    ----------
    input_dim : int
        Width of a data vector (784 for MNIST).
    n_classes : int
        Number of classes C (labels are integers in [0, C)).
    latent_dim : int
        Size of z (the "style" that the class label does not explain).
    hidden : tuple of int
        Hidden widths of the encoder q(z|x,y) (the decoder p(x|y,z) mirrors them).
    activation : {'tanh', 'relu', 'softplus', 'sigmoid', 'elu', 'leaky_relu'}
    alpha : float
        Weight of the classification term, the paper's alpha / N: the objective adds
        ``alpha * N * mean_labelled[-log q(y|x)]``, i.e. ``a = alpha * N / N_l`` times
        -log q(y|x) per labelled example (N examples, N_l of them labelled; the paper's
        alpha = 0.1 N is ``alpha=0.1``).
    likelihood : {'bernoulli', 'gaussian'}
    seed : int
        Seeds the initialization and the model's noise stream.
    threads : int or None
        Threads for the C kernels; None uses every core available.
    classifier_hidden : tuple of int or None
        Hidden widths of the classifier q(y|x); None: the same as ``hidden``.

    ``params`` and ``grads`` are dicts of zero-copy float32 views on the one parameter
    buffer, named like torch modules: ``classifier.{i}``, ``classifier.out``,
    ``encoder.{i}`` (``encoder.0.weight`` has in = input_dim + n_classes),
    ``encoder.mu`` / ``encoder.logvar``, ``decoder.{i}`` (``decoder.0.weight`` has
    in = latent_dim + n_classes), ``decoder.out`` (and ``decoder.logvar``).
    """

    def __init__(self, input_dim, n_classes=10, latent_dim=50, hidden=(500,), activation="softplus", alpha=0.1,
                 likelihood="bernoulli", seed=0, threads=None, classifier_hidden=None):
        input_dim = _int_arg("input_dim", input_dim, 1, 2**26)
        n_classes = _int_arg("n_classes", n_classes, 2, 1024)
        latent_dim = _int_arg("latent_dim", latent_dim, 1, 2**20)
        hidden = _widths("hidden", hidden)
        classifier_hidden = hidden if classifier_hidden is None else _widths("classifier_hidden", classifier_hidden)
        _activation_arg(activation)
        _likelihood_arg(likelihood)
        alpha = _float_arg("alpha", alpha, 0.0)
        seed = _init_seed(seed)
        threads = _threads_arg(threads)
        self._attach(self._core_type(input_dim=input_dim, latent_dim=latent_dim, n_classes=n_classes, hidden=hidden,
                                     classifier_hidden=classifier_hidden, activation=activation,
                                     likelihood=likelihood, alpha=alpha, seed=seed, threads=threads))

    # ------------------------------------------------------------ internals
    def _configure(self, cfg):
        self.input_dim = cfg["input_dim"]
        self.latent_dim = cfg["latent_dim"]
        self.n_classes = cfg["n_classes"]
        self.hidden = tuple(cfg["hidden"])
        self.classifier_hidden = tuple(cfg["classifier_hidden"])
        self.activation = cfg["activation"]
        self.likelihood = cfg["likelihood"]
        self.alpha = cfg["alpha"]
        self.seed = cfg["seed"]

    @classmethod
    def _core_kwargs(cls, c):
        return dict(input_dim=c["input_dim"], latent_dim=c["latent_dim"], n_classes=c["n_classes"],
                    hidden=tuple(c["hidden"]), classifier_hidden=tuple(c["classifier_hidden"]),
                    activation=c["activation"], likelihood=c["likelihood"], alpha=c["alpha"], seed=c["seed"])

    def config(self):
        return self._core.config()

    def __repr__(self):
        return (f"M2(input_dim={self.input_dim}, n_classes={self.n_classes}, latent_dim={self.latent_dim}, "
                f"hidden={self.hidden}, activation={self.activation!r}, alpha={self.alpha}, "
                f"likelihood={self.likelihood!r}, seed={self.seed}, classifier_hidden={self.classifier_hidden})")

    def _check_data(self, X, name, allow_none=False):
        if X is None and allow_none:
            return None
        return _data_matrix(X, name, self.input_dim)

    def _check_labels(self, y, name, n):
        if y is None:
            raise TypeError(f"{name}: expected an integer array of labels, got None")
        arr = np.asarray(y)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{name}: expected a 1-D array of {n} labels, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_classes):
            bad = int(np.flatnonzero((arr < 0) | (arr >= self.n_classes))[0])
            raise ValueError(f"{name}: label {arr[bad]} at index {bad} is out of range [0, {self.n_classes})")
        return arr.astype(np.int32)

    # ------------------------------------------------------------ training
    def _batch_args(self, X_l, y_l, X_u):
        X_l = self._check_data(X_l, "X_labeled", allow_none=True)
        X_u = self._check_data(X_u, "X_unlabeled", allow_none=True)
        if X_l is not None:
            y_l = self._check_labels(y_l, "y_labeled", X_l.shape[0])
        elif y_l is not None:
            raise ValueError("y_labeled: given without X_labeled")
        return X_l, y_l, X_u

    def loss_and_grad(self, X_l, y_l, X_u, eps=None, seed=None, binarize=None, n_labeled=None, n_total=None):
        """The batch objective (1/N) (sum_l [-L(x,y) - a log q(y|x)] + sum_u [-U(x)]) with
        N = n_l + n_u and a = alpha * n_total / n_labeled, i.e. J^a / N on this batch; its
        gradients are written into ``grads``. Either part may be None (or empty).
        ``n_labeled``, ``n_total``: the counts of the data set the batch is drawn from, which
        set a (default: the batch's own, so that the classification term is alpha times the
        batch's mean -log q(y|x)).

        ``eps``: explicit standard-normal noise ``(eps_l, eps_u)`` of shapes
        (n_l, latent_dim) and (n_u, n_classes, latent_dim) (row r's copy for class c is
        ``eps_u[r, c]``); without it, the counter-based RNG under ``seed`` (or the model's
        own stream) draws it. Returns the loss; ``last_parts`` then holds the sums
        (sum -L, sum -log q(y|x), sum -U)."""
        X_l, y_l, X_u = self._batch_args(X_l, y_l, X_u)
        n_l = 0 if X_l is None else X_l.shape[0]
        n_u = 0 if X_u is None else X_u.shape[0]
        if n_l + n_u == 0:
            raise ValueError("X_labeled, X_unlabeled: empty batch; the loss needs at least one example")
        eps_l = eps_u = None
        if eps is not None:
            if not isinstance(eps, (tuple, list)) or len(eps) != 2:
                raise TypeError("eps: expected a pair (eps_l, eps_u)")
            eps_l, eps_u = eps
        N = n_l + n_u
        n_lab = n_l if n_labeled is None else _int_arg("n_labeled", n_labeled, 1)
        n_tot = N if n_total is None else _int_arg("n_total", n_total, 1)
        if n_tot < n_lab:
            raise ValueError(f"n_total: expected at least n_labeled ({n_lab}), got {n_tot}")
        a = self.alpha * n_tot / n_lab if n_lab else 0.0
        loss, parts = self._core.loss_grad(X_labeled=X_l, y_labeled=y_l, X_unlabeled=X_u, alpha=a, wl=1.0 / N,
                                           wu=1.0 / N, eps_l=eps_l, eps_u=eps_u, seed=_seed_arg(seed),
                                           binarize=_binarize_arg(binarize))
        self.last_parts = parts
        return loss

    def fit(self, X_labeled, y_labeled, X_unlabeled, epochs=10, batch_size=100, lr=1e-3, validation_data=None,
            seed=None, progress=True, binarize=None, labeled_batch_size=None, weighting="balanced", verbose=None,
            callback=None, *, patience=None, checkpoint_dir=None, checkpoint_every=1, resume=None, optimizer="adam",
            weight_decay=0.0, comm=None):
        """Train with Adam (or ``optimizer="adagrad"``; ``weight_decay``: L2 decay, as in
        ``VAE.fit``). An epoch is one pass over ``X_unlabeled`` in batches of
        ``batch_size``; every step also takes a labelled batch of ``labeled_batch_size``
        (default ``min(batch_size, n_labeled)``) from the labelled set, which is cycled
        (reshuffled at each pass), and takes one Adam step on one combined loss. With
        N = n_labeled + n_unlabeled and a = alpha * N / n_labeled (60 for the paper's
        alpha = 0.1 and 100 of 60,000 labelled):

        * ``weighting='balanced'`` (default): mean_l[-L(x,y) - a log q(y|x)] + mean_u[-U(x)],
          the labelled and the unlabelled batch weighing the same (as most M2
          implementations do; the labelled bound is what ties y to the classes);
        * ``weighting='proportional'``: the unbiased estimate of J^a / N, as in Kingma's
          code, (N_l/N) mean_l[-L - a log q(y|x)] + (N_u/N) mean_u[-U]; the cross-entropy
          then weighs alpha on the labelled mean, and with 100 labels it fitted them too
          slowly (42% test error after 8 epochs against 21% balanced; docs/RESULTS.md).

        Returns the history (also ``model.history``), per-epoch lists: ``loss`` (the mean
        of the steps' losses), ``labeled_nll`` (mean -log q(y|x) on the labelled batches),
        ``val_error`` (error rate of argmax q(y|x) on ``validation_data=(X, y)``, or None),
        ``lr``, ``seconds``, ``examples_per_s`` (unlabelled examples). ``binarize='dynamic'``
        resamples pixels as Bernoulli(grey level) each time an image is used.
        ``callback(epoch, logs)`` returning True stops training.

        As ``VAE.fit``: ``patience`` stops when the validation error has not gone down for
        that many epochs and keeps the best parameters; ``checkpoint_dir``/
        ``checkpoint_every`` write an atomic ``checkpoint.vaec`` every N epochs and
        ``resume=path`` continues from one, ending exactly where an uninterrupted run
        would; a NaN or Inf loss raises FloatingPointError naming the epoch and step, the
        model keeping its last finite parameters.

        ``comm``: an mpi4py communicator for data-parallel training, as in ``VAE.fit``: the
        labelled and the unlabelled batch of each step are both split over the ranks."""
        dist = _dist_arg(comm)
        with starting(dist):
            plan = self._fit_plan(X_labeled, y_labeled, X_unlabeled, epochs, batch_size, lr, validation_data, seed,
                                  binarize, labeled_batch_size, weighting, callback, patience, checkpoint_every,
                                  optimizer, weight_decay)
        return run_fit(self, plan, plan.epochs, progress=progress, verbose=verbose, callback=callback,
                       patience=plan.patience, checkpoint_dir=checkpoint_dir, checkpoint_every=plan.checkpoint_every,
                       resume=resume, dist=dist)

    def _fit_plan(self, X_labeled, y_labeled, X_unlabeled, epochs, batch_size, lr, validation_data, seed, binarize,
                  labeled_batch_size, weighting, callback, patience, checkpoint_every, optimizer, weight_decay):
        epochs = _int_arg("epochs", epochs, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        lr = _float_arg("lr", lr, 0.0)
        bin_flag = _binarize_arg(binarize)
        seed = _seed_arg(seed)
        optimizer, weight_decay = _optimizer_args(optimizer, weight_decay)
        X_l = self._check_data(X_labeled, "X_labeled")
        y_l = self._check_labels(y_labeled, "y_labeled", X_l.shape[0])
        X_u = self._check_data(X_unlabeled, "X_unlabeled")
        n_l, n_u = X_l.shape[0], X_u.shape[0]
        if n_l == 0:
            raise ValueError("X_labeled: no labelled examples")
        if n_u == 0:
            raise ValueError("X_unlabeled: no unlabelled examples")
        lb = min(n_l, batch_size) if labeled_batch_size is None else _int_arg("labeled_batch_size",
                                                                              labeled_batch_size, 1)
        lb = min(lb, n_l)
        if weighting not in ("balanced", "proportional"):
            raise ValueError(f"weighting: expected 'balanced' or 'proportional', got {weighting!r}")
        X_val = y_val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data: expected a pair (X, y)")
            X_val = self._check_data(validation_data[0], "validation_data[0]")
            y_val = self._check_labels(validation_data[1], "validation_data[1]", X_val.shape[0])
        patience, checkpoint_every = _fit_options(callback, patience, checkpoint_every, validation_data is not None)
        plan = _M2Plan(self, X_l, y_l, X_u, X_val, y_val, batch_size=batch_size, labeled_batch_size=lb, lr=lr,
                       seed=seed, bin_flag=bin_flag, weighting=weighting)
        plan.optimizer, plan.weight_decay = optimizer, weight_decay
        plan.epochs, plan.patience, plan.checkpoint_every = epochs, patience, checkpoint_every
        plan.settings = fit_settings(epochs=epochs, batch_size=batch_size, labeled_batch_size=lb, lr=lr, seed=seed,
                                     binarize=bin_flag, weighting=weighting, patience=patience,
                                     checkpoint_every=checkpoint_every, optimizer=optimizer, weight_decay=weight_decay)
        plan.data = {"X_labeled": X_l, "y_labeled": y_l, "X_unlabeled": X_u, "validation_data[0]": X_val,
                     "validation_data[1]": y_val}
        return plan

    # ---------------------------------------------------------- evaluation
    def predict_log_proba(self, X):
        """log q(y|x), float32 (n, n_classes)."""
        return self._core.classify(x=self._check_data(X, "X"))

    def predict_proba(self, X):
        """q(y|x), float32 (n, n_classes); rows sum to 1."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """argmax_y q(y|x), int64 (n,)."""
        return np.argmax(self.predict_log_proba(X), axis=1)

    def error_rate(self, X, y):
        """Fraction of examples whose predicted class differs from y."""
        X = self._check_data(X, "X")
        y = self._check_labels(y, "y", X.shape[0])
        return float(np.mean(self.predict(X) != y))

    def encode(self, X, y):
        """(mu, logvar) of q(z|x,y), each float32 (n, latent_dim)."""
        X = self._check_data(X, "X")
        return self._core.encode(x=X, y=self._check_labels(y, "y", X.shape[0]))

    def generate(self, y, z):
        """The decoder's mean (Bernoulli probabilities or Gaussian means) of p(x|y,z),
        float32 (n, input_dim), for labels y (n,) and codes z (n, latent_dim)."""
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z: expected a 2-D array of shape (n, {self.latent_dim}), got shape {z.shape}")
        return self._core.decode(y=self._check_labels(y, "y", z.shape[0]), z=z)

    def elbo(self, X, y=None, eps=None, seed=None, binarize=None):
        """Per example (float64, (n,)): the labelled bound L(x,y) when y is given, else the
        unlabelled bound U(x) = sum_y q(y|x) L(x,y) + H(q(y|x)). ``eps``: (n, latent_dim)
        with labels, (n, n_classes, latent_dim) without; else drawn from the RNG."""
        X = self._check_data(X, "X")
        if y is not None:
            y = self._check_labels(y, "y", X.shape[0])
        return self._core.elbo(x=X, y=y, eps=eps, seed=_seed_arg(seed), binarize=_binarize_arg(binarize))


class _M2Plan(FitPlan):
    """The fit of an M2: one NumPy stream, default_rng([rng_seed & (2**63-1),
    rng_counter]) at the start of a run (after ``seed`` reset the model's RNG), draws the
    labelled order first, then each epoch's unlabelled order, and a new labelled order
    whenever the labelled set runs out; a step is one unlabelled batch and the next
    labelled batch. The stream's state and the labelled position go into checkpoints."""

    keys = ("loss", "labeled_nll", "val_error", "lr", "seconds", "examples_per_s")
    epochs_from_history = True

    def __init__(self, model, X_l, y_l, X_u, X_val, y_val, *, batch_size, labeled_batch_size, lr, seed, bin_flag,
                 weighting):
        self.model, self.core = model, model._core
        self.X_l, self.y_l, self.X_u, self.X_val, self.y_val = X_l, y_l, X_u, X_val, y_val
        self.n_l, self.n_u = X_l.shape[0], X_u.shape[0]
        self.examples = self.n_u
        self.batch_size, self.lb, self.const_lr, self.seed = batch_size, labeled_batch_size, lr, seed
        self.bin_flag, self.weighting = bin_flag, weighting
        N = self.n_l + self.n_u
        self.N, self.a = N, model.alpha * N / self.n_l

    def start(self, state):
        self.rng = self.order_stream(self.core, self.seed)
        self.l_order, self.l_pos = self.rng.permutation(self.n_l), 0

    def save(self, state):
        state["order_rng"] = self.rng.bit_generator.state
        state["labeled_order"] = self.l_order.tolist()
        state["labeled_pos"] = self.l_pos

    def restore(self, state):
        try:
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = state["order_rng"]
            self.l_order, self.l_pos = np.asarray(state["labeled_order"], dtype=np.int64), int(state["labeled_pos"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("resume: the checkpoint holds no M2 training position") from None
        if self.l_order.shape != (self.n_l,) or not 0 <= self.l_pos <= self.n_l:
            raise ValueError(f"resume: the checkpoint was written for {self.l_order.size} labelled examples, "
                             f"not {self.n_l}")

    def batches(self, epoch):
        self.nll = 0.0
        self.steps = 0
        order = self.rng.permutation(self.n_u)
        for start in range(0, self.n_u, self.batch_size):
            stop = min(start + self.batch_size, self.n_u)
            rows, share = self.share_rows(order, start, stop)
            yield (self.X_u[rows], share), stop - start

    def step(self, batch, lr, step):
        ub, share = batch
        nu = len(ub) if share is None else share[1]
        lb, n_l = self.lb, self.n_l
        if self.l_pos + lb > n_l:
            self.l_order, self.l_pos = self.rng.permutation(n_l), 0
        li = self.l_order[self.l_pos:self.l_pos + lb]
        self.l_pos += lb
        if self.weighting == "balanced":
            wl, wu = 1.0 / lb, 1.0 / nu
        else:
            wl, wu = n_l / (self.N * lb), self.n_u / (self.N * nu)
        kw = {}
        if share is not None:   # this rank's share of the labelled batch too
            rows, (al, _) = self.share_rows(li, 0, lb)
            li = rows
            kw = {"row_offset_l": al, "row_offset_u": share[0], "n_total": lb + nu}
        loss, parts = self.core.loss_grad(X_labeled=self.X_l[li], y_labeled=self.y_l[li], X_unlabeled=ub, alpha=self.a,
                                          wl=wl, wu=wu, binarize=self.bin_flag, lr=lr, **kw)
        self.nll += parts[1] / lb
        self.steps += 1
        return loss, 1

    def partials(self):
        return [self.nll]

    def set_partials(self, values):
        self.nll = values[0]

    def end_epoch(self, logs):
        logs["labeled_nll"] = self.nll / self.steps
        err = None
        if self.X_val is not None and self.X_val.shape[0] > 0:
            err = float(np.mean(self.model.predict(self.X_val) != self.y_val))
        logs["val_error"] = err
        return None if err is None else -err

    def message(self, number, logs):
        msg = f"epoch {number:3d}  loss {logs['loss']:9.3f}  labelled NLL {logs['labeled_nll']:7.4f}"
        if logs["val_error"] is not None:
            msg += f"  val error {100 * logs['val_error']:6.2f}%"
        return msg + f"  {logs['seconds']:6.1f}s"


def load_m2(path, threads=None):
    """Load an M2 model written by ``M2.save``. FileNotFoundError when missing,
    ValueError when corrupted or not an M2 model."""
    return _load_as(path, threads, M2)
