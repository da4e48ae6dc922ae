"""The lectures' comparisons: Autoencoder, score-function gradients, wake-sleep, interpolation.

Each piece is held to an independent float64 computation (tests/reference.py's layers) or
to finite differences, and the statistical claims (unbiasedness, variance) are tested with
Monte Carlo error bars that a wrong estimator would miss."""
import numpy as np
import pytest

import vaec
import reference as R


def f64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def data(n=6, D=12, seed=0):
    return np.random.default_rng(seed).random((n, D), dtype=np.float32)


# ---------------------------------------------------------------- Autoencoder

def ae_reference(params, x, activation, likelihood):
    """Loss mean_i l(x_i, g(f(x_i))) and its gradients, float64, from reference.py's layers."""
    x = x.astype(np.float64)
    n = x.shape[0]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    h, enc_cache = R._mlp(params, "encoder", x, activation)
    z = R._linear(params, "encoder.code", h)
    g, dec_cache = R._mlp(params, "decoder", z, activation)
    out = R._linear(params, "decoder.out", g)
    if likelihood == "bernoulli":
        loss = np.sum(R.softplus(out) - x * out, axis=1)
        d_out = (R.sigmoid(out) - x) / n
    else:
        loss = np.sum((x - out) ** 2, axis=1)
        d_out = 2.0 * (out - x) / n
    d_g = R._linear_back(params, grads, "decoder.out", g, d_out)
    d_z = R._mlp_back(params, grads, dec_cache, activation, d_g)
    d_h = R._linear_back(params, grads, "encoder.code", h, d_z)
    R._mlp_back(params, grads, enc_cache, activation, d_h)
    return loss, z, grads


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("hidden", [(), (9, 7)])
def test_autoencoder_matches_float64_reference(likelihood, hidden):
    x = data()
    m = vaec.Autoencoder(12, 3, hidden=hidden, likelihood=likelihood, seed=4, threads=1)
    assert set(m.params) == ({f"encoder.{i}.{w}" for i in range(len(hidden)) for w in ("weight", "bias")} |
                             {f"decoder.{i}.{w}" for i in range(len(hidden)) for w in ("weight", "bias")} |
                             {"encoder.code.weight", "encoder.code.bias", "decoder.out.weight", "decoder.out.bias"})
    loss_ref, z_ref, g_ref = ae_reference(f64(m.params), x, "tanh", likelihood)
    loss = m.loss_and_grad(x)
    assert loss == pytest.approx(loss_ref.mean(), rel=1e-5)
    np.testing.assert_allclose(m.loss(x), loss_ref, rtol=1e-5)
    np.testing.assert_allclose(m.encode(x), z_ref, rtol=1e-5, atol=1e-6)
    for k, g in g_ref.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=1e-4, atol=1e-6, err_msg=k)


def test_autoencoder_is_deterministic_and_trains():
    x = data(64, 12, 1)
    m = vaec.Autoencoder(12, 2, hidden=(16,), seed=0, threads=1)
    assert m.loss_and_grad(x, seed=1) == m.loss_and_grad(x, seed=2)   # no noise anywhere
    before = m.loss(x).mean()
    hist = m.fit(x, epochs=30, batch_size=16, lr=1e-2, progress=False, validation_data=x)
    assert m.loss(x).mean() < before - 0.5
    assert set(hist) >= {"loss", "val_loss"} and hist["val_loss"][-1] == pytest.approx(m.loss(x).mean(), rel=1e-6)


def test_autoencoder_save_load_and_errors(tmp_path):
    x = data()
    m = vaec.Autoencoder(12, 3, hidden=(5,), likelihood="gaussian", seed=3)
    m.train_step(x, lr=1e-2)
    m.save(tmp_path / "ae.vaec")
    back = vaec.load(tmp_path / "ae.vaec")
    assert type(back) is vaec.Autoencoder and back.likelihood == "gaussian"
    np.testing.assert_array_equal(back.encode(x), m.encode(x))
    np.testing.assert_array_equal(back.reconstruct(x), m.reconstruct(x))
    assert type(vaec.load(_save_vae(tmp_path))) is vaec.VAE
    import pickle
    again = pickle.loads(pickle.dumps(m))
    assert type(again) is vaec.Autoencoder
    np.testing.assert_array_equal(again.encode(x), m.encode(x))
    for kw in ({"iw_samples": 5}, {"beta": 0.5}, {"warmup": 2}, {"algorithm": "wake-sleep"}, {"samples": 3}):
        with pytest.raises(ValueError):
            m.fit(x, epochs=1, progress=False, **kw)
    with pytest.raises(ValueError, match="estimator"):
        m.loss_and_grad(x, estimator="score")
    assert not hasattr(m, "elbo") and not hasattr(m, "log_likelihood")


def _save_vae(tmp_path):
    path = tmp_path / "vae.vaec"
    vaec.VAE(12, 3, hidden=(5,)).save(path)
    return path


# ------------------------------------------------------- score-function estimator

def score_reference(params, x, eps, baseline):
    """Loss and gradients with the encoder's E_q[log p(x|z)] term by the score function."""
    res, c = R._forward(params, x, eps, "tanh", "bernoulli")
    L, n = c["L"], c["n"]
    _, g_rep = R.loss_and_grad(params, x, eps, "tanh", "bernoulli")
    grads = {k: (v if k.startswith("decoder") else np.zeros_like(v)) for k, v in g_rep.items()}
    mu, lv, e = res["mu"], res["logvar"], c["eps"]
    f = res["log_px_samples"] - baseline                       # (L, n)
    w = f[..., None] / (n * L)
    d_mu = -(w * e * np.exp(-0.5 * lv)[None]).sum(0) + mu / n
    d_lv = -(w * 0.5 * (e * e - 1.0)).sum(0) + 0.5 * (np.exp(lv) - 1.0) / n
    d_h = R._linear_back(params, grads, "encoder.mu", c["h"], d_mu)
    d_h = d_h + R._linear_back(params, grads, "encoder.logvar", c["h"], d_lv)
    R._mlp_back(params, grads, c["enc_cache"], "tanh", d_h)
    return float(-res["elbo"].mean()), grads


@pytest.mark.parametrize("baseline", [None, -7.5])
def test_score_estimator_matches_float64_reference(baseline):
    x = data()
    m = vaec.VAE(12, 3, hidden=(9,), seed=5, threads=1)
    eps = np.random.default_rng(2).standard_normal((3, 6, 3)).astype(np.float32)
    loss = m.loss_and_grad(x, eps=eps, estimator="score", baseline=baseline)
    loss_ref, g_ref = score_reference(f64(m.params), x, eps, baseline or 0.0)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for k, g in g_ref.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=2e-4, atol=2e-6, err_msg=k)
    # the decoder's gradient is the reparameterized one; the encoder's is not
    score = {k: v.copy() for k, v in m.grads.items()}
    m.loss_and_grad(x, eps=eps)
    for k in m.grads:
        same = np.array_equal(score[k], m.grads[k])
        assert same == k.startswith("decoder"), k


def test_estimators_are_unbiased_and_score_has_more_variance():
    """Both estimators' means agree within Monte Carlo error, parameter by parameter,
    while the score function's variance is far larger (the lecture's point)."""
    # four patterns a decoder can only tell apart through z: a model whose z matters
    x = np.array([[1] * 5 + [0] * 5, [0] * 5 + [1] * 5, [1, 0] * 5, [0, 1] * 5], np.float32)
    m = vaec.VAE(10, 2, hidden=(6,), seed=1, threads=1)
    m.fit(np.repeat(x, 25, 0), epochs=100, batch_size=20, lr=1e-2, progress=False)
    assert m.kl_per_dim(x).sum() > 0.5
    S = 4000
    mean_r, var_r = vaec.gradient_variance(m, x, "reparam", samples=S, seed=1, return_mean=True)
    mean_s, var_s = vaec.gradient_variance(m, x, "score", samples=S, seed=2, return_mean=True)
    mean_b, var_b = vaec.gradient_variance(m, x, "score", samples=S, seed=3, baseline="mean", return_mean=True)
    z_scores, ratio = [], []
    for k in m.params:
        if k.startswith("decoder"):
            continue
        se = np.sqrt((var_r[k] + var_s[k]) / S) + 1e-12
        z_scores.append(np.abs(mean_r[k] - mean_s[k]).ravel() / se.ravel())
        ratio.append(var_s[k].mean() / var_r[k].mean())
        se_b = np.sqrt((var_r[k] + var_b[k]) / S) + 1e-12
        z_scores.append(np.abs(mean_r[k] - mean_b[k]).ravel() / se_b.ravel())
    z = np.concatenate(z_scores)
    assert np.mean(z < 3.0) > 0.97 and z.max() < 5.5, (np.mean(z < 3), z.max())
    assert min(ratio) > 2.0, ratio
    # the test has teeth: an estimator that dropped the score term (leaving only the
    # analytic KL's gradient) would be far outside the error bars
    params = f64(m.params)
    res, c = R._forward(params, x, np.zeros((1, 4, 2)), "tanh", "bernoulli")
    kl_only = {k: np.zeros_like(v) for k, v in params.items()}
    d_h = R._linear_back(params, kl_only, "encoder.mu", c["h"], res["mu"] / 4)
    d_h = d_h + R._linear_back(params, kl_only, "encoder.logvar", c["h"], 0.5 * (np.exp(res["logvar"]) - 1) / 4)
    R._mlp_back(params, kl_only, c["enc_cache"], "tanh", d_h)
    far = max(np.max(np.abs(mean_s[k] - kl_only[k]) / np.sqrt(var_s[k] / S + 1e-30)) for k in kl_only
              if k.startswith("encoder"))
    assert far > 10, far


def test_running_mean_baseline_reduces_the_variance():
    """With log p(x|z) far from 0 (100 pixels: about -70 nats) the plain score estimator
    is dominated by that offset; the running-mean baseline removes it."""
    x = (np.random.default_rng(3).random((8, 100)) < 0.5).astype(np.float32)
    m = vaec.VAE(100, 3, hidden=(10,), seed=0, threads=1)
    v0 = vaec.gradient_variance(m, x, "score", samples=200, seed=1)
    vb = vaec.gradient_variance(m, x, "score", samples=200, seed=1, baseline="mean")
    vr = vaec.gradient_variance(m, x, "reparam", samples=200, seed=1)
    enc = [k for k in m.params if k.startswith("encoder")]
    for k in enc:
        assert vb[k].mean() < v0[k].mean() / 10, k
        assert vr[k].mean() < vb[k].mean(), k


def test_gradient_variance_leaves_params_and_validates():
    x = data(4, 12)
    m = vaec.VAE(12, 2, hidden=(5,), seed=0)
    p0 = m.state_dict()
    var = vaec.gradient_variance(m, x, samples=5)
    assert set(var) == set(m.params) and all(v.shape == m.params[k].shape and (v >= 0).all() for k, v in var.items())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, p0[k])
    with pytest.raises(ValueError, match="estimator"):
        vaec.gradient_variance(m, x, estimator="reinforce")
    with pytest.raises(ValueError, match="samples"):
        vaec.gradient_variance(m, x, samples=1)
    with pytest.raises(TypeError, match="model"):
        vaec.gradient_variance(vaec.Autoencoder(12, 2), x)


def test_estimator_argument_errors():
    x = data()
    m = vaec.VAE(12, 3, hidden=(5,))
    with pytest.raises(ValueError, match="estimator"):
        m.loss_and_grad(x, estimator="reinforce")
    with pytest.raises(ValueError, match="baseline"):
        m.loss_and_grad(x, baseline="mean")           # reparam takes no baseline
    with pytest.raises(ValueError, match="baseline"):
        m.loss_and_grad(x, estimator="score", baseline="median")
    with pytest.raises(ValueError, match="iw_samples"):
        m.loss_and_grad(x, estimator="score", iw_samples=5)
    with pytest.raises(ValueError, match="flow"):
        vaec.VAE(12, 3, hidden=(5,), flow="planar:2").loss_and_grad(x, estimator="score")
    with pytest.raises(ValueError, match="algorithm"):
        m.fit(x, epochs=1, progress=False, algorithm="wake_sleep")


def test_fit_with_score_estimator_and_baseline_learns():
    x = (np.random.default_rng(0).random((200, 12)) < 0.3).astype(np.float32)
    m = vaec.VAE(12, 2, hidden=(16,), seed=0, threads=1)
    before = m.elbo(x, samples=20, seed=0).mean()
    m.fit(x, epochs=20, batch_size=20, lr=3e-3, progress=False, estimator="score", baseline="mean")
    assert m._baseline is not None and m._baseline < 0
    assert m.elbo(x, samples=20, seed=0).mean() > before + 0.5


# ----------------------------------------------------------------- wake-sleep

def test_wake_sleep_gradients():
    """Wake: the decoder's gradients are the ELBO's (same noise). Sleep: the encoder's
    gradients are those of the dreams' -log q(z|x) (finite differences: the dreams
    depend only on the decoder and the seed)."""
    x = data(8)
    m = vaec.VAE(12, 3, hidden=(9,), seed=2, threads=1)
    wake, sleep = m._core.wake_sleep(x, 7, False, -1.0, 50)
    ws = {k: v.copy() for k, v in m.grads.items()}
    assert wake == pytest.approx(m.loss_and_grad(x, seed=7), rel=1e-12)
    for k in m.grads:
        if k.startswith("decoder"):
            np.testing.assert_array_equal(ws[k], m.grads[k])
    assert np.isfinite(sleep) and sleep > 0
    rng = np.random.default_rng(0)
    for k in ("encoder.0.weight", "encoder.mu.weight", "encoder.logvar.bias"):
        p = m.params[k]
        v = rng.standard_normal(p.shape).astype(np.float32)
        v /= np.linalg.norm(v)
        p0 = p.copy()
        h = 1e-2
        p[...] = p0 + h * v
        lp = m._core.wake_sleep(x, 7, False, -1.0, 50)[1]
        p[...] = p0 - h * v
        lm = m._core.wake_sleep(x, 7, False, -1.0, 50)[1]
        p[...] = p0
        fd = (lp - lm) / (2 * h)
        an = float(np.sum(ws[k].astype(np.float64) * v))
        assert abs(fd - an) < 5e-3 * max(abs(an), 1e-2), (k, fd, an)


def test_wake_sleep_dreams_follow_the_decoder():
    """The sleep loss uses dreams x ~ p(x|z): with a decoder that puts every pixel's
    probability at ~1, an encoder fitted by sleep steps sees only all-ones images."""
    m = vaec.VAE(12, 2, hidden=(), seed=0, threads=1)
    m.params["decoder.out.weight"][...] = 0
    m.params["decoder.out.bias"][...] = 30.0           # p(x_d = 1 | z) = 1
    x = np.zeros((4, 12), np.float32)
    m._core.wake_sleep(x, 1, False, -1.0, 256)
    # d(-log q)/d b_mu = -mean(z - mu) over dreams whose x are all ones: mu is the same
    # for every dream, so the gradient is -(mean z - mu(1)) ~ mu(1) (z ~ N(0, 1))
    mu1 = m.encode(np.ones((1, 12), np.float32))[0][0]
    np.testing.assert_allclose(m.grads["encoder.mu.bias"], mu1, atol=4 / np.sqrt(256))


def test_fit_wake_sleep_improves_the_bound():
    x = (np.random.default_rng(1).random((300, 16)) < 0.25).astype(np.float32)
    m = vaec.VAE(16, 3, hidden=(20,), seed=0, threads=1)
    before = m.elbo(x, samples=20, seed=0).mean()
    hist = m.fit(x, epochs=15, batch_size=30, lr=3e-3, progress=False, algorithm="wake-sleep")
    assert len(hist["sleep_loss"]) == 15 and hist["sleep_loss"][-1] < hist["sleep_loss"][0]
    assert m.elbo(x, samples=20, seed=0).mean() > before + 1.0
    with pytest.raises(ValueError, match="flow"):
        vaec.VAE(16, 3, hidden=(5,), flow="radial:2").fit(x, epochs=1, progress=False, algorithm="wake-sleep")
    with pytest.raises(ValueError, match="wake-sleep"):
        m.fit(x, epochs=1, progress=False, algorithm="wake-sleep", iw_samples=5)


# --------------------------------------------------------------- interpolation

def test_interpolation_path():
    from vaec.plot import interpolation_path

    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    lin = interpolation_path(a, b, 5, "linear")
    np.testing.assert_allclose(lin[0], a)
    np.testing.assert_allclose(lin[-1], b)
    np.testing.assert_allclose(lin[2], (a + b) / 2)
    sph = interpolation_path(a, b, 3, "spherical")
    np.testing.assert_allclose(sph[[0, -1]], [a, b], atol=1e-12)
    np.testing.assert_allclose(sph[1], (a + b) / np.sqrt(2))     # w = 90 degrees
    same = interpolation_path(a, a, 4, "spherical")               # angle 0: falls back to linear
    np.testing.assert_allclose(same, np.tile(a, (4, 1)))
    assert interpolation_path(np.ones((3, 2)), np.zeros((3, 2)), 6).shape == (3, 6, 2)
    for bad in ({"steps": 1}, {"steps": 2.5}, {"path": "geodesic"}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            interpolation_path(a, b, **{"steps": 4, "path": "linear", **bad})


@pytest.mark.parametrize("flow", [None, "realnvp:2"])
def test_interpolation_plot_decodes_the_path(flow):
    pytest.importorskip("matplotlib")
    from vaec import plot

    X = data(3, 784, 3)
    m = vaec.VAE(784, 4, hidden=(16,), flow=flow, seed=0)
    fig = plot.interpolation(m, X[0], X[1], steps=6, path="spherical")
    assert fig.decoded.shape == (1, 6, 784)
    z = m.code(X[:2])
    np.testing.assert_allclose(fig.decoded[0, [0, -1]], m.decode(z), rtol=1e-5, atol=1e-6)
    if flow:
        assert not np.allclose(z, m.encode(X[:2])[0])   # the flow moves the codes
    ae = vaec.Autoencoder(784, 2, hidden=(8,))
    assert plot.interpolation(ae, X[:2], X[1:], steps=3).decoded.shape == (2, 3, 784)
    with pytest.raises(ValueError, match="steps"):
        plot.interpolation(m, X[0], X[1], steps=1)
    with pytest.raises(ValueError, match="x_b"):
        plot.interpolation(m, X[0], X[1, :100])
    with pytest.raises(ValueError, match="path"):
        plot.interpolation(m, X[0], X[1], path="curved")
