"""The VAE with an amortized planar-flow posterior, flow="planar:K:amortized" (Rezende &
Mohamed 2015: the encoder outputs u, w, b of every planar layer per data point, through a
third head ``encoder.flow`` on its last hidden layer).

The float64 reference in tests/reference_amortized.py is first held to central
differences of itself (the log-determinant against the Jacobian of the layer
composition); vaec's ELBO and IWAE bound are then held to it, its gradients to finite
differences (float32 directional ones, as in tests/test_vae_flows.py, and float64 ones of
the reference), and the model to thread-count independence, save/load, pickling, its
errors, a short training run and not writing into its inputs."""
import pickle

import numpy as np
import pytest

import vaec

import reference as ref
import reference_amortized as ra
from test_gradcheck import directional_check

D, Z, H, K = 10, 3, 8, 3
SPEC = f"planar:{K}:amortized"


# ------------------------------------------------------------------ helpers
def make(likelihood="bernoulli", hidden=(H,), activation="tanh", seed=2, threads=1, K_=K, rng=None, noise=0.3,
         latent=Z):
    """A model whose flow head is moved away from its initialization (so the flow does
    something): encoder.flow.* += noise * N(0, 1)."""
    m = vaec.VAE(D, latent, hidden=hidden, activation=activation, likelihood=likelihood,
                 flow=f"planar:{K_}:amortized", seed=seed, threads=threads)
    rng = rng if rng is not None else np.random.default_rng(seed + 100)
    for k, v in m.params.items():
        if k.startswith("encoder.flow."):
            v[...] += (noise * rng.standard_normal(v.shape)).astype(np.float32)
    return m


def params64(m):
    return {k: v.astype(np.float64) for k, v in m.params.items()}


def data(rng, n=5, L=3, latent=Z):
    x = rng.random((n, D), dtype=np.float32)
    eps = rng.standard_normal((L, n, latent)).astype(np.float32)
    return x, eps


def random_blocks(rng, n, latent, K_, scale=1.0):
    c = scale * rng.standard_normal((n, K_ * ra.block_width(latent)))
    return c


# ------------------------------------------------- (a) the reference itself
@pytest.mark.parametrize("K_", [1, K])
@pytest.mark.parametrize("regime", ["generic", "wu_very_negative", "large_u"])
def test_reference_logdet_matches_numerical_jacobian(K_, regime):
    """float64: sum_k log|det_k| of the reference equals log|det J| of a central-difference
    Jacobian of the composition z -> f_K o ... o f_1(z), row by row (each row with its own
    u, w, b). The regimes exercise the u_hat correction (w.u << 0, where u_hat differs
    most from u) and large steps."""
    rng = np.random.default_rng(11 + K_)
    n, Zl = 5, 4
    c = random_blocks(rng, n, Zl, K_)
    W = ra.block_width(Zl)
    for k in range(K_):
        u = c[:, k * W:k * W + Zl]
        w = c[:, k * W + Zl:k * W + 2 * Zl]
        if regime == "wu_very_negative":
            c[:, k * W:k * W + Zl] = -3.0 * w + 0.1 * u          # w.u << 0
        elif regime == "large_u":
            c[:, k * W:k * W + Zl] = 4.0 * u
    z = rng.standard_normal((n, Zl))
    zK, ld = ra.planar_flow(z, c, K_)
    assert zK.shape == (n, Zl) and ld.shape == (n,)
    for i in range(n):
        J = ra.numerical_jacobian(lambda zz: ra.planar_flow(zz[None], c[i:i + 1], K_)[0][0], z[i])
        sign, logabs = np.linalg.slogdet(J)
        assert sign > 0          # every planar layer is orientation-preserving (w.u_hat > -1)
        assert abs(logabs - ld[i]) < 1e-6, (i, logabs, ld[i])


def test_reference_logdet_forms_agree_and_layer_is_invertible_direction():
    """The stable form log(h^2 + (1-h^2) softplus(w.u)) equals the textbook
    log(1 + (1-h^2) w.u_hat), and w.u_hat = softplus(w.u) - 1 > -1 (Appendix A)."""
    rng = np.random.default_rng(3)
    n, Zl = 50, 3
    z, u, w = (rng.standard_normal((n, Zl)) for _ in range(3))
    b = rng.standard_normal(n)
    _, ld = ra.planar_layer(z, u, w, b)
    assert np.allclose(ld, ra.planar_layer_logdet_direct(z, u, w, b), rtol=1e-10, atol=1e-12)
    p = np.sum(w * u, 1)
    q = np.sum(w * w, 1)
    uh = u + ((ref.softplus(p) - 1 - p) / q)[:, None] * w
    assert np.allclose(np.sum(w * uh, 1), ref.softplus(p) - 1.0, rtol=1e-10, atol=1e-12)
    assert np.all(np.sum(w * uh, 1) > -1)


def identity_bias(rng):
    """encoder.flow biases whose every layer is the identity (with a zero weight): random w,
    u = log(e - 1) w / |w|^2, so softplus(w.u) = 1 and u_hat = 0."""
    bias = rng.standard_normal(K * (2 * Z + 1))
    W = 2 * Z + 1
    for k in range(K):
        w = bias[k * W + Z:k * W + 2 * Z]
        bias[k * W:k * W + Z] = np.log(np.e - 1.0) * w / (w @ w)
    return bias


def test_reference_identity_flow_gives_the_monte_carlo_term_logdet():
    """With u = p0 w / |w|^2, p0 = log(e - 1) (so softplus(w.u) = 1), u_hat = 0: every layer is
    the identity with log-det 0, and the reference's terms reduce to
    log p(x|z0) + log N(z0) - log q0(z0|x), computed here from reference.py alone."""
    rng = np.random.default_rng(5)
    p = ref.init_params(D, Z, (H,), "bernoulli", rng)
    p["encoder.flow.weight"] = np.zeros((K * (2 * Z + 1), H))
    bias = identity_bias(rng)
    p["encoder.flow.bias"] = bias
    x, eps = data(rng)
    res = ra.forward(p, x, eps, "tanh", "bernoulli", K)
    assert np.allclose(res["logdet"], 0.0, atol=1e-12)
    assert np.allclose(res["zK"], res["z0"], atol=1e-12)
    fw = ref.forward(p, x, eps, "tanh", "bernoulli")
    z = fw["z"]
    lq0 = -0.5 * (ref.LOG2PI + fw["logvar"][None] + eps.astype(np.float64) ** 2).sum(-1)
    expect = fw["log_px_samples"] - 0.5 * (ref.LOG2PI + z ** 2).sum(-1) - lq0
    assert np.allclose(res["terms"], expect, rtol=1e-12, atol=1e-10)
    # and the Monte Carlo KL averages to the analytic one over many draws
    big = np.random.default_rng(0).standard_normal((20000, len(x), Z))
    mc = ra.forward(p, x, big, "tanh", "bernoulli", K)
    mc_kl = (mc["log_q0"] - mc["log_prior"]).mean(0)
    assert np.allclose(mc_kl, fw["kl"], atol=0.05)


# ------------------------------------------------------------- the model
def test_parameters_are_the_plain_vae_s_plus_the_encoder_flow_head():
    for likelihood in ("bernoulli", "gaussian"):
        for hidden in [(H,), (9, 7)]:
            m = vaec.VAE(D, Z, hidden=hidden, likelihood=likelihood, flow=SPEC, seed=1)
            expect = dict(ref.param_shapes(D, Z, hidden, likelihood))
            expect.update(ra.flow_head_shapes(Z, hidden[-1], K))
            assert {k: v.shape for k, v in m.params.items()} == expect
            assert not any(k.startswith("flow.") for k in m.params)
            assert set(m.grads) == set(m.params)
            assert all(v.dtype == np.float32 for v in m.params.values())
            assert m.flow == SPEC
    # zero-copy: writing the view changes what the model computes
    m = make()
    rng = np.random.default_rng(0)
    x, eps = data(rng)
    e0 = m.elbo(x, eps=eps)
    m.params["encoder.flow.bias"][...] += 0.5
    assert not np.allclose(m.elbo(x, eps=eps), e0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("hidden,activation", [((H,), "tanh"), ((9, 7), "relu"), ((H,), "softplus")])
def test_elbo_and_iwae_match_the_reference(likelihood, hidden, activation):
    rng = np.random.default_rng(21)
    m = make(likelihood, hidden=hidden, activation=activation, rng=rng)
    x, eps = data(rng, n=6, L=3)
    p = params64(m)
    terms = ra.elbo_terms(p, x, eps, activation, likelihood, K)
    # the flow does something: its log-dets are far from 0 and it moves z
    res = ra.forward(p, x, eps, activation, likelihood, K)
    assert np.abs(res["logdet"]).mean() > 0.05
    assert np.abs(res["zK"] - res["z0"]).mean() > 0.05
    e = m.elbo(x, eps=eps)
    assert e.dtype == np.float64 and e.shape == (6,)
    assert np.allclose(e, terms.mean(0), rtol=1e-4, atol=1e-3), np.abs(e - terms.mean(0)).max()
    iw = m._core.iwae(x, eps)
    assert np.allclose(iw, ra.iwae(p, x, eps, activation, likelihood, K), rtol=1e-4, atol=1e-3)
    # one sample: both bounds are that sample's term
    for l in range(3):
        assert np.allclose(m._core.iwae(x, eps[l:l + 1]), terms[l], rtol=1e-4, atol=1e-3)
    # loss_and_grad's loss is the batch mean of -ELBO (of -IWAE with iw_samples)
    assert np.isclose(m.loss_and_grad(x, eps=eps), -terms.mean(0).mean(), rtol=1e-4, atol=1e-3)
    assert np.isclose(m.loss_and_grad(x, eps=eps, iw_samples=3),
                      -ra.iwae(p, x, eps, activation, likelihood, K).mean(), rtol=1e-4, atol=1e-3)


def test_each_example_uses_its_own_flow_parameters():
    """Amortization: an example's ELBO does not depend on the rest of the batch (its flow
    parameters are its own), and with identical rows the terms are identical."""
    rng = np.random.default_rng(8)
    m = make(rng=rng)
    x, eps = data(rng, n=6, L=3)
    full = m.elbo(x, eps=eps)
    alone = np.array([m.elbo(x[i:i + 1], eps=eps[:, i:i + 1])[0] for i in range(6)])
    assert np.allclose(full, alone, rtol=1e-5, atol=1e-4)
    # changing one example's input changes only its own ELBO
    x2 = x.copy()
    x2[2] = rng.random(D, dtype=np.float32)
    e2 = m.elbo(x2, eps=eps)
    keep = np.arange(6) != 2
    assert np.allclose(e2[keep], full[keep], rtol=1e-5, atol=1e-4)
    assert not np.isclose(e2[2], full[2])


def test_an_identity_amortized_flow_gives_the_flow_free_monte_carlo_terms():
    """encoder.flow.weight = 0 and biases with u = p0 w/|w|^2, p0 = log(e - 1): u_hat = 0,
    every layer is the identity with log-det 0, and each sample's term equals the plain
    VAE's one-sample importance term (same shared parameters)."""
    rng = np.random.default_rng(0)
    m = vaec.VAE(D, Z, hidden=(H,), seed=3)
    mf = vaec.VAE(D, Z, hidden=(H,), flow=SPEC, seed=3)
    for k in m.params:
        mf.params[k][...] = m.params[k]
    mf.params["encoder.flow.weight"][...] = 0.0
    bias = identity_bias(rng)
    mf.params["encoder.flow.bias"][...] = bias.astype(np.float32)
    x, eps = data(rng, n=6, L=5)
    per_sample = np.stack([m._core.iwae(x, eps[l:l + 1]) for l in range(5)])
    assert np.allclose(mf.elbo(x, eps=eps), per_sample.mean(0), rtol=1e-5, atol=1e-4)
    assert np.allclose(mf._core.iwae(x, eps), m._core.iwae(x, eps), rtol=1e-5, atol=1e-4)


def test_code_is_the_posterior_mean_through_the_example_s_own_flow():
    """VAE.code(X) (documented: with a flow, f_K(...f_1(mu(x))), q0's mean carried through
    the flow) uses each example's own flow parameters: the reference's z_K at eps = 0."""
    rng = np.random.default_rng(6)
    m = make(rng=rng)
    x, _ = data(rng, n=6)
    res = ra.forward(params64(m), x, np.zeros((1, 6, Z)), "tanh", "bernoulli", K)
    code = m.code(x)
    assert code.shape == (6, Z)
    assert np.allclose(code, res["zK"][0], rtol=1e-4, atol=1e-4)
    assert np.abs(res["zK"][0] - res["mu"]).max() > 0.05     # the flow moved mu


# ----------------------------------------------------------- (c) gradients
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("iw", [None, 3])
def test_gradients_match_finite_differences(likelihood, iw):
    rng = np.random.default_rng(4)
    m = make(likelihood, rng=rng)
    x, eps = data(rng, n=4, L=3)

    class Obj:
        params, grads = m.params, m.grads

        @staticmethod
        def loss_and_grad(x_, eps):
            return m.loss_and_grad(x_, eps=eps, iw_samples=iw)

    errors = directional_check(Obj, x, eps, 1e-2, rng)
    assert set(errors) == set(m.params)
    assert "encoder.flow.weight" in errors and "encoder.flow.bias" in errors
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-3, (worst, errors[worst])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("iw", [None, 3])
def test_gradients_match_float64_differences_of_the_reference(likelihood, iw):
    """vaec's float32 gradient dotted with a random unit direction, per tensor, against a
    float64 central difference of the reference's loss (mean of -ELBO or of -IWAE)."""
    rng = np.random.default_rng(9)
    m = make(likelihood, rng=rng)
    x, eps = data(rng, n=5, L=3)
    m.loss_and_grad(x, eps=eps, iw_samples=iw)
    p = params64(m)

    def loss(pp):
        if iw:
            return -ra.iwae(pp, x, eps, "tanh", likelihood, K).mean()
        return -ra.elbo(pp, x, eps, "tanh", likelihood, K).mean()

    h = 1e-5
    for name in m.params:
        v = rng.standard_normal(p[name].shape)
        v /= np.linalg.norm(v)
        pp = dict(p)
        pp[name] = p[name] + h * v
        lp = loss(pp)
        pp[name] = p[name] - h * v
        lm = loss(pp)
        fd = (lp - lm) / (2 * h)
        an = float(np.sum(m.grads[name].astype(np.float64) * v))
        assert abs(fd - an) / max(abs(fd), abs(an), 1e-2) < 2e-3, (name, fd, an)


# ------------------------------------------- (d) threads, save/load, pickle
def test_threads_determinism_and_save_load(tmp_path):
    x = np.random.default_rng(1).random((300, 16), dtype=np.float32)
    a = vaec.VAE(16, 4, hidden=(12,), flow=SPEC, seed=5, threads=1)
    b = vaec.VAE(16, 4, hidden=(12,), flow=SPEC, seed=5, threads=2)
    for _ in range(3):
        assert a.train_step(x, seed=1) == b.train_step(x, seed=1)
        assert a.train_step(x, seed=2, iw_samples=3) == b.train_step(x, seed=2, iw_samples=3)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    # training moved the flow head
    fresh = vaec.VAE(16, 4, hidden=(12,), flow=SPEC, seed=5)
    assert not np.array_equal(fresh.params["encoder.flow.weight"], a.params["encoder.flow.weight"])
    a.save(tmp_path / "f.vaec")
    r = vaec.load(tmp_path / "f.vaec")
    assert r.flow == SPEC
    assert set(r.params) == set(a.params)
    for k in a.params:
        assert np.array_equal(a.params[k], r.params[k]), k
    assert np.array_equal(r.elbo(x, seed=2), a.elbo(x, seed=2))
    assert np.array_equal(r.iwae_bound(x, samples=4, seed=3), a.iwae_bound(x, samples=4, seed=3))
    s = pickle.loads(pickle.dumps(a))
    assert s.flow == SPEC
    assert np.array_equal(s.elbo(x, seed=2), a.elbo(x, seed=2))


# -------------------------------------------------------------- (e) errors
def test_errors():
    for spec in ("radial:3:amortized", "realnvp:2:amortized"):
        with pytest.raises(ValueError, match="amortized"):
            vaec.VAE(8, 2, flow=spec)
    with pytest.raises(ValueError, match="amortized"):
        vaec.Flow(2, "planar:2:amortized")
    m = vaec.VAE(D, Z, hidden=(H,), flow=SPEC)
    with pytest.raises(ValueError, match="amortized"):
        m.flow_transform(np.zeros((2, Z), np.float32))
    # the rest of the model still works after the error
    assert np.all(np.isfinite(m.elbo(np.full((2, D), 0.5, np.float32), seed=0)))
    # non-finite flow-head parameters are reported, and the parameters are left alone
    m.params["encoder.flow.weight"][...] = np.inf
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(FloatingPointError):
        m.train_step(np.full((2, D), 0.5, np.float32), seed=0)
    for k in before:
        assert np.array_equal(before[k], m.params[k], equal_nan=True), k


# ------------------------------------------------------------- (f) training
def test_training_with_an_amortized_flow_improves_the_bound():
    rng = np.random.default_rng(0)
    proto = rng.random((4, 32)) < 0.3
    X = (proto[rng.integers(0, 4, 400)] ^ (rng.random((400, 32)) < 0.05)).astype(np.float32)
    m = vaec.VAE(32, 2, hidden=(16,), flow="planar:4:amortized", seed=1)
    before = m.elbo(X, seed=0).mean()
    w0 = m.params["encoder.flow.weight"].copy()
    m.fit(X, epochs=10, batch_size=50, progress=False, lr=3e-3)
    after = m.elbo(X, seed=0).mean()
    assert np.isfinite(after) and after > before + 3, (before, after)
    assert not np.array_equal(w0, m.params["encoder.flow.weight"])
    assert m.elbo(X, samples=20, seed=0).mean() <= m.log_likelihood(X, 200, seed=0).mean() + 0.5


# ----------------------------------------------------- (g) inputs unchanged
def test_inputs_are_not_modified():
    rng = np.random.default_rng(12)
    m = make(rng=rng)
    x, eps = data(rng, n=5, L=3)
    x0, e0 = x.copy(), eps.copy()
    p0 = {k: v.copy() for k, v in m.params.items()}
    m.elbo(x, eps=eps)
    m._core.iwae(x, eps)
    m.loss_and_grad(x, eps=eps)
    m.loss_and_grad(x, eps=eps, iw_samples=3)
    m.loss_and_grad(x, eps=eps[0])
    assert np.array_equal(x, x0) and np.array_equal(eps, e0)
    for k in p0:
        assert np.array_equal(p0[k], m.params[k]), k
    # a non-contiguous view and a float64 array are read, not written
    xb = np.asfortranarray(x.astype(np.float64))
    xb0 = xb.copy()
    m.elbo(xb, eps=eps)
    m.loss_and_grad(xb, eps=eps)
    assert np.array_equal(xb, xb0)


def test_a_new_model_gives_every_example_the_flow_planar_k_starts_from():
    """The flow head starts with zero weights and biases drawn like a planar layer's
    parameters (U(+-1/sqrt(latent))), so every example starts with the same flow."""
    m = vaec.VAE(30, 16, hidden=(12,), flow="planar:4:amortized", seed=3)
    assert not m.params["encoder.flow.weight"].any()
    b = m.params["encoder.flow.bias"]
    assert b.std() > 0.05 and np.abs(b).max() <= 1 / np.sqrt(16)
    x = np.random.default_rng(0).random((5, 30), dtype=np.float32)
    m.params["encoder.mu.weight"][...] = 0.0   # the same mu for every example: the same z_K
    z = m.code(x)
    assert np.allclose(z, z[0]) and not np.allclose(z, m.encode(x)[0])
