"""The command line: ``python -m vaec train | sample | eval | compare | bench | reproduce``.

This module parses the command line and dispatches to the commands (vaec/commands.py).
Errors in arguments or files print one line and exit with status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# evaluate and load_dataset stay importable from here for callers of earlier versions
from .commands import (DATASETS, UsageError, cmd_bench, cmd_compare, cmd_eval, cmd_reproduce, cmd_sample,  # noqa: F401
                       cmd_train, evaluate, load_dataset)


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


def build_parser():
    p = _Parser(prog="python -m vaec", description="Variational autoencoders with a C core.")
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval,compare,bench,reproduce}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a VAE and write the model, metrics and pictures",
                       description="Train a VAE. With no arguments: MNIST (the full set if found in "
                                   "--data, $VAEC_DATA or ~/.cache/vaec, else the subset shipped with vaec), "
                                   "20 latent dimensions, one hidden layer of 400, about 300,000 examples' worth of epochs.")
    t.add_argument("--model", choices=("vae", "m2"), default="vae",
                   help="vae, or m2: the semi-supervised model of Kingma et al. (2014) (needs --labels)")
    t.add_argument("--labels", type=_positive_int, default=None,
                   help="m2: labelled training examples, balanced over the 10 digits (e.g. 100)")
    t.add_argument("--dataset", choices=DATASETS, default="mnist",
                   help="images: the pictures of --images DIR (PNG/JPEG, resized to --size; needs Pillow)")
    t.add_argument("--data", metavar="PATH", help="folder holding the data set's files")
    t.add_argument("--arch", choices=("mlp", "conv"), default="mlp",
                   help="mlp (--hidden, --activation) or conv: the convolutional VAE (vaec.layers.conv_preset)")
    t.add_argument("--images", metavar="DIR", default=None, help="--dataset images: the folder of pictures")
    t.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), default=(28, 28),
                   help="--dataset images: the size pictures are resized to (default 28 28)")
    t.add_argument("--mode", choices=("L", "RGB"), default="L", help="--dataset images: grey (L) or colour (RGB)")
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
    t.add_argument("--threads", type=_positive_int, default=None, help="default: all cores (with --distributed: per rank)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: start with mpirun -n N python -m vaec train --distributed "
                        "...; each batch is split over the ranks (needs mpi4py: pip install 'vaec[mpi]')")
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

    def test_set_options(q, samples_default, samples_help):
        """the options eval and compare share: which test set, how many samples, seed, threads"""
        q.add_argument("--dataset", choices=DATASETS, default=None)
        q.add_argument("--data", metavar="PATH")
        q.add_argument("--samples", type=_positive_int, default=samples_default, help=samples_help)
        q.add_argument("--limit", type=_positive_int, default=None, help="only the first N test images")
        q.add_argument("--seed", type=_nonneg_int, default=0)
        q.add_argument("--no-binarize", action="store_true", help="evaluate on grey levels")
        q.add_argument("--threads", type=_positive_int, default=None,
                       help="threads (default: all cores; the figures do not depend on it)")

    e = sub.add_parser("eval", help="evaluate a trained model on a test set")
    e.add_argument("model", metavar="MODEL", help="a .vaec file written by train")
    test_set_options(e, 1, "importance samples for log p(x) (e.g. 5000); also reports IWAE bounds k=5, 50 below it")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="paired test -ELBO differences between trained models, with standard errors")
    c.add_argument("models", metavar="MODEL", nargs="+", help=".vaec files written by train; differences are from the first")
    test_set_options(c, 10, "single-sample bounds averaged per image (the same seeds for every model)")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="vaec against PyTorch on the same VAE: throughput, latency, %% of peak",
                       description="Trains and evaluates a 784-400-20 tanh/Bernoulli VAE with Adam in vaec and "
                                   "(when importable) PyTorch, interleaved, same batch and threads.")
    b.add_argument("--vs", choices=("torch", "none"), default="torch")
    b.add_argument("--threads", type=_positive_int, default=None, help="default: all cores")
    b.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    b.add_argument("--write", metavar="FILE", default=None, help="also write the table to FILE (replaced whole, atomically), e.g. bench.md")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("reproduce", help="rerun a published experiment and record the result",
                       description="burda-vae / burda-iwae: Burda et al. (2016), 784-200-200-50 tanh, "
                                   "Adam (eps 1e-4), batch 20, the 3^i-epoch schedule, dynamic binarization; "
                                   "test log p(x) by importance sampling (k=5000). rezende-flows: Rezende & Mohamed (2015) "
                                   "Table 2, the same 784-400-40 VAE with each posterior of --flows on binarized MNIST, "
                                   "KL annealing, same epochs. kingma-wake-sleep: Kingma & Welling (2014) Fig. 2, AEVB against "
                                   "wake-sleep for several latent sizes on MNIST and Frey faces. kingma-mcem: Kingma & "
                                   "Welling (2014) Fig. 3, AEVB against wake-sleep and Monte Carlo EM on the marginal "
                                   "likelihood (HMC estimator), 3 latent dimensions, N_train 1000 and 50000. conv-flows: a convolutional "
                                   "VAE with each posterior of --flows (plain, planar 4-40, Real NVP 2-20) on binarized MNIST, "
                                   "beside an MLP VAE trained for the same time. Appends to docs/RESULTS.md.")
    r.add_argument("experiment", choices=("burda-vae", "burda-iwae", "rezende-flows", "kingma-wake-sleep", "kingma-mcem",
                                          "conv-flows"))
    r.add_argument("--data", metavar="PATH", help="folder holding MNIST (binarized MNIST for rezende-flows)")
    r.add_argument("--epochs", type=_positive_int, default=None,
                   help="epoch budget (burda: default 13, the first three stages of the paper's 3280; rezende-flows "
                        "13, the paper's 500,000 updates are 1000; conv-flows 10)")
    r.add_argument("--flows", default=None,
                   help="rezende-flows, conv-flows: comma-separated posteriors to compare (default "
                        "none,planar:10:amortized,realnvp:4; conv-flows: none,planar:4,planar:10,planar:20,planar:40,realnvp:2,"
                        "realnvp:5,realnvp:10,realnvp:20)")
    r.add_argument("--examples", type=_positive_int, default=1_000_000,
                   help="kingma-wake-sleep, kingma-mcem: training examples per model (default 1,000,000)")
    r.add_argument("--train-sizes", default=None, metavar="N,N,...",
                   help="kingma-mcem: training-set sizes (default the paper's 1000,50000)")
    r.add_argument("--lrs", default=None, metavar="LR,LR,...",
                   help="kingma-mcem: Adagrad step sizes to choose from by a pilot run (default 0.01,0.02,0.1)")
    r.add_argument("--pilot-examples", type=_positive_int, default=50_000,
                   help="kingma-mcem: training examples of each pilot run (default 50,000)")
    r.add_argument("--hmc-samples", type=_positive_int, default=300,
                   help="kingma-mcem: HMC states per image to fit q(z), and as many for the estimate (default 300)")
    r.add_argument("--points", type=_positive_int, default=9,
                   help="kingma-mcem: estimates along each curve, log-spaced (default 9)")
    r.add_argument("--datasets", default="mnist,frey", help="kingma-wake-sleep: mnist and/or frey (default both)")
    r.add_argument("--latents", default=None, metavar="Z,Z,...",
                   help="kingma-wake-sleep: latent sizes (default the paper's: 3,5,10,20,200 for MNIST, 2,5,10,20 for Frey)")
    r.add_argument("--k", type=_positive_int, default=50, help="IWAE samples for burda-iwae (paper: 5 or 50)")
    r.add_argument("--eval-samples", type=_positive_int, default=5000)
    r.add_argument("--eval-limit", type=_positive_int, default=None,
                   help="evaluate on the first N test images (kingma-mcem: the first N training and test images, "
                        "default 1000)")
    r.add_argument("--lr", type=_positive_float, default=None,
                   help="rezende-flows: Adam's learning rate (default 1e-3; 1e-4 gave the better models at the "
                        "paper's 1000 epochs, docs/RESULTS.md)")
    r.add_argument("--patience", type=_positive_int, default=None,
                   help="rezende-flows: score the ELBO of the 10,000 validation images after every epoch, keep "
                        "the best parameters and stop after N epochs without improvement (default: no validation)")
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
        if getattr(args, "distributed", False):
            return _main_distributed(args)
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


JOIN_TIMEOUT = 60.0   # seconds a failed rank waits for the others before it aborts the job


def _main_distributed(args):
    """A command under MPI: every error is one line naming the rank; then the ranks meet
    once more (a non-blocking barrier). Errors raised together (the ranks disagree, a step
    failed) meet there and the job ends with status 2 on every rank; a rank that failed
    alone (e.g. its data could not be read while the others wait in a collective) gives
    up after JOIN_TIMEOUT seconds and aborts the job, so it never hangs."""
    import time

    from .commands import distributed

    dist = distributed(args)   # UsageError without mpi4py (before any collective)
    status, failed = 2, True
    try:
        status, failed = args.func(args), False
    except KeyboardInterrupt:
        raise
    except Exception as e:   # noqa: BLE001 -- one line per rank, then the meeting below
        print(f"error (rank {dist.rank} of {dist.size}): {e}", file=sys.stderr, flush=True)
    req = dist.comm.Ibarrier()
    if not failed:
        req.Wait()
        return status
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not req.Test():
        if time.monotonic() > deadline:
            print(f"error (rank {dist.rank}): the other ranks did not stop within {JOIN_TIMEOUT:.0f} s; aborting the "
                  "job", file=sys.stderr, flush=True)
            dist.comm.Abort(2)
        time.sleep(0.05)
    return status


if __name__ == "__main__":
    sys.exit(main())
