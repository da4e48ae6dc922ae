"""Finite-difference checks of every parameter tensor's gradient through
loss_and_grad(eps=...), for every activation and both likelihoods, and of every
activation's derivative in float64.

The C core computes in float32, so the model check uses central differences along a
random unit direction per tensor (one number per tensor, well above float32 noise).
ReLU and leaky ReLU are piecewise linear: a difference that straddles a kink is not a
derivative, so those take the median over several directions.
The float64 reference in tests/reference.py is held to finite differences in float64."""
import numpy as np
import pytest

import vaec
from vaec import _core

from reference import activate

ACTS = ["tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu"]


def directional_check(m, x, eps, h, rng, directions=1):
    """Per tensor: the median over `directions` random unit directions v of the relative
    error between the central difference of the loss along v and grad . v."""
    m.loss_and_grad(x, eps=eps)
    grads = {k: v.copy() for k, v in m.grads.items()}
    errors = {}
    for name, p in m.params.items():
        errs = []
        for _ in range(directions):
            v = rng.standard_normal(p.shape).astype(np.float32)
            v /= np.linalg.norm(v)
            p0 = p.copy()
            p[...] = p0 + h * v
            lp = m.loss_and_grad(x, eps=eps)
            p[...] = p0 - h * v
            lm = m.loss_and_grad(x, eps=eps)
            p[...] = p0
            fd = (lp - lm) / (2 * h)
            an = float(np.sum(grads[name].astype(np.float64) * v))
            errs.append(abs(fd - an) / max(abs(an), abs(fd), 1e-2))
        errors[name] = float(np.median(errs))
    m.loss_and_grad(x, eps=eps)  # leave grads as they were
    return errors


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("hidden", [(), (9, 7)])
def test_gradients_match_finite_differences(activation, likelihood, hidden):
    rng = np.random.default_rng(7)
    D, Z, n = 12, 3, 5
    m = vaec.VAE(D, Z, hidden=hidden, activation=activation, likelihood=likelihood, seed=11, threads=1)
    x = rng.random((n, D), dtype=np.float32)
    eps = rng.standard_normal((2, n, Z)).astype(np.float32)
    # piecewise-linear units: a direction whose difference straddles a kink gives a
    # wrong number, so take the median over several directions (a wrong gradient is
    # wrong in every direction; a kink spoils only the few directions that cross it)
    kinked = activation in ("relu", "leaky_relu") and hidden
    errors = directional_check(m, x, eps, 2e-3 if kinked else 1e-2, rng, directions=7 if kinked else 1)
    assert set(errors) == set(m.params)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-3, (worst, errors[worst])


def test_gradcheck_detects_a_wrong_gradient():
    """The check above can fail: a gradient off by 5% in one tensor is caught."""
    rng = np.random.default_rng(7)
    m = vaec.VAE(12, 3, hidden=(9,), activation="tanh", seed=11, threads=1)
    x = rng.random((5, 12), dtype=np.float32)
    eps = rng.standard_normal((5, 3)).astype(np.float32)
    m.loss_and_grad(x, eps=eps)
    good = {k: v.copy() for k, v in m.grads.items()}
    # scale the returned gradient of one tensor and redo the comparison by hand
    name = "decoder.0.weight"
    v = rng.standard_normal(good[name].shape).astype(np.float32)
    v /= np.linalg.norm(v)
    p = m.params[name]
    p0 = p.copy()
    h = 1e-2
    p[...] = p0 + h * v
    lp = m.loss_and_grad(x, eps=eps)
    p[...] = p0 - h * v
    lm = m.loss_and_grad(x, eps=eps)
    p[...] = p0
    fd = (lp - lm) / (2 * h)
    an_good = float(np.sum(good[name] * v))
    an_bad = 1.05 * an_good
    assert abs(fd - an_good) / max(abs(an_good), 1e-2) < 5e-3
    assert abs(fd - an_bad) / max(abs(an_bad), 1e-2) > 5e-3


@pytest.mark.parametrize("activation", ACTS)
def test_activation_values_and_derivatives(activation):
    """Forward against float64 formulas; backward (written in terms of the output)
    against a float64 central difference of the formula, away from kinks."""
    x = np.concatenate([np.linspace(-30, 30, 601), np.linspace(-3, 3, 601)])
    x = x[np.abs(x) > 1e-3].astype(np.float32)
    y = _core.act(activation, x)
    ref = activate(activation, x.astype(np.float64))
    assert np.allclose(y, ref, rtol=2e-6, atol=2e-7), np.max(np.abs(y - ref))
    d = _core.act(activation, np.ones_like(x), y)
    h = 1e-6
    xd = x.astype(np.float64)
    fd = (activate(activation, xd + h) - activate(activation, xd - h)) / (2 * h)
    assert np.allclose(d, fd, rtol=1e-4, atol=1e-6), np.max(np.abs(d - fd))


def test_softplus_and_sigmoid_are_stable_at_extremes():
    x = np.array([-1e4, -100, -20, 0, 20, 100, 1e4], np.float32)
    sp = _core.act("softplus", x)
    sg = _core.act("sigmoid", x)
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(sg))
    assert sp[-1] == 1e4 and sp[0] == 0.0 and abs(sp[3] - np.log(2)) < 1e-7
    assert sg[0] == 0.0 and sg[-1] == 1.0
