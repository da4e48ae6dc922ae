"""Monte Carlo EM (Kingma & Welling 2014, section 5): fit(algorithm="mcem") and the core's
mcem_step. The marginal likelihood it must raise is measured independently of HMC: a 2-D
latent space, integrated on a grid."""
import numpy as np
import pytest

import vaec
from vaec import datasets
from test_hmc import _grid_log_px


@pytest.fixture(scope="module")
def digits(shipped_mnist):
    Xtr, _, Xte, _ = shipped_mnist
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(Xtr))[:500], rng.permutation(len(Xte))[:100]
    # binary images as floats (binarize's uint8 0/1 would be read as grey levels / 255)
    return (datasets.binarize(Xtr[tr], "static", seed=1).astype(np.float32),
            datasets.binarize(Xte[te], "static", seed=2).astype(np.float32))


def small(seed=0, threads=None):
    return vaec.VAE(784, 2, hidden=(20,), activation="tanh", seed=seed, threads=threads, init_std=0.01)


MCEM = dict(algorithm="mcem", batch_size=50, lr=0.05, optimizer="adagrad", weight_decay=1 / 500, progress=False)


@pytest.mark.slow
def test_mcem_raises_the_marginal_likelihood_on_real_digits(digits):
    X, Xte = digits
    m = small()
    enc = {k: v.copy() for k, v in m.params.items() if k.startswith("encoder")}
    before_tr, before_te = _grid_log_px(m, X[:100], k=201).mean(), _grid_log_px(m, Xte, k=201).mean()
    h = m.fit(X, epochs=8, seed=0, **MCEM)
    after_tr, after_te = _grid_log_px(m, X[:100], k=201).mean(), _grid_log_px(m, Xte, k=201).mean()
    assert after_tr > before_tr + 100 and after_te > before_te + 100, (before_tr, after_tr, before_te, after_te)
    assert h["loss"][-1] < h["loss"][0]
    # the shared step size settled where the chains accept about 90 % of their proposals
    assert abs(h["accept"][-1] - 0.9) < 0.05 and h["step_size"][-1] != 0.1
    # the decoder alone was trained
    for k, v in enc.items():
        assert np.array_equal(m.params[k], v), k
    assert not np.any(m._arenas["adam_v"][:m._tensors[[t[0] for t in m._tensors].index("decoder.0.weight")][1]])
    # and the appendix-D estimator sees the same model as the grid
    est = m.log_likelihood(X[:100], method="hmc", samples=300, seed=0)
    assert abs(est.mean() - after_tr) < 0.3


def test_mcem_does_not_depend_on_the_thread_count(digits):
    X, _ = digits
    runs = []
    for threads in (1, 2):
        m = small(threads=threads)
        h = m.fit(X[:200], epochs=2, seed=3, **MCEM)
        runs.append((m._arenas["params"].copy(), h["loss"], h["step_size"]))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]


def test_mcem_checkpoints_resume_exactly(digits, tmp_path):
    X, _ = digits
    full = small()
    full.fit(X[:200], epochs=4, seed=5, binarize="dynamic", **MCEM)
    part = small()
    part.fit(X[:200], epochs=2, seed=5, binarize="dynamic", checkpoint_dir=tmp_path, **MCEM)
    resumed = small()
    resumed.fit(X[:200], epochs=4, seed=5, binarize="dynamic", resume=tmp_path / "checkpoint.vaec", **MCEM)
    assert np.array_equal(full._arenas["params"], resumed._arenas["params"])
    assert full.history["loss"] == resumed.history["loss"] and full.history["accept"] == resumed.history["accept"]
    # a checkpoint of another algorithm has no chains to resume
    other = tmp_path / "other"
    small().fit(X[:200], epochs=1, seed=5, checkpoint_dir=other, progress=False)
    with pytest.raises(ValueError, match="MCEM chains"):
        small().fit(X[:200], epochs=2, seed=5, resume=other / "checkpoint.vaec", **MCEM)


def test_the_m_step_follows_the_decoders_gradient(digits):
    """mcem_step with lr 0: the chains move, the parameters do not, and grads holds the
    gradient of the batch mean of -log p(x|z) at the new states (central differences of
    U(z) = -log p(z) - log p(x|z), whose prior term does not depend on the parameters)."""
    X, _ = digits
    m = small()
    m.fit(X, epochs=1, seed=0, **MCEM)
    x = X[:30]
    z = np.random.default_rng(1).standard_normal((30, 2)).astype(np.float32)
    z_start = z.copy()
    step = np.full(30, 0.2, np.float32)
    params = m._arenas["params"].copy()
    loss, acc = m._core.mcem_step(x=x, z=z, step=step, lr=0.0, updates=1, seed=4)
    assert np.array_equal(m._arenas["params"], params)
    assert np.any(z != z_start) and np.all(step != 0.2) and 0 < acc <= 1
    U, _ = m._core.hmc_potential(x=x, z=z)
    assert loss == pytest.approx(U.mean(), rel=1e-6)
    g = m.grads["decoder.out.bias"].copy()
    assert not np.any(m.grads["encoder.0.bias"])
    h = 1e-2
    for j in (0, 100, 400, 783):
        b = m.params["decoder.out.bias"]
        b[j] += h
        up = m._core.hmc_potential(x=x, z=z)[0].mean()
        b[j] -= 2 * h
        dn = m._core.hmc_potential(x=x, z=z)[0].mean()
        b[j] += h
        assert g[j] == pytest.approx((up - dn) / (2 * h), rel=2e-3, abs=1e-4), j


def test_mcem_arguments(digits):
    X, _ = digits
    m = small()
    for kw, match in [({"leapfrog": 0}, "leapfrog"), ({"target_accept": 1.2}, "target_accept"),
                      ({"updates": 0}, "updates"), ({"step_size": -1.0}, "step_size"),
                      ({"validation_data": X[:10]}, "validation_data"), ({"iw_samples": 3}, "mcem"),
                      ({"optimizer": "sgd"}, "optimizer")]:
        with pytest.raises(ValueError, match=match):
            m.fit(X[:50], epochs=1, **dict(MCEM, **kw))
    for kw in ({"leapfrog": 4}, {"updates": 2}, {"target_accept": 0.8}, {"step_size": 0.5}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}: only with algorithm='mcem'"):
            m.fit(X[:50], epochs=1, progress=False, **kw)
    core = m._core
    z, step = np.zeros((10, 2), np.float32), np.full(10, 0.1, np.float32)
    with pytest.raises(TypeError, match="z:"):
        core.mcem_step(x=X[:10], z=z.astype(np.float64), step=step)
    with pytest.raises(ValueError, match="step:"):
        core.mcem_step(x=X[:10], z=z, step=step[:5])
    with pytest.raises(ValueError, match="step\\[3\\]"):
        bad = step.copy()
        bad[3] = 0
        core.mcem_step(x=X[:10], z=z, step=bad)
    with pytest.raises(ValueError, match="updates"):
        core.mcem_step(x=X[:10], z=z, step=step, updates=0)
