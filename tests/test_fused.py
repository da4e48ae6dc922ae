"""The dense layer's fused kernels (bias and activation in the GEMM's epilogue; the
activation's derivative in din's) against their unfused _naive references, on every
kernel path this CPU has: the same bits, on one thread or two; and within float32
rounding of float64 NumPy."""
import numpy as np
import pytest

from vaec import _core

import reference as ref
from _helpers import available_isas, forced_isa

ACTS = ("identity",) + ref.ACTIVATIONS
# (B, IN, OUT): B <= 4 takes the unpacked small-M path (forward, and din in backward);
# IN > 256 spans several K slices; B > 264 several row blocks; odd sizes give edge tiles
SHAPES = [(1, 784, 400), (3, 33, 70), (4, 600, 17), (5, 7, 3), (17, 63, 40), (100, 257, 130),
          (300, 37, 33), (64, 520, 90)]


def _act(name, a):
    return a if name == "identity" else ref.activate(name, a)


def _act_grad(name, a, h):
    return np.ones_like(a) if name == "identity" else ref.activate_grad(name, a, h)


def _data(B, IN, OUT, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, IN), dtype=np.float32)
    W = (rng.standard_normal((OUT, IN)) / np.sqrt(IN)).astype(np.float32)
    b = rng.standard_normal(OUT, dtype=np.float32)
    dout = rng.standard_normal((B, OUT), dtype=np.float32)
    return x, W, b, dout


@pytest.mark.parametrize("isa", available_isas())
def test_fused_forward_matches_unfused_bitwise(isa):
    for s, (B, IN, OUT) in enumerate(SHAPES):
        x, W, b, _ = _data(B, IN, OUT, s)
        pre = x.astype(np.float64) @ W.T.astype(np.float64)
        scale = 4 * np.sqrt(IN) * 1e-6 * (np.abs(x) @ np.abs(W.T) + 1)
        for act in ACTS:
            for bias in (b, None):
                with forced_isa(isa):
                    fused = _core.dense(x, W, bias, act, True, 1, None)
                    fused2 = _core.dense(x, W, bias, act, True, 2, None)
                    naive = _core.dense(x, W, bias, act, False, 1, None)
                assert np.array_equal(fused, naive, equal_nan=True), (isa, B, IN, OUT, act, bias is None)
                assert np.array_equal(fused, fused2, equal_nan=True), (isa, B, IN, OUT, act, bias is None)
                want = _act(act, pre + (0.0 if bias is None else bias.astype(np.float64)))
                err = np.abs(fused - want)
                assert np.all(err <= scale + 4e-7 * np.abs(want) + 1e-30), (isa, B, IN, OUT, act, float(err.max()))


@pytest.mark.parametrize("isa", available_isas())
def test_fused_backward_matches_unfused_bitwise(isa):
    for s, (B, IN, OUT) in enumerate(SHAPES):
        a, W, _, dout = _data(B, IN, OUT, 100 + s)
        for act in ACTS:
            # the layer's input is the output of `act` on the layer below
            y = _act(act, a.astype(np.float64)).astype(np.float32)
            with forced_isa(isa):
                fused = _core.dense(y, W, None, act, True, 1, dout)
                fused2 = _core.dense(y, W, None, act, True, 2, dout)
                naive = _core.dense(y, W, None, act, False, 1, dout)
            for f, f2, n, what in zip(fused, fused2, naive, ("din", "dW", "db")):
                assert np.array_equal(f, n), (isa, B, IN, OUT, act, what)
                assert np.array_equal(f, f2), (isa, B, IN, OUT, act, what)
            din, dW, db = fused
            g = _act_grad(act, a.astype(np.float64), y.astype(np.float64))
            full = dout.astype(np.float64) @ W.astype(np.float64)
            scale = 4 * np.sqrt(OUT) * 1e-6 * (np.abs(dout) @ np.abs(W) + 1)
            assert np.all(np.abs(din - full * g) <= scale * np.abs(g) + 4e-7 * np.abs(full * g)), (isa, act, B, IN, OUT)
            want_dW = dout.T.astype(np.float64) @ y.astype(np.float64)
            assert np.all(np.abs(dW - want_dW) <= 4 * np.sqrt(B) * 1e-6 * (np.abs(dout.T) @ np.abs(y) + 1))
            assert np.allclose(db, dout.astype(np.float64).sum(0), rtol=1e-6, atol=1e-5)


def test_fused_epilogue_on_edge_cases():
    """No bias and the identity (plain GEMM); a layer with no inputs (the output is the
    bias, activated); one output column."""
    x, W, b, dout = _data(6, 0, 5, 1)
    out = _core.dense(x, W, b, "tanh", True, 2, None)
    assert out.shape == (6, 5) and np.allclose(out, np.tanh(b.astype(np.float64)), rtol=1e-6, atol=0)
    assert np.array_equal(out, _core.dense(x, W, b, "tanh", False, 1, None))
    assert not _core.dense(x, W, None, "identity", True, 1, None).any()
    x, W, b, dout = _data(9, 12, 1, 2)
    for act in ACTS:
        assert np.array_equal(_core.dense(x, W, b, act, True, 2, None), _core.dense(x, W, b, act, False, 1, None))
