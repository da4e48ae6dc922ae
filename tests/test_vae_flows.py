"""A VAE whose posterior goes through a normalizing flow: z_K = f_K o ... o f_1(z_0)."""
import numpy as np
import pytest

import vaec

from test_gradcheck import directional_check

FLOWS = ["planar:3", "radial:3", "realnvp:2:8"]


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("iw", [None, 3])
def test_vae_flow_gradients_match_finite_differences(flow, likelihood, iw):
    rng = np.random.default_rng(4)
    m = vaec.VAE(10, 3, hidden=(8,), likelihood=likelihood, flow=flow, seed=2, threads=1)
    # move the flows away from their (near-identity) initialization
    for k, v in m.params.items():
        if k.startswith("flow."):
            v[...] += 0.3 * rng.standard_normal(v.shape).astype(np.float32)
    x = rng.random((4, 10), dtype=np.float32)
    eps = rng.standard_normal((3, 4, 3)).astype(np.float32)

    class Obj:
        params, grads = m.params, m.grads

        @staticmethod
        def loss_and_grad(x_, eps):
            return m.loss_and_grad(x_, eps=eps, iw_samples=iw)

    errors = directional_check(Obj, x, eps, 1e-2, rng)
    assert any(k.startswith("flow.") for k in errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-3, (worst, errors[worst])


def test_an_identity_flow_gives_the_flow_free_monte_carlo_elbo():
    """Real NVP with zero scale and zero t-net is the identity (log-det 0): the ELBO with
    the flow (Monte Carlo KL) equals the flow-free model's one-sample importance term."""
    rng = np.random.default_rng(0)
    mf = vaec.VAE(10, 4, hidden=(8,), flow="realnvp:2:8", seed=3)
    m = vaec.VAE(10, 4, hidden=(8,), seed=3)
    for k in m.params:
        mf.params[k][...] = m.params[k]
    for k, v in mf.params.items():
        if k.startswith("flow.") and (".t.2." in k or k.endswith(".scale")):
            v[...] = 0.0
    x = rng.random((6, 10), dtype=np.float32)
    eps = rng.standard_normal((5, 6, 4)).astype(np.float32)
    per_sample = np.stack([m._core.iwae(x, eps[l:l + 1]) for l in range(5)])
    assert np.allclose(mf.elbo(x, eps=eps), per_sample.mean(0), rtol=1e-5, atol=1e-4)
    assert np.allclose(mf._core.iwae(x, eps), m._core.iwae(x, eps), rtol=1e-5, atol=1e-4)


def test_flow_parameters_save_load_and_determinism(tmp_path):
    x = np.random.default_rng(1).random((300, 16), dtype=np.float32)
    a = vaec.VAE(16, 4, hidden=(12,), flow="planar:4", seed=5, threads=1)
    b = vaec.VAE(16, 4, hidden=(12,), flow="planar:4", seed=5, threads=2)
    for _ in range(3):
        assert a.train_step(x, seed=1) == b.train_step(x, seed=1)
    a.save(tmp_path / "f.vaec")
    r = vaec.load(tmp_path / "f.vaec")
    assert r.flow == "planar:4"
    for k in a.params:
        assert np.array_equal(a.params[k], r.params[k])
        assert np.array_equal(a.params[k], b.params[k])
    assert np.array_equal(r.elbo(x, seed=2), a.elbo(x, seed=2))


def test_training_with_a_flow_improves_the_bound():
    rng = np.random.default_rng(0)
    proto = rng.random((4, 32)) < 0.3
    X = (proto[rng.integers(0, 4, 400)] ^ (rng.random((400, 32)) < 0.05)).astype(np.float32)
    m = vaec.VAE(32, 2, hidden=(16,), flow="planar:4", seed=1)
    before = m.elbo(X, seed=0).mean()
    m.fit(X, epochs=10, batch_size=50, progress=False, lr=3e-3)
    assert m.elbo(X, seed=0).mean() > before + 3
    assert m.elbo(X, samples=20, seed=0).mean() <= m.log_likelihood(X, 200, seed=0).mean() + 0.5


def test_flow_errors():
    with pytest.raises(ValueError, match="accepted"):
        vaec.VAE(8, 2, flow="planar:0")
    with pytest.raises(ValueError, match="accepted"):
        vaec.VAE(8, 2, flow="realnvp:x")
    with pytest.raises(ValueError, match="Real NVP needs latent_dim >= 2"):
        vaec.VAE(8, 1, flow="realnvp:2")
    with pytest.raises(TypeError, match="flow: expected None or a spec"):
        vaec.VAE(8, 2, flow=3)
    m = vaec.VAE(8, 2, flow="planar:2")
    with pytest.raises(ValueError, match="free_bits needs the analytic KL"):
        m.loss_and_grad(np.full((2, 8), 0.5, np.float32), free_bits=0.5)
    m.params["flow.0.w"][...] = np.inf
    with pytest.raises(FloatingPointError, match="flow.0"):
        m.loss_and_grad(np.full((2, 8), 0.5, np.float32), seed=0)
