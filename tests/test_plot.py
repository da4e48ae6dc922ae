"""Tests for vaec.plot: every plot renders to a non-trivial PNG with Agg."""

import io
import os

import numpy as np
import pytest

os.environ["MPLBACKEND"] = "Agg"
matplotlib = pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from vaec import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeVAE:
    """A duck-typed stand-in for vaec.VAE: random linear maps + sigmoid."""

    def __init__(self, input_dim=784, latent_dim=2, seed=0):
        rng = np.random.default_rng(seed)
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.W_enc = rng.normal(0, 1 / np.sqrt(input_dim), (input_dim, latent_dim))
        self.W_dec = rng.normal(0, 1.5, (latent_dim, input_dim))
        self.b_dec = rng.normal(-1, 0.5, input_dim)
        self.calls = []

    def encode(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.calls.append(("encode", X.shape, X.dtype))
        mu = (X - 0.13) @ self.W_enc * 4
        return mu.astype(np.float32), np.zeros_like(mu, dtype=np.float32)

    def decode(self, Z):
        Z = np.asarray(Z)
        self.calls.append(("decode", Z.shape, Z.dtype))
        return (1 / (1 + np.exp(-(Z @ self.W_dec + self.b_dec)))).astype(np.float32)

    def reconstruct(self, X):
        self.calls.append(("reconstruct", np.shape(X), np.asarray(X).dtype))
        return self.decode(self.encode(X)[0])

    def sample(self, n, seed=None):
        z = np.random.default_rng(seed).standard_normal((n, self.latent_dim))
        return self.decode(z.astype(np.float32))


def png_bytes(fig):
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000, len(data)
    rgb = png_pixels(data)[..., :3]
    assert (rgb.min(axis=-1) < 0.9).mean() > 0.01  # not a blank canvas
    return data


def coloured_fraction(data):
    """Share of clearly coloured (non-grey) pixels, e.g. scatter points."""
    rgb = png_pixels(data)[..., :3]
    return ((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2).mean()


def png_pixels(data):
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(data), format="png")


@pytest.fixture
def digits():
    rng = np.random.default_rng(1)
    X = np.zeros((60, 28, 28), np.uint8)
    for i in range(60):  # bright bars of varying position
        r = rng.integers(4, 24)
        X[i, r - 2: r + 2, 4:24] = 255
        X[i, 4:24, (i * 7) % 20 + 4] = 200
    return X.reshape(60, 784), (np.arange(60) % 10).astype(np.uint8)


def test_samples_grid_array(digits):
    X, _ = digits
    fig = plot.samples_grid(X[:30], title="data")
    data = png_bytes(fig)
    assert len(data) > 3000  # an empty figure of this size is about 2.6 kB
    px = png_pixels(data)
    assert px[..., :3].std() > 0.1  # not a blank image
    # float input and (n, h, w) input
    png_bytes(plot.samples_grid(X[:16].reshape(16, 28, 28) / 255.0, nrow=8))
    # _repr_png_ for Jupyter
    assert fig._repr_png_().startswith(PNG_MAGIC)


def test_samples_grid_model_and_shapes():
    m = FakeVAE(560)
    fig = plot.samples_grid(m, n=12, seed=0, shape=(28, 20))
    png_bytes(fig)
    assert "samples" in fig._suptitle.get_text()
    png_bytes(plot.samples_grid(m, n=12, seed=0))  # 560 pixels -> Frey faces 28x20
    with pytest.raises(ValueError, match="shape"):
        plot.samples_grid(np.zeros((4, 50)))


def test_reconstructions(digits):
    X, _ = digits
    m = FakeVAE()
    fig = plot.reconstructions(m, X, n=8)
    png_bytes(fig)
    name, shape, dtype = [c for c in m.calls if c[0] == "reconstruct"][0]
    assert shape == (8, 784) and dtype == np.float32  # uint8 scaled to [0, 1]


def test_latent_manifold():
    m = FakeVAE(latent_dim=5)
    fig = plot.latent_manifold(m, n=7, dims=(1, 3))
    png_bytes(fig)
    name, shape, dtype = [c for c in m.calls if c[0] == "decode"][0]
    assert shape == (49, 5) and dtype == np.float32
    with pytest.raises(ValueError):
        plot.latent_manifold(m, dims=(0, 0))
    with pytest.raises(ValueError):
        plot.latent_manifold(FakeVAE(latent_dim=1))


def test_latent_manifold_grid_values(monkeypatch):
    seen = {}
    m = FakeVAE(latent_dim=3)
    orig = m.decode

    def decode(Z):
        seen["Z"] = np.array(Z)
        return orig(Z)

    m.decode = decode
    plot.latent_manifold(m, n=4)
    Z = seen["Z"]
    q = np.array([-1.1503494, -0.3186394, 0.3186394, 1.1503494])  # ndtri((i + .5) / 4)
    np.testing.assert_allclose(Z[:4, 0], q, atol=1e-5)  # first row: z0 increases
    np.testing.assert_allclose(Z[::4, 1], q[::-1], atol=1e-5)  # z1 decreases downwards
    assert np.all(Z[:, 2] == 0)


def test_inverse_cdf_without_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *a, **k):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    np.testing.assert_allclose(plot._inv_normal_cdf([0.025, 0.5, 0.975]), [-1.959964, 0, 1.959964],
                               atol=1e-6)


@pytest.mark.parametrize("latent_dim", [1, 2, 6])
def test_latent_scatter(digits, latent_dim):
    X, y = digits
    fig = plot.latent_scatter(FakeVAE(latent_dim=latent_dim), X, y)
    assert coloured_fraction(png_bytes(fig)) > 0.002  # the coloured points are there
    ax = fig.axes[0]
    if latent_dim > 2:
        assert "PC1" in ax.get_xlabel() and "PC2" in ax.get_ylabel()
    assert ax.get_legend() is not None
    png_bytes(plot.latent_scatter(FakeVAE(latent_dim=latent_dim), X))  # no labels


def test_latent_scatter_continuous_labels(digits):
    X, _ = digits
    fig = plot.latent_scatter(FakeVAE(), X, np.linspace(0, 1, len(X)))
    png_bytes(fig)
    assert len(fig.axes) == 2  # plot + colorbar


def test_history():
    hist = {
        "loss": [200.0, 150.0, 130.0, 120.0, 115.0],
        "val_elbo": [None, -140.0, None, -125.0, -121.0],
        "seconds": [1.2, 1.1, 1.1, 1.3, 1.0],
    }
    fig = plot.history(hist)
    png_bytes(fig)
    assert len(fig.axes) == 2
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any("val" in lab for lab in labels)
    png_bytes(plot.history({"loss": [3.0, 2.0, 1.5]}))  # val_elbo / seconds absent
    png_bytes(plot.history({"loss": [3.0, 2.0], "val_elbo": [None, None], "kl": [1.0, 2.0]}))
    with pytest.raises(ValueError):
        plot.history({})


def test_figures_are_not_kept_by_pyplot(digits):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot.samples_grid(digits[0][:4])
    assert plt.get_fignums() == before


def test_real_vae_plots(digits):
    vaec = pytest.importorskip("vaec")
    if not hasattr(vaec, "VAE"):
        pytest.skip("vaec.VAE not available (C core not built?)")
    X, y = digits
    try:
        m = vaec.VAE(784, latent_dim=2, hidden=(16,))
    except Exception as e:  # pragma: no cover - depends on the core's state
        pytest.skip(f"cannot build vaec.VAE: {e}")
    Xf = X.astype(np.float32) / 255
    png_bytes(plot.samples_grid(m, n=16, seed=0))
    png_bytes(plot.reconstructions(m, Xf, n=6))
    png_bytes(plot.latent_manifold(m, n=6))
    png_bytes(plot.latent_scatter(m, Xf, y))
    png_bytes(plot.history({"loss": [2.0, 1.0], "val_elbo": [-2.5, None], "seconds": [0.1, 0.1]}))
