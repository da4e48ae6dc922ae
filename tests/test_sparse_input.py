"""The first encoder layer on sparse inputs (csrc/sparse.c).

On MNIST-like data (mostly zeros) the first layer's forward product and weight
gradient are computed from the input's nonzeros. The results must be those of the
dense layer up to float32 rounding: they are held against the float64 reference with
the tolerances of test_vae_reference.py, in every mode and on every kernel path, and
the tests check that the sparse path really ran (its sums round differently, so its
bits differ from the dense ones) and that 'auto' picks it exactly when it should."""
import contextlib

import numpy as np
import pytest

import vaec

import reference as R
from _helpers import available_isas, forced_isa
from test_vae_reference import compare_model, f32_params, make_model

D, Z, H = 50, 3, (40,)   # neither a multiple of 16: the kernels' tails run


@contextlib.contextmanager
def sparse_mode(mode):
    before = vaec.set_sparse_input(mode)
    try:
        yield
    finally:
        vaec.set_sparse_input(before)


def sparse_data(kind, n, d=D, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "binary":      # binarized digits: ~13 % ones
        return (rng.random((n, d)) < 0.13).astype(np.float32)
    if kind == "grey":        # grey levels where nonzero, exact zeros (some -0.0) elsewhere
        x = np.where(rng.random((n, d)) < 0.2, rng.random((n, d)), 0.0).astype(np.float32)
        x[(x == 0) & (rng.random((n, d)) < 0.5)] = -0.0
        x[1, :] = 0.0                  # a row with no nonzero at all
        x[2, :] = 0.5 + 0.5 * x[2, :]  # and one with no zero
        return x
    if kind == "uint8":
        return np.where(rng.random((n, d)) < 0.2, rng.integers(1, 256, (n, d)), 0).astype(np.uint8)
    raise ValueError(kind)


def eps_for(n, L=1, seed=2):
    return np.random.default_rng(seed).standard_normal((L, n, Z)).astype(np.float32)


@pytest.mark.parametrize("mode", ["off", "auto", "always"])
@pytest.mark.parametrize("kind", ["binary", "grey", "uint8"])
@pytest.mark.parametrize("activation,likelihood", [("tanh", "bernoulli"), ("relu", "gaussian")])
def test_matches_the_reference(mode, kind, activation, likelihood):
    # 600 rows: two chunks (512 + 88), so the weight gradient is written, then added to
    x = sparse_data(kind, 600)
    if likelihood == "gaussian" and kind == "uint8":
        pytest.skip("a Gaussian decoder takes float data")
    params = f32_params(D, Z, H, likelihood, seed=3)
    eps = eps_for(len(x))
    with sparse_mode(mode):
        m = make_model(params, H, activation, likelihood, input_dim=D, latent_dim=Z)
        x0 = x.copy()
        if x.dtype == np.uint8:
            bad = _compare_uint8(m, params, x, eps, activation, likelihood)
        else:
            bad = compare_model(m, params, x, eps, activation, likelihood)
        assert np.array_equal(x, x0, equal_nan=True) and np.array_equal(np.signbit(x), np.signbit(x0))
    assert not bad, "; ".join(bad)


def _compare_uint8(m, params, x, eps, activation, likelihood):
    loss_ref, grads_ref = R.loss_and_grad(params, R.as_input(x), eps, activation, likelihood)
    loss = m.loss_and_grad(x, eps=eps)
    bad = [] if abs(loss - loss_ref) <= 2e-5 * abs(loss_ref) else [f"loss {loss} vs {loss_ref}"]
    for k, g in grads_ref.items():
        err = np.linalg.norm(m.grads[k] - g) / max(np.linalg.norm(g), 1e-30)
        if err > 1e-4:
            bad.append(f"grad {k}: {err:.2e}")
    return bad


def _run(mode, x, threads=2, seed=0, **kw):
    with sparse_mode(mode):
        m = vaec.VAE(x.shape[1], Z, hidden=H, seed=seed, threads=threads, **kw)
        loss = m.loss_and_grad(x, seed=5)
        grads = {k: v.copy() for k, v in m.grads.items()}
        mu = m.encode(x)[0]
    return loss, grads, mu


def test_the_sparse_path_runs_and_auto_picks_it():
    d = 784   # long sums: the two paths' rounding differs somewhere
    x = sparse_data("binary", 100, d)
    off, always, auto = (_run(m, x) for m in ("off", "always", "auto"))
    w = "encoder.0.weight"
    # the sparse path ran: other bits than the dense one, the same values to rounding
    assert not np.array_equal(off[1][w], always[1][w])
    assert not np.array_equal(off[2], always[2])
    np.testing.assert_allclose(always[1][w], off[1][w], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(always[2], off[2], rtol=1e-4, atol=1e-5)
    # auto: sparse on 100 rows at 13 % nonzero ...
    assert np.array_equal(auto[1][w], always[1][w]) and np.array_equal(auto[2], always[2])
    # ... dense on dense data, and on fewer than 32 rows
    dense = np.random.default_rng(0).random((100, d)).astype(np.float32)
    assert np.array_equal(_run("auto", dense)[1][w], _run("off", dense)[1][w])
    few = x[:31]
    assert np.array_equal(_run("auto", few)[1][w], _run("off", few)[1][w])
    assert not np.array_equal(_run("always", few)[1][w], _run("off", few)[1][w])


def test_results_do_not_depend_on_the_thread_count():
    x = sparse_data("binary", 600, 784)
    one, two = _run("always", x, threads=1), _run("always", x, threads=2)
    assert one[0] == two[0]
    for k in one[1]:
        assert np.array_equal(one[1][k], two[1][k]), k
    assert np.array_equal(one[2], two[2])


def test_parameters_changed_between_calls_are_seen():
    """The layer keeps a transposed copy of its weights within a call; a change made
    through the zero-copy views (or by Adam) must show in the next call."""
    x = sparse_data("binary", 64, 784)
    with sparse_mode("always"):
        m = vaec.VAE(784, Z, hidden=H, seed=0)
        m.encode(x)
        m.params["encoder.0.weight"][:, :100] *= -2.0
        m.params["encoder.0.bias"][...] += 0.25
        got = m.encode(x)[0]
        m.train_step(x, lr=1e-2, seed=1)
        after_step = m.encode(x)[0]
        g_sparse = {k: v.copy() for k, v in m.grads.items()} if m.loss_and_grad(x, seed=2) else None
    with sparse_mode("off"):
        ref = vaec.VAE(784, Z, hidden=H, seed=0)
        ref.load_state_dict(m.state_dict())
        want_after = ref.encode(x)[0]
        ref.loss_and_grad(x, seed=2)
        ref2 = vaec.VAE(784, Z, hidden=H, seed=0)
        sd = ref2.state_dict()
        sd["encoder.0.weight"][:, :100] *= -2.0
        sd["encoder.0.bias"] += 0.25
        ref2.load_state_dict(sd)
        want = ref2.encode(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(after_step, want_after, rtol=1e-4, atol=1e-5)
    for k, g in g_sparse.items():
        np.testing.assert_allclose(g, ref.grads[k], rtol=1e-4, atol=1e-6, err_msg=k)


CALLS = {
    "three samples": lambda m, x: m.loss_and_grad(x, seed=1, samples=3),
    "iwae": lambda m, x: m.loss_and_grad(x, seed=1, iw_samples=4),
    "score": lambda m, x: m.loss_and_grad(x, seed=1, estimator="score"),
    "binarize": lambda m, x: m.loss_and_grad(x * 0.9, seed=1, binarize=True),
    "elbo": lambda m, x: float(np.sum(m.elbo(x, samples=2, seed=1))),
    "iwae bound": lambda m, x: float(np.sum(m.iwae_bound(x, samples=5, seed=1))),
    "log-likelihood": lambda m, x: float(np.sum(m.log_likelihood(x[:20], samples=300, seed=1))),
    "planar flow": lambda m, x: m.loss_and_grad(x, seed=1),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_every_objective_agrees_with_the_dense_path(case):
    x = sparse_data("binary", 600, 784)
    kw = {"flow": "planar:2"} if case == "planar flow" else {}
    out = {}
    for mode in ("off", "always"):
        with sparse_mode(mode):
            m = vaec.VAE(784, Z, hidden=H, seed=0, **kw)
            v = CALLS[case](m, x)
            out[mode] = (v, {k: g.copy() for k, g in m.grads.items()})
    assert out["always"][0] == pytest.approx(out["off"][0], rel=1e-5)
    if case not in ("elbo", "iwae bound", "log-likelihood"):
        for k, g in out["off"][1].items():
            np.testing.assert_allclose(out["always"][1][k], g, rtol=1e-4, atol=1e-6, err_msg=k)


def test_wake_sleep_agrees_with_the_dense_path():
    x = sparse_data("binary", 200, 784)
    out = {}
    for mode in ("off", "always"):
        with sparse_mode(mode):
            m = vaec.VAE(784, Z, hidden=H, seed=0)
            m.fit(x, epochs=1, batch_size=100, algorithm="wake-sleep", seed=1, progress=False)
            out[mode] = m.state_dict()
    for k, p in out["off"].items():
        np.testing.assert_allclose(out["always"][k], p, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("isa", available_isas())
def test_every_isa_matches_the_reference(isa):
    x = sparse_data("binary", 600)
    params = f32_params(D, Z, H, "bernoulli", seed=3)
    eps = eps_for(len(x))
    with forced_isa(isa), sparse_mode("always"):
        m = make_model(params, H, "tanh", "bernoulli", input_dim=D, latent_dim=Z)
        bad = compare_model(m, params, x, eps, "tanh", "bernoulli")
    assert not bad, "; ".join(bad)


def test_mode_argument_is_checked():
    with pytest.raises(ValueError, match="mode: expected one of 'off', 'auto', 'always', got 'dense'"):
        vaec.set_sparse_input("dense")
    with pytest.raises(TypeError, match="mode"):
        vaec.set_sparse_input(1)
    before = vaec.set_sparse_input("off")
    assert vaec.set_sparse_input(before) == "off"
