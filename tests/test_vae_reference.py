"""vaec held against an independent float64 NumPy reference (tests/reference.py).

The first block proves the reference itself (torch float64 autograd, finite
differences, direct formulas); it never imports vaec. The second block
compares vaec (float32, C) against the reference with tolerances that a
float32 implementation meets with a wide margin (a float32 torch proxy lands
at ~5e-7, ~500x inside) but that a sign error, a missing KL gradient term, a
1e-3 error in one parameter or a 1e-2 error in one noise value do not (see
the test_*tolerances_catch_errors* tests).
"""

import importlib

import numpy as np
import pytest

import reference as R

ACTIVATIONS = R.ACTIVATIONS
LIKELIHOODS = R.LIKELIHOODS
HIDDENS = [(), (7,), (13, 5)]
D, K, N = 24, 3, 10          # input dim, latent dim, batch size

# tolerances (float32 C vs float64 reference)
RTOL_LOSS = 2e-5      # scalar batch loss
RTOL_FWD = 1e-4       # mu, logvar, decoded, elbo (per tensor, norm-based)
RTOL_GRAD = 1e-4      # each gradient tensor (norm-based)
ELEM_FACTOR = 10.0    # elementwise: |a-b| <= 10*rtol*(|b| + rms(b))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def elem_err(a, b):
    """max_i |a_i - b_i| / (|b_i| + rms(b)): catches a single wrong element
    that a norm-based error over a large tensor could hide."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rms = np.sqrt(np.mean(b * b)) if b.size else 0.0
    return float(np.max(np.abs(a - b) / (np.abs(b) + max(rms, 1e-300)), initial=0.0))


def mismatches(got, want, rtol, label=""):
    """List of human-readable failures (empty when got ~= want)."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return [f"{label}: shape {got.shape} != {want.shape}"]
    if not np.all(np.isfinite(got)):
        return [f"{label}: non-finite values"]
    out = []
    r = R.rel_err(got, want)
    e = elem_err(got, want)
    if r > rtol:
        out.append(f"{label}: norm rel err {r:.3e} > {rtol:.0e}")
    if e > ELEM_FACTOR * rtol:
        out.append(f"{label}: elementwise err {e:.3e} > {ELEM_FACTOR * rtol:.0e}")
    return out


def assert_close(got, want, rtol, label=""):
    bad = mismatches(got, want, rtol, label)
    assert not bad, "; ".join(bad)


def f32_params(input_dim, latent_dim, hidden, likelihood, seed):
    """Reference init rounded to float32 (both sides then hold identical
    weights), returned as float64."""
    p = R.init_params(input_dim, latent_dim, hidden, likelihood, np.random.default_rng(seed))
    return {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}


def make_data(likelihood, dtype, n=N, d=D, seed=1):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, size=(n, d), dtype=np.uint8)
    if likelihood == "bernoulli":
        x = rng.random((n, d))
        x[:, : d // 3] = np.round(x[:, : d // 3])      # some exact 0/1 pixels
        return x.astype(np.float32)
    return (0.5 + 0.8 * rng.standard_normal((n, d))).astype(np.float32)


def make_eps(L, n=N, k=K, seed=2):
    return np.random.default_rng(seed).standard_normal((L, n, k)).astype(np.float32)


def vaec_mod():
    # imported lazily so the reference-validation tests run without vaec
    return importlib.import_module("vaec")


def make_model(params, hidden, activation, likelihood, input_dim=D, latent_dim=K):
    vaec = vaec_mod()
    m = vaec.VAE(input_dim, latent_dim=latent_dim, hidden=hidden,
                 activation=activation, likelihood=likelihood, seed=0)
    m.load_state_dict({k: v.astype(np.float32) for k, v in params.items()})
    return m


def compare_model(m, params, x, eps, activation, likelihood, ref_eps=None):
    """All mismatches of vaec's loss / grads / elbo (run with ``eps``) against
    the reference evaluated at (params, x, ref_eps or eps). Empty == agree."""
    e_ref = eps if ref_eps is None else ref_eps
    loss_ref, grads_ref = R.loss_and_grad(params, x, e_ref, activation, likelihood)
    fwd = R.forward(params, x, e_ref, activation, likelihood)
    loss = m.loss_and_grad(x, eps=eps)
    bad = []
    if not np.isfinite(loss) or abs(loss - loss_ref) > RTOL_LOSS * abs(loss_ref):
        bad.append(f"loss: {loss!r} vs ref {loss_ref!r} "
                   f"(rel {abs(loss - loss_ref) / abs(loss_ref):.3e})")
    for name, g in grads_ref.items():
        bad += mismatches(m.grads[name], g, RTOL_GRAD, f"grad {name}")
    elbo = m.elbo(x, samples=eps.shape[0], eps=eps)
    bad += mismatches(elbo, fwd["elbo"], RTOL_FWD, "elbo")
    return bad


# ---------------------------------------------------------------------------
# 1. the reference itself
# ---------------------------------------------------------------------------

def _torch_loss(torch, P, x, eps, activation, likelihood):
    """Straight-line torch transcription of the spec (autograd reference)."""
    F = torch.nn.functional
    act = {"tanh": torch.tanh, "relu": F.relu, "softplus": F.softplus,
           "sigmoid": torch.sigmoid, "elu": F.elu, "leaky_relu": F.leaky_relu}[activation]
    h = x
    for i in range(R.n_layers(P, "encoder")):
        h = act(F.linear(h, P[f"encoder.{i}.weight"], P[f"encoder.{i}.bias"]))
    mu = F.linear(h, P["encoder.mu.weight"], P["encoder.mu.bias"])
    lv = F.linear(h, P["encoder.logvar.weight"], P["encoder.logvar.bias"])
    z = mu + torch.exp(0.5 * lv) * eps
    g = z
    for i in range(R.n_layers(P, "decoder")):
        g = act(F.linear(g, P[f"decoder.{i}.weight"], P[f"decoder.{i}.bias"]))
    out = F.linear(g, P["decoder.out.weight"], P["decoder.out.bias"])
    if likelihood == "bernoulli":
        logp = (x * out - F.softplus(out)).sum(-1)
    else:
        dlv = F.linear(g, P["decoder.logvar.weight"], P["decoder.logvar.bias"])
        logp = -0.5 * (R.LOG2PI + dlv + (x - out) ** 2 * torch.exp(-dlv)).sum(-1)
    kl = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum(-1)
    return (kl - logp.mean(0)).mean()


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_matches_torch_autograd(activation, likelihood, hidden, L):
    torch = pytest.importorskip("torch")
    p = R.init_params(D, K, hidden, likelihood, np.random.default_rng(5))
    x = R.as_input(make_data(likelihood, "float32"))
    eps = make_eps(L).astype(np.float64)
    loss, grads = R.loss_and_grad(p, x, eps, activation, likelihood)
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    tl = _torch_loss(torch, P, torch.tensor(x), torch.tensor(eps), activation, likelihood)
    tl.backward()
    assert abs(loss - tl.item()) <= 1e-12 * abs(tl.item())
    assert set(grads) == set(p)
    for k in p:
        assert grads[k].shape == p[k].shape
        assert R.rel_err(grads[k], P[k].grad.numpy()) < 1e-10, k


@pytest.mark.parametrize("activation,likelihood,hidden,L", [
    ("tanh", "bernoulli", (3,), 2),
    ("softplus", "gaussian", (3, 2), 1),
    ("elu", "gaussian", (), 2),
    ("leaky_relu", "bernoulli", (4, 3), 3),
    ("sigmoid", "gaussian", (3,), 2),
    ("relu", "bernoulli", (4,), 2),
])
def test_reference_finite_differences(activation, likelihood, hidden, L):
    d, k, n = 5, 2, 3
    rng = np.random.default_rng(11)
    p = R.init_params(d, k, hidden, likelihood, rng)
    x = rng.random((n, d))
    eps = rng.standard_normal((L, n, k))
    _, grads = R.loss_and_grad(p, x, eps, activation, likelihood)
    h = 1e-6
    for name in p:
        num = np.zeros_like(p[name])
        for idx in np.ndindex(p[name].shape):
            q = {kk: vv.copy() for kk, vv in p.items()}
            q[name][idx] += h
            lp = R.loss_and_grad(q, x, eps, activation, likelihood)[0]
            q[name][idx] -= 2 * h
            lm = R.loss_and_grad(q, x, eps, activation, likelihood)[0]
            num[idx] = (lp - lm) / (2 * h)
        assert R.rel_err(grads[name], num) < 1e-6, (name, R.rel_err(grads[name], num))


def test_reference_formulas_direct():
    """log p(x|z), KL, reparameterization and decode written out naively."""
    rng = np.random.default_rng(3)
    for likelihood in LIKELIHOODS:
        p = R.init_params(6, 2, (4,), likelihood, rng)
        x = rng.integers(0, 2, size=(3, 6)).astype(np.float64)
        eps = rng.standard_normal((2, 3, 2))
        out = R.forward(p, x, eps, "tanh", likelihood)
        h = np.tanh(x @ p["encoder.0.weight"].T + p["encoder.0.bias"])
        mu = h @ p["encoder.mu.weight"].T + p["encoder.mu.bias"]
        lv = h @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"]
        np.testing.assert_allclose(out["mu"], mu, rtol=1e-14)
        np.testing.assert_allclose(out["logvar"], lv, rtol=1e-14)
        kl = [sum(0.5 * (mu[i, j] ** 2 + np.exp(lv[i, j]) - 1 - lv[i, j]) for j in range(2))
              for i in range(3)]
        np.testing.assert_allclose(out["kl"], kl, rtol=1e-13)
        lpx = np.zeros(3)
        for l in range(2):
            z = mu + np.sqrt(np.exp(lv)) * eps[l]
            g = np.tanh(z @ p["decoder.0.weight"].T + p["decoder.0.bias"])
            o = g @ p["decoder.out.weight"].T + p["decoder.out.bias"]
            if likelihood == "bernoulli":
                prob = 1 / (1 + np.exp(-o))
                np.testing.assert_allclose(out["decoded"][l], prob, rtol=1e-13)
                lpx += np.log(np.where(x == 1, prob, 1 - prob)).sum(1) / 2
            else:
                s2 = np.exp(g @ p["decoder.logvar.weight"].T + p["decoder.logvar.bias"])
                np.testing.assert_allclose(out["decoded"][l], o, rtol=1e-13)
                dens = np.exp(-(x - o) ** 2 / (2 * s2)) / np.sqrt(2 * np.pi * s2)
                lpx += np.log(dens).sum(1) / 2
            np.testing.assert_allclose(R.decode(p, z, "tanh", likelihood), out["decoded"][l],
                                       rtol=1e-13)
        np.testing.assert_allclose(out["log_px"], lpx, rtol=1e-12)
        np.testing.assert_allclose(out["elbo"], lpx - np.array(kl), rtol=1e-12)
        # (n, k) eps means L = 1
        a = R.forward(p, x, eps[0], "tanh", likelihood)["elbo"]
        b = R.forward(p, x, eps[:1], "tanh", likelihood)["elbo"]
        np.testing.assert_array_equal(a, b)


def test_reference_init_and_names():
    p = R.init_params(10, 4, (500, 200), "gaussian", np.random.default_rng(0))
    assert list(p) == [
        "encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias",
        "encoder.mu.weight", "encoder.mu.bias", "encoder.logvar.weight", "encoder.logvar.bias",
        "decoder.0.weight", "decoder.0.bias", "decoder.1.weight", "decoder.1.bias",
        "decoder.out.weight", "decoder.out.bias", "decoder.logvar.weight", "decoder.logvar.bias"]
    assert p["encoder.0.weight"].shape == (500, 10)
    assert p["encoder.1.weight"].shape == (200, 500)
    assert p["decoder.0.weight"].shape == (200, 4)       # z -> 200 -> 500
    assert p["decoder.1.weight"].shape == (500, 200)
    assert p["decoder.out.weight"].shape == (10, 500)
    assert all(v.dtype == np.float64 for v in p.values())
    w = p["encoder.1.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(500) and np.abs(w).max() > 0.9 / np.sqrt(500)
    q = R.init_params(10, 4, (), "bernoulli", np.random.default_rng(0))
    assert set(q) == {"encoder.mu.weight", "encoder.mu.bias", "encoder.logvar.weight",
                      "encoder.logvar.bias", "decoder.out.weight", "decoder.out.bias"}
    assert q["decoder.out.weight"].shape == (10, 4)


def test_reference_adam_matches_torch():
    torch = pytest.importorskip("torch")
    p = R.init_params(D, K, (7,), "gaussian", np.random.default_rng(4))
    x = R.as_input(make_data("gaussian", "float32"))
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    opt = torch.optim.Adam(list(P.values()), lr=1e-2)
    st = R.adam_init(p)
    for step in range(5):
        eps = make_eps(2, seed=100 + step).astype(np.float64)
        _, g = R.loss_and_grad(p, x, eps, "elu", "gaussian")
        R.adam_step(p, g, st, lr=1e-2)
        opt.zero_grad()
        _torch_loss(torch, P, torch.tensor(x), torch.tensor(eps), "elu", "gaussian").backward()
        opt.step()
    for k in p:
        assert R.rel_err(p[k], P[k].detach().numpy()) < 1e-12, k


class _TorchF32Model:
    """float32 torch stand-in with vaec's loss_and_grad / grads / elbo surface,
    used to show the tolerances accept an honest float32 implementation and
    reject perturbed references even when vaec is unavailable."""

    def __init__(self, torch, params, activation, likelihood):
        self.torch, self.activation, self.likelihood = torch, activation, likelihood
        self.P = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True)
                  for k, v in params.items()}
        self.grads = {}

    def loss_and_grad(self, x, eps):
        t = self.torch
        for v in self.P.values():
            v.grad = None
        loss = _torch_loss(t, self.P, t.tensor(R.as_input(x), dtype=t.float32),
                           t.tensor(eps), self.activation, self.likelihood)
        loss.backward()
        self.grads = {k: v.grad.numpy().copy() for k, v in self.P.items()}
        return float(loss.item())

    def elbo(self, x, samples, eps):
        fwd = R.forward({k: v.detach().numpy().astype(np.float64) for k, v in self.P.items()},
                        x, eps, self.activation, self.likelihood)
        return fwd["elbo"].astype(np.float32).astype(np.float64)


def _perturbations(params, eps):
    """Reference inputs with a realistic bug injected; each must be rejected."""
    out = []
    e = eps.copy()
    e[:, 0] *= -1.0                               # z = mu - std*eps for one example
    out.append(("eps sign flipped for example 0", params, e))
    e = eps.copy()
    e[0, 1, 0] += 1e-2                            # one noise value off by 1e-2
    out.append(("eps[0,1,0] += 1e-2", params, e))
    q = dict(params)
    q["decoder.out.bias"] = q["decoder.out.bias"].copy()
    q["decoder.out.bias"][2] += 1e-3              # one parameter off by 1e-3
    out.append(("decoder.out.bias[2] += 1e-3", q, eps))
    q = dict(params)
    q["encoder.logvar.weight"] = q["encoder.logvar.weight"].copy()
    q["encoder.logvar.weight"][1, 0] *= -1.0      # one weight with the wrong sign
    out.append(("encoder.logvar.weight[1,0] sign flipped", q, eps))
    return out


def _check_missing_kl_term_caught(m, params, x, eps, activation, likelihood):
    """Reference gradients with the KL contribution to the encoder head biases
    dropped (d KL/d b_mu = mean mu, d KL/d b_lv = mean (exp(lv)-1)/2) must be
    rejected by the gradient tolerance."""
    m.loss_and_grad(x, eps=eps)
    _, g = R.loss_and_grad(params, x, eps, activation, likelihood)
    fwd = R.forward(params, x, eps, activation, likelihood)
    no_kl_mu = g["encoder.mu.bias"] - fwd["mu"].mean(0)
    no_kl_lv = g["encoder.logvar.bias"] - 0.5 * np.expm1(fwd["logvar"]).mean(0)
    assert mismatches(m.grads["encoder.mu.bias"], no_kl_mu, RTOL_GRAD)
    assert mismatches(m.grads["encoder.logvar.bias"], no_kl_lv, RTOL_GRAD)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_tolerances_catch_errors_torch_proxy(likelihood):
    torch = pytest.importorskip("torch")
    hidden, activation = (13, 5), "tanh"
    params = f32_params(D, K, hidden, likelihood, seed=7)
    x = make_data(likelihood, "float32")
    eps = make_eps(3)
    m = _TorchF32Model(torch, params, activation, likelihood)
    assert compare_model(m, params, x, eps, activation, likelihood) == []
    for what, q, e in _perturbations(params, eps):
        assert compare_model(m, q, x, eps, activation, likelihood, ref_eps=e), \
            f"tolerances failed to reject: {what}"
    _check_missing_kl_term_caught(m, params, x, eps, activation, likelihood)


# ---------------------------------------------------------------------------
# 2. vaec against the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_vaec_parameter_names_and_shapes(likelihood, hidden):
    vaec = vaec_mod()
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, likelihood=likelihood, seed=0)
    want = R.param_shapes(D, K, hidden, likelihood)
    assert set(m.params) == set(want)
    assert set(m.grads) == set(want)
    sd = m.state_dict()
    assert set(sd) == set(want)
    for k, shape in want.items():
        assert m.params[k].shape == shape, k
        assert m.params[k].dtype == np.float32, k
        assert m.grads[k].shape == shape, k
        assert np.asarray(sd[k]).shape == shape, k
    assert (m.input_dim, m.latent_dim, tuple(m.hidden)) == (D, K, tuple(hidden))
    assert m.likelihood == likelihood


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_vaec_encode_decode(activation, likelihood, hidden, dtype):
    params = f32_params(D, K, hidden, likelihood, seed=21)
    m = make_model(params, hidden, activation, likelihood)
    assert m.activation == activation
    x = make_data(likelihood, dtype)
    mu, lv = m.encode(x)
    mu_ref, lv_ref = R.encode(params, x, activation)
    assert mu.dtype == np.float32 and lv.dtype == np.float32
    assert_close(mu, mu_ref, RTOL_FWD, "mu")
    assert_close(lv, lv_ref, RTOL_FWD, "logvar")
    z = np.random.default_rng(9).standard_normal((N, K)).astype(np.float32)
    dec = m.decode(z)
    assert dec.dtype == np.float32 and dec.shape == (N, D)
    assert_close(dec, R.decode(params, z, activation, likelihood), RTOL_FWD, "decoded")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_vaec_loss_grads_elbo(activation, likelihood, hidden, L, dtype):
    params = f32_params(D, K, hidden, likelihood, seed=31)
    m = make_model(params, hidden, activation, likelihood)
    x = make_data(likelihood, dtype)
    eps = make_eps(L)
    bad = compare_model(m, params, x, eps, activation, likelihood)
    assert not bad, "\n".join(bad)
    elbo = m.elbo(x, samples=L, eps=eps)
    assert elbo.dtype == np.float64 and elbo.shape == (N,)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_vaec_tolerances_catch_errors(likelihood):
    """The comparison must FAIL when the reference is given a slightly wrong
    parameter or noise value (so the tolerances can see a real bug)."""
    hidden, activation = (13, 5), "tanh"
    params = f32_params(D, K, hidden, likelihood, seed=7)
    m = make_model(params, hidden, activation, likelihood)
    x = make_data(likelihood, "float32")
    eps = make_eps(3)
    assert compare_model(m, params, x, eps, activation, likelihood) == []
    for what, q, e in _perturbations(params, eps):
        assert compare_model(m, q, x, eps, activation, likelihood, ref_eps=e), \
            f"tolerances failed to reject: {what}"
    _check_missing_kl_term_caught(m, params, x, eps, activation, likelihood)


def test_vaec_eps_2d_means_one_sample():
    params = f32_params(D, K, (7,), "bernoulli", seed=41)
    m = make_model(params, (7,), "softplus", "bernoulli")
    x = make_data("bernoulli", "uint8")
    eps = make_eps(1)
    l3 = m.loss_and_grad(x, eps=eps)
    g3 = {k: v.copy() for k, v in m.grads.items()}
    l2 = m.loss_and_grad(x, eps=eps[0])
    assert l2 == pytest.approx(l3, rel=1e-6)
    for k in g3:
        assert_close(m.grads[k], g3[k], 1e-6, k)
    np.testing.assert_allclose(m.elbo(x, samples=1, eps=eps[0]),
                               m.elbo(x, samples=1, eps=eps), rtol=1e-6)


def test_vaec_grads_overwritten_not_accumulated():
    likelihood, activation, hidden = "gaussian", "elu", (13, 5)
    params = f32_params(D, K, hidden, likelihood, seed=51)
    m = make_model(params, hidden, activation, likelihood)
    x = make_data(likelihood, "float32")
    x2 = make_data(likelihood, "float32", seed=99)
    eps = make_eps(2)
    m.loss_and_grad(x2, eps=make_eps(2, seed=98))     # unrelated call first
    m.loss_and_grad(x, eps=eps)
    m.loss_and_grad(x, eps=eps)                        # twice: still 1x gradient
    _, grads_ref = R.loss_and_grad(params, x, eps, activation, likelihood)
    for k, g in grads_ref.items():
        assert_close(m.grads[k], g, RTOL_GRAD, k)


def test_vaec_params_are_live_views():
    likelihood, activation, hidden = "bernoulli", "relu", (7,)
    params = f32_params(D, K, hidden, likelihood, seed=61)
    other = f32_params(D, K, hidden, likelihood, seed=62)
    vaec = vaec_mod()
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, activation=activation,
                 likelihood=likelihood, seed=0)
    for k, v in params.items():
        m.params[k][...] = v.astype(np.float32)
    x = make_data(likelihood, "uint8")
    eps = make_eps(1)
    bad = compare_model(m, params, x, eps, activation, likelihood)
    assert not bad, "\n".join(bad)
    # state_dict returns copies
    sd = m.state_dict()
    sd["decoder.out.bias"][...] = 123.0
    assert not np.any(m.params["decoder.out.bias"] == 123.0)
    # load_state_dict then changes the model seen through m.params
    m.load_state_dict({k: v.astype(np.float32) for k, v in other.items()})
    for k, v in other.items():
        np.testing.assert_array_equal(m.params[k], v.astype(np.float32))
    bad = compare_model(m, other, x, eps, activation, likelihood)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("activation,likelihood,hidden,dtype", [
    ("tanh", "bernoulli", (13, 5), "uint8"),
    ("softplus", "gaussian", (7,), "float32"),
    ("leaky_relu", "gaussian", (), "uint8"),
])
def test_vaec_train_step_matches_reference_adam(activation, likelihood, hidden, dtype):
    lr, steps, L = 1e-2, 5, 2
    params = f32_params(D, K, hidden, likelihood, seed=71)
    start = {k: v.copy() for k, v in params.items()}
    m = make_model(params, hidden, activation, likelihood)
    x = make_data(likelihood, dtype)
    st = R.adam_init(params)
    for step in range(steps):
        eps = make_eps(L, seed=200 + step)
        loss_ref, g = R.loss_and_grad(params, x, eps, activation, likelihood)
        R.adam_step(params, g, st, lr=lr)
        loss = m.train_step(x, lr=lr, eps=eps)
        assert loss == pytest.approx(loss_ref, rel=RTOL_LOSS), step
    for k in params:
        assert_close(m.params[k], params[k], RTOL_GRAD, k)
        # the displacement itself (5 steps of ~lr) must match, not just the sum
        assert R.rel_err(m.params[k] - start[k], params[k] - start[k]) < 1e-3, k


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_vaec_other_real_dtypes_converted(likelihood):
    params = f32_params(D, K, (7,), likelihood, seed=81)
    m = make_model(params, (7,), "sigmoid", likelihood)
    x32 = make_data(likelihood, "float32")
    eps = make_eps(2)
    l32 = m.loss_and_grad(x32, eps=eps)
    g32 = {k: v.copy() for k, v in m.grads.items()}
    for x in (x32.astype(np.float64), np.asfortranarray(x32), x32[::-1][::-1]):
        assert m.loss_and_grad(x, eps=eps) == pytest.approx(l32, rel=1e-6)
        for k in g32:
            assert_close(m.grads[k], g32[k], 1e-6, k)
    x16 = x32.astype(np.float16)                       # converted, same values
    bad = compare_model(m, params, x16, eps, "sigmoid", likelihood)
    assert not bad, "\n".join(bad)
