"""HMC on the decoder's posterior (vaec/csrc/vae_hmc.c): exact targets first.

A VAE with no hidden layer, a Gaussian likelihood and its log-variance head fixed to constants
is a linear-Gaussian model, x = W z + b + noise with noise ~ N(0, diag(s^2)): its posterior is
exactly N(S W^T D^-1 (x - b), S), S = (I + W^T D^-1 W)^-1, and its marginal N(b, W W^T + D).
HMC's samples must match the posterior within Monte Carlo error, the appendix-D estimator the
marginal within 0.1 nats; on a small nonlinear model with two latent dimensions, log p(x) by
a fine grid over z is the truth that both estimators must recover."""
import numpy as np
import pytest

import vaec

D, Z = 6, 3


def linear_gaussian(seed=0, n=8, threads=None):
    rng = np.random.default_rng(seed)
    m = vaec.VAE(D, Z, hidden=(), likelihood="gaussian", seed=0, threads=threads)
    W = (rng.standard_normal((D, Z)) * 0.8).astype(np.float32)
    b = (rng.standard_normal(D) * 0.3).astype(np.float32)
    lv = np.log(np.full(D, 0.5, np.float32))
    m.params["decoder.out.weight"][...] = W
    m.params["decoder.out.bias"][...] = b
    m.params["decoder.logvar.weight"][...] = 0
    m.params["decoder.logvar.bias"][...] = lv
    x = (b + rng.standard_normal((n, D))).astype(np.float32)
    W, b, var = W.astype(np.float64), b.astype(np.float64), np.exp(lv.astype(np.float64))
    S = np.linalg.inv(np.eye(Z) + W.T @ (W / var[:, None]))
    mu = (S @ (W.T @ ((x - b) / var).T)).T
    C = W @ W.T + np.diag(var)
    _, logdet = np.linalg.slogdet(C)
    r = x - b
    logpx = -0.5 * (D * np.log(2 * np.pi) + logdet + np.einsum("nd,nd->n", r, np.linalg.solve(C, r.T).T))
    return m, x, {"mean": mu, "cov": S, "logpx": logpx, "W": W, "b": b, "var": var}


def test_hmc_samples_the_exact_posterior_of_a_linear_gaussian_model():
    m, x, ex = linear_gaussian()
    L = 4000
    zs, acc = m.sample_posterior(x, samples=L, burn_in=200, seed=1, return_accept=True)
    assert zs.shape == (L, len(x), Z) and zs.dtype == np.float32
    assert np.all(np.abs(acc - 0.9) < 0.06)   # the step sizes were adapted toward the target
    ess = L / 4   # a generous allowance for the chains' autocorrelation
    sd = np.sqrt(np.diag(ex["cov"]))
    for i in range(len(x)):
        z = zs[:, i].astype(np.float64)
        assert np.all(np.abs(z.mean(0) - ex["mean"][i]) < 5 * sd / np.sqrt(ess)), i
        C = np.cov(z.T)
        se = np.sqrt((np.outer(np.diag(ex["cov"]), np.diag(ex["cov"])) + ex["cov"] ** 2) / ess)
        assert np.all(np.abs(C - ex["cov"]) < 5 * se), i
    # the chains move: consecutive states are not all the same
    assert np.mean(np.any(zs[1:] != zs[:-1], axis=2)) > 0.8


def test_the_potential_and_its_gradient():
    m, x, ex = linear_gaussian()
    z = np.random.default_rng(3).standard_normal((len(x), Z)).astype(np.float32)
    U, g = m._core.hmc_potential(x=x, z=z)
    zd = z.astype(np.float64)
    mean = zd @ ex["W"].T + ex["b"]
    want = 0.5 * (zd * zd).sum(1) + 0.5 * Z * np.log(2 * np.pi) + \
        0.5 * (D * np.log(2 * np.pi) + np.log(ex["var"]).sum() + ((x - mean) ** 2 / ex["var"]).sum(1))
    np.testing.assert_allclose(U, want, rtol=1e-6)
    np.testing.assert_allclose(g, zd + ((mean - x) / ex["var"]) @ ex["W"], rtol=1e-5, atol=1e-5)
    # a nonlinear decoder: central differences of U
    nl = vaec.VAE(12, 2, hidden=(7,), activation="tanh", seed=2)
    xb = (np.random.default_rng(4).random((5, 12)) < 0.4).astype(np.float32)
    z = np.random.default_rng(5).standard_normal((5, 2)).astype(np.float32)
    _, g = nl._core.hmc_potential(x=xb, z=z)
    h = 1e-2
    for j in range(2):
        e = np.zeros_like(z)
        e[:, j] = h
        up, _ = nl._core.hmc_potential(x=xb, z=z + e)
        dn, _ = nl._core.hmc_potential(x=xb, z=z - e)
        np.testing.assert_allclose(g[:, j], (up - dn) / (2 * h), rtol=2e-3, atol=2e-3)


def test_the_leapfrog_integrator_is_reversible():
    nl = vaec.VAE(12, 3, hidden=(7,), activation="tanh", seed=2)
    rng = np.random.default_rng(6)
    x = (rng.random((9, 12)) < 0.4).astype(np.float32)
    z = rng.standard_normal((9, 3)).astype(np.float32)
    p = rng.standard_normal((9, 3)).astype(np.float32)
    step = np.full(9, 0.05, np.float32)
    z1, p1 = nl._core.hmc_leapfrog(x=x, z=z, p=p, step=step, steps=25)
    assert np.abs(z1 - z).max() > 0.1   # it went somewhere
    z2, p2 = nl._core.hmc_leapfrog(x=x, z=z1, p=-p1, step=step, steps=25)
    np.testing.assert_allclose(z2, z, atol=2e-5)
    np.testing.assert_allclose(-p2, p, atol=2e-5)
    # and it nearly conserves the energy H = U + |p|^2 / 2 (error O(step^2))
    U0, _ = nl._core.hmc_potential(x=x, z=z)
    U1, _ = nl._core.hmc_potential(x=x, z=z1)
    H0, H1 = U0 + 0.5 * (p.astype(np.float64) ** 2).sum(1), U1 + 0.5 * (p1.astype(np.float64) ** 2).sum(1)
    assert np.abs(H1 - H0).max() < 0.02


def test_the_appendix_d_estimator_recovers_the_exact_marginal():
    m, x, ex = linear_gaussian(n=32)
    est, acc = m.log_likelihood(x, method="hmc", samples=1000, seed=2, return_accept=True)
    err = est - ex["logpx"]
    assert np.all(np.abs(err) < 0.1) and abs(err.mean()) < 0.02, err
    assert np.all(acc > 0.8)
    # importance sampling from an untrained encoder is far from the truth at this budget, or
    # at least no closer: the estimator does not lean on the encoder
    assert np.abs(m.log_likelihood(x, samples=1000, seed=0) - ex["logpx"]).mean() >= np.abs(err).mean()


def _grid_log_px(m, x, half=6.0, k=401):
    """log p(x) of a 2-D latent tanh/Bernoulli VAE by a k x k grid over [-half, half]^2 in
    float64 (the decoder evaluated in NumPy from its parameters)."""
    P = {k_: v.astype(np.float64) for k_, v in m.params.items()}
    g = np.linspace(-half, half, k)
    zz = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    h = np.tanh(zz @ P["decoder.0.weight"].T + P["decoder.0.bias"])
    logits = h @ P["decoder.out.weight"].T + P["decoder.out.bias"]
    lp_z = -0.5 * (zz ** 2).sum(1) - np.log(2 * np.pi)
    lj = logits @ x.astype(np.float64).T - np.logaddexp(0, logits).sum(1, keepdims=True) + lp_z[:, None]
    mx = lj.max(0)
    return mx + np.log(np.exp(lj - mx).sum(0) * (g[1] - g[0]) ** 2)


@pytest.fixture(scope="module")
def small_nonlinear():
    rng = np.random.default_rng(0)
    proto = rng.random((4, 16)) < 0.5
    X = np.where(rng.random((400, 16)) < 0.1, ~proto[rng.integers(0, 4, 400)], proto[rng.integers(0, 4, 400)])
    X = X.astype(np.float32)
    m = vaec.VAE(16, 2, hidden=(10,), activation="tanh", seed=1)
    m.fit(X, epochs=30, batch_size=40, lr=3e-3, seed=0, progress=False)
    return m, X[:24]


def test_the_estimators_agree_on_a_small_nonlinear_model(small_nonlinear):
    m, x = small_nonlinear
    truth = _grid_log_px(m, x)
    assert np.all(np.abs(_grid_log_px(m, x, half=8, k=601) - truth) < 1e-6)   # the grid is fine enough
    isv = m.log_likelihood(x, samples=5000, seed=3)
    assert np.abs(isv - truth).max() < 0.1
    for init in ("prior", "encoder"):
        hmc = m.log_likelihood(x, method="hmc", samples=1000, seed=3, init=init)
        err = hmc - truth
        # the reciprocal estimator is heavy-tailed (an example now and then is off by a few
        # tenths at L = 1000): the bulk and the mean, with room for one such example
        assert abs(err.mean()) < 0.05 and np.quantile(np.abs(err), 0.9) < 0.1 and np.abs(err).max() < 0.6, err
        assert abs((hmc - isv).mean()) < 0.05


def test_results_do_not_depend_on_the_thread_count():
    outs = []
    for threads in (1, 2):
        m, x, _ = linear_gaussian(n=600, threads=threads)   # two chunks of chains
        outs.append((m.sample_posterior(x, samples=3, burn_in=5, seed=4),
                     m.log_likelihood(x[:40], method="hmc", samples=20, burn_in=5, seed=4, batch_size=40)))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_seeds_and_the_models_stream():
    m, x, _ = linear_gaussian()
    a = m.sample_posterior(x, samples=5, burn_in=3, seed=9)
    assert np.array_equal(a, m.sample_posterior(x, samples=5, burn_in=3, seed=9))
    counter = m.optimizer_state["rng_counter"]
    b = m.sample_posterior(x, samples=5, burn_in=3)
    c = m.sample_posterior(x, samples=5, burn_in=3)
    assert m.optimizer_state["rng_counter"] == counter + 2 and not np.array_equal(b, c)


def test_chains_start_where_asked():
    m, x, ex = linear_gaussian()
    z0 = np.full((len(x), Z), 3.0, np.float32)
    first = m.sample_posterior(x, samples=1, burn_in=0, init=z0, seed=1, leapfrog=1, step_size=1e-4)
    assert np.abs(first[0] - 3.0).max() < 0.01   # one tiny step from the given points
    enc = m.sample_posterior(x, samples=1, burn_in=0, init="encoder", seed=1, leapfrog=1, step_size=1e-4)
    assert np.abs(enc[0] - m.encode(x)[0]).max() < 0.01
    with pytest.raises(ValueError, match="z0"):
        m.sample_posterior(x, init=np.zeros((len(x) + 1, Z), np.float32))
    with pytest.raises(ValueError, match="z0"):
        m.sample_posterior(x, init=np.full((len(x), Z), np.nan, np.float32))


def test_the_start_is_resampled_from_prior_draws():
    """init_draws=K: each chain starts at one of K prior draws chosen with probability
    proportional to p(x|z), so over many chains of one image the starts follow (nearly) its
    posterior; a single draw follows the prior."""
    m, x, ex = linear_gaussian()
    rep = np.repeat(x[:1], 4000, axis=0)
    kw = dict(samples=1, burn_in=0, leapfrog=1, step_size=1e-4, seed=2)   # the first state: the start, barely moved
    sir = m.sample_posterior(rep, init_draws=1000, **kw)[0].astype(np.float64)
    one = m.sample_posterior(rep, init_draws=1, **kw)[0].astype(np.float64)
    se = np.sqrt(np.diag(ex["cov"]) / len(rep))
    assert np.all(np.abs(sir.mean(0) - ex["mean"][0]) < 6 * se + 0.01), (sir.mean(0), ex["mean"][0])
    assert np.all(np.abs(np.cov(sir.T) - ex["cov"]) < 0.1)
    assert np.all(np.abs(one.mean(0)) < 5 / np.sqrt(len(rep))) and np.all(np.abs(one.std(0) - 1) < 0.05)


def test_inference_leaves_the_gradients_as_they_were():
    m, x, _ = linear_gaussian()
    m.loss_and_grad(x, seed=0)
    before = m._arenas["grads"].copy()
    m.sample_posterior(x, samples=3, burn_in=3, seed=1)
    m.log_likelihood(x, method="hmc", samples=4, burn_in=2, seed=1)
    m._core.hmc_potential(x=x, z=np.zeros((len(x), Z), np.float32))
    assert np.array_equal(m._arenas["grads"], before)


def test_flow_posteriors_and_the_encoder_start():
    m = vaec.VAE(12, 2, hidden=(6,), flow="planar:2", seed=0)
    x = (np.random.default_rng(0).random((5, 12)) < 0.5).astype(np.float32)
    zs = m.sample_posterior(x, samples=4, burn_in=5, init="encoder", seed=0)
    assert zs.shape == (4, 5, 2) and np.all(np.isfinite(zs))
    mu = m.encode(x)[0]
    first = m.sample_posterior(x, samples=1, burn_in=0, init="encoder", seed=1, leapfrog=1, step_size=1e-4)
    assert np.abs(first[0] - m.flow_transform(mu)[0]).max() < 0.01   # the decoder's input: z_K


@pytest.mark.parametrize("kw,match", [
    ({"leapfrog": 0}, "leapfrog"), ({"leapfrog": 2.5}, "leapfrog"), ({"target_accept": 1.0}, "target_accept"),
    ({"target_accept": 0.0}, "target_accept"), ({"target_accept": -0.5}, "target_accept"),
    ({"method": "nuts"}, "method"), ({"burn_in": -1}, "burn_in"), ({"step_size": 0.0}, "step_size"),
    ({"init": "zeros"}, "init"), ({"samples": 0}, "samples"), ({"init_draws": 0}, "init_draws"),
    ({"init": "encoder", "init_draws": 10}, "init_draws")])
def test_bad_arguments_name_themselves(kw, match):
    m, x, _ = linear_gaussian()
    with pytest.raises((ValueError, TypeError), match=match):
        m.sample_posterior(x, **kw)
    ll_kw = dict(kw, method=kw.get("method", "hmc"))
    if "samples" in kw:
        ll_kw["samples"] = 1   # the estimator needs two states to fit a covariance
    with pytest.raises((ValueError, TypeError), match=match):
        m.log_likelihood(x, **ll_kw)


def test_the_core_checks_its_arguments_too():
    m, x, _ = linear_gaussian()
    core = m._core
    with pytest.raises(ValueError, match="leapfrog"):
        core.hmc_sample(x=x, leapfrog=0)
    with pytest.raises(ValueError, match="target_accept"):
        core.hmc_log_likelihood(x=x, target_accept=1.5)
    with pytest.raises(ValueError, match="init"):
        core.hmc_log_likelihood(x=x, init="given")
    with pytest.raises(ValueError, match="z0"):
        core.hmc_sample(x=x, init="given")
    with pytest.raises(ValueError, match="only with method='hmc'"):
        m.log_likelihood(x, burn_in=10)
    ae = vaec.Autoencoder(D, Z, hidden=(4,), likelihood="gaussian")
    assert not hasattr(ae, "sample_posterior")
    with pytest.raises(ValueError, match="autoencoder"):
        ae._core.hmc_sample(x=x)
