"""The command line: ``python -m vaec train | sample | eval``.

Errors in arguments or files print one line and exit with status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

DATASETS = ("mnist", "fashion-mnist", "frey")
IMAGE_SHAPE = {"mnist": (28, 28), "fashion-mnist": (28, 28), "frey": (28, 20)}


class UsageError(Exception):
    """A mistake in the command's arguments or inputs: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _arg_type(convert, ok, what):
    """An argparse type: convert(s), checked by ok(value); errors say `what` was expected."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _arg_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _arg_type(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _arg_type(float, lambda v: v > 0 and np.isfinite(v), "a positive number")
_nonneg_float = _arg_type(float, lambda v: v >= 0 and np.isfinite(v), "a number >= 0")


def _warmup(s):
    if s == "rezende":
        return s
    return _positive_int(s)


def _hidden(s):
    """'400' or '500,200' (or '' / 'none' for no hidden layer)."""
    if s.strip().lower() in ("", "none"):
        return ()
    try:
        widths = tuple(int(w) for w in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 400 or 500,200, got {s!r}") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {s!r}")
    return widths


def load_dataset(name, path=None):
    """(X_train, y_train, X_test, y_test) as uint8; y is None for Frey faces.
    Data warnings (such as falling back to the shipped subset) become one-line notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = _load_dataset(name, path)
    for w in caught:
        print(f"note: {w.message}", flush=True)
    return data


def _load_dataset(name, path):
    from . import datasets

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


def cmd_train(args):
    import vaec

    if args.model == "m2":
        return _train_m2(args)

    likelihood = args.likelihood or ("gaussian" if args.dataset == "frey" else "bernoulli")
    binarize = args.binarize
    if binarize is None:
        binarize = "dynamic" if likelihood == "bernoulli" else "none"
    if binarize == "dynamic" and likelihood != "bernoulli":
        raise UsageError("train: --binarize dynamic needs --likelihood bernoulli")
    hidden = args.hidden if args.hidden is not None else ((200,) if args.dataset == "frey" else (400,))
    out = args.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    Xtr, ytr, Xte, yte = load_dataset(args.dataset, args.data)
    # default budget: about 300,000 training examples (30 epochs of the shipped MNIST
    # subset, 5 of full MNIST, 170 of Frey faces): well under 2 minutes on 2 cores
    epochs = args.epochs if args.epochs is not None else max(5, min(200, 300_000 // len(Xtr)))
    if args.limit:
        Xtr, Xte = Xtr[:args.limit], Xte[:max(1, args.limit // 5)]
        ytr = None if ytr is None else ytr[:args.limit]
        yte = None if yte is None else yte[:max(1, args.limit // 5)]
    os.makedirs(out, exist_ok=True)
    model = vaec.VAE(Xtr.shape[1], args.latent, hidden=hidden, activation=args.activation,
                     likelihood=likelihood, seed=args.seed, threads=args.threads)
    print(f"vaec {vaec.__version__}: training {model!r}", flush=True)
    print(f"data: {args.dataset}, {len(Xtr)} train / {len(Xte)} test images, binarize={binarize}, "
          f"kernels={vaec.cpu_features()['isa']}, threads={model.threads}", flush=True)
    bin_flag = "dynamic" if binarize == "dynamic" else None
    hist = {"loss": [], "test_elbo": [], "seconds": [], "examples_per_s": []}

    def report(epoch, logs):
        hist["loss"].append(logs["loss"])
        hist["test_elbo"].append(logs["val_elbo"])
        hist["seconds"].append(logs["seconds"])
        hist["examples_per_s"].append(logs["examples_per_s"])
        print(f"epoch {epoch:3d}/{epochs}  train loss {logs['loss']:9.3f}  test ELBO {logs['val_elbo']:9.3f}  "
              f"{logs['examples_per_s']:8.0f} ex/s", flush=True)

    if args.resume and not os.path.exists(args.resume):
        raise FileNotFoundError(f"checkpoint not found: {args.resume}")
    t_start = time.perf_counter()
    model.fit(Xtr, epochs=epochs, batch_size=args.batch_size, lr=args.lr, validation_data=Xte,
              progress=not args.quiet, verbose=False, seed=args.seed, binarize=bin_flag, callback=report,
              samples=args.samples, iw_samples=args.iw_samples, beta=args.beta, warmup=args.warmup,
              free_bits=args.free_bits, lr_schedule=args.lr_schedule, patience=args.patience,
              checkpoint_dir=out if args.checkpoint_every else None,
              checkpoint_every=args.checkpoint_every or 1, resume=args.resume)
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
                  "activation": model.activation, "likelihood": model.likelihood, "seed": model.seed},
        "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
        "history": hist, "final_test_elbo": hist["test_elbo"][-1] if hist["test_elbo"] else None,
        "seconds": total, "cpu": vaec.cpu_features(), "threads": model.threads,
        "python": platform.python_version(), "numpy": np.__version__,
    }
    _atomic_json(metrics, os.path.join(out, "metrics.json"))
    print(f"wrote {model_path}, {os.path.join(out, 'metrics.json')}")
    if _have_matplotlib():
        hist_plot = {"loss": hist["loss"], "val_elbo": hist["test_elbo"], "seconds": hist["seconds"],
                     "examples_per_s": hist["examples_per_s"]}
        for p in write_pictures(model, out, Xte, yte, IMAGE_SHAPE[args.dataset], hist_plot):
            print(f"wrote {p}")
    else:
        print("pictures skipped: matplotlib is not installed (pip install 'vaec[plot]')")
    print(f"done in {total:.1f} s; final test ELBO {metrics['final_test_elbo']:.3f} nats")
    return 0


def _train_m2(args):
    """train --model m2: Kingma et al.'s semi-supervised M2 on MNIST with --labels labels."""
    import argparse as _ap

    from .m2 import train_cli

    if args.dataset != "mnist":
        raise UsageError("train --model m2: only --dataset mnist")
    if args.labels is None or args.labels < 10 or args.labels % 10:
        raise UsageError("train --model m2: --labels must be a positive multiple of 10 (e.g. 100)")
    ns = _ap.Namespace(labels=args.labels, epochs=args.epochs if args.epochs is not None else 10,
                       batch_size=args.batch_size, lr=args.lr, latent_dim=args.latent if args.latent != 20 else 50,
                       hidden=list(args.hidden) if args.hidden is not None else [500],
                       activation=args.activation if args.activation != "tanh" else "softplus", alpha=0.1,
                       binarize=args.binarize or "dynamic", seed=args.seed, threads=args.threads, data=args.data,
                       out=None, quiet=args.quiet)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        ns.out = os.path.join(args.out, "model.vaec")
    train_cli(ns)
    return 0


def _load_model(path, command):
    import vaec

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    model = vaec.load(path)
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


def cmd_eval(args):
    model = _load_model(args.model, "eval")
    dataset = args.dataset or ("frey" if model.input_dim == 560 else "mnist")
    _, _, Xte, yte = load_dataset(dataset, args.data)
    if Xte.shape[1] != model.input_dim:
        raise UsageError(f"eval: the model takes {model.input_dim} inputs, {dataset} has {Xte.shape[1]}")
    if args.limit:
        Xte = Xte[:args.limit]
    binarize = model.likelihood == "bernoulli" and not args.no_binarize
    print(f"{dataset} test set: {len(Xte)} images, binarize={'dynamic' if binarize else 'none'}")
    evaluate(model, Xte, args.samples, seed=args.seed, binarize=binarize)
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


def build_parser():
    p = _Parser(prog="python -m vaec", description="Variational autoencoders with a C core.")
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval,bench,reproduce}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a VAE and write the model, metrics and pictures",
                       description="Train a VAE. With no arguments: MNIST (the full set if found in "
                                   "--data, $VAEC_DATA or ~/.cache/vaec, else the subset shipped with vaec), "
                                   "20 latent dimensions, one hidden layer of 400, about 300,000 examples' worth of epochs.")
    t.add_argument("--model", choices=("vae", "m2"), default="vae",
                   help="vae, or m2: the semi-supervised model of Kingma et al. (2014) (needs --labels)")
    t.add_argument("--labels", type=_positive_int, default=None,
                   help="m2: labelled training examples, balanced over the 10 digits (e.g. 100)")
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument("--data", metavar="PATH", help="folder holding the data set's files")
    t.add_argument("--latent", type=_positive_int, default=20, help="latent dimensions (default 20)")
    t.add_argument("--hidden", type=_hidden, default=None,
                   help="hidden widths, e.g. 400 or 500,200 (default 400; 200 for frey)")
    t.add_argument("--activation", default="tanh",
                   choices=("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu"))
    t.add_argument("--epochs", type=_nonneg_int, default=None,
                   help="default: about 300,000 examples' worth (30 epochs of the shipped MNIST subset)")
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=None,
                   help="default bernoulli (gaussian for frey)")
    t.add_argument("--binarize", choices=("dynamic", "none"), default=None,
                   help="dynamic: resample pixels as Bernoulli(grey level) each use (default with bernoulli)")
    t.add_argument("--iw-samples", type=_positive_int, default=None, metavar="K",
                   help="train on the K-sample IWAE bound instead of the ELBO")
    t.add_argument("--samples", type=_positive_int, default=1, help="ELBO samples per example (default 1)")
    t.add_argument("--beta", type=_nonneg_float, default=1.0, help="weight of the KL term (beta-VAE)")
    t.add_argument("--warmup", type=_warmup, default=None,
                   help="KL annealing: N epochs linear from 0 to beta, or 'rezende'")
    t.add_argument("--free-bits", type=_nonneg_float, default=0.0, help="nats per latent dimension")
    t.add_argument("--lr-schedule", choices=("constant", "exponential", "burda"), default="constant")
    t.add_argument("--patience", type=_positive_int, default=None,
                   help="stop when the test ELBO has not improved for N epochs; keep the best")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                   help="write <out>/checkpoint.vaec every N epochs")
    t.add_argument("--resume", metavar="CHECKPOINT", default=None, help="continue from a checkpoint")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--threads", type=_positive_int, default=None, help="default: all cores")
    t.add_argument("--limit", type=_positive_int, default=None, help="use only the first N training images")
    t.add_argument("--out", metavar="DIR", default=None, help="output folder (default runs/<timestamp>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained model into a PNG grid")
    s.add_argument("model", metavar="MODEL", help="a .vaec file written by train")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--out", metavar="FILE.png", default="samples.png")
    s.add_argument("--seed", type=_nonneg_int, default=None)
    s.add_argument("--shape", type=_positive_int, nargs=2, metavar=("H", "W"), default=None)
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="evaluate a trained model on a test set")
    e.add_argument("model", metavar="MODEL", help="a .vaec file written by train")
    e.add_argument("--dataset", choices=DATASETS, default=None)
    e.add_argument("--data", metavar="PATH")
    e.add_argument("--samples", type=_positive_int, default=1,
                   help="importance samples for log p(x) (e.g. 5000); also reports IWAE bounds k=5, 50 below it")
    e.add_argument("--limit", type=_positive_int, default=None, help="only the first N test images")
    e.add_argument("--seed", type=_nonneg_int, default=0)
    e.add_argument("--no-binarize", action="store_true", help="evaluate on grey levels")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="vaec against PyTorch on the same VAE: throughput, latency, %% of peak",
                       description="Trains and evaluates a 784-400-20 tanh/Bernoulli VAE with Adam in vaec and "
                                   "(when importable) PyTorch, interleaved, same batch and threads.")
    b.add_argument("--vs", choices=("torch", "none"), default="torch")
    b.add_argument("--threads", type=_positive_int, default=None, help="default: all cores")
    b.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    b.add_argument("--write", metavar="FILE", default=None, help="also write the table, e.g. docs/PERFORMANCE.md")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("reproduce", help="rerun a published experiment and record the result",
                       description="burda-vae / burda-iwae: Burda et al. (2016), 784-200-200-50 tanh, "
                                   "Adam (eps 1e-4), batch 20, the 3^i-epoch schedule, dynamic binarization; "
                                   "test log p(x) by importance sampling (k=5000). rezende-flows: Rezende & Mohamed (2015) "
                                   "Table 2, the same 784-400-40 VAE with each posterior of --flows on binarized MNIST, "
                                   "KL annealing, same epochs. kingma-wake-sleep: Kingma & Welling (2014) Fig. 2, AEVB against "
                                   "wake-sleep for several latent sizes on MNIST and Frey faces. Appends to docs/RESULTS.md.")
    r.add_argument("experiment", choices=("burda-vae", "burda-iwae", "rezende-flows", "kingma-wake-sleep"))
    r.add_argument("--data", metavar="PATH", help="folder holding MNIST (binarized MNIST for rezende-flows)")
    r.add_argument("--epochs", type=_positive_int, default=13,
                   help="epoch budget (the paper: 3280; 13 = the first three stages of the schedule)")
    r.add_argument("--flows", default="none,planar:10,realnvp:4",
                   help="rezende-flows: comma-separated posteriors to compare (default none,planar:10,realnvp:4)")
    r.add_argument("--examples", type=_positive_int, default=1_000_000,
                   help="kingma-wake-sleep: training examples per model (default 1,000,000)")
    r.add_argument("--datasets", default="mnist,frey", help="kingma-wake-sleep: mnist and/or frey (default both)")
    r.add_argument("--latents", default=None, metavar="Z,Z,...",
                   help="kingma-wake-sleep: latent sizes (default the paper's: 3,5,10,20,200 for MNIST, 2,5,10,20 for Frey)")
    r.add_argument("--k", type=_positive_int, default=50, help="IWAE samples for burda-iwae (paper: 5 or 50)")
    r.add_argument("--eval-samples", type=_positive_int, default=5000)
    r.add_argument("--eval-limit", type=_positive_int, default=None, help="evaluate on the first N test images")
    r.add_argument("--seed", type=_nonneg_int, default=0)
    r.add_argument("--threads", type=_positive_int, default=None)
    r.add_argument("--out", metavar="DIR", default=None)
    r.add_argument("--results", metavar="FILE", default=os.path.join("docs", "RESULTS.md"))
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_reproduce)
    return p


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
