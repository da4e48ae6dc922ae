"""Writes 05_conv_flows.ipynb (then execute it to fill its outputs, with the models of a
`python -m vaec reproduce conv-flows --out DIR` run in VAEC_CONV_FLOWS_DIR=DIR:
python -c "import nbformat, nbclient; nb = nbformat.read('05_conv_flows.ipynb', 4);
nbclient.NotebookClient(nb, timeout=7200, kernel_name='python3').execute(); nbformat.write(nb, '05_conv_flows.ipynb')")."""
import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))  # noqa: E731
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))  # noqa: E731

md("""
# 05 — A convolutional VAE with normalizing-flow posteriors

The system reproduced here passes images through **convolutional and pooling layers**, then a
few fully connected ones, to a fixed-size embedding; the embedding's posterior goes through
**normalizing flows** (planar, or Real NVP coupling layers); the decoder turns the transformed
embedding back into an image through **transposed convolutions**. The network is written as
lists of `vaec.layers`, as one would write a `torch.nn.Sequential`:
""")
code("""
import json, os, time, warnings
import numpy as np
import vaec
from vaec import datasets, plot, layers as L
from vaec.experiments import conv_flows_network

QUICK = os.environ.get("VAEC_QUICK") == "1"
RUN = os.environ.get("VAEC_CONV_FLOWS_DIR", "")   # the folder of a `reproduce conv-flows` run, if any
enc, dec = conv_flows_network()
print("encoder:", enc)
print("decoder:", dec)
""")

md("""
## The data

Larochelle's statically binarized MNIST when `$VAEC_DATA` holds it (`binarized_mnist_*.mat`);
otherwise the real MNIST subset shipped with vaec, binarized once with a fixed seed. Images
are `(n, 1, 28, 28)` arrays; the models take them as they are (or as rows of 784).
""")
code("""
try:
    X_train = datasets.load_binarized_mnist("train")
    X_test = datasets.load_binarized_mnist("test")
    source = "binarized MNIST (Larochelle)"
except FileNotFoundError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xtr, _ = datasets.load_mnist("train")
        Xte, _ = datasets.load_mnist("test")
    X_train = datasets.binarize(Xtr, "static", seed=0)
    X_test = datasets.binarize(Xte, "static", seed=1)
    source = "the shipped MNIST subset, binarized once"
X_train = X_train.reshape(-1, 1, 28, 28).astype(np.float32)
X_test = X_test.reshape(-1, 1, 28, 28).astype(np.float32)
if QUICK:
    X_train, X_test = X_train[:600], X_test[:100]
print(f"{source}: {len(X_train)} training and {len(X_test)} test images, {X_train.shape[1:]} each")
""")

md("""
## The experiment's table

`python -m vaec reproduce conv-flows` trains the network above with each posterior — plain,
planar with K = 4, 10, 20, 40 layers, Real NVP with K = 2, 5, 10, 20 — on the same budget, and
an MLP VAE for the plain conv VAE's wall-clock time, then reports the test −ELBO, the
reconstruction term E_q[log p(x|z)] (the figure the original table gives) and −log p(x) by
importance sampling (k = 5000). The numbers below are those of the run in
`VAEC_CONV_FLOWS_DIR` (docs/RESULTS.md has the same rows); without one (quick mode) this part
is skipped.
""")
code("""
rows = []
if RUN and os.path.isdir(RUN):
    for f in sorted(os.listdir(RUN)):
        if f.startswith("result-") and f.endswith(".json"):
            with open(os.path.join(RUN, f)) as fh:
                rows.append(json.load(fh))
order = {"conv diagonal Gaussian": 0, "MLP 784-400-400-32, same time": 1}
rows.sort(key=lambda r: (order.get(r["model"], 2), r["flow"] is not None and r["flow"].split(":")[0],
                         int(r["flow"].split(":")[1]) if r["flow"] else 0))
if rows:
    print(f"{'model':32s} {'epochs':>6s} {'train min':>9s} {'-ELBO':>8s} {'E_q[log p(x|z)]':>16s} {'-log p(x)':>10s}")
    for r in rows:
        print(f"{r['model']:32s} {r['epochs']:6d} {r['train_seconds'] / 60:9.1f} {r['neg_elbo']:8.2f} "
              f"{r['rec']:16.2f} {r['nll']:10.2f}")
    print(f"(-log p(x): IS k={rows[0]['eval_samples']} on {rows[0]['eval_n']} evenly spaced test images)")
else:
    print("no experiment folder given (VAEC_CONV_FLOWS_DIR): the table is skipped")
""")

md("""
## A plain VAE and a Real NVP one

The two models whose latent spaces we compare: the run's, when there is one, else trained
here on a small budget.
""")
code("""
def trained(flow, tag):
    path = os.path.join(RUN, f"model-{tag}.vaec") if RUN else ""
    if path and os.path.exists(path):
        return vaec.load(path)
    m = vaec.VAE(input_shape=(1, 28, 28), latent_dim=32, encoder=enc, decoder=dec, flow=flow, seed=0)
    t = time.perf_counter()
    m.fit(X_train, epochs=1 if QUICK else 10, batch_size=100, warmup=2, seed=0, progress=False, verbose=False)
    print(f"{flow or 'plain'}: trained here in {time.perf_counter() - t:.0f} s")
    return m

plain = trained(None, "conv-plain")
nvp = trained("realnvp:10", "conv-realnvp10")
X_eval = X_test[::max(1, len(X_test) // 500)]   # evenly spaced: the file is not in random order
for name, m in (("plain", plain), ("Real NVP", nvp)):
    print(f"{name:9s}: test ELBO {m.elbo(X_eval, seed=0).mean():8.2f} nats on {len(X_eval)} evenly spaced test images")
""")

md("""
## Samples and reconstructions
""")
code("""
display(plot.samples_grid(plain, n=64, seed=0, title="plain posterior: samples"))
display(plot.samples_grid(nvp, n=64, seed=0, title="Real NVP posterior: samples"))
display(plot.reconstructions(plain, X_test, n=10))
display(plot.reconstructions(nvp, X_test, n=10))
""")

md("""
## Latent interpolations: plain VAE beside the Real NVP one

Each row decodes the path between two test images' codes: the posterior mean, carried through
the flow for the Real NVP model (`model.code`), then a spherical path between them
(`vaec.plot.interpolation`).
""")
code("""
n = len(X_test)   # pairs from across the test set, whose file runs digit by digit
pairs = [(int(a * n), int(b * n)) for a, b in ((0.02, 0.55), (0.17, 0.83), (0.31, 0.64), (0.46, 0.97))]
xa = X_test[[a for a, _ in pairs]]
xb = X_test[[b for _, b in pairs]]
display(plot.interpolation(plain, xa, xb, steps=10, path="spherical", title="plain posterior"))
display(plot.interpolation(nvp, xa, xb, steps=10, path="spherical", title="Real NVP posterior (realnvp:10)"))
""")

md("""
## The same network in PyTorch

`vaec.to_torch` gives a `torch.nn.Module` with the same layers and weights (torch is not a
dependency of vaec; this cell is skipped without it).
""")
code("""
try:
    import torch
    tm = vaec.to_torch(plain)
    with torch.no_grad():
        mu_t = tm.encode(torch.from_numpy(X_test[:8]))[0].numpy()
    print("largest |mu_torch - mu_vaec|:", float(np.abs(mu_t - plain.encode(X_test[:8])[0]).max()))
except ImportError:
    print("PyTorch is not installed")
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "05_conv_flows.ipynb")
