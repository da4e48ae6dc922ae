"""Trains M2 on full MNIST with a few labels under a wall-clock budget; writes the
per-epoch history (test error, seconds) to JSON and the model to a .vaec file.

    VAEC_DATA=/work/shared/data python notebooks/_run_m2_mnist.py --labels 100 \
        --budget 2400 --threads 1 --out runs/m2_100

``--resume`` continues the run saved at ``--out`` (model, Adam and RNG state, and the JSON
history, to which it appends; the budget then counts the run's total seconds), so a long
run can be taken in several sittings. The labelled batches' order restarts on resuming.

The numbers in docs/RESULTS.md and notebooks/03_semi_supervised.ipynb come from here."""
import argparse
import json
import time

import numpy as np

import vaec
from vaec import datasets

p = argparse.ArgumentParser()
p.add_argument("--labels", type=int, default=100)
p.add_argument("--epochs", type=int, default=1000)
p.add_argument("--budget", type=float, default=2400.0, help="stop after the epoch that passes this many seconds")
p.add_argument("--alpha", type=float, default=0.1)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=None)
p.add_argument("--weighting", default="balanced", choices=["balanced", "proportional"])
p.add_argument("--out", required=True)
p.add_argument("--resume", action="store_true", help="continue the run saved at --out")
a = p.parse_args()

X, y = datasets.load_mnist("train", download=False, fallback=False)
Xt, yt = datasets.load_mnist("test", download=False, fallback=False)
X_l, y_l, idx = datasets.labelled_subset(X, y, a.labels // 10, seed=a.seed, return_indices=True)
X_u = np.delete(X, idx, axis=0)
if a.resume:
    m = vaec.load(a.out + ".vaec", threads=a.threads)
    with open(a.out + ".json") as f:
        log = json.load(f)
    for key in ("labels", "alpha", "lr", "weighting"):
        if log[key] != getattr(a, key):
            raise SystemExit(f"--{key}: the run at {a.out} has {log[key]!r}, not {getattr(a, key)!r}")
    done = log["epochs"][-1]["elapsed_s"] if log["epochs"] else 0.0
    print(f"resuming {a.out} after {len(log['epochs'])} epochs ({done:.0f} s)", flush=True)
else:
    m = vaec.M2(784, 10, latent_dim=50, hidden=(500,), activation="softplus", alpha=a.alpha, seed=a.seed,
                threads=a.threads)
    log = {"labels": a.labels, "alpha": a.alpha, "lr": a.lr, "weighting": a.weighting, "threads": m.threads,
           "n_unlabeled": len(X_u), "epochs": []}
    done = 0.0
t0 = time.perf_counter() - done


def cb(epoch, logs):
    el = time.perf_counter() - t0
    log["epochs"].append({"epoch": len(log["epochs"]) + 1, "test_error": logs["val_error"], "loss": logs["loss"],
                          "labeled_nll": logs["labeled_nll"], "elapsed_s": el})
    with open(a.out + ".json", "w") as f:
        json.dump(log, f, indent=1)
    m.save(a.out + ".vaec")
    return el > a.budget


m.fit(X_l, y_l, X_u, epochs=a.epochs - len(log["epochs"]), batch_size=100, lr=a.lr, validation_data=(Xt, yt),
      seed=None if a.resume else a.seed,
      binarize="dynamic", weighting=a.weighting, progress=False, verbose=True, callback=cb)
best = min(e["test_error"] for e in log["epochs"])
print(f"final test error {100 * log['epochs'][-1]['test_error']:.2f}% (best {100 * best:.2f}%) after "
      f"{len(log['epochs'])} epochs, {time.perf_counter() - t0:.0f} s")
