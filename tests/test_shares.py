"""A call on a share of a batch (row_offset, n_total: what each process computes in
data-parallel training) draws the noise and binarization of those rows of the whole batch
and divides by the whole batch's size, so the shares' losses and gradients add up to the
whole batch's: one process, no MPI needed."""
import numpy as np
import pytest

import vaec

SPLITS = [(0, 37), (37, 37), (37, 100)]   # uneven, and one empty share


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.random((n, d)) < 0.3) * rng.random((n, d))).astype(np.float32)


def _shares(model, call, counter=3):
    """Sum of the shares' losses and gradients, each call from the same RNG position (as
    every rank is), and the counter after the last."""
    total, grads = 0.0, np.zeros_like(model._arenas["grads"])
    for a, b in SPLITS:
        model._core.set_rng(seed=5, counter=counter)
        total += call(a, b)
        grads += model._arenas["grads"]
    return total, grads, model._core.state()["rng_counter"]


@pytest.mark.parametrize("kind,kw", [
    ("vae", {}),
    ("vae", {"samples": 3, "binarize": True}),
    ("vae", {"iw": True, "samples": 4}),
    ("vae", {"score": True, "baseline": 100.0}),
    ("flow", {"binarize": True}),
    ("ae", {}),
    ("u8", {"binarize": True}),
])
def test_vae_shares_add_up_to_the_batch(kind, kw):
    X = _data(100, 64)
    if kind == "u8":
        X = (X * 255).astype(np.uint8)
    if kind == "ae":
        m = vaec.Autoencoder(64, 6, hidden=(16,), seed=1, threads=1)
    else:
        m = vaec.VAE(64, 6, hidden=(16,), seed=1, threads=1, flow="planar:2" if kind == "flow" else None)
    m._core.set_rng(seed=5, counter=3)
    whole = m._core.loss_grad(x=X, **kw)
    G = m._arenas["grads"].copy()
    total, grads, counter = _shares(m, lambda a, b: m._core.loss_grad(x=X[a:b], row_offset=a, n_total=100, **kw))
    assert counter == 4   # each share takes one call of the counter, as the whole batch does
    assert total == pytest.approx(whole, rel=1e-9)
    np.testing.assert_allclose(grads, G, rtol=0, atol=2e-6 * np.abs(G).max())
    assert np.abs(G).max() > 0.1   # a real gradient


def test_vae_share_draws_the_whole_batchs_noise():
    """Row r of a share is row row_offset + r of the batch: its ELBO term (noise and
    binarization) is that of the whole batch's row (up to float32 rounding: a product of
    one row and one of ten need not round alike), at one row per call."""
    X = _data(10, 64)
    m = vaec.VAE(64, 6, hidden=(16,), seed=1, threads=1)
    m._core.set_rng(seed=5, counter=0)
    m._core.loss_grad(x=X, binarize=True, samples=2)
    rec_whole = m._core.last_rec()
    recs = []
    for r in range(10):
        m._core.set_rng(seed=5, counter=0)
        m._core.loss_grad(x=X[r:r + 1], binarize=True, samples=2, row_offset=r, n_total=10)
        recs.append(m._core.last_rec())
    assert sum(recs) == pytest.approx(rec_whole, rel=1e-7)
    # and not the noise of row 0: the same row at offset 0 draws differently
    m._core.set_rng(seed=5, counter=0)
    m._core.loss_grad(x=X[3:4], binarize=True, samples=2, row_offset=0, n_total=10)
    assert abs(m._core.last_rec() - recs[3]) > 1e-3


def test_m2_shares_add_up_to_the_batch():
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 40)).astype(np.float32), rng.integers(0, 4, 60)
    m = vaec.M2(40, n_classes=4, latent_dim=5, hidden=(16,), seed=2, threads=1)
    kw = dict(alpha=3.0, wl=1 / 20, wu=1 / 40, binarize=True)
    m._core.set_rng(seed=7, counter=0)
    whole, _ = m._core.loss_grad(X_labeled=X[:20], y_labeled=y[:20], X_unlabeled=X[20:], **kw)
    G = m._arenas["grads"].copy()
    total, grads = 0.0, 0.0
    for (al, bl), (au, bu) in [((0, 10), (0, 25)), ((10, 20), (25, 25)), ((20, 20), (25, 40))]:
        m._core.set_rng(seed=7, counter=0)
        loss, _ = m._core.loss_grad(X_labeled=X[al:bl], y_labeled=y[al:bl], X_unlabeled=X[20 + au:20 + bu],
                                    row_offset_l=al, row_offset_u=au, n_total=60, **kw)
        total += loss
        grads = grads + m._arenas["grads"]
    assert total == pytest.approx(whole, rel=1e-9)
    np.testing.assert_allclose(grads, G, rtol=0, atol=2e-6 * np.abs(G).max())


def test_flow_shares_add_up_to_the_batch():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((50, 4)).astype(np.float32)
    f = vaec.Flow(4, "realnvp:4", seed=1, threads=1)
    whole = f._core.nll_step(x=Z)
    G = f._arenas["grads"].copy()
    l1 = f._core.nll_step(x=Z[:20], n_total=50)
    g1 = f._arenas["grads"].copy()
    l2 = f._core.nll_step(x=Z[20:], n_total=50)
    assert l1 + l2 == pytest.approx(whole, rel=1e-9)
    np.testing.assert_allclose(g1 + f._arenas["grads"], G, rtol=0, atol=2e-6 * np.abs(G).max())


def test_empty_shares_give_zero_gradients_and_take_the_call():
    X = _data(10, 64)
    m = vaec.VAE(64, 6, hidden=(16,), seed=1, threads=1, flow="planar:2")
    m._core.loss_grad(x=X)
    assert np.abs(m._arenas["grads"]).max() > 0
    c0 = m._core.state()["rng_counter"]
    assert m._core.loss_grad(x=X[:0], row_offset=10, n_total=10) == 0.0
    assert not m._arenas["grads"].any()
    assert m._core.state()["rng_counter"] == c0 + 1
    m2 = vaec.M2(64, n_classes=3, latent_dim=4, hidden=(8,), seed=0, threads=1)
    m2._core.loss_grad(X_labeled=X, y_labeled=np.zeros(10, int), X_unlabeled=None, alpha=1.0, wl=0.1, wu=0.1)
    c0 = m2._core.state()["rng_counter"]
    assert m2._core.loss_grad(X_labeled=None, y_labeled=None, X_unlabeled=X[:0], alpha=1.0, wl=0.1, wu=0.1,
                              n_total=10)[0] == 0.0
    assert not m2._arenas["grads"].any() and m2._core.state()["rng_counter"] == c0 + 1
    f = vaec.Flow(4, "realnvp:2", seed=1, threads=1)
    f._core.nll_step(x=np.ones((3, 4), np.float32))
    assert f._core.nll_step(x=np.ones((0, 4), np.float32), n_total=3) == 0.0
    assert not f._arenas["grads"].any()
    # without n_total an empty batch is still an error
    with pytest.raises(ValueError, match="empty batch"):
        m._core.loss_grad(x=X[:0])
    with pytest.raises(ValueError, match="empty batch"):
        f._core.nll_step(x=np.ones((0, 4), np.float32))


@pytest.mark.parametrize("bad,match", [
    (dict(row_offset=5), "not a share of a batch"),
    (dict(row_offset=45, n_total=50), r"rows \[45, 65\) are not a share"),
    (dict(n_total=-1), "not a share"),
    (dict(n_total=50, eps=np.zeros((20, 6), np.float32)), "eps: explicit noise"),
    (dict(n_total=50, free_bits=0.5), "free_bits"),
])
def test_bad_shares_are_refused(bad, match):
    m = vaec.VAE(64, 6, hidden=(16,), seed=1, threads=1)
    with pytest.raises(ValueError, match=match):
        m._core.loss_grad(x=_data(20, 64), **bad)


def test_bad_m2_and_flow_shares_are_refused():
    X = _data(10, 64)
    m2 = vaec.M2(64, n_classes=3, latent_dim=4, hidden=(8,), seed=0, threads=1)
    with pytest.raises(ValueError, match="row_offset_l, row_offset_u, n_total"):
        m2._core.loss_grad(X_labeled=X, y_labeled=np.zeros(10, int), X_unlabeled=X, alpha=1.0, wl=0.1, wu=0.1,
                           row_offset_l=3, n_total=20)
    with pytest.raises(ValueError, match="eps: explicit noise"):
        m2._core.loss_grad(X_labeled=X, y_labeled=np.zeros(10, int), X_unlabeled=None, alpha=1.0, wl=0.1, wu=0.1,
                           eps_l=np.zeros((10, 4), np.float32), n_total=10)
    f = vaec.Flow(4, "realnvp:2", seed=1, threads=1)
    with pytest.raises(ValueError, match="n_total"):
        f._core.nll_step(x=np.ones((5, 4), np.float32), n_total=3)
