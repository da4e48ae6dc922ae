"""Seeds: the same seed gives bitwise-identical results whatever the thread count;
the counter-based RNG gives the same numbers however the work is split."""
import numpy as np
import pytest

import vaec
from vaec import _core


def run(threads, seed=0):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 256, (1300, 64), dtype=np.uint8)
    m = vaec.VAE(64, 5, hidden=(48, 24), seed=seed, threads=threads)
    # 600-row steps: two chunks of at most 512 rows, gradients summed across them
    losses = [m.train_step(X[i:i + 600], lr=1e-3, samples=2, binarize="dynamic") for i in (0, 600, 700)]
    hist = m.fit(X, epochs=2, batch_size=128, progress=False, seed=9)
    return losses, hist["loss"], m.elbo(X, samples=3), m.state_dict(), m.sample(5, seed=1)


def test_bitwise_identical_with_1_and_2_threads():
    a, b = run(1), run(2)
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(a[2], b[2])
    for k in a[3]:
        assert np.array_equal(a[3][k], b[3][k]), k
    assert np.array_equal(a[4], b[4])


def test_a_different_seed_gives_different_results():
    a, b = run(2, seed=0), run(2, seed=1)
    assert a[0] != b[0]


def test_seeded_calls_repeat_and_unseeded_calls_advance():
    m = vaec.VAE(10, 2, hidden=(), seed=0)
    x = np.full((4, 10), 0.5, np.float32)
    assert np.array_equal(m.elbo(x, seed=5), m.elbo(x, seed=5))
    assert not np.array_equal(m.elbo(x), m.elbo(x))
    m2 = vaec.VAE(10, 2, hidden=(), seed=0)
    m3 = vaec.VAE(10, 2, hidden=(), seed=0)
    assert np.array_equal(m2.elbo(x), m3.elbo(x))


def test_rng_is_counter_based_and_standard_normal():
    whole = _core.rng("normal", 1001, 42, 7, 0)
    pieces = np.concatenate([_core.rng("normal", 3, 42, 7, 0), _core.rng("normal", 500, 42, 7, 3),
                             _core.rng("normal", 498, 42, 7, 503)])
    assert np.array_equal(whole, pieces)
    assert not np.array_equal(whole, _core.rng("normal", 1001, 42, 8, 0))
    z = _core.rng("normal", 400000, 1, 0, 0).astype(np.float64)
    # mean, variance, skew, kurtosis of N(0,1) within a few standard errors
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert abs(np.mean(z ** 3)) < 5 * np.sqrt(15 / z.size)
    assert abs(np.mean(z ** 4) - 3) < 5 * np.sqrt(96 / z.size)
    u = _core.rng("uniform", 400000, 1, 0, 0)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)


def test_dynamic_binarization_samples_bernoulli_grey_levels():
    """Zero weights, zero encoder output and decoder biases of 1 make the ELBO exactly
    (number of ones in the binarized image) - D * softplus(1), so the count of pixels
    drawn as 1 can be read off and held to Binomial(D, p)."""
    D, n, p = 400, 256, 0.3
    m = vaec.VAE(D, 2, hidden=(), seed=0, threads=1)
    for k, v in m.params.items():
        v[...] = 0.0
    m.params["decoder.out.bias"][...] = 1.0
    x = np.full((n, D), p, np.float32)
    ones = m.elbo(x, seed=1, binarize="dynamic") + D * np.logaddexp(0, 1.0)
    assert np.allclose(ones, np.round(ones), atol=1e-3)
    assert abs(ones.mean() - D * p) < 5 * np.sqrt(D * p * (1 - p) / n)
    assert abs(ones.var() - D * p * (1 - p)) < 0.3 * D * p * (1 - p)
    again = m.elbo(x, seed=1, binarize="dynamic") + D * np.logaddexp(0, 1.0)
    other = m.elbo(x, seed=2, binarize="dynamic") + D * np.logaddexp(0, 1.0)
    assert np.array_equal(ones, again) and not np.array_equal(ones, other)
    # grey levels 0 and 1 are never flipped; uint8 input is binarized the same way
    x8 = np.zeros((4, D), np.uint8)
    x8[:, :100] = 255
    ones8 = m.elbo(x8, seed=3, binarize="dynamic") + D * np.logaddexp(0, 1.0)
    assert np.allclose(ones8, 100, atol=1e-3)
