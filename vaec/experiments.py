"""Published experiments, rerun: ``python -m vaec reproduce burda-vae | burda-iwae | rezende-flows``."""
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
    if args.experiment == "rezende-flows":
        return reproduce_flows(args)
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


def _append_result(path, line, title="## Burda et al. (2016) reproductions", header=None):
    """Append a table row under ``title`` in the results file (the section and its table
    header are created the first time); written atomically."""
    header = HEADER if header is None else header
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = open(path).read() if os.path.exists(path) else "# Results\n\nEvery figure here was produced by the command beside it.\n\n"
    if title not in text:
        text = text.rstrip("\n") + "\n\n" + header
        text += line + "\n"
    else:
        head, _, rest = text.partition(title)
        section, sep, tail = rest.partition("\n## ")
        section = section.rstrip("\n") + "\n" + line + "\n"
        text = head + title + section + (("\n## " + tail) if sep else "")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# Rezende & Mohamed (2015), Table 2: binarized MNIST, -log p(x) bound (the negative ELBO);
# DLGM with 40 latent units, 400 hidden.
REZENDE_TABLE = {None: 89.9, "planar:10": 87.5, "planar:20": 86.5, "planar:40": 85.7, "planar:80": 85.1,
                 "nice:10": 88.6, "nice:20": 87.9, "nice:40": 87.3, "nice:80": 87.2}

FLOWS_TITLE = "## Normalizing-flow posteriors on binarized MNIST (Rezende & Mohamed 2015, Table 2)"
FLOWS_HEADER = FLOWS_TITLE + """ — `python -m vaec reproduce rezende-flows`

Larochelle's statically binarized MNIST (50,000 training, 10,000 test images), the same VAE for
every posterior: 784-400-40 encoder and 40-400-784 decoder, tanh, Bernoulli decoder, Adam lr
1e-3, batch 100, KL annealing beta_t = min(1, 0.01 + t/10000) per iteration, the same seed and
epoch budget. Test −ELBO is the mean over the whole test set of 10 single-sample bounds; the paper
reports this bound (after far longer training). −log p(x) is importance-sampled (k samples) on an
evenly spaced subset of n test images (every (10000/n)-th: the file is not in random order, so
its first images are not a fair sample), beside the −ELBO of the same subset.

| date | posterior | epochs | test −ELBO | paper −ELBO | subset −ELBO | subset −log p(x) (IS k, n) | active units | train time | command |
|---|---|---|---|---|---|---|---|---|---|
"""


def _flow_name(flow):
    return "diagonal Gaussian" if flow is None else flow


def reproduce_flows(args):
    """Train the same VAE with each posterior in ``args.flows`` on the same budget, evaluate on
    the test set and append one row per posterior to the results file."""
    import vaec
    from . import datasets

    Xtr = datasets.load_binarized_mnist("train", args.data)
    Xte = datasets.load_binarized_mnist("test", args.data)
    flows = [None if f in ("none", "") else f for f in args.flows.split(",")]
    out = args.out or os.path.join("runs", f"rezende-flows-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    # an evenly spaced subset: the test file is not in random order
    Xev = Xte[::-(-len(Xte) // args.eval_limit)] if args.eval_limit else Xte
    rows = []
    for flow in flows:
        m = vaec.VAE(784, 40, hidden=(400,), activation="tanh", likelihood="bernoulli", flow=flow,
                     seed=args.seed, threads=args.threads)
        print(f"rezende-flows: {m!r}, {args.epochs} epochs of batch 100, KL annealing (Rezende)", flush=True)

        def report(epoch, logs):
            if not args.quiet:
                print(f"  [{_flow_name(flow)}] epoch {epoch:4d}  beta {logs['beta']:.3f}  "
                      f"train loss {logs['loss']:8.3f}  {logs['examples_per_s']:7.0f} ex/s", flush=True)

        t0 = time.perf_counter()
        m.fit(Xtr, epochs=args.epochs, batch_size=100, lr=1e-3, warmup="rezende", seed=args.seed,
              progress=False, verbose=False, callback=report)
        train_s = time.perf_counter() - t0
        m.save(os.path.join(out, f"model-{(flow or 'none').replace(':', '')}.vaec"))
        # the test bound: 10 single-sample ELBOs per image, averaged
        elbo = float(np.mean([m.elbo(Xte, seed=args.seed + r).mean() for r in range(10)]))
        elbo_sub = float(np.mean([m.elbo(Xev, seed=args.seed + r).mean() for r in range(10)]))
        t1 = time.perf_counter()
        ll = float(m.log_likelihood(Xev, samples=args.eval_samples, seed=args.seed).mean())
        eval_s = time.perf_counter() - t1
        au = m.active_units(Xte)
        paper = REZENDE_TABLE.get(flow)
        row = {"flow": flow, "epochs": args.epochs, "neg_elbo": -elbo, "neg_elbo_subset": -elbo_sub, "nll": -ll,
               "eval_samples": args.eval_samples, "eval_n": len(Xev), "active_units": au, "paper": paper,
               "train_seconds": train_s, "eval_seconds": eval_s}
        rows.append(row)
        print(f"  [{_flow_name(flow)}] test -ELBO {-elbo:.2f}  on {len(Xev)} images: -ELBO {-elbo_sub:.2f}, "
              f"-log p(x) (IS k={args.eval_samples}) {-ll:.2f}  active units {au}  "
              f"(paper -ELBO {'—' if paper is None else paper})  train {train_s / 60:.1f} min, eval {eval_s / 60:.1f} min",
              flush=True)
        cmd = (f"`python -m vaec reproduce rezende-flows --epochs {args.epochs}" +
               (f" --data {args.data}" if args.data else "") + f" --flows {args.flows}" +
               (f" --eval-limit {args.eval_limit}" if args.eval_limit else "") + "`")
        line = (f"| {datetime.date.today()} | {_flow_name(flow)} | {args.epochs} | {-elbo:.2f} | "
                f"{'—' if paper is None else f'{paper:.1f}'} | {-elbo_sub:.2f} | {-ll:.2f} ({args.eval_samples}, {len(Xev)}) | "
                f"{au} | {train_s / 60:.1f} min | {cmd} |")
        _append_result(args.results, line, FLOWS_TITLE, FLOWS_HEADER)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"experiment": "rezende-flows", "rows": rows, "cpu": vaec.cpu_features(),
                       "python": platform.python_version()}, f, indent=2)
    base = next((r for r in rows if r["flow"] is None), None)
    if base is not None:
        for r in rows:
            if r["flow"] is not None:
                print(f"{r['flow']}: test -ELBO {base['neg_elbo'] - r['neg_elbo']:+.2f} nats better than the diagonal "
                      f"posterior, -log p(x) {base['nll'] - r['nll']:+.2f} (subset)")
    return 0
