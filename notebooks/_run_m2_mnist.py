"""Trains M2 on full MNIST with a few labels for a number of epochs; writes the per-epoch
history (test error, loss, seconds) to <out>.json and the model to <out>.vaec.

    VAEC_DATA=/work/shared/data python notebooks/_run_m2_mnist.py --labels 1000 \
        --epochs 150 --threads 1 --out runs/m2_1000

A checkpoint is written after every epoch (<out>.ckpt/checkpoint.vaec: parameters, Adam,
the RNG and the labelled batches' position); starting the same command again continues
from it and ends with exactly the parameters of an uninterrupted run, so a long run can be
taken in several sittings. ``--seed`` draws the labelled subset (``labels/10`` per class)
and initialises and trains the model. ``--budget`` (seconds, optional) stops earlier.

The numbers in docs/RESULTS.md and notebooks/03_semi_supervised.ipynb come from here."""
import argparse
import json
import os

import numpy as np

import vaec
from vaec import datasets

p = argparse.ArgumentParser()
p.add_argument("--labels", type=int, default=100)
p.add_argument("--epochs", type=int, default=150)
p.add_argument("--budget", type=float, default=None, help="also stop after the epoch that passes this many seconds")
p.add_argument("--alpha", type=float, default=0.1)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=None)
p.add_argument("--weighting", default="balanced", choices=["balanced", "proportional"])
p.add_argument("--out", required=True)
p.add_argument("--resume", action="store_true", help="(kept for old commands: a run always resumes from its checkpoint)")
a = p.parse_args()

X, y = datasets.load_mnist("train", download=False, fallback=False)
Xt, yt = datasets.load_mnist("test", download=False, fallback=False)
X_l, y_l, idx = datasets.labelled_subset(X, y, a.labels // 10, seed=a.seed, return_indices=True)
X_u = np.delete(X, idx, axis=0)
ckdir = a.out + ".ckpt"
ckpt = os.path.join(ckdir, "checkpoint.vaec")
settings = {"labels": a.labels, "alpha": a.alpha, "lr": a.lr, "weighting": a.weighting, "seed": a.seed}
if os.path.exists(a.out + ".json"):
    with open(a.out + ".json") as f:
        old = json.load(f)
    for key, v in settings.items():
        if old.get(key, v) != v:
            raise SystemExit(f"--{key}: the run at {a.out} has {old[key]!r}, not {v!r}")
m = vaec.M2(784, 10, latent_dim=50, hidden=(500,), activation="softplus", alpha=a.alpha, seed=a.seed,
            threads=a.threads)
if os.path.exists(ckpt):
    print(f"resuming {a.out} from {ckpt}", flush=True)


def write_log():
    h = m.history
    el = np.cumsum(h["seconds"])
    log = dict(settings, threads=m.threads, n_unlabeled=len(X_u), epochs=[
        {"epoch": i + 1, "test_error": h["val_error"][i], "loss": h["loss"][i], "labeled_nll": h["labeled_nll"][i],
         "elapsed_s": float(el[i])} for i in range(len(h["loss"]))])
    tmp = a.out + f".json.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(log, f, indent=1)
    os.replace(tmp, a.out + ".json")
    return log


def cb(epoch, logs):
    log = write_log()
    return a.budget is not None and log["epochs"][-1]["elapsed_s"] > a.budget


m.fit(X_l, y_l, X_u, epochs=a.epochs, batch_size=100, lr=a.lr, validation_data=(Xt, yt), seed=a.seed,
      binarize="dynamic", weighting=a.weighting, progress=False, verbose=True, callback=cb,
      checkpoint_dir=ckdir, checkpoint_every=1, resume=ckpt if os.path.exists(ckpt) else None)
m.save(a.out + ".vaec")
e = write_log()["epochs"]
best = min(x["test_error"] for x in e)
last5 = np.mean([x["test_error"] for x in e[-5:]])
print(f"final test error {100 * e[-1]['test_error']:.2f}% (mean of the last 5 epochs {100 * last5:.2f}%, "
      f"best {100 * best:.2f}%) after {len(e)} epochs, {e[-1]['elapsed_s'] / 60:.0f} min of training")
