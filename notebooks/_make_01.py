"""Writes 01_vae_mnist.ipynb (run it, then execute the notebook to fill its outputs)."""
import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# 01 — A VAE on MNIST, by hand

Kingma & Welling (2014), *Auto-Encoding Variational Bayes*: a Gaussian encoder
q(z|x), a Bernoulli decoder p(x|z), trained on the ELBO with the reparameterization
trick. The numerical work runs in vaec's C core; the training loop is written here, one
`train_step` per mini-batch, so every step is in view.

The data: full MNIST when it is found (`$VAEC_DATA`, `~/.cache/vaec`), otherwise the real
MNIST subset shipped with vaec (10,000 training and 2,000 test digits). Set
`VAEC_QUICK=1` to run everything on a small budget (the tests do).
""")
code("""
import os, time, warnings
import numpy as np
import matplotlib.pyplot as plt
import vaec
from vaec import datasets, plot

QUICK = os.environ.get("VAEC_QUICK") == "1"
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    X_train, y_train = datasets.load_mnist("train")
    X_test, y_test = datasets.load_mnist("test")
print("\\n".join(str(m.message)[:120] for m in w))
if QUICK:
    X_train, y_train, X_test, y_test = X_train[:2000], y_train[:2000], X_test[:500], y_test[:500]
EPOCHS = 2 if QUICK else 30
print(f"{len(X_train)} training and {len(X_test)} test images, {EPOCHS} epochs; kernels: {vaec.cpu_features()['isa']}")
""")
md("""
## The training loop

Images stay `uint8` in memory; vaec scales them by 1/255 inside C and, with
`binarize="dynamic"`, draws each pixel as Bernoulli(grey level) every time an image is
used — the dynamic binarization of Burda et al. The test ELBO is computed with a fixed seed
so epochs are compared on the same noise.
""")
code("""
def train(latent_dim, epochs=EPOCHS, batch_size=100, lr=1e-3, seed=0):
    m = vaec.VAE(784, latent_dim, hidden=(400,), activation="tanh", seed=seed)
    rng = np.random.default_rng(seed)
    curve = {"epoch": [], "train": [], "test": []}
    for epoch in range(1, epochs + 1):
        t0, order, total = time.perf_counter(), rng.permutation(len(X_train)), 0.0
        for i in range(0, len(order), batch_size):
            batch = X_train[order[i:i + batch_size]]
            total += m.train_step(batch, lr=lr, binarize="dynamic") * len(batch)
        test = m.elbo(X_test, seed=0, binarize="dynamic").mean()
        curve["epoch"].append(epoch); curve["train"].append(-total / len(order)); curve["test"].append(test)
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"latent {latent_dim:2d}  epoch {epoch:3d}  train ELBO {-total / len(order):8.2f}  "
                  f"test ELBO {test:8.2f}  ({time.perf_counter() - t0:.1f} s)")
    return m, curve

vae2, curve2 = train(latent_dim=2)
vae20, curve20 = train(latent_dim=20)
""")
code("""
fig, ax = plt.subplots(figsize=(6, 4))
for c, name in ((curve2, "2-D latent"), (curve20, "20-D latent")):
    ax.plot(c["epoch"], c["train"], "--", label=f"{name}, train")
    ax.plot(c["epoch"], c["test"], label=f"{name}, test")
ax.set_xlabel("epoch"); ax.set_ylabel("ELBO (nats per image)"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title("The lower bound rises as the model learns");
""")
md("""
## The learned 2-D manifold (Kingma & Welling, Fig. 4)

A grid of z values placed through the inverse Gaussian CDF, each decoded to the
decoder's mean image.
""")
code("plot.latent_manifold(vae2, n=20)")
code("plot.latent_scatter(vae2, X_test, y_test)")
md("## Samples and reconstructions (20-D latent)")
code("plot.samples_grid(vae20, n=64, seed=0)")
code("plot.reconstructions(vae20, X_test, n=10)")
md("""
## Frey faces with a Gaussian decoder

1965 grey-level faces of 20×28 pixels; a Gaussian decoder with a mean and a
log-variance layer, as in Kingma & Welling's Frey experiments (200 hidden units). Runs
when `frey_rawface.mat` is found in `$VAEC_DATA` or `~/.cache/vaec`.
""")
code("""
try:
    faces = datasets.load_frey_faces()
except FileNotFoundError as e:
    faces = None
    print("Frey faces not found, skipping:", str(e)[:100])
if faces is not None:
    faces = faces.astype(np.float32) / 255
    frey = vaec.VAE(560, 2, hidden=(200,), likelihood="gaussian", seed=0)
    frey_epochs = 5 if QUICK else 300
    hist = frey.fit(faces, epochs=frey_epochs, batch_size=100, lr=1e-3, progress=False, verbose=False)
    print(f"Frey faces: train ELBO after {frey_epochs} epochs: {-hist['loss'][-1]:.1f} nats per face")
""")
code("""
if faces is not None:
    display(plot.latent_manifold(frey, n=12, shape=(28, 20)))
""")
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
nbf.write(nb, "01_vae_mnist.ipynb")
