"""Writes 04_lecture_comparisons.ipynb (then execute it to fill its outputs:
python -c "import nbformat, nbclient; nb = nbformat.read('04_lecture_comparisons.ipynb', 4);
nbclient.NotebookClient(nb, timeout=7200, kernel_name='python3').execute(); nbformat.write(nb, '04_lecture_comparisons.ipynb')")."""
import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))  # noqa: E731
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))  # noqa: E731

md("""
# 04 — The lectures' comparisons, redone on vaec's C layers

The lectures vaec comes from do not only define the VAE: they argue for it against the
alternatives. Each argument is rerun here with the same C layers:

1. **Autoencoder vs VAE** — the 2-D codes of MNIST test digits under a deterministic
   autoencoder and under a VAE, and what decoding points *between* the clusters gives.
2. **Score-function vs reparameterized gradients** — "the variance might be high":
   the variance of both estimators of the encoder's gradient, measured.
3. **Wake-sleep vs AEVB** (Kingma & Welling 2014, Fig. 2) — the test lower bound against
   training examples seen, for several latent sizes.
4. **AEVB vs wake-sleep vs Monte Carlo EM on the marginal likelihood** (Kingma & Welling 2014,
   Fig. 3) — log p(x) itself, estimated by HMC, for a small and a large training set.
5. **Latent interpolation** — decoding the path between two images' codes, plain VAE vs a
   Real NVP posterior.

The data: full MNIST when it is found (`$VAEC_DATA`, `~/.cache/vaec`), otherwise the real
MNIST subset shipped with vaec; Frey faces when `$VAEC_DATA` has them. Set `VAEC_QUICK=1`
for a tiny budget (the tests do).
""")
code("""
import os, time, warnings
import numpy as np
import matplotlib.pyplot as plt
import vaec
from vaec import datasets, plot, experiments

QUICK = os.environ.get("VAEC_QUICK") == "1"
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    X_train, y_train = datasets.load_mnist("train")
    X_test, y_test = datasets.load_mnist("test")
print("\\n".join(str(m.message)[:120] for m in w))
if QUICK:
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(X_train))[:2000], rng.permutation(len(X_test))[:500]
    X_train, y_train, X_test, y_test = X_train[tr], y_train[tr], X_test[te], y_test[te]
EPOCHS = 2 if QUICK else 30
print(f"{len(X_train)} training and {len(X_test)} test images; kernels: {vaec.cpu_features()['isa']}")
""")

md("""
## 1. Autoencoder vs VAE: the 2-D codes

`vaec.Autoencoder` is the VAE's encoder and decoder with the noise and the KL taken out: the
code is a deterministic function of x, trained on the reconstruction cross-entropy alone.
Both models below have the same 784-400-2 encoder and 2-400-784 decoder (tanh), the same data,
epochs and seed.
""")
code("""
ae = vaec.Autoencoder(784, 2, hidden=(400,), seed=0)
vae = vaec.VAE(784, 2, hidden=(400,), seed=0)
for m in (ae, vae):
    t = time.perf_counter()
    m.fit(X_train, epochs=EPOCHS, batch_size=100, lr=1e-3, binarize="dynamic", seed=0, progress=False, verbose=False)
    print(f"{type(m).__name__:12s} trained in {time.perf_counter() - t:5.1f} s; final training loss {m.history['loss'][-1]:.2f} nats")
print(f"test: autoencoder reconstruction loss {ae.loss(X_test, binarize='dynamic', seed=0).mean():.2f}, "
      f"VAE -ELBO {-vae.elbo(X_test, binarize='dynamic', seed=0).mean():.2f} nats")

codes = {"autoencoder": ae.encode(X_test), "VAE (posterior means)": vae.encode(X_test)[0]}
fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
for ax, (name, c) in zip(axes, codes.items()):
    sc = ax.scatter(c[:, 0], c[:, 1], c=y_test, cmap="tab10", s=3, alpha=0.7)
    ax.set_title(f"{name}: codes of {len(c)} test digits")
    ax.set_xlabel("z[0]"); ax.set_ylabel("z[1]")
fig.colorbar(sc, ax=axes, ticks=range(10), label="digit")
for name, c in codes.items():
    print(f"{name:22s} code range: z0 [{c[:, 0].min():8.2f}, {c[:, 0].max():8.2f}], "
          f"z1 [{c[:, 1].min():8.2f}, {c[:, 1].max():8.2f}]")
""")
md("""
The VAE's KL term pulls the codes into a ball around the origin where the prior N(0, I) has
its mass; the autoencoder has no such pressure, so its clusters sit wherever they landed, at
scales of its own choosing, with empty space between them.

**Decoding between the clusters.** A 12×12 grid over the box that holds 98% of each model's
test codes, decoded:
""")
code("""
def grid_decode(model, c, n=12):
    lo, hi = np.percentile(c, 1, axis=0), np.percentile(c, 99, axis=0)
    g0, g1 = np.linspace(lo[0], hi[0], n), np.linspace(hi[1], lo[1], n)
    Z = np.array([[a, b] for b in g1 for a in g0], np.float32)
    imgs = model.decode(Z).reshape(n, n, 28, 28)
    return imgs.transpose(0, 2, 1, 3).reshape(n * 28, n * 28), (lo, hi)

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, (name, m, c) in zip(axes, [("autoencoder", ae, codes["autoencoder"]),
                                    ("VAE", vae, codes["VAE (posterior means)"])]):
    img, (lo, hi) = grid_decode(m, c)
    ax.imshow(img, cmap="gray", extent=[lo[0], hi[0], lo[1], hi[1]], aspect="auto")
    ax.set_title(f"{name}: decoded grid over its codes' range")
fig.tight_layout()
""")
md("""
And the straight line between two digits' codes (a 0 and a 1 of the test set), decoded by each
model — `vaec.plot.interpolation`:
""")
code("""
i0, i1 = int(np.flatnonzero(y_test == 0)[0]), int(np.flatnonzero(y_test == 1)[0])
for m in (ae, vae):
    display(plot.interpolation(m, X_test[i0], X_test[i1], steps=10, path="linear"))
""")

md("""
## 2. Score-function vs reparameterized gradients

Two unbiased estimators of the encoder's gradient of E_q[log p(x|z)]:
* **reparameterized**: z = μ + σ ⊙ ε, differentiate through the decoder;
* **score function** (REINFORCE, black-box VI): (log p(x|z) − b) ∇ log q(z|x), which needs
  no derivative of the decoder, with `b` an optional baseline (here the running mean of
  log p(x|z) over earlier calls).

`m.loss_and_grad(x, estimator=..., baseline=...)` computes either in C (the KL's gradient is
analytic in both, the decoder's gradient is the same); `vaec.gradient_variance` measures the
per-parameter variance over independent draws. The model: a 20-D VAE trained briefly, a fixed
batch of 100 test digits; the number of samples averaged per gradient (L) varies.
""")
code("""
m20 = vaec.VAE(784, 20, hidden=(400,), seed=0)
m20.fit(X_train, epochs=1 if QUICK else 10, batch_size=100, binarize="dynamic", seed=0, progress=False, verbose=False)
xb = datasets.binarize(X_test[:100], seed=0)
Ls = [1, 4] if QUICK else [1, 2, 4, 8, 16, 32]
S = 10 if QUICK else 100
enc = [k for k in m20.params if k.startswith("encoder")]
table = {}
t = time.perf_counter()
for est, base in (("reparam", None), ("score", None), ("score", "mean")):
    label = est + (" + running-mean baseline" if base else "")
    table[label] = []
    for L in Ls:
        mean, var = vaec.gradient_variance(m20, xb, est, samples=S, baseline=base, mc_samples=L, seed=L, return_mean=True)
        table[label].append(np.mean(np.concatenate([var[k].ravel() for k in enc])))
        if L == Ls[0]:
            table[label + " mean"] = mean
print(f"{3 * len(Ls) * S} gradient draws in {time.perf_counter() - t:.1f} s")
fig, ax = plt.subplots(figsize=(6.5, 4.5))
for label in ("reparam", "score", "score + running-mean baseline"):
    ax.loglog(Ls, table[label], "o-", label=label)
ax.set_xlabel("samples per gradient estimate (L)"); ax.set_ylabel("mean variance of encoder gradients")
ax.set_title("Gradient variance of the two estimators"); ax.legend()
for label in ("score", "score + running-mean baseline"):
    print(f"{label:30s} variance / reparam variance at L = {Ls[0]}: {table[label][0] / table['reparam'][0]:10.0f}x")
""")
md("""
Both fall as 1/L, but the score-function estimator starts far higher (the ratios printed above): it
only sees *whether* a sample of z was good, not *in which direction* to move it. The baseline
removes the large common offset of log p(x|z) (tens of nats below zero for every image) and with it most of
the variance, and still leaves the reparameterized estimator far ahead.

Both are unbiased. With many draws their means agree within Monte Carlo error (the tests check
this parameter by parameter on a small model, `tests/test_lecture.py`); here, the correlation
of the two mean gradients over all encoder parameters (the analytic KL gradient, the same in
both, is part of each, so this is a sanity check rather than a proof):
""")
code("""
ra = np.concatenate([table["reparam mean"][k].ravel() for k in enc])
sc = np.concatenate([table["score + running-mean baseline mean"][k].ravel() for k in enc])
print(f"correlation of the mean encoder gradients (reparam vs score + baseline, {S} draws each): "
      f"{np.corrcoef(ra, sc)[0, 1]:.3f}")
""")

md("""
## 3. Wake-sleep vs AEVB (Kingma & Welling 2014, Fig. 2)

Wake-sleep (Hinton et al. 1995) trains the same encoder and decoder without a joint objective:
the **wake** phase moves the decoder up log p(x|z) at z ~ q(z|x); the **sleep** phase moves the
encoder up log q(z|x) on pairs (z, x) *dreamt* by the generative model, z ~ p(z), x ~ p(x|z).
`fit(..., algorithm="wake-sleep")` does both in C each step (as many dreams as the batch has
images). The figure: the test ELBO against training examples seen. The paper runs to 10^8
examples; here the budget is smaller — `python -m vaec reproduce kingma-wake-sleep` runs the
larger one recorded in docs/RESULTS.md.
""")
code("""
data = {"mnist": (X_train, X_test)}
try:
    F = datasets.load_frey_faces()
    held = np.arange(len(F)) % 10 == 0
    data["frey"] = (F[~held], F[held])
except FileNotFoundError as e:
    print("no Frey faces here:", str(e)[:100])
latents = {"mnist": (3, 20) if QUICK else (3, 5, 10, 20, 200), "frey": (2, 10) if QUICK else (2, 5, 10, 20)}
budget = 2 * len(X_train) if QUICK else 300_000
# the curves of a `python -m vaec reproduce kingma-wake-sleep` run, when given, instead of a new run
saved = os.environ.get("VAEC_WAKE_SLEEP_CURVES")
if saved and not QUICK:
    import json
    curves = {d: {int(z): v for z, v in c.items()} for d, c in json.load(open(saved)).items()}
    print(f"curves of the run in {saved}")
else:
    t = time.perf_counter()
    curves = experiments.wake_sleep_curves(data, latents, budget, points=6 if QUICK else 10)
    print(f"{time.perf_counter() - t:.0f} s")
for d, c in curves.items():
    for z, v in c.items():
        a, w = v["aevb"], v["wake-sleep"]
        print(f"{d:6s} latent {z:3d}: after {a['examples'][-1]:>9,} examples  AEVB {a['test_elbo'][-1]:9.2f}  "
              f"wake-sleep {w['test_elbo'][-1]:9.2f}  (AEVB ahead by {a['test_elbo'][-1] - w['test_elbo'][-1]:+.2f} nats)")
experiments.wake_sleep_figure(curves)
""")
md("""
Why wake-sleep lags: the sleep phase fits q to the model's own dreams, not to the data, and it
minimizes KL(p(z|x)‖q(z|x)) rather than the KL(q‖p) of the bound; the two phases do not follow
the gradient of any one objective. How far behind it stays at each latent size is in the lines
above and the table in docs/RESULTS.md.
""")

md("""
## 4. AEVB vs wake-sleep vs Monte Carlo EM on the marginal likelihood (Kingma & Welling 2014, Fig. 3)

The bound of section 3 is not what the methods are after: each fits the decoder to make
log p(x) = log ∫ p(z) p(x|z) dz large. Kingma & Welling compared three ways of fitting the same
784-100-3 decoder, with log p(x) itself on the y-axis:

* **AEVB** — the encoder q(z|x) and the decoder on the reparameterized ELBO;
* **wake-sleep** — as in section 3;
* **Monte Carlo EM** — no encoder at all: every training image keeps an HMC chain on its true
  posterior p(z|x) ∝ p(z) p(x|z) (the gradient of log p(x, z) in z is the decoder's backward pass to
  its input); each step moves the batch's chains by one HMC transition of 10 leapfrog steps and
  then makes 5 decoder updates at those z. `fit(..., algorithm="mcem")` does it in C.

log p(x) is estimated by the paper's appendix-D estimator, `log_likelihood(X, method="hmc")`: an
HMC chain per image (4 leapfrog steps), a full-covariance Gaussian q(z) fitted to L of its states, and
log p(x) ≈ −log (1/L) Σ q(z_l) / p(x, z_l) over L more. It needs no encoder, so the three methods are
measured alike. All three train with Adagrad, weights from N(0, 0.01²) and a weight decay of 1/N
(`optimizer="adagrad"`, `init_std=0.01`, `weight_decay=...`), on static binary images, with
N_train = 1000 (where overfitting shows) and a large training set. The curves of a
`python -m vaec reproduce kingma-mcem` run (the budget in docs/RESULTS.md) are drawn when
`$VAEC_MCEM_CURVES` names its `curves.json`; otherwise a smaller budget runs here.
""")
code("""
# binary images once, as floats (binarize returns uint8 0/1, which vaec would read as grey levels / 255)
Xb_train = datasets.binarize(X_train, "static", seed=0).astype(np.float32)
Xb_test = datasets.binarize(X_test, "static", seed=1).astype(np.float32)
saved = os.environ.get("VAEC_MCEM_CURVES")
if saved and not QUICK:
    import json
    curves3 = {int(N): c for N, c in json.load(open(saved)).items()}
    print(f"curves of the run in {saved}")
else:
    sizes = (500,) if QUICK else (1000, min(50000, len(Xb_train)))
    t = time.perf_counter()
    curves3 = experiments.marginal_likelihood_curves(
        Xb_train, Xb_test, sizes, 4000 if QUICK else 300_000, lrs=(0.1,) if QUICK else experiments.FIG3_LRS,
        pilot=500 if QUICK else 20_000, points=3 if QUICK else 6, eval_n=50 if QUICK else 500,
        hmc_samples=20 if QUICK else 200, log=lambda msg: None)
    print(f"{time.perf_counter() - t:.0f} s")
for N, by_algo in curves3.items():
    for algo, c in by_algo.items():
        best = int(np.argmax(c["test_ll"]))
        print(f"N_train {N:6d}  {experiments.FIG3_NAMES[algo]:10s} after {c['examples'][-1]:>11,} examples: "
              f"log p(x) train {c['train_ll'][-1]:8.2f}  test {c['test_ll'][-1]:8.2f}  "
              f"(best test {c['test_ll'][best]:8.2f} at {c['examples'][best]:,}; Adagrad lr {c['lr']:g})")
experiments.marginal_likelihood_figure(curves3)
""")

md("""
## 5. Interpolation: plain VAE vs Real NVP posterior

The same 20-D VAE with and without a Real NVP flow (4 coupling layers) on its posterior. With a
flow, a code is q0's mean carried through the flow (`VAE.code`), the decoder's input space.
Each row: x_a, ten decoded points of the spherical path between the two codes, x_b.
""")
code("""
pairs = [(int(np.flatnonzero(y_test == a)[k]), int(np.flatnonzero(y_test == b)[k])) for k, (a, b) in enumerate([(0, 6), (1, 7), (3, 8), (4, 9)])]
xa = X_test[[p[0] for p in pairs]]; xb = X_test[[p[1] for p in pairs]]
models = {}
for flow in (None, "realnvp:4"):
    m = vaec.VAE(784, 20, hidden=(400,), flow=flow, seed=0)
    t = time.perf_counter()
    m.fit(X_train, epochs=EPOCHS, batch_size=100, binarize="dynamic", seed=0, progress=False, verbose=False)
    print(f"{flow or 'no flow':10s}: test ELBO {m.elbo(X_test, binarize='dynamic', seed=0).mean():8.2f} nats, "
          f"trained in {time.perf_counter() - t:.0f} s")
    models[flow or "no flow"] = m
for name, m in models.items():
    display(plot.interpolation(m, xa, xb, steps=10, path="spherical", title=f"VAE, {name}: spherical interpolation"))
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "04_lecture_comparisons.ipynb")
