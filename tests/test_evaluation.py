"""Evaluation: ELBO <= IWAE(5) <= IWAE(50) <= log-likelihood, held against a model whose
marginal likelihood is known exactly; the IWAE training gradient; beta and free bits."""
import numpy as np
import pytest

import vaec

from test_gradcheck import directional_check


def linear_gaussian(D=12, Z=3, seed=0, exact_posterior=True):
    """A VAE with no hidden layer, a Gaussian likelihood and a decoder variance that does
    not depend on z is the linear Gaussian model x = W z + b + noise, noise ~ N(0, s2 I):
    log p(x) = log N(x; b, W W^T + s2 I). W gets orthogonal columns, so the true posterior
    N(A (x - b), S) has a diagonal S and the encoder can represent it exactly."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, Z)))
    W = Q * np.array([2.0, 1.5, 0.7])[:Z]
    b = rng.standard_normal(D) * 0.3
    s2 = 0.25
    m = vaec.VAE(D, Z, hidden=(), likelihood="gaussian", seed=seed)
    p = m.params
    p["decoder.out.weight"][...] = W
    p["decoder.out.bias"][...] = b
    p["decoder.logvar.weight"][...] = 0.0
    p["decoder.logvar.bias"][...] = np.log(s2)
    prec = np.eye(Z) + W.T @ W / s2                      # diagonal, as W^T W is
    S = np.linalg.inv(prec)
    A = S @ W.T / s2
    p["encoder.mu.weight"][...] = A
    p["encoder.mu.bias"][...] = -A @ b
    p["encoder.logvar.weight"][...] = 0.0
    p["encoder.logvar.bias"][...] = np.log(np.diag(S))
    if not exact_posterior:  # a worse posterior: the bounds separate
        p["encoder.logvar.bias"][...] += 1.0
        p["encoder.mu.bias"][...] += 0.3
    C = W @ W.T + s2 * np.eye(D)
    X = rng.multivariate_normal(b, C, size=200).astype(np.float32)
    _, logdet = np.linalg.slogdet(C)
    diff = X.astype(np.float64) - b
    exact = -0.5 * (D * np.log(2 * np.pi) + logdet + np.einsum("ij,jk,ik->i", diff, np.linalg.inv(C), diff))
    return m, X, exact


def test_with_the_exact_posterior_every_bound_is_log_p_x():
    """With q(z|x) = p(z|x), log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z, so
    the importance-weighted bounds are exact sample by sample; the ELBO with its analytic
    KL is exact in expectation (log p(x|z) itself varies with z)."""
    m, X, exact = linear_gaussian()
    for est in (m.iwae_bound(X, 1, seed=1), m.iwae_bound(X, 5, seed=1), m.log_likelihood(X, 100, seed=2)):
        assert np.allclose(est, exact, atol=1e-5 * np.abs(exact).max()), np.abs(est - exact).max()
    elbo = m.elbo(X, samples=2000, seed=1)
    assert np.abs(elbo - exact).max() < 0.1 and abs(elbo.mean() - exact.mean()) < 0.01


def test_bounds_are_ordered_and_the_estimate_converges_to_log_p_x():
    m, X, exact = linear_gaussian(exact_posterior=False)
    elbo = m.elbo(X, samples=50, seed=1).mean()
    iw5 = m.iwae_bound(X, 5, seed=1).mean()
    iw50 = m.iwae_bound(X, 50, seed=1).mean()
    ll = m.log_likelihood(X, 5000, seed=1)
    assert elbo < iw5 < iw50 < ll.mean() <= exact.mean() + 0.01
    assert elbo < exact.mean() - 0.5, "the worse posterior must leave a gap"
    assert abs(ll.mean() - exact.mean()) < 0.02, (ll.mean(), exact.mean())
    assert np.abs(ll - exact).max() < 0.1


def test_log_likelihood_is_reproducible_and_independent_of_batch_size():
    m, X, _ = linear_gaussian(exact_posterior=False)
    a = m.log_likelihood(X, 200, seed=3, batch_size=64)
    assert np.array_equal(a, m.log_likelihood(X, 200, seed=3, batch_size=64))
    b = m.log_likelihood(X, 200, seed=3, batch_size=200)
    assert abs(a.mean() - b.mean()) < 0.05  # other noise, same estimate


def test_iwae_with_explicit_eps_matches_a_numpy_computation():
    m, X, _ = linear_gaussian(exact_posterior=False)
    x = X[:7]
    k = 4
    eps = np.random.default_rng(0).standard_normal((k, 7, 3)).astype(np.float32)
    mu, lv = (a.astype(np.float64) for a in m.encode(x))
    z = mu + np.exp(lv / 2) * eps
    p = {k_: v.astype(np.float64) for k_, v in m.params.items()}
    mean = z @ p["decoder.out.weight"].T + p["decoder.out.bias"]
    dlv = z @ p["decoder.logvar.weight"].T + p["decoder.logvar.bias"]
    logpx = -0.5 * np.sum(np.log(2 * np.pi) + dlv + (x - mean) ** 2 * np.exp(-dlv), axis=2)
    logpz = -0.5 * np.sum(np.log(2 * np.pi) + z ** 2, axis=2)
    logq = -0.5 * np.sum(np.log(2 * np.pi) + lv + eps ** 2, axis=2)
    lw = logpx + logpz - logq
    want = np.logaddexp.reduce(lw, axis=0) - np.log(k)
    got = m._core.iwae(x, eps)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-4)
    loss = m.loss_and_grad(x, eps=eps, iw_samples=k)
    assert abs(loss + want.mean()) < 1e-4 * abs(want.mean())


@pytest.mark.parametrize("likelihood,flow", [("bernoulli", ""), ("gaussian", ""), ("bernoulli", "planar:2")])
def test_stacked_samples_leave_each_rows_bound_as_it_was(likelihood, flow):
    """Without a backward pass, the bounds decode many samples of a chunk's rows at once
    (as many as fill the workspace: here 24 of 21 rows, then the last 13). A row's bound
    must not depend on that: five rows at a time (37 samples each in one go) and 1100 rows
    (3 chunks) give the full batch's bits, and the 37-sample ELBO is the mean of 37
    one-sample ELBOs."""
    m = vaec.VAE(30, 3, hidden=(16,), likelihood=likelihood, flow=flow or None, seed=0, threads=2)
    rng = np.random.default_rng(1)
    X = rng.random((21, 30)).astype(np.float32)
    L = 37
    eps = rng.standard_normal((L, 21, 3)).astype(np.float32)
    for bound in (m._core.iwae, m._core.elbo):
        full = bound(X, eps)
        parts = np.concatenate([bound(X[i:i + 5], np.ascontiguousarray(eps[:, i:i + 5])) for i in (0, 5, 10, 15)]
                               + [bound(X[16:], np.ascontiguousarray(eps[:, 16:]))])
        assert np.array_equal(full[:20], parts[:20]) and np.array_equal(full[16:], parts[20:])
    one = np.mean([m._core.elbo(X, np.ascontiguousarray(eps[l:l + 1])) for l in range(L)], axis=0)
    assert np.allclose(m._core.elbo(X, eps), one, rtol=1e-12, atol=1e-9)
    big = rng.random((1100, 30)).astype(np.float32)
    e3 = rng.standard_normal((3, 1100, 3)).astype(np.float32)
    whole = m._core.iwae(big, e3)
    assert np.array_equal(whole[600:605], m._core.iwae(big[600:605], np.ascontiguousarray(e3[:, 600:605])))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_gradients_match_finite_differences(likelihood):
    rng = np.random.default_rng(3)
    m = vaec.VAE(12, 3, hidden=(9,), activation="tanh", likelihood=likelihood, seed=5, threads=1)
    x = rng.random((5, 12), dtype=np.float32)
    eps = rng.standard_normal((4, 5, 3)).astype(np.float32)

    class IW:  # the same check as for the ELBO, through the IWAE objective
        params, grads = m.params, m.grads

        @staticmethod
        def loss_and_grad(x_, eps):
            return m.loss_and_grad(x_, eps=eps, iw_samples=4)

    errors = directional_check(IW, x, eps, 1e-2, rng)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-3, (worst, errors[worst])


def test_iwae_gradient_differs_from_the_elbo_gradient():
    rng = np.random.default_rng(1)
    m = vaec.VAE(12, 3, hidden=(9,), seed=5)
    x = rng.random((5, 12), dtype=np.float32)
    eps = rng.standard_normal((4, 5, 3)).astype(np.float32)
    m.loss_and_grad(x, eps=eps)
    g_elbo = m.grads["encoder.mu.bias"].copy()
    m.loss_and_grad(x, eps=eps, iw_samples=4)
    assert not np.allclose(g_elbo, m.grads["encoder.mu.bias"], rtol=1e-3)


def test_beta_weights_the_kl_term():
    rng = np.random.default_rng(2)
    m = vaec.VAE(20, 4, hidden=(16,), seed=1)
    x = rng.random((30, 20), dtype=np.float32)
    eps = rng.standard_normal((30, 4)).astype(np.float32)
    l0, l1, l2 = (m.loss_and_grad(x, eps=eps, beta=b) for b in (0.0, 1.0, 2.0))
    kl = m.kl_per_dim(x).sum()
    assert abs((l1 - l0) - kl) < 1e-4 * abs(kl) + 1e-5
    assert abs((l2 - l1) - kl) < 1e-4 * abs(kl) + 1e-5
    assert abs(-l1 - m.elbo(x, eps=eps).mean()) < 1e-5 * abs(l1)


def test_free_bits_floor_the_kl_and_its_gradient():
    rng = np.random.default_rng(2)
    m = vaec.VAE(20, 4, hidden=(16,), seed=1)
    x = rng.random((30, 20), dtype=np.float32)
    eps = rng.standard_normal((30, 4)).astype(np.float32)
    l0 = m.loss_and_grad(x, eps=eps, beta=0.0)
    g0 = {k: v.copy() for k, v in m.grads.items()}
    lf = m.loss_and_grad(x, eps=eps, free_bits=100.0)  # every dimension under the floor
    assert abs(lf - (l0 + 4 * 100.0)) < 1e-3
    for k in g0:
        assert np.allclose(m.grads[k], g0[k], rtol=1e-5, atol=1e-7), k
    # a floor below every dimension's KL changes nothing
    kl = m.kl_per_dim(x)
    l1 = m.loss_and_grad(x, eps=eps)
    lf = m.loss_and_grad(x, eps=eps, free_bits=float(kl.min()) * 0.5)
    assert abs(lf - l1) < 1e-4


def test_kl_per_dim_and_active_units():
    m = vaec.VAE(20, 6, hidden=(), seed=1)
    x = np.random.default_rng(0).random((100, 20), dtype=np.float32)
    # dimensions 0-2 of mu follow x, 3-5 ignore it: three active units
    m.params["encoder.mu.weight"][3:] = 0.0
    m.params["encoder.mu.weight"][:3] *= 10
    assert m.active_units(x) == 3
    assert m.active_units(x, threshold=0.0) >= 3
    mu, lv = (a.astype(np.float64) for a in m.encode(x))
    want = np.mean(0.5 * (mu ** 2 + np.exp(lv) - 1 - lv), axis=0)
    assert np.allclose(m.kl_per_dim(x), want, rtol=1e-6)
    assert np.allclose(m.kl_per_dim(x).sum(), -m.elbo(x, seed=0).mean() - (-m.elbo(x, seed=0).mean() - want.sum()))


@pytest.mark.parametrize("call,match", [
    (lambda m, x: m.iwae_bound(x, 0), "samples: expected an integer between 1"),
    (lambda m, x: m.log_likelihood(x, 0), "samples"),
    (lambda m, x: m.log_likelihood(x, 10**9), "samples"),
    (lambda m, x: m.log_likelihood(x, 10, batch_size=0), "batch_size"),
    (lambda m, x: m.active_units(x, threshold=-1), "threshold"),
    (lambda m, x: m.loss_and_grad(x, iw_samples=0), "iw_samples"),
    (lambda m, x: m.loss_and_grad(x, beta=-1), "beta"),
    (lambda m, x: m.loss_and_grad(x, free_bits=float("nan")), "free_bits"),
    (lambda m, x: m.loss_and_grad(x, iw_samples=3, samples=2), "either samples"),
])
def test_bad_evaluation_arguments(call, match):
    m = vaec.VAE(8, 2, hidden=(), seed=0)
    x = np.full((4, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match=match):
        call(m, x)
