"""The commands of the command line (``python -m vaec train | sample | eval | bench |
reproduce``): each takes the parsed arguments and returns the exit status.
vaec/__main__.py parses the command line and dispatches here; the helpers that the
published experiments share (load_dataset, evaluate) live here too.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

DATASETS = ("mnist", "fashion-mnist", "frey", "binarized-mnist", "images")
IMAGE_SHAPE = {"mnist": (28, 28), "fashion-mnist": (28, 28), "frey": (28, 20), "binarized-mnist": (28, 28)}


class UsageError(Exception):
    """A mistake in the command's arguments or inputs: one line, exit status 2."""


def load_dataset(name, path=None, images=None):
    """(X_train, y_train, X_test, y_test): uint8 rows (n, D) (binarized MNIST: float32 0/1;
    an image folder: uint8 images (n, C, H, W)); y is None where there are no labels.
    ``images``: for name "images", (folder, (H, W), mode). Data warnings (such as falling
    back to the shipped subset) become one-line notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = _load_dataset(name, path, images)
    for w in caught:
        print(f"note: {w.message}", flush=True)
    return data


def _load_dataset(name, path, images=None):
    from . import datasets

    if name == "images":
        if not images or not images[0]:
            raise UsageError("--dataset images needs --images DIR (and --size H W)")
        folder, size, mode = images
        try:
            X = datasets.load_images(folder, size=size, mode=mode)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        test = np.arange(X.shape[0]) % 10 == 0   # every 10th picture held out
        if test.all() or not test.any():
            raise UsageError(f"--images: {X.shape[0]} picture(s) in {folder}; need at least 2")
        return X[~test], None, X[test], None
    if name == "binarized-mnist":
        return datasets.load_binarized_mnist("train", path), None, datasets.load_binarized_mnist("test", path), None

    if name == "mnist":
        Xtr, ytr = datasets.load_mnist("train", path)
        Xte, yte = datasets.load_mnist("test", path)
    elif name == "fashion-mnist":
        Xtr, ytr = datasets.load_fashion_mnist("train", path)
        Xte, yte = datasets.load_fashion_mnist("test", path)
    elif name == "frey":
        X = datasets.load_frey_faces(path)
        # a fixed split: every 10th face is held out
        test = np.arange(X.shape[0]) % 10 == 0
        Xtr, ytr, Xte, yte = X[~test], None, X[test], None
    else:
        raise UsageError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return Xtr, ytr, Xte, yte


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def _save_figure(fig, path):
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def write_pictures(model, out, X, y, shape, history=None):
    """The samples grid, reconstructions, training curves and latent space as PNGs."""
    from . import plot

    written = []
    figs = [("samples.png", plot.samples_grid(model, n=64, seed=0, shape=shape)),
            ("reconstructions.png", plot.reconstructions(model, X, n=10, shape=shape))]
    if history:
        figs.append(("history.png", plot.history(history)))
    if model.latent_dim == 2:
        figs.append(("latent.png", plot.latent_manifold(model, n=20, shape=shape)))
    else:
        n = min(len(X), 2000)
        figs.append(("latent.png", plot.latent_scatter(model, X[:n], None if y is None else y[:n])))
    for name, fig in figs:
        path = os.path.join(out, name)
        _save_figure(fig, path)
        written.append(path)
    return written


def _atomic_json(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def distributed(args):
    """train --distributed: MPI.COMM_WORLD as a vaec.distributed.Dist (None without the flag)."""
    if not getattr(args, "distributed", False):
        return None
    from .distributed import Dist, world
    try:
        return Dist(world())
    except ImportError as e:
        raise UsageError(f"--distributed: {e}") from None


def cmd_train(args):
    dist = distributed(args)
    if dist is None or dist.lead:
        return _cmd_train(args, dist)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):   # rank 0 alone prints
        return _cmd_train(args, dist)


def _cmd_train(args, dist):
    import vaec

    lead = dist is None or dist.lead
    if args.model == "m2":
        return _train_m2(args, dist)

    likelihood = args.likelihood or ("gaussian" if args.dataset in ("frey", "images") else "bernoulli")
    binarize = args.binarize
    if binarize is None:
        binarize = "dynamic" if likelihood == "bernoulli" and args.dataset != "binarized-mnist" else "none"
    if binarize == "dynamic" and likelihood != "bernoulli":
        raise UsageError("train: --binarize dynamic needs --likelihood bernoulli")
    hidden = args.hidden if args.hidden is not None else ((200,) if args.dataset == "frey" else (400,))
    out = args.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if dist is not None:
        out = dist.bcast(out)   # rank 0's clock names the folder

    def setup():
        Xtr, ytr, Xte, yte = load_dataset(args.dataset, args.data, (args.images, args.size, args.mode))
        # default budget: about 300,000 training examples (30 epochs of the shipped MNIST
        # subset, 5 of full MNIST, 170 of Frey faces): well under 2 minutes on 2 cores
        epochs = args.epochs if args.epochs is not None else max(5, min(200, 300_000 // len(Xtr)))
        if args.limit:
            Xtr, Xte = Xtr[:args.limit], Xte[:max(1, args.limit // 5)]
            ytr = None if ytr is None else ytr[:args.limit]
            yte = None if yte is None else yte[:max(1, args.limit // 5)]
        if lead:
            os.makedirs(out, exist_ok=True)
        if Xtr.ndim == 4:   # an image folder: (n, C, H, W)
            shape = Xtr.shape[1:]
        else:
            H, W = IMAGE_SHAPE[args.dataset]
            shape = (Xtr.shape[1] // (H * W), H, W)
        if args.arch == "conv":
            model = vaec.VAE(input_shape=shape, latent_dim=args.latent, architecture="conv", likelihood=likelihood,
                             seed=args.seed, threads=args.threads)
        else:
            model = vaec.VAE(int(np.prod(shape)), args.latent, hidden=hidden, activation=args.activation,
                             likelihood=likelihood, seed=args.seed, threads=args.threads)
            if Xtr.ndim == 4:
                Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
        if lead and args.resume and not os.path.exists(args.resume):   # rank 0 reads it and sends it
            raise FileNotFoundError(f"checkpoint not found: {args.resume}")
        return Xtr, ytr, Xte, yte, epochs, shape, model

    # under MPI a rank that cannot load the data or build the model stops every rank
    Xtr, ytr, Xte, yte, epochs, shape, model = (setup() if dist is None else
                                                dist.agree(setup, "train: loading the data and building the model"))
    print(f"vaec {vaec.__version__}: training {model!r}", flush=True)
    print(f"data: {args.dataset}, {len(Xtr)} train / {len(Xte)} test images, binarize={binarize}, "
          f"kernels={vaec.cpu_features()['isa']}, threads={model.threads}"
          + ("" if dist is None else f" per rank, {dist.size} rank{'s' if dist.size > 1 else ''} (MPI)"), flush=True)
    bin_flag = "dynamic" if binarize == "dynamic" else None
    hist = {"loss": [], "test_elbo": [], "seconds": [], "examples_per_s": []}

    def report(epoch, logs):
        hist["loss"].append(logs["loss"])
        hist["test_elbo"].append(logs["val_elbo"])
        hist["seconds"].append(logs["seconds"])
        hist["examples_per_s"].append(logs["examples_per_s"])
        print(f"epoch {epoch:3d}/{epochs}  train loss {logs['loss']:9.3f}  test ELBO {logs['val_elbo']:9.3f}  "
              f"{logs['examples_per_s']:8.0f} ex/s", flush=True)

    t_start = time.perf_counter()
    model.fit(Xtr, epochs=epochs, batch_size=args.batch_size, lr=args.lr, validation_data=Xte,
              progress=not args.quiet, verbose=False, seed=args.seed, binarize=bin_flag, callback=report,
              samples=args.samples, iw_samples=args.iw_samples, beta=args.beta, warmup=args.warmup,
              free_bits=args.free_bits, lr_schedule=args.lr_schedule, patience=args.patience,
              checkpoint_dir=out if args.checkpoint_every else None,
              checkpoint_every=args.checkpoint_every or 1, resume=args.resume,
              comm=None if dist is None else dist.comm)
    if not lead:   # rank 0 writes the files
        return 0
    if args.resume:  # the history holds the epochs before the checkpoint too
        h = model.history
        hist.update(loss=list(h["loss"]), test_elbo=list(h["val_elbo"]), seconds=list(h["seconds"]),
                    examples_per_s=list(h["examples_per_s"]))
    total = time.perf_counter() - t_start
    model_path = os.path.join(out, "model.vaec")
    model.save(model_path)
    metrics = {
        "vaec_version": vaec.__version__,
        "command": " ".join(sys.argv),
        "dataset": args.dataset, "n_train": int(len(Xtr)), "n_test": int(len(Xte)), "binarize": binarize,
        "model": {"input_dim": model.input_dim, "latent_dim": model.latent_dim, "hidden": list(model.hidden),
                  "activation": model.activation, "likelihood": model.likelihood, "seed": model.seed,
                  "arch": args.arch, "input_shape": list(model.input_shape),
                  "encoder": None if model.encoder is None else [repr(layer) for layer in model.encoder],
                  "decoder": None if model.decoder is None else [repr(layer) for layer in model.decoder]},
        "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
        "history": hist, "final_test_elbo": hist["test_elbo"][-1] if hist["test_elbo"] else None,
        "seconds": total, "cpu": vaec.cpu_features(), "threads": model.threads,
        "ranks": 1 if dist is None else dist.size,
        "python": platform.python_version(), "numpy": np.__version__,
    }
    _atomic_json(metrics, os.path.join(out, "metrics.json"))
    print(f"wrote {model_path}, {os.path.join(out, 'metrics.json')}")
    if _have_matplotlib():
        hist_plot = {"loss": hist["loss"], "val_elbo": hist["test_elbo"], "seconds": hist["seconds"],
                     "examples_per_s": hist["examples_per_s"]}
        for p in write_pictures(model, out, Xte, yte, shape[1:] if shape[0] == 1 else shape, hist_plot):
            print(f"wrote {p}")
    else:
        print("pictures skipped: matplotlib is not installed (pip install 'vaec[plot]')")
    print(f"done in {total:.1f} s; final test ELBO {metrics['final_test_elbo']:.3f} nats")
    return 0


def _train_m2(args, dist=None):
    """train --model m2: Kingma et al.'s semi-supervised M2 on MNIST with --labels labels."""
    if args.dataset != "mnist":
        raise UsageError("train --model m2: only --dataset mnist")
    if args.labels is None or args.labels < 10 or args.labels % 10:
        raise UsageError("train --model m2: --labels must be a positive multiple of 10 (e.g. 100)")
    out = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out = os.path.join(args.out, "model.vaec")
    # the VAE's defaults of --latent (20) and --activation (tanh) mean M2's own (50, softplus)
    train_m2(labels=args.labels, epochs=args.epochs if args.epochs is not None else 10, batch_size=args.batch_size,
             lr=args.lr, latent_dim=args.latent if args.latent != 20 else 50,
             hidden=tuple(args.hidden) if args.hidden is not None else (500,),
             activation=args.activation if args.activation != "tanh" else "softplus", alpha=0.1,
             binarize=args.binarize or "dynamic", seed=args.seed, threads=args.threads, data=args.data, out=out,
             quiet=args.quiet, comm=None if dist is None else dist.comm)
    return 0


def train_m2(labels=100, epochs=10, batch_size=100, lr=1e-3, latent_dim=50, hidden=(500,), activation="softplus",
             alpha=0.1, binarize="dynamic", seed=0, threads=None, data=None, out=None, quiet=False, comm=None):
    """M2 on MNIST with ``labels`` labels: N/10 labelled examples per class
    (labelled_subset, seed ``seed``), the rest unlabelled; fit, print and return the test
    error (a fraction); with ``out``, save the model there. ``comm``: an mpi4py
    communicator (data-parallel training; rank 0 saves)."""
    import vaec
    from . import datasets

    if labels % 10:
        raise UsageError("--labels must be a multiple of 10 (that many per class / 10)")
    X, y = datasets.load_mnist("train", path=data)
    Xt, yt = datasets.load_mnist("test", path=data)
    X_l, y_l, idx = datasets.labelled_subset(X, y, labels // 10, seed=seed, return_indices=True)
    X_u = np.delete(X, idx, axis=0)
    m = vaec.M2(X.shape[1], 10, latent_dim=latent_dim, hidden=tuple(hidden), activation=activation, alpha=alpha,
                seed=seed, threads=threads)
    if not quiet:
        print(f"M2: {len(X_l)} labelled, {len(X_u)} unlabelled, {len(Xt)} test; {m.num_params} parameters; "
              f"{m.threads} threads", flush=True)
    t0 = time.perf_counter()
    m.fit(X_l, y_l, X_u, epochs=epochs, batch_size=batch_size, lr=lr, validation_data=(Xt, yt), seed=seed,
          progress=not quiet, binarize=None if binarize == "none" else binarize, comm=comm)
    err = m.error_rate(Xt, yt)
    print(f"test error {100 * err:.2f}% with {labels} labels after {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if out and (comm is None or comm.Get_rank() == 0):
        m.save(out)
    return err


def _load_model(path, command, threads=None):
    import vaec

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    model = vaec.load(path, threads=threads)
    if isinstance(model, vaec.Autoencoder):
        raise UsageError(f"{command}: {path} holds an Autoencoder, which has no prior to sample from and no "
                         "likelihood bound to evaluate; use its Python API (encode, decode, loss)")
    return model


def cmd_sample(args):
    from . import plot

    model = _load_model(args.model, "sample")
    if not _have_matplotlib():
        raise UsageError("sample: matplotlib is needed to write a PNG (pip install 'vaec[plot]')")
    shape = tuple(args.shape) if args.shape else _guess_shape(model.input_dim)
    fig = plot.samples_grid(model, n=args.n, seed=args.seed, shape=shape)
    _save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def _guess_shape(d):
    if d == 560:
        return (28, 20)
    s = int(round(np.sqrt(d)))
    if s * s == d:
        return (s, s)
    return (1, d)


def evaluate(model, X, samples, seed=0, binarize=True, y=None, out=print):
    """Test ELBO, IWAE bounds, importance-sampled log-likelihood and active units: a dict."""
    b = "dynamic" if binarize else None
    res = {"n": int(len(X))}
    t = time.perf_counter()
    elbo = model.elbo(X, seed=seed, binarize=b)
    res["elbo"] = float(elbo.mean())
    out(f"test ELBO:                 {res['elbo']:10.3f} nats  ({time.perf_counter() - t:.1f} s)")
    for k in sorted({k for k in (5, 50) if k < samples} | ({samples} if samples > 1 else set())):
        t = time.perf_counter()
        est = model.log_likelihood(X, samples=k, seed=seed, binarize=b)
        name = f"log p(x), IS k={k}" if k == samples else f"IWAE bound, k={k}"
        res[f"iwae_{k}"] = float(est.mean())
        sem = est.std(ddof=1) / np.sqrt(len(est)) if len(est) > 1 else 0.0
        out(f"{name + ':':26s} {est.mean():10.3f} nats  (std err {sem:.3f}, {time.perf_counter() - t:.1f} s)")
    if samples > 1:
        res["log_likelihood"] = res[f"iwae_{samples}"]
    if len(X) > 1:
        res["active_units"] = model.active_units(X)
        out(f"active units:              {res['active_units']:6d} of {model.latent_dim}")
    return res


def _is_binary(X, chunk=1 << 20):
    """Whether every value of X is 0 or 1, checked a chunk of rows at a time."""
    rows = max(1, chunk // max(1, X.shape[1]))
    return all(np.all((X[i:i + rows] == 0) | (X[i:i + rows] == 1)) for i in range(0, len(X), rows))


def _test_set(args, model, command):
    """The test images eval and compare use (--dataset, --data, --limit) and whether they
    are binarized; says which on stdout. Returns (X, y or None, binarize)."""
    dataset = args.dataset or ("frey" if model.input_dim == 560 else "mnist")
    _, _, Xte, yte = load_dataset(dataset, args.data)
    if Xte.shape[1] != model.input_dim:
        raise UsageError(f"{command}: the model takes {model.input_dim} inputs, {dataset} has {Xte.shape[1]}")
    if args.limit:
        Xte, yte = Xte[:args.limit], (yte[:args.limit] if yte is not None else None)
    binarize = model.likelihood == "bernoulli" and not args.no_binarize
    how = "none"
    if binarize:   # a statically binarized set is drawn from too, but the draws cannot change it
        how = "dynamic (no effect: the images are already 0/1)" if _is_binary(Xte) else "dynamic"
    print(f"{dataset} test set: {len(Xte)} images, binarize={how}")
    return Xte, yte, binarize


def cmd_eval(args):
    import vaec

    model = _load_model(args.model, "eval", threads=args.threads)
    is_m2 = isinstance(model, vaec.M2)
    if is_m2 and args.samples > 1:
        raise UsageError(f"eval: {args.model} holds an M2 model, which has no importance-sampled log-likelihood "
                         "here; leave out --samples for its test error and bound")
    Xte, yte, binarize = _test_set(args, model, "eval")
    if is_m2:   # the classifier's error, and the bound with the label summed out
        if yte is not None:
            print(f"test error:                {100 * model.error_rate(Xte, yte):10.2f} %")
        b = "dynamic" if binarize else None
        print(f"test ELBO (labels unseen): {model.elbo(Xte, seed=args.seed, binarize=b).mean():10.3f} nats")
        return 0
    evaluate(model, Xte, args.samples, seed=args.seed, binarize=binarize)
    return 0


def compare(models, X, samples=10, seed=0, binarize=True, names=None, out=print):
    """Paired comparison of models on the same images: each image's -ELBO is the mean of
    `samples` single-sample bounds (seeds seed, seed+1, ... for every model), and each model's
    mean difference from the first model's comes with its standard error over the images.
    Returns a list of dicts (name, neg_elbo, diff, se)."""
    b = "dynamic" if binarize else None
    names = names or [f"model {i}" for i in range(len(models))]
    per = [-np.mean([m.elbo(X, seed=seed + s, binarize=b) for s in range(samples)], axis=0) for m in models]
    n = len(X)
    rows = []
    for name, v in zip(names, per):
        d = v - per[0]
        se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        rows.append({"name": name, "neg_elbo": float(v.mean()), "diff": float(d.mean()), "se": se})
    w = max(len(r["name"]) for r in rows)
    out(f"{n} test images; each image's -ELBO is the mean of {samples} single-sample bounds (seeds {seed}.."
        f"{seed + samples - 1}); differences are from {rows[0]['name']}, paired over the images")
    for r in rows:
        out(f"{r['name']:{w}s}  -ELBO {r['neg_elbo']:9.3f}   difference {r['diff']:+8.3f} +- {r['se']:.3f} (std err)")
    return rows


def cmd_compare(args):
    models = [_load_model(p, "compare", threads=args.threads) for p in args.models]
    dims = {m.input_dim for m in models}
    if len(dims) != 1:
        raise UsageError("compare: the models take different inputs: " +
                         ", ".join(f"{p} {m.input_dim}" for p, m in zip(args.models, models)))
    lik = {m.likelihood for m in models}
    if len(lik) != 1:
        raise UsageError("compare: the models have different likelihoods: " +
                         ", ".join(f"{p} {m.likelihood}" for p, m in zip(args.models, models)))
    Xte, _, binarize = _test_set(args, models[0], "compare")
    compare(models, Xte, args.samples, seed=args.seed, binarize=binarize, names=[os.path.basename(p) for p in args.models])
    return 0


def cmd_bench(args):
    from . import bench

    lines = bench.run(threads=args.threads, vs_torch=args.vs == "torch", quick=args.quick)
    if args.write:
        cmd = "python -m vaec bench" + (" --quick" if args.quick else "") + \
              (f" --threads {args.threads}" if args.threads else "")
        bench.write_report(lines, args.write, cmd)
        print(f"wrote {args.write}")
    return 0


def cmd_reproduce(args):
    from . import experiments

    return experiments.reproduce(args)
