"""The gradients of a call never depend on what the grads buffer held before it.

The dense layers' first backward of a call writes their gradients and later ones (more
512-row chunks, more samples) add to them, so no pass clears the buffer first; the other
tensors (a flow's) are cleared. These tests fill the buffer with garbage (the views are
writable) and compare with a call on a clean buffer, bit for bit."""
import numpy as np
import pytest

import vaec


def _data(n, d, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.3).astype(np.float32)


def _grads_after(model, fill, call):
    for g in model.grads.values():
        g[...] = fill
    loss = call(model)
    return loss, {k: v.copy() for k, v in model.grads.items()}


CASES = {
    "one chunk": (dict(), lambda m, x: m.loss_and_grad(x[:37], seed=1)),
    "three chunks": (dict(), lambda m, x: m.loss_and_grad(x, seed=1)),
    "three samples": (dict(), lambda m, x: m.loss_and_grad(x[:50], seed=1, samples=3)),
    "iwae": (dict(), lambda m, x: m.loss_and_grad(x[:50], seed=1, iw_samples=4)),
    "score": (dict(), lambda m, x: m.loss_and_grad(x[:50], seed=1, estimator="score")),
    "planar flow": (dict(flow="planar:2"), lambda m, x: m.loss_and_grad(x, seed=1)),
    "realnvp flow": (dict(flow="realnvp:2"), lambda m, x: m.loss_and_grad(x[:50], seed=1)),
    "two hidden layers": (dict(hidden=(9, 7)), lambda m, x: m.loss_and_grad(x, seed=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vae_gradients_ignore_the_old_buffer(case):
    kw, call = CASES[case]
    x = _data(1100, 12)   # three chunks of at most 512 rows
    kw = {"hidden": (7,), **kw}
    clean = vaec.VAE(12, 3, seed=0, **kw)
    dirty = vaec.VAE(12, 3, seed=0, **kw)
    loss0, g0 = _grads_after(clean, 0.0, lambda m: call(m, x))
    loss1, g1 = _grads_after(dirty, np.nan, lambda m: call(m, x))
    assert loss0 == loss1
    for k in g0:
        assert np.array_equal(g0[k], g1[k]), k
        assert np.all(np.isfinite(g1[k])), k
    # and the next call overwrites this one's gradients rather than adding to them
    loss2, g2 = _grads_after(dirty, 7.0, lambda m: call(m, x))
    for k in g0:
        assert np.array_equal(g0[k], g2[k]), k


def test_autoencoder_gradients_ignore_the_old_buffer():
    x = _data(300, 12)
    a, b = vaec.Autoencoder(12, 3, hidden=(7,), seed=0), vaec.Autoencoder(12, 3, hidden=(7,), seed=0)
    _, g0 = _grads_after(a, 0.0, lambda m: m.loss_and_grad(x))
    _, g1 = _grads_after(b, -np.inf, lambda m: m.loss_and_grad(x))
    for k in g0:
        assert np.array_equal(g0[k], g1[k]), k


def test_train_step_ignores_the_old_buffer():
    x = _data(300, 12)
    a, b = vaec.VAE(12, 3, hidden=(7,), seed=0), vaec.VAE(12, 3, hidden=(7,), seed=0)
    for g in b.grads.values():
        g[...] = np.inf
    for _ in range(3):
        la, lb = a.train_step(x, seed=2), b.train_step(x, seed=2)
        assert la == lb
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


def test_wake_sleep_gradients_ignore_the_old_buffer():
    x = _data(120, 12)
    a, b = vaec.VAE(12, 3, hidden=(7,), seed=0), vaec.VAE(12, 3, hidden=(7,), seed=0)
    for g in b.grads.values():
        g[...] = np.nan
    ha = a.fit(x, epochs=1, batch_size=40, seed=3, progress=False, algorithm="wake-sleep")
    hb = b.fit(x, epochs=1, batch_size=40, seed=3, progress=False, algorithm="wake-sleep")
    assert ha["loss"] == hb["loss"]
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


def _overflowing_encoder(model):
    """The encoder's first layer outputs h = tanh(0) = 0, so mu is the (huge, finite)
    bias and the loss is finite; its gradient d mu times the huge mu weights overflows
    into encoder.0's gradients (Inf), which train_step checks as they are written."""
    model.params["encoder.0.weight"][...] = 0.0
    model.params["encoder.0.bias"][...] = 0.0
    model.params["encoder.mu.bias"][...] = 1e18
    model.params["encoder.mu.weight"][...] = 1e21


@pytest.mark.parametrize("rows", [20, 600])   # one chunk, and the Inf in the first of two chunks
def test_train_step_refuses_a_gradient_that_overflows_under_a_finite_loss(rows):
    m = vaec.VAE(12, 3, hidden=(7,), seed=0)
    _overflowing_encoder(m)
    x = _data(rows, 12)
    loss = m.loss_and_grad(x, seed=1)
    assert np.isfinite(loss)
    assert not np.all(np.isfinite(m.grads["encoder.0.weight"]))
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        m.train_step(x, seed=1)
    for k in before:
        assert np.array_equal(before[k], m.params[k]), k
    assert m._core.state()["step"] == 0
    # the flag belongs to one call: a finite call afterwards steps
    m.params["encoder.mu.weight"][...] = 0.1
    m.params["encoder.mu.bias"][...] = 0.0
    m.train_step(x, seed=1)
    assert m._core.state()["step"] == 1


def test_train_step_refuses_a_nan_gradient_in_a_tiny_layer():
    """A head of 2 x 1 rows takes the GEMM's few-rows path; a NaN input can't be given
    (inputs are checked), so a NaN weight makes it: the loss is NaN then, refused too."""
    m = vaec.VAE(6, 1, hidden=(3,), seed=0)
    x = _data(10, 6)
    m.params["decoder.0.weight"][0, 0] = np.nan
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(FloatingPointError):
        m.train_step(x, seed=1)
    for k in before:
        assert np.array_equal(before[k], m.params[k], equal_nan=True), k
