"""Published experiments, rerun: ``python -m vaec reproduce burda-vae | burda-iwae``."""
from __future__ import annotations

import datetime
import json
import os
import platform
import time

import numpy as np

# Burda, Grosse & Salakhutdinov (2016), Table 1: MNIST, dynamic binarization, one stochastic
# layer (784-200-200-50), test -log p(x) estimated with k = 5000 importance samples.
BURDA_TABLE = {("vae", 1): 86.76, ("vae", 5): 86.47, ("vae", 50): 86.35,
               ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}


def reproduce(args):
    import vaec
    from .__main__ import evaluate, load_dataset

    kind = "iwae" if args.experiment == "burda-iwae" else "vae"
    k = args.k if kind == "iwae" else 1
    Xtr, _, Xte, _ = load_dataset("mnist", args.data)
    if len(Xtr) < 60000:
        print(f"note: training on {len(Xtr)} images, not the full 60,000 MNIST training set "
              "(pass --data with the full set for a comparable figure)")
    m = vaec.VAE(784, 50, hidden=(200, 200), activation="tanh", likelihood="bernoulli", seed=args.seed,
                 threads=args.threads)
    m.set_optimizer(beta1=0.9, beta2=0.999, eps=1e-4)
    out = args.out or os.path.join("runs", f"{args.experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    print(f"{args.experiment}: {m!r}, {'IWAE k=%d' % k if kind == 'iwae' else 'ELBO'}, "
          f"{args.epochs} epochs of batch 20, Burda schedule, dynamic binarization")
    t0 = time.perf_counter()

    def report(epoch, logs):
        if not args.quiet:
            print(f"epoch {epoch:4d}  lr {logs['lr']:.2e}  train loss {logs['loss']:8.3f}  "
                  f"{logs['examples_per_s']:7.0f} ex/s", flush=True)

    m.fit(Xtr, epochs=args.epochs, batch_size=20, lr=1e-3, lr_schedule="burda", binarize="dynamic",
          iw_samples=k if kind == "iwae" else None, seed=args.seed, progress=not args.quiet, verbose=False,
          callback=report, checkpoint_dir=out, checkpoint_every=10)
    train_s = time.perf_counter() - t0
    m.save(os.path.join(out, "model.vaec"))
    X = Xte[:args.eval_limit] if args.eval_limit else Xte
    t1 = time.perf_counter()
    res = evaluate(m, X, args.eval_samples, seed=args.seed, binarize=True)
    eval_s = time.perf_counter() - t1
    nll = -res["log_likelihood"] if "log_likelihood" in res else -res["elbo"]
    paper = BURDA_TABLE.get((kind, k))
    line = (f"| {datetime.date.today()} | {args.experiment} (k={k}) | {args.epochs} | {len(Xtr)} | "
            f"{len(X)} | {nll:.2f} | {'—' if paper is None else f'{paper:.2f}'} | {-res['elbo']:.2f} | {res.get('active_units', '')} | "
            f"{train_s / 60:.1f} + {eval_s / 60:.1f} min | `python -m vaec reproduce {args.experiment} "
            f"--epochs {args.epochs}" + (f" --data {args.data}" if args.data else "") + (f" --k {k}" if kind == "iwae" else "") +
            (f" --eval-limit {args.eval_limit}" if args.eval_limit else "") + "` |")
    print(f"test -log p(x) (IS k={args.eval_samples}): {nll:.2f} nats after {args.epochs} epochs; " +
          (f"Burda et al. report {paper:.2f} after 3280 epochs" if paper is not None
           else f"Burda et al. have no published figure for k={k}"))
    _append_result(args.results, line)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"experiment": args.experiment, "k": k, "epochs": args.epochs, "nll": nll, "paper": paper,
                   "eval": res, "train_seconds": train_s, "eval_seconds": eval_s,
                   "cpu": vaec.cpu_features(), "python": platform.python_version()}, f, indent=2)
    return 0


HEADER = """## Burda et al. (2016) reproductions — `python -m vaec reproduce`

MNIST, dynamic binarization, 784-200-200-50 tanh, Adam (eps 1e-4), batch 20, learning rate
1e-3·10^(−i/7) for 3^i epochs. −log p(x) is estimated on the test set with k = 5000 importance
samples; the paper trains for 3280 epochs.

| date | experiment | epochs | train images | test images | test −log p(x) | paper | test −ELBO | active units | time (train + eval) | command |
|---|---|---|---|---|---|---|---|---|---|---|
"""


def _append_result(path, line):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = open(path).read() if os.path.exists(path) else "# Results\n\nEvery figure here was produced by the command beside it.\n\n"
    if "## Burda et al. (2016) reproductions" not in text:
        text = text.rstrip("\n") + "\n\n" + HEADER
        text += line + "\n"
    else:
        head, _, rest = text.partition("## Burda et al. (2016) reproductions")
        section, sep, tail = rest.partition("\n## ")
        section = section.rstrip("\n") + "\n" + line + "\n"
        text = head + "## Burda et al. (2016) reproductions" + section + (("\n## " + tail) if sep else "")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
