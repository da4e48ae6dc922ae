"""The models and numbers that pin vaec's results across the network redesign (issue 17).

Each case builds a small model of one kind from a seed, trains it a few steps through the
public API and evaluates it; it returns a dict name -> array. tests/data/redesign/make.py
ran every case at commit 6ece87c (before the redesign) on each kernel path of that machine
and stored the numbers (numbers_<isa>.npz) and a few of the models' files (*.vaec);
tests/test_redesign_fixtures.py runs the same cases on today's code and holds it to them,
bit for bit on the same kernel path. Only the public API is used here, so this module
means the same thing before and after the redesign.
"""
import hashlib

import numpy as np

import vaec
from vaec import datasets

THREADS = 2
BIG = 1024   # arrays of more elements are stored as a sha256 and a sum (tests/data/redesign/make.py)


def digits(n=700, size=28):
    """The first n training images of the MNIST subset shipped in the package, uint8
    (n, size*size); size 14 is the 2x2 mean (rounded down)."""
    X, y = datasets._load_shipped_mnist("train")
    X, y = X[:n], y[:n]
    if size == 14:
        X = X.reshape(n, 14, 2, 14, 2).astype(np.uint16).mean(axis=(2, 4)).astype(np.uint8).reshape(n, 196)
    return np.ascontiguousarray(X), y.astype(np.int64)


def rowmajor_params(m):
    return np.concatenate([np.ascontiguousarray(v, dtype=np.float32).ravel() for v in m.params.values()])


def rowmajor_grads(m):
    return np.concatenate([np.ascontiguousarray(v, dtype=np.float32).ravel() for v in m.grads.values()])


def digest(a):
    return np.frombuffer(hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest(), np.uint8)


def _coder_eval(m, X, out, prefix=""):
    """What every VAE case records after training."""
    out[prefix + "params_sha"] = digest(rowmajor_params(m))
    out[prefix + "elbo"] = m.elbo(X[:700], samples=3, seed=5, binarize="dynamic")
    out[prefix + "iwae"] = m.iwae_bound(X[:60], samples=7, seed=2, binarize="dynamic")
    out[prefix + "loglik"] = m.log_likelihood(X[:9], samples=40, seed=3, binarize="dynamic")
    mu, lv = m.encode(X[:9])
    out[prefix + "mu"], out[prefix + "logvar"] = mu, lv
    out[prefix + "decode"] = m.decode(mu)
    out[prefix + "code"] = m.code(X[:5])
    out[prefix + "sample"] = m.sample(4, seed=1)
    out[prefix + "one_mu"] = m.encode(X[3:4])[0]


def _train_steps(m, X, out, steps=3, n=600, **kw):
    losses = []
    for s in range(steps):
        xb = X[(s * 37) % 100:(s * 37) % 100 + n]
        losses.append(m.train_step(xb, lr=2e-3, binarize=kw.pop("binarize", "dynamic") if s == 0 else "dynamic", **kw))
    out["losses"] = np.array(losses)


def case_vae_bernoulli_784(save=None):
    """784-48-8 tanh/Bernoulli: two 512-row chunks per step, the sparse first layer (auto)."""
    X, _ = digits(700, 28)
    m = vaec.VAE(784, 8, hidden=(48,), activation="tanh", seed=11, threads=THREADS)
    out = {}
    _train_steps(m, X, out)
    eps = np.random.default_rng(0).standard_normal((2, 40, 8)).astype(np.float32)
    out["eg_loss"] = np.array([m.loss_and_grad(X[:40], eps=eps, binarize="dynamic", seed=4)])
    out["eg_grads"] = rowmajor_grads(m)
    _coder_eval(m, X, out)
    return out


def case_vae_dense_input(save=None):
    """The same network with the sparse first layer off, float input."""
    prev = vaec.set_sparse_input("off")
    try:
        X, _ = digits(700, 28)
        Xf = X.astype(np.float32) / 255.0
        m = vaec.VAE(784, 8, hidden=(48,), activation="tanh", seed=11, threads=THREADS)
        out = {}
        _train_steps(m, Xf, out, binarize=None)
        _coder_eval(m, Xf, out)
        return out
    finally:
        vaec.set_sparse_input(prev)


def case_vae_sparse_always(save=None):
    prev = vaec.set_sparse_input("always")
    try:
        X, _ = digits(700, 14)
        m = vaec.VAE(196, 4, hidden=(20, 12), activation="elu", seed=3, threads=THREADS)
        out = {}
        _train_steps(m, X, out, steps=2, n=80)
        _coder_eval(m, X, out)
        return out
    finally:
        vaec.set_sparse_input(prev)


def case_vae_gaussian_fit(save=None):
    """Gaussian likelihood, two relu layers, fit() with validation and exponential decay."""
    X, _ = digits(700, 14)
    Xf = X.astype(np.float32) / 255.0
    m = vaec.VAE(196, 5, hidden=(24, 16), activation="relu", likelihood="gaussian", seed=5, threads=THREADS)
    h = m.fit(Xf[:500], epochs=2, batch_size=128, lr=1e-3, validation_data=Xf[500:600], seed=9, progress=False,
              lr_schedule="exponential")
    out = {"fit_loss": np.array(h["loss"]), "fit_val": np.array(h["val_elbo"])}
    _coder_eval(m, Xf, out)
    if save:
        m.save(save + "/vae_gaussian.vaec")
    return out


def case_vae_nohidden(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 3, hidden=(), activation="softplus", seed=2, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=2, n=100)
    _coder_eval(m, X, out)
    return out


def case_vae_three_layers_sigmoid(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 6, hidden=(30, 20, 10), activation="sigmoid", seed=8, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=2, n=64, samples=3)
    _coder_eval(m, X, out)
    return out


def case_vae_leaky_iwae(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), activation="leaky_relu", seed=6, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=3, n=50, iw_samples=5)
    _coder_eval(m, X, out)
    return out


def case_vae_beta_freebits(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), seed=7, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=2, n=90, beta=0.5, free_bits=0.05)
    h = m.fit(X[:200], epochs=2, batch_size=50, warmup=1, seed=1, progress=False, binarize="dynamic")
    out["fit_loss"] = np.array(h["loss"])
    _coder_eval(m, X, out)
    return out


def case_vae_score(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), seed=12, threads=THREADS)
    out = {}
    losses = [m.train_step(X[:70], lr=1e-3, binarize="dynamic", estimator="score", baseline="mean") for _ in range(3)]
    out["losses"] = np.array(losses)
    m.loss_and_grad(X[:40], seed=3, estimator="score", baseline=-120.0, binarize="dynamic")
    out["score_grads"] = rowmajor_grads(m)
    var = vaec.gradient_variance(m, X[:30], estimator="reparam", samples=3, seed=2, binarize="dynamic")
    out["gradvar"] = np.concatenate([v.ravel() for v in var.values()])
    _coder_eval(m, X, out)
    return out


def case_vae_wake_sleep(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), seed=13, threads=THREADS)
    h = m.fit(X[:300], epochs=2, batch_size=100, algorithm="wake-sleep", seed=4, progress=False, binarize="dynamic")
    out = {"fit_loss": np.array(h["loss"]), "sleep_loss": np.array(h["sleep_loss"])}
    _coder_eval(m, X, out)
    return out


def _flow_case(spec, seed, save=None, name=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), flow=spec, seed=seed, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=2, n=60, samples=2)
    z = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    zk, ld = m.flow_transform(z)
    out["flow_zk"], out["flow_ld"] = zk, ld
    _coder_eval(m, X, out)
    if save and name:
        m.save(save + "/" + name)
    return out


def case_vae_planar(save=None):
    return _flow_case("planar:3", 21, save, "vae_planar.vaec")


def case_vae_radial(save=None):
    return _flow_case("radial:2", 22)


def case_vae_realnvp(save=None):
    return _flow_case("realnvp:2:8", 23, save, "vae_realnvp.vaec")


def case_vae_realnvp_iwae(save=None):
    X, _ = digits(700, 14)
    m = vaec.VAE(196, 4, hidden=(24,), flow="realnvp:3:6:relu:1.5", seed=24, threads=THREADS)
    out = {}
    _train_steps(m, X, out, steps=2, n=40, iw_samples=3)
    _coder_eval(m, X, out)
    return out


def case_autoencoder_bernoulli(save=None):
    X, _ = digits(700, 14)
    m = vaec.Autoencoder(196, 3, hidden=(24,), seed=31, threads=THREADS)
    h = m.fit(X[:300], epochs=2, batch_size=100, seed=2, progress=False, binarize="dynamic",
              validation_data=X[300:400])
    out = {"fit_loss": np.array(h["loss"]), "fit_val": np.array(h["val_loss"])}
    out["params_sha"] = digest(rowmajor_params(m))
    out["loss"] = m.loss(X[:50], binarize="dynamic", seed=1)
    out["codes"] = m.encode(X[:9])
    out["decode"] = m.decode(out["codes"])
    out["recon"] = m.reconstruct(X[:3])
    if save:
        m.save(save + "/autoencoder.vaec")
    return out


def case_autoencoder_gaussian(save=None):
    X, _ = digits(700, 14)
    Xf = X.astype(np.float32) / 255.0
    m = vaec.Autoencoder(196, 2, hidden=(16, 8), activation="relu", likelihood="gaussian", seed=32, threads=THREADS)
    out = {"losses": np.array([m.train_step(Xf[:90], lr=1e-3) for _ in range(3)])}
    out["params_sha"] = digest(rowmajor_params(m))
    out["loss"] = m.loss(Xf[:50])
    out["codes"] = m.encode(Xf[:9])
    return out


def _m2_eval(m, X, y, out):
    out["params_sha"] = digest(rowmajor_params(m))
    out["logq"] = m.predict_log_proba(X[:50])
    mu, lv = m.encode(X[:9], y[:9])
    out["mu"], out["logvar"] = mu, lv
    out["gen"] = m.generate(y[:9], mu)
    out["elbo_l"] = m.elbo(X[:40], y[:40], seed=3, binarize="dynamic")
    out["elbo_u"] = m.elbo(X[:40], seed=4, binarize="dynamic")


def case_m2(save=None):
    X, y = digits(700, 14)
    m = vaec.M2(196, n_classes=10, latent_dim=5, hidden=(20,), classifier_hidden=(16,), seed=41, threads=THREADS)
    out = {}
    for s in range(2):
        out[f"loss{s}"] = np.array([m.loss_and_grad(X[s * 10:s * 10 + 30], y[s * 10:s * 10 + 30], X[100:160],
                                                    seed=s, binarize="dynamic")])
        out[f"grads{s}"] = rowmajor_grads(m)
    h = m.fit(X[:40], y[:40], X[40:340], epochs=2, batch_size=50, seed=3, progress=False, binarize="dynamic",
              validation_data=(X[400:500], y[400:500]))
    out["fit_loss"] = np.array(h["loss"])
    out["fit_nll"] = np.array(h["labeled_nll"])
    _m2_eval(m, X, y, out)
    if save:
        m.save(save + "/m2.vaec")
    return out


def case_m2_gaussian_two_layers(save=None):
    X, y = digits(700, 14)
    Xf = X.astype(np.float32) / 255.0
    m = vaec.M2(196, n_classes=10, latent_dim=3, hidden=(16, 12), classifier_hidden=(), activation="tanh",
                likelihood="gaussian", seed=42, threads=THREADS)
    out = {}
    # more than one unlabelled chunk (256 // 10 = 25 rows) and a labelled part of 300 rows (two chunks)
    out["loss"] = np.array([m.loss_and_grad(Xf[:300], y[:300], Xf[300:360], seed=1)])
    out["grads"] = rowmajor_grads(m)
    h = m.fit(Xf[:20], y[:20], Xf[20:220], epochs=1, batch_size=40, seed=5, progress=False)
    out["fit_loss"] = np.array(h["loss"])
    _m2_eval(m, Xf, y, out)
    return out


def _two_moons(n, seed):
    r = np.random.default_rng(seed)
    t = r.uniform(0, np.pi, n)
    a = np.stack([np.cos(t), np.sin(t)], 1)
    b = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    pick = r.integers(0, 2, n)[:, None]
    return (np.where(pick, a, b) + 0.05 * r.standard_normal((n, 2))).astype(np.float32)


def case_flow_realnvp(save=None):
    X = _two_moons(600, 0)
    f = vaec.Flow(2, "realnvp:4:16", seed=51, threads=THREADS)
    h = f.fit(X, epochs=2, batch_size=128, lr=2e-3, seed=1, progress=False)
    out = {"fit_loss": np.array(h["loss"])}
    out["params_sha"] = digest(rowmajor_params(f))
    out["log_prob"] = f.log_prob(X[:50])
    x, lp = f.sample(20, seed=2, return_log_prob=True)
    out["sample"], out["sample_lp"] = x, lp
    z0, ld = f.inverse(X[:10])
    out["inv"], out["inv_ld"] = z0, ld
    g = f.vjp(X[:10], np.ones((10, 2), np.float32), np.ones(10))
    out["vjp"], out["vjp_grads"] = g, rowmajor_grads(f)
    if save:
        f.save(save + "/flow_realnvp.vaec")
    return out


def case_flow_realnvp_wide(save=None):
    """Real NVP in 5-D with relu nets and a fixed scale: odd halves, three layers."""
    X = np.random.default_rng(3).standard_normal((300, 5)).astype(np.float32) * np.float32(0.7)
    f = vaec.Flow(5, "realnvp:3:10:relu:2", seed=52, threads=THREADS)
    out = {"losses": np.array([f.train_step(X[:150], lr=1e-3) for _ in range(3)])}
    out["params_sha"] = digest(rowmajor_params(f))
    out["log_prob"] = f.log_prob(X[150:200])
    out["nll"] = np.array([f.nll_and_grad(X)])
    out["grads"] = rowmajor_grads(f)
    return out


def case_flow_energy(save=None):
    f = vaec.Flow(2, "planar:4", seed=53, threads=THREADS)
    h = f.fit_energy(vaec.flows.potentials.U1, steps=20, batch_size=64, lr=1e-2, seed=2, progress=False,
                     beta_schedule=10)
    out = {"energy_loss": np.array(h["loss"])}
    out["params_sha"] = digest(rowmajor_params(f))
    z = np.random.default_rng(4).standard_normal((7, 2)).astype(np.float32)
    x, ld = f.transform(z)
    out["transform"], out["transform_ld"] = x, ld
    f2 = vaec.Flow(3, "radial:3", seed=54, threads=THREADS)
    out["radial_energy"] = np.array([f2.energy_loss_and_grad(
        lambda zz: (0.5 * np.sum(zz.astype(np.float64) ** 2, 1), zz.astype(np.float64)), batch_size=16, seed=1)])
    out["radial_grads"] = rowmajor_grads(f2)
    return out


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}

# the model files written at 6ece87c, and what each holds
FILES = ("vae_gaussian.vaec", "vae_planar.vaec", "vae_realnvp.vaec", "autoencoder.vaec", "m2.vaec",
         "flow_realnvp.vaec")


def file_numbers(path):
    """What a loaded model file gives (no training: evaluation only, with fixed seeds)."""
    X, y = digits(120, 14)
    m = vaec.load(path, threads=THREADS)
    out = {"params": rowmajor_params(m)}
    if isinstance(m, vaec.Flow):
        Xf = _two_moons(50, 7)
        out["log_prob"] = m.log_prob(Xf)
        out["sample"] = m.sample(10, seed=3)
    elif isinstance(m, vaec.M2):
        out["logq"] = m.predict_log_proba(X[:40])
        out["elbo_u"] = m.elbo(X[:30], seed=2, binarize="dynamic")
        out["loss"] = np.array([m.loss_and_grad(X[:20], y[:20], X[20:50], seed=3, binarize="dynamic")])
    elif isinstance(m, vaec.Autoencoder):
        out["loss"] = m.loss(X[:40], binarize="dynamic", seed=1)
        out["codes"] = m.encode(X[:9])
        out["step"] = np.array([m.train_step(X[:50], lr=1e-3, binarize="dynamic")])
    else:
        Xin = X.astype(np.float32) / 255.0 if m.likelihood == "gaussian" else X
        bz = None if m.likelihood == "gaussian" else "dynamic"
        out["elbo"] = m.elbo(Xin[:100], samples=2, seed=5, binarize=bz)
        out["iwae"] = m.iwae_bound(Xin[:20], samples=6, seed=2, binarize=bz)
        out["mu"] = m.encode(Xin[:9])[0]
        out["step"] = np.array([m.train_step(Xin[:50], lr=1e-3, binarize=bz)])
        out["after_step"] = digest(rowmajor_params(m))
    return out
