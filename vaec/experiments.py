"""Published experiments, rerun: ``python -m vaec reproduce burda-vae | burda-iwae | rezende-flows |
kingma-wake-sleep | kingma-mcem | conv-flows``."""
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


CONV_FLOWS = "none,planar:4,planar:10,planar:20,planar:40,realnvp:2,realnvp:5,realnvp:10,realnvp:20"


def reproduce(args):
    if args.experiment == "conv-flows":
        return reproduce_conv_flows(args)
    if args.epochs is None:
        args.epochs = 13
    if args.flows is None:
        args.flows = "none,planar:10:amortized,realnvp:4"
    if args.experiment == "rezende-flows":
        return reproduce_flows(args)
    if args.experiment == "kingma-wake-sleep":
        return reproduce_wake_sleep(args)
    if args.experiment == "kingma-mcem":
        return reproduce_mcem(args)
    import vaec
    from .commands import evaluate, load_dataset

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

    # the ends of the schedule's stages (1, 4, 13, 40, 121, 364, 1093, 3280 epochs): a model
    # file each, stage-<epochs>.vaec, for the curve of -log p(x) against training
    stage_ends = {sum(3 ** i for i in range(j + 1)) for j in range(8)}

    def report(epoch, logs):
        if epoch in stage_ends:
            m.save(os.path.join(out, f"stage-{epoch}.vaec"))
        if not args.quiet:
            print(f"epoch {epoch:4d}  lr {logs['lr']:.2e}  train loss {logs['loss']:8.3f}  "
                  f"{logs['examples_per_s']:7.0f} ex/s", flush=True)

    # a run cut off continues from its last checkpoint in --out (every 10 epochs), ending
    # exactly where an uninterrupted run would
    ckpt = os.path.join(out, "checkpoint.vaec")
    resume = ckpt if os.path.exists(ckpt) else None
    if resume:
        print(f"resuming from {ckpt}", flush=True)
    m.fit(Xtr, epochs=args.epochs, batch_size=20, lr=1e-3, lr_schedule="burda", binarize="dynamic",
          iw_samples=k if kind == "iwae" else None, seed=args.seed, progress=not args.quiet, verbose=False,
          callback=report, checkpoint_dir=out, checkpoint_every=10, resume=resume)
    train_s = time.perf_counter() - t0
    m.save(os.path.join(out, "model.vaec"))
    X = Xte[:args.eval_limit] if args.eval_limit else Xte
    t1 = time.perf_counter()
    res = evaluate(m, X, args.eval_samples, seed=args.seed, binarize=True)
    eval_s = time.perf_counter() - t1
    nll = -res["log_likelihood"] if "log_likelihood" in res else -res["elbo"]
    paper = BURDA_TABLE.get((kind, k))
    line = (f"| {datetime.date.today()} | {args.experiment} (k={k}) | {args.epochs} | {len(Xtr)} | "
            f"{len(X)} | {nll:.2f} | {'—' if paper is None else f'{paper:.2f}'} | {-res['elbo']:.2f} | "
            f"{_iwae_cell(res)} | {res.get('active_units', '?')} of {m.latent_dim} | "
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

| date | experiment | epochs | train images | test images | test −log p(x) | paper | test −ELBO | IWAE k=5 / k=50 bounds | active units | time (train + eval) | command |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def _iwae_cell(res):
    """'-IWAE_5 / -IWAE_50' as in the results table ('—' for a bound that was not computed)."""
    return " / ".join(f"{-res[k]:.2f}" if k in res else "—" for k in ("iwae_5", "iwae_50"))


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
# The paper's planar flows are amortized (its Fig. 2: the inference network outputs the flow's
# parameters), so its planar rows are "planar:K:amortized"'s; "planar:K" (one u, w, b for
# every example) is set beside the same figures (_paper_figure).
REZENDE_TABLE = {None: 89.9, "planar:10": 87.5, "planar:20": 86.5, "planar:40": 85.7, "planar:80": 85.1,
                 "nice:10": 88.6, "nice:20": 87.9, "nice:40": 87.3, "nice:80": 87.2}


def _paper_figure(flow):
    """Rezende & Mohamed's Table 2 figure for a posterior, or None."""
    if flow is not None and flow.endswith(":amortized"):
        flow = flow[:-len(":amortized")]
    return REZENDE_TABLE.get(flow)

FLOWS_TITLE = "## Normalizing-flow posteriors on binarized MNIST (Rezende & Mohamed 2015, Table 2)"
FLOWS_HEADER = FLOWS_TITLE + """ — `python -m vaec reproduce rezende-flows`

Larochelle's statically binarized MNIST (50,000 training, 10,000 test images), the same VAE for
every posterior: 784-400-40 encoder and 40-400-784 decoder, tanh, Bernoulli decoder, Adam lr
1e-3 (unless the command says --lr), batch 100, KL annealing beta_t = min(1, 0.01 + t/10000) per iteration, the same seed and
epoch budget. Test −ELBO is the mean over the whole test set of 10 single-sample bounds; the paper
reports this bound (after far longer training). −log p(x) is importance-sampled (k samples) on an
evenly spaced subset of n test images (every (10000/n)-th: the file's first 1000 images score
about 12 nats below the whole set's mean ELBO, so a prefix is not a fair sample), beside the
−ELBO of the same subset.

| date | posterior | epochs | test −ELBO | paper −ELBO | subset −ELBO | subset −log p(x) (IS k, n) | active units | train time | command |
|---|---|---|---|---|---|---|---|---|---|
"""


def _flow_name(flow):
    return "diagonal Gaussian" if flow is None else flow


def reproduce_flows(args):
    """Train the same VAE with each posterior in ``args.flows`` on the same budget, evaluate on
    the test set and append one row per posterior to the results file. A run cut off resumes
    when started again with the same ``--out``: finished posteriors are read back
    (result-<tag>.json, model-<tag>.vaec; tags none, planar10, realnvp4, ...), the one in
    progress continues from its checkpoint (ckpt-<tag>/checkpoint.vaec, every 5 epochs)."""
    import vaec
    from . import datasets

    Xtr = datasets.load_binarized_mnist("train", args.data)
    Xte = datasets.load_binarized_mnist("test", args.data)
    flows = [None if f in ("none", "") else f for f in args.flows.split(",")]
    out = args.out or os.path.join("runs", f"rezende-flows-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    # an evenly spaced subset: the first images of the test file are harder than the rest
    Xev = Xte[::-(-len(Xte) // args.eval_limit)] if args.eval_limit else Xte
    patience = getattr(args, "patience", None)
    lr = getattr(args, "lr", None) or 1e-3
    # early stopping on Larochelle's validation split, which the training set leaves out
    Xva = datasets.load_binarized_mnist("valid", args.data) if patience else None
    cmd = (f"`python -m vaec reproduce rezende-flows --epochs {args.epochs}" +
           (f" --data {args.data}" if args.data else "") + f" --flows {args.flows}" +
           (f" --patience {patience}" if patience else "") + (f" --lr {lr:g}" if lr != 1e-3 else "") +
           (f" --eval-limit {args.eval_limit}" if args.eval_limit else "") + "`")
    rows = []
    for flow in flows:
        tag = (flow or "none").replace(":", "")
        res_path = os.path.join(out, f"result-{tag}.json")
        if os.path.exists(res_path):   # finished in an earlier sitting
            with open(res_path) as f:
                row = json.load(f)
            print(f"  [{_flow_name(flow)}] done before: test -ELBO {row['neg_elbo']:.2f}, -log p(x) {row['nll']:.2f}",
                  flush=True)
            rows.append(row)
            continue
        m = vaec.VAE(784, 40, hidden=(400,), activation="tanh", likelihood="bernoulli", flow=flow,
                     seed=args.seed, threads=args.threads)
        print(f"rezende-flows: {m!r}, {args.epochs} epochs of batch 100 ({args.epochs * -(-len(Xtr) // 100):,} "
              f"parameter updates), Adam lr {lr:g}, KL annealing (Rezende)", flush=True)

        def report(epoch, logs):
            if not args.quiet:
                print(f"  [{_flow_name(flow)}] epoch {epoch:4d}  beta {logs['beta']:.3f}  "
                      f"train loss {logs['loss']:8.3f}" +
                      (f"  valid -ELBO {-logs['val_elbo']:8.3f}" if logs.get("val_elbo") is not None else "") +
                      f"  {logs['examples_per_s']:7.0f} ex/s", flush=True)

        ckdir = os.path.join(out, f"ckpt-{tag}")
        ckpt = os.path.join(ckdir, "checkpoint.vaec")
        m.fit(Xtr, epochs=args.epochs, batch_size=100, lr=lr, warmup="rezende", seed=args.seed,
              progress=False, verbose=False, callback=report, checkpoint_dir=ckdir, checkpoint_every=5,
              resume=ckpt if os.path.exists(ckpt) else None, validation_data=Xva, patience=patience)
        train_s = float(sum(m.history["seconds"]))   # over every sitting
        best_epoch = m.history.get("best_epoch")   # with --patience: the parameters kept
        m.save(os.path.join(out, f"model-{tag}.vaec"))
        # the test bound: 10 single-sample ELBOs per image, averaged
        elbo = float(np.mean([m.elbo(Xte, seed=args.seed + r).mean() for r in range(10)]))
        elbo_sub = float(np.mean([m.elbo(Xev, seed=args.seed + r).mean() for r in range(10)]))
        t1 = time.perf_counter()
        ll = float(m.log_likelihood(Xev, samples=args.eval_samples, seed=args.seed).mean())
        eval_s = time.perf_counter() - t1
        au = m.active_units(Xte)
        paper = _paper_figure(flow)
        row = {"flow": flow, "epochs": args.epochs, "updates": args.epochs * -(-len(Xtr) // 100),
               "neg_elbo": -elbo, "neg_elbo_subset": -elbo_sub, "nll": -ll,
               "eval_samples": args.eval_samples, "eval_n": len(Xev), "active_units": au, "paper": paper,
               "train_seconds": train_s, "eval_seconds": eval_s, "lr": lr}
        if patience:
            row.update(patience=patience, epochs_run=len(m.history["loss"]), best_epoch=best_epoch,
                       val_elbo=[float(v) for v in m.history["val_elbo"]])
        with open(res_path + f".tmp-{os.getpid()}", "w") as f:
            json.dump(row, f, indent=2)
        os.replace(res_path + f".tmp-{os.getpid()}", res_path)
        rows.append(row)
        print(f"  [{_flow_name(flow)}] test -ELBO {-elbo:.2f}  on {len(Xev)} images: -ELBO {-elbo_sub:.2f}, "
              f"-log p(x) (IS k={args.eval_samples}) {-ll:.2f}  active units {au}  "
              f"(paper -ELBO {'—' if paper is None else paper})  train {train_s / 60:.1f} min, eval {eval_s / 60:.1f} min",
              flush=True)
        run = (f"{args.epochs}" if not patience else
               f"{args.epochs} (stopped after {len(m.history['loss'])}, best {best_epoch})")
        line = (f"| {datetime.date.today()} | {_flow_name(flow)} | {run} | {-elbo:.2f} | "
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


# Kingma & Welling (2014), Fig. 2: AEVB against wake-sleep, test lower bound against the number
# of training examples seen, for several latent sizes.
FIG2_LATENTS = {"mnist": (3, 5, 10, 20, 200), "frey": (2, 5, 10, 20)}
FIG2_HIDDEN = {"mnist": 500, "frey": 200}


def wake_sleep_curves(data, latents, examples, *, seed=0, threads=1, lr=1e-3, batch_size=100,
                      points=12, log=print):
    """Train one VAE per (latent size, algorithm) with AEVB and with wake-sleep on the same
    budget of ``examples`` training examples, recording the test ELBO (one sample per
    image, fixed noise) at about ``points`` log-spaced numbers of examples seen.

    ``data``: {"mnist" | "frey": (X_train, X_test)}. MNIST: 500 tanh hidden units,
    Bernoulli decoder, dynamic binarization; Frey faces: 200 hidden units, Gaussian
    decoder (Kingma & Welling's settings, with Adam instead of Adagrad). Returns
    {dataset: {latent: {algorithm: {"examples": [...], "test_elbo": [...], "seconds": s}}}}."""
    import vaec

    out = {}
    for name, (Xtr, Xte) in data.items():
        bern = name != "frey"
        n = len(Xtr)
        epochs = max(1, -(-int(examples) // n))
        marks = np.unique(np.geomspace(n, epochs * n, points).astype(np.int64) // n)  # epochs to evaluate after
        out[name] = {}
        for z in latents[name]:
            out[name][z] = {}
            for algo in ("aevb", "wake-sleep"):
                m = vaec.VAE(Xtr.shape[1], z, hidden=(FIG2_HIDDEN[name],), activation="tanh",
                             likelihood="bernoulli" if bern else "gaussian", seed=seed, threads=threads)
                curve = {"examples": [], "test_elbo": []}

                def record(epoch, logs, m=m, curve=curve):
                    if epoch in marks:
                        curve["examples"].append(int(epoch * n))
                        curve["test_elbo"].append(float(m.elbo(Xte, seed=seed, binarize="dynamic" if bern else None).mean()))

                t0 = time.perf_counter()
                m.fit(Xtr, epochs=epochs, batch_size=batch_size, lr=lr, binarize="dynamic" if bern else None,
                      seed=seed, progress=False, verbose=False, algorithm=algo, callback=record)
                curve["seconds"] = time.perf_counter() - t0
                out[name][z][algo] = curve
                log(f"{name} latent {z:3d} {algo:10s}: test ELBO {curve['test_elbo'][-1]:9.2f} after "
                    f"{curve['examples'][-1]:,} examples ({curve['seconds']:.0f} s)")
    return out


def wake_sleep_figure(curves):
    """Kingma & Welling's Fig. 2 layout: one panel per (data set, latent size), the test
    ELBO against training examples seen (log scale), AEVB and wake-sleep."""
    from matplotlib.ticker import NullFormatter

    from .plot import _figure

    ncol = max(len(curves[d]) for d in curves)
    fig = _figure(figsize=(3.0 * ncol, 2.8 * len(curves)))
    axes = fig.subplots(len(curves), ncol, squeeze=False)
    for r, d in enumerate(curves):
        for c in range(ncol):
            ax = axes[r][c]
            zs = list(curves[d])
            if c >= len(zs):
                ax.set_visible(False)
                continue
            for algo, style in (("aevb", "-"), ("wake-sleep", "--")):
                cv = curves[d][zs[c]][algo]
                ax.plot(cv["examples"], cv["test_elbo"], style, marker="o", ms=3, label="AEVB" if algo == "aevb" else algo)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{'MNIST' if d == 'mnist' else 'Frey faces'}, $N_z$ = {zs[c]}", fontsize=9)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("test ELBO (nats)", fontsize=8)
            if r == len(curves) - 1:
                ax.set_xlabel("training examples seen", fontsize=8)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


WS_TITLE = "## AEVB against wake-sleep (Kingma & Welling 2014, Fig. 2)"
WS_HEADER = WS_TITLE + """ — `python -m vaec reproduce kingma-wake-sleep`

The same encoder and decoder trained by AEVB and by wake-sleep (Hinton et al. 1995, the sleep
phase on as many dreams as the batch has images), Adam lr 1e-3, batch 100, on the same budget
of training examples. MNIST: 500 tanh hidden units, Bernoulli decoder, dynamic binarization,
ELBO on the 10,000 test images. Frey faces: 200 tanh hidden units, Gaussian decoder, every
10th face held out (197 test faces). The paper shows curves only (to 10^8 examples), no table.

| date | data | latent | examples seen | AEVB test ELBO | wake-sleep test ELBO | AEVB − wake-sleep | time (AEVB + w-s) | command |
|---|---|---|---|---|---|---|---|---|
"""


def reproduce_wake_sleep(args):
    from .commands import load_dataset

    data = {}
    for name in args.datasets.split(","):
        if name not in FIG2_LATENTS:
            raise ValueError(f"--datasets: expected mnist and/or frey, got {name!r}")
        Xtr, _, Xte, _ = load_dataset(name, args.data)
        data[name] = (Xtr, Xte)
    if args.latents:
        try:
            chosen = tuple(int(z) for z in args.latents.split(","))
        except ValueError:
            raise ValueError(f"--latents: expected comma-separated sizes such as 3,20, got {args.latents!r}") from None
        if min(chosen) < 1:
            raise ValueError(f"--latents: sizes must be >= 1, got {args.latents!r}")
    latents = {d: chosen if args.latents else FIG2_LATENTS[d] for d in data}
    t0 = time.perf_counter()
    curves = wake_sleep_curves(data, latents, args.examples, seed=args.seed, threads=args.threads or 1)
    out = args.out or os.path.join("runs", f"kingma-wake-sleep-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump({d: {str(z): v for z, v in c.items()} for d, c in curves.items()}, f, indent=1)
    try:
        wake_sleep_figure(curves).savefig(os.path.join(out, "fig2.png"), dpi=110)
    except ImportError:
        pass
    cmd = (f"`python -m vaec reproduce kingma-wake-sleep --examples {args.examples} --datasets {args.datasets}" +
           (f" --latents {args.latents}" if args.latents else "") + (f" --data {args.data}" if args.data else "") + "`")
    for d, c in curves.items():
        for z, v in c.items():
            a, w = v["aevb"], v["wake-sleep"]
            line = (f"| {datetime.date.today()} | {d} | {z} | {a['examples'][-1]:,} | {a['test_elbo'][-1]:.2f} | "
                    f"{w['test_elbo'][-1]:.2f} | {a['test_elbo'][-1] - w['test_elbo'][-1]:+.2f} | "
                    f"{a['seconds'] / 60:.1f} + {w['seconds'] / 60:.1f} min | {cmd} |")
            _append_result(args.results, line, WS_TITLE, WS_HEADER)
    print(f"curves and figure in {out}; {(time.perf_counter() - t0) / 60:.1f} min in all")
    return 0


# ------------------------------------------------------------------------------- kingma-mcem
# Kingma & Welling (2014), Fig. 3: AEVB against wake-sleep and Monte Carlo EM on the marginal
# likelihood: MNIST, 100 hidden units, 3 latent dimensions, N_train = 1000 and 50000.
FIG3_SIZES = (1000, 50000)
FIG3_ALGOS = ("aevb", "wake-sleep", "mcem")
FIG3_LRS = (0.01, 0.02, 0.1)
FIG3_NAMES = {"aevb": "AEVB", "wake-sleep": "wake-sleep", "mcem": "MCEM"}


def _write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _fig3_model(seed, threads):
    import vaec
    return vaec.VAE(784, 3, hidden=(100,), activation="tanh", likelihood="bernoulli", seed=seed, threads=threads,
                    init_std=0.01)


def _fig3_fit(m, X, algo, lr, epochs, seed, **kw):
    """The paper's training: Adagrad at ``lr``, batch 100, weight decay 1/N (a N(0, I)
    prior on the parameters), one sample per example; MCEM with 10 leapfrog steps and 5
    updates per batch."""
    extra = dict(leapfrog=10, updates=5, target_accept=0.9) if algo == "mcem" else {}
    return m.fit(X, epochs=epochs, batch_size=100, lr=lr, optimizer="adagrad", weight_decay=1.0 / len(X),
                 algorithm=algo, seed=seed, progress=False, verbose=False, **extra, **kw)


def _fig3_estimate(m, X, samples, burn_in, seed):
    """The appendix-D estimate (HMC, 4 leapfrog steps) of each example's log p(x): (mean,
    mean acceptance)."""
    ll, acc = m.log_likelihood(X, method="hmc", samples=samples, burn_in=burn_in, leapfrog=4, init_draws=1000,
                               seed=seed, batch_size=len(X), return_accept=True)
    return float(ll.mean()), float(acc.mean())


def marginal_likelihood_curves(Xtr, Xte, sizes=FIG3_SIZES, examples=10_000_000, *, algorithms=FIG3_ALGOS,
                               lrs=FIG3_LRS, pilot=50_000, points=9, eval_n=1000, hmc_samples=300, burn_in=100,
                               seed=0, threads=1, out=None, log=print):
    """Kingma & Welling's Fig. 3: for each training-set size N (the first N rows of the
    binary ``Xtr``) and each algorithm, a 784-100-3 tanh VAE (Bernoulli decoder, weights
    from N(0, 0.01)) trained by Adagrad (batch 100, weight decay 1/N) on ``examples``
    training examples, its marginal log-likelihood estimated by the appendix-D HMC estimator
    (each chain started at one of 1000 prior draws resampled by p(x|z), ``burn_in``
    transitions, ``hmc_samples`` states to fit q, as many for the estimate, 4 leapfrog
    steps) on the first ``eval_n`` training and test images at about ``points``
    log-spaced numbers of examples seen (from 10^4, or 1 % of the budget, or one epoch on). The step size is the
    one of ``lrs`` whose model, after ``pilot`` examples, has the highest estimate on the
    first 100 training images (the paper chose from {0.01, 0.02, 0.1} by the training
    performance of the first iterations).

    Each run is trained in segments, from one estimate to the next, through its checkpoint
    (resumed exactly: the same as one run). With ``out`` (a folder), every run keeps its
    checkpoint and its curve there (``n<N>-<algorithm>/``): a call cut off resumes where it
    stopped, and finished runs are read back (else a temporary folder). Returns {N: {algorithm: {"examples", "train_ll", "test_ll", "accept", "lr",
    "pilot", "train_seconds", "eval_seconds"}}}."""
    import tempfile

    if out is None:   # the runs are trained in segments through checkpoints, even without a folder
        with tempfile.TemporaryDirectory() as tmp:
            return marginal_likelihood_curves(Xtr, Xte, sizes, examples, algorithms=algorithms, lrs=lrs, pilot=pilot,
                                              points=points, eval_n=eval_n, hmc_samples=hmc_samples, burn_in=burn_in,
                                              seed=seed, threads=threads, out=tmp, log=log)
    Xtr, Xte = np.asarray(Xtr, np.float32), np.asarray(Xte, np.float32)
    ev_tr, ev_te = Xtr[:eval_n], Xte[:eval_n]
    curves = {}
    for N in sizes:
        X = Xtr[:N]
        epochs = max(1, -(-int(examples) // N))
        first = max(1, min(epochs, -(-min(10_000, int(examples) // 100) // N)))   # 10^4 examples, or fewer
        marks = sorted(set(np.unique(np.geomspace(first, epochs, points).round().astype(np.int64)).tolist()) | {epochs})
        curves[N] = {}
        for algo in algorithms:
            run = os.path.join(out, f"n{N}-{algo}")
            path = os.path.join(run, "curve.json")
            if os.path.exists(path):
                with open(path) as f:
                    curve = json.load(f)
            else:
                curve = {"examples": [], "train_ll": [], "test_ll": [], "accept": [], "lr": None, "pilot": {},
                         "train_seconds": 0.0, "eval_seconds": 0.0, "marks": marks}
            os.makedirs(run, exist_ok=True)
            if curve["lr"] is None:   # the pilot: the best of the step sizes after `pilot` examples
                for lr in lrs:
                    m = _fig3_model(seed, threads)
                    _fig3_fit(m, X, algo, lr, max(1, -(-int(pilot) // N)), seed)
                    curve["pilot"][str(lr)] = _fig3_estimate(m, ev_tr[:100], 100, 50, seed)[0]
                curve["lr"] = float(max(lrs, key=lambda lr: curve["pilot"][str(lr)]))
                log(f"N={N} {algo}: pilot estimates {curve['pilot']} -> lr {curve['lr']}")
                _write_json(path, curve)
            m = _fig3_model(seed, threads)
            ckdir = os.path.join(run, "ckpt")
            ckpt = os.path.join(ckdir, "checkpoint.vaec")
            for e in marks:
                if e * N in curve["examples"]:
                    continue
                t0 = time.perf_counter()
                # up to epoch e (from the last checkpoint: the same as one uninterrupted run)
                _fig3_fit(m, X, algo, curve["lr"], e, seed, checkpoint_dir=ckdir, checkpoint_every=10**9,
                          resume=ckpt if os.path.exists(ckpt) else None)
                t1 = time.perf_counter()
                tr, acc = _fig3_estimate(m, ev_tr, hmc_samples, burn_in, seed)
                te, _ = _fig3_estimate(m, ev_te, hmc_samples, burn_in, seed + 1)
                curve["train_seconds"] += t1 - t0
                curve["eval_seconds"] += time.perf_counter() - t1
                curve["examples"].append(int(e * N))
                curve["train_ll"].append(tr)
                curve["test_ll"].append(te)
                curve["accept"].append(acc)
                _write_json(path, curve)
                log(f"N={N:6d} {algo:10s} {e * N:>11,} examples: log p(x) train {tr:9.2f}  test {te:9.2f}  "
                    f"(acceptance {acc:.2f}; {t1 - t0:.0f} s training, {time.perf_counter() - t1:.0f} s estimating)")
            curves[N][algo] = curve
    return curves


def marginal_likelihood_figure(curves):
    """Kingma & Welling's Fig. 3 layout: one panel per training-set size, the estimated
    marginal log-likelihood of the training (solid) and test (dashed) images against the
    training examples seen (log scale), for each algorithm."""
    from matplotlib.ticker import NullFormatter

    from .plot import _figure

    fig = _figure(figsize=(5.0 * len(curves), 3.8))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    colors = {"aevb": "C0", "wake-sleep": "C1", "mcem": "C2"}
    for ax, (N, by_algo) in zip(axes, curves.items()):
        for algo, cv in by_algo.items():
            name = FIG3_NAMES.get(algo, algo)
            ax.plot(cv["examples"], cv["train_ll"], "-", marker="o", ms=3, color=colors.get(algo), label=f"{name} (train)")
            ax.plot(cv["examples"], cv["test_ll"], "--", marker="o", ms=3, color=colors.get(algo), label=f"{name} (test)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"MNIST, $N_{{train}}$ = {int(N):,}", fontsize=10)
        ax.set_xlabel("training examples seen", fontsize=9)
        ax.set_ylabel("marginal log-likelihood (nats)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


MCEM_TITLE = "## AEVB, wake-sleep and Monte Carlo EM on the marginal likelihood (Kingma & Welling 2014, Fig. 3)"
MCEM_HEADER = MCEM_TITLE + """ — `python -m vaec reproduce kingma-mcem`

The paper's setup: MNIST (binarized once, the training set with seed 0, the test set with seed
1), a 784-100-3 VAE with tanh hidden units and a Bernoulli decoder, weights drawn from
N(0, 0.01²), Adagrad on batches of 100 with weight decay 1/N_train (a N(0, I) prior on the
parameters) and the step size of {0.01, 0.02, 0.1} whose model scores best on 100 training
images after a pilot run. AEVB takes one sample per example; wake-sleep dreams as many pairs as
the batch has images; MCEM (no encoder) moves each example's persistent HMC chain by one
transition of 10 leapfrog steps, the chains sharing a step size tuned toward 90 % acceptance,
then takes 5 decoder updates. The marginal log-likelihood is the mean over the first 1000
training and the first 1000 test images of the appendix-D estimator: per image an HMC chain
(4 leapfrog steps) started at one of 1000 prior draws resampled by p(x|z), 100 burn-in
transitions, L states to fit a full-covariance Gaussian q(z), L more for the estimate. The paper trains to 10^8 examples; the budget here is in the table.

| date | N_train | algorithm | examples seen | lr | log p(x) train | log p(x) test | train − test | best test (at examples) | time (train + estimates) | command |
|---|---|---|---|---|---|---|---|---|---|---|
"""


def reproduce_mcem(args):
    from . import datasets
    from .commands import load_dataset

    try:
        sizes = tuple(int(v) for v in (args.train_sizes or "1000,50000").split(","))
        lrs = tuple(float(v) for v in (args.lrs or "0.01,0.02,0.1").split(","))
    except ValueError:
        raise ValueError(f"--train-sizes, --lrs: expected comma-separated numbers, got {args.train_sizes!r}, "
                         f"{args.lrs!r}") from None
    if min(sizes) < 1 or min(lrs) <= 0:
        raise ValueError("--train-sizes, --lrs: expected positive numbers")
    Xtr, _, Xte, _ = load_dataset("mnist", args.data)
    if max(sizes) > len(Xtr):
        raise ValueError(f"--train-sizes: {max(sizes)} training images asked for, the data set has {len(Xtr)}")
    n_eval = args.eval_limit or 1000
    # binary images once (as floats: binarize's uint8 0/1 would be read as grey levels / 255)
    Xtr = datasets.binarize(Xtr[:max(max(sizes), n_eval)], "static", seed=0).astype(np.float32)
    Xte = datasets.binarize(Xte[:n_eval], "static", seed=1).astype(np.float32)
    out = args.out or os.path.join("runs", f"kingma-mcem-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    curves = marginal_likelihood_curves(Xtr, Xte, sizes, args.examples, lrs=lrs, pilot=args.pilot_examples,
                                        points=args.points, eval_n=n_eval, hmc_samples=args.hmc_samples,
                                        seed=args.seed, threads=args.threads or 1, out=out, log=log)
    _write_json(os.path.join(out, "curves.json"), {str(N): c for N, c in curves.items()})
    try:
        marginal_likelihood_figure(curves).savefig(os.path.join(out, "fig3.png"), dpi=110)
    except ImportError:
        pass
    cmd = (f"`python -m vaec reproduce kingma-mcem --examples {args.examples}"
           + (f" --train-sizes {args.train_sizes}" if args.train_sizes else "")
           + (f" --lrs {args.lrs}" if args.lrs else "") + f" --hmc-samples {args.hmc_samples}"
           + (f" --eval-limit {args.eval_limit}" if args.eval_limit else "")
           + (f" --data {args.data}" if args.data else "") + "`")
    for N, by_algo in curves.items():
        for algo, c in by_algo.items():
            best = int(np.argmax(c["test_ll"]))
            line = (f"| {datetime.date.today()} | {N:,} | {FIG3_NAMES[algo]} | {c['examples'][-1]:,} | {c['lr']:g} | "
                    f"{c['train_ll'][-1]:.2f} | {c['test_ll'][-1]:.2f} | {c['train_ll'][-1] - c['test_ll'][-1]:+.2f} | "
                    f"{c['test_ll'][best]:.2f} ({c['examples'][best]:,}) | "
                    f"{c['train_seconds'] / 60:.1f} + {c['eval_seconds'] / 60:.1f} min | {cmd} |")
            _append_result(args.results, line, MCEM_TITLE, MCEM_HEADER)
    print(f"curves and figure in {out}; {(time.perf_counter() - t0) / 60:.1f} min in all")
    return 0


# ---------------------------------------------------------------------------------- conv-flows
CONV_TITLE = "## A convolutional VAE with normalizing-flow posteriors on binarized MNIST"
CONV_HEADER = CONV_TITLE + """ — `python -m vaec reproduce conv-flows`

The encoder passes the images through convolutional and pooling layers, then fully
connected ones, to a 32-dimensional embedding (Conv2d(32, 3, pad 1), ReLU, MaxPool2d(2),
Conv2d(64, 3, pad 1), ReLU, MaxPool2d(2), Flatten, Linear(256), ReLU, the Gaussian heads); the
posterior is plain or goes through planar or Real NVP flows; the decoder is Linear(256),
ReLU, Linear(64·7·7), ReLU, Unflatten, ConvTranspose2d(32, 4, 2, 1), ReLU,
ConvTranspose2d(1, 4, 2, 1), Bernoulli logits. Larochelle's statically binarized MNIST
(50,000 training, 10,000 test images), Adam lr 1e-3, batch 100, the KL's weight rising
linearly over the first two epochs, the same epochs for every posterior. The MLP VAE
(784-400-400-32, tanh) beside it is trained for the plain conv VAE's wall-clock time.
E_q[log p(x|z)] is the reconstruction term (the figure the original table reports; higher
is better), −ELBO and −log p(x) are losses (lower is better).

| date | model | epochs | train time | test −ELBO | test E_q[log p(x|z)] | −log p(x) (IS k, test images) | command |
|---|---|---|---|---|---|---|---|
"""


def conv_flows_network():
    """The conv-flows experiment's encoder and decoder (conv, pool, conv, pool, dense; dense,
    then transposed convolutions)."""
    from . import layers as L
    enc = [L.Conv2d(32, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Conv2d(64, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
           L.Flatten(), L.Linear(256), L.ReLU()]
    dec = [L.Linear(256), L.ReLU(), L.Linear(64 * 7 * 7), L.ReLU(), L.Unflatten(64, 7, 7),
           L.ConvTranspose2d(32, 4, stride=2, padding=1), L.ReLU(), L.ConvTranspose2d(1, 4, stride=2, padding=1)]
    return enc, dec


def _conv_flows_model(flow, latent, seed, threads, mlp=False):
    import vaec
    if mlp:
        return vaec.VAE(784, latent, hidden=(400, 400), activation="tanh", seed=seed, threads=threads)
    enc, dec = conv_flows_network()
    return vaec.VAE(input_shape=(1, 28, 28), latent_dim=latent, encoder=enc, decoder=dec, flow=flow, seed=seed,
                    threads=threads)


def reproduce_conv_flows(args):
    """Train the conv VAE with each posterior of ``args.flows`` (and an MLP VAE for the plain
    one's wall-clock time) on binarized MNIST, evaluate each on the test set and append one
    row per model to the results file. A run cut off resumes: finished models are read back
    from ``--out`` (result-<tag>.json and model-<tag>.vaec; the tags are conv-plain,
    conv-planar10, ..., mlp), the one in progress from its checkpoint."""
    import vaec
    from . import datasets

    epochs = args.epochs or 10
    flows = [None if f in ("none", "") else f for f in (args.flows or CONV_FLOWS).split(",")]
    latent = 32
    Xtr = datasets.load_binarized_mnist("train", args.data)
    Xte = datasets.load_binarized_mnist("test", args.data)
    out = args.out or os.path.join("runs", f"conv-flows-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(out, exist_ok=True)
    limit = args.eval_limit or 1000
    Xev = Xte[::-(-len(Xte) // limit)]   # an evenly spaced subset (the test file's first images are harder)
    cmd = (f"`python -m vaec reproduce conv-flows --epochs {epochs}" + (f" --data {args.data}" if args.data else "")
           + (f" --flows {args.flows}" if args.flows else "") + f" --eval-limit {limit}`")
    print(f"conv-flows: {len(Xtr)} training / {len(Xte)} test images, {epochs} epochs of batch 100 per posterior, "
          f"-log p(x) by IS k={args.eval_samples} on {len(Xev)} evenly spaced test images; out {out}", flush=True)
    rows = []

    def run(name, tag, model, budget_epochs=None, budget_seconds=None):
        res_path = os.path.join(out, f"result-{tag}.json")
        if os.path.exists(res_path):   # finished in an earlier sitting
            with open(res_path) as f:
                row = json.load(f)
            print(f"  [{name}] done before: test -ELBO {row['neg_elbo']:.2f}", flush=True)
            rows.append(row)
            return row
        ckdir = os.path.join(out, f"ckpt-{tag}")
        ckpt = os.path.join(ckdir, "checkpoint.vaec")

        def report(epoch, logs):
            if not args.quiet:
                print(f"  [{name}] epoch {epoch:3d}  train loss {logs['loss']:8.3f}  {logs['examples_per_s']:6.0f} ex/s",
                      flush=True)
            if budget_seconds is not None and sum(model.history["seconds"]) >= budget_seconds:
                return True   # the same wall-clock time as the plain conv VAE
            return False

        n_epochs = budget_epochs if budget_epochs is not None else 10_000
        model.fit(Xtr, epochs=n_epochs, batch_size=100, lr=1e-3, warmup=2, seed=args.seed, progress=False,
                  verbose=False, callback=report, checkpoint_dir=ckdir, checkpoint_every=1,
                  resume=ckpt if os.path.exists(ckpt) else None)
        train_s = float(sum(model.history["seconds"]))
        model.save(os.path.join(out, f"model-{tag}.vaec"))
        t1 = time.perf_counter()
        elbo = float(np.mean([model.elbo(Xte, seed=args.seed + r).mean() for r in range(10)]))
        rec = model.expected_log_likelihood(Xte, samples=10, seed=args.seed)
        ll = float(model.log_likelihood(Xev, samples=args.eval_samples, seed=args.seed).mean())
        row = {"model": name, "flow": model.flow, "epochs": len(model.history["loss"]), "train_seconds": train_s,
               "neg_elbo": -elbo, "rec": rec, "nll": -ll, "eval_samples": args.eval_samples, "eval_n": len(Xev),
               "eval_seconds": time.perf_counter() - t1, "params": int(model.num_params)}
        with open(res_path + f".tmp-{os.getpid()}", "w") as f:
            json.dump(row, f, indent=2)
        os.replace(res_path + f".tmp-{os.getpid()}", res_path)
        print(f"  [{name}] test -ELBO {-elbo:.2f}  E_q[log p(x|z)] {rec:.2f}  -log p(x) {-ll:.2f} (IS k="
              f"{args.eval_samples}, {len(Xev)} images)  train {train_s / 60:.1f} min", flush=True)
        line = (f"| {datetime.date.today()} | {name} | {row['epochs']} | {train_s / 60:.1f} min | {-elbo:.2f} | "
                f"{rec:.2f} | {-ll:.2f} ({args.eval_samples}, {len(Xev)}) | {cmd} |")
        _append_result(args.results, line, CONV_TITLE, CONV_HEADER)
        rows.append(row)
        return row

    # the plain conv VAE first and the MLP right after it, so that the two whose times are
    # compared train under the same conditions of the machine; then the flows
    order = sorted(flows, key=lambda f: f is not None)
    for flow in order:
        row = run(f"conv {_flow_name(flow)}", "conv-" + (flow or "plain").replace(":", ""),
                  _conv_flows_model(flow, latent, args.seed, args.threads), epochs)
        if flow is None:
            run("MLP 784-400-400-32, same time", "mlp", _conv_flows_model(None, latent, args.seed, args.threads, mlp=True),
                budget_seconds=row["train_seconds"])
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"experiment": "conv-flows", "rows": rows, "cpu": vaec.cpu_features(),
                   "python": platform.python_version()}, f, indent=2)
    return 0
