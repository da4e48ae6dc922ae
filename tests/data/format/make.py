"""Writes one small model file per (model kind, config-record version) that today's vaec
writes, and what each gives (expected.npz), for tests/test_format.py: run once, when a
record version is added (docs/FORMAT.md lists them; the files of earlier versions stay).

    python tests/data/format/make.py [NAME ...]     # only those (a new fixture), the others kept

Written at format version 1 with config records of version 2 (VAE, autoencoder, M2); the
version-1 records and the flow's record are kept by the older fixtures in tests/data."""
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # tests/ for format_tools
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

import vaec  # noqa: E402
from vaec import layers as L  # noqa: E402

X = (np.random.default_rng(0).random((6, 16)) < 0.4).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2])


def models():
    m = vaec.VAE(16, latent_dim=3, hidden=(8, 5), activation="relu", seed=1, flow="planar:2", threads=1)
    yield "vae_mlp_record2", m, lambda: {"elbo": m.elbo(X, seed=1), "mu": m.encode(X)[0]}
    c = vaec.VAE(input_shape=(1, 4, 4), latent_dim=2, seed=2, threads=1,
                 encoder=[L.Conv2d(3, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Linear(6), L.Tanh()],
                 decoder=[L.Linear(12), L.Unflatten(3, 2, 2), L.Upsample(2), L.ConvTranspose2d(1, 3, padding=1)])
    yield "vae_conv_record2", c, lambda: {"elbo": c.elbo(X, seed=1), "mu": c.encode(X)[0]}
    a = vaec.Autoencoder(16, latent_dim=2, hidden=(6,), likelihood="gaussian", seed=3, threads=1)
    yield "ae_record2", a, lambda: {"code": a.encode(X), "loss": a.loss(X)}
    q = vaec.M2(16, n_classes=3, latent_dim=2, hidden=(7,), classifier_hidden=(5,), seed=4, threads=1)
    yield "m2_record2", q, lambda: {"proba": q.predict_proba(X), "elbo": q.elbo(X, Y, seed=1)}
    # the optimizer field (0.1.0's pad): a VAE whose state is Adagrad's (added with MCEM)
    g = vaec.VAE(16, latent_dim=3, hidden=(8,), seed=5, threads=1)
    yield "vae_adagrad", g, lambda: {"elbo": g.elbo(X, seed=1), "mu": g.encode(X)[0],
                                     "adagrad_sums": g._arenas["adam_v"].copy()}


def main(only=None):
    """Writes the fixtures named in ``only`` (all when None), keeping what expected.npz holds
    for the others: a fixture once committed is not rewritten."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    path = os.path.join(HERE, "expected.npz")
    out = {"meta/commit": np.array(commit)}
    if only and os.path.exists(path):
        old = np.load(path)
        out = {k: old[k] for k in old.files}
        out[f"meta/commit/{'+'.join(only)}"] = np.array(commit)
    for name, m, numbers in models():
        if only and name not in only:
            continue
        # a few steps, so that the Adam moments and step count are not the initial ones
        if name == "vae_adagrad":
            m.fit(X, epochs=1, batch_size=2, lr=1e-2, seed=0, progress=False, optimizer="adagrad", weight_decay=0.01)
        elif isinstance(m, vaec.M2):
            for s in range(3):
                m.loss_and_grad(X[:3], Y[:3], X[3:], seed=s)
                m._core.adam_step(lr=1e-2)
        else:
            for s in range(3):
                m.train_step(X, lr=1e-2, seed=s)
        m.save(os.path.join(HERE, name + ".vaec"))
        for k, v in numbers().items():
            out[f"{name}/{k}"] = np.asarray(v)
        for k, v in m.params.items():
            out[f"{name}/param/{k}"] = v.copy()
        out[f"{name}/step"] = np.array(m.optimizer_state["step"])
    np.savez_compressed(path, **out)
    print(commit, sorted(f for f in os.listdir(HERE) if f.endswith(".vaec")))


if __name__ == "__main__":
    main(sys.argv[1:] or None)   # e.g. `make.py vae_adagrad`: that fixture alone
