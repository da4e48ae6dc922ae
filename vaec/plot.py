"""Plots for vaec models and data (needs matplotlib: ``pip install 'vaec[plot]'``).

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot, so it works headless (no display, no ``plt.show``), does not pile up
in pyplot's figure list, and shows exactly once when it is the last
expression of a Jupyter cell.  Save it with ``fig.savefig("out.png")``.

Models are duck-typed: anything with ``encode(X) -> (mu, logvar)`` (or, like
:class:`vaec.Autoencoder`, ``encode(X) -> codes``),
``decode(Z)``, ``reconstruct(X)``, ``sample(n, seed=None)``, ``input_dim``
and ``latent_dim`` works (e.g. :class:`vaec.VAE`).
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["samples_grid", "reconstructions", "latent_manifold", "latent_scatter", "history", "interpolation",
           "interpolation_path"]

_FIGURE_CLASS = None


def _figure(**kw):
    """A new Agg-backed Figure (subclass with ``_repr_png_`` for Jupyter)."""
    global _FIGURE_CLASS
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "vaec.plot needs matplotlib; install it with: pip install 'vaec[plot]'"
        ) from e
    if _FIGURE_CLASS is None:

        class VaecFigure(Figure):
            """A matplotlib Figure that Jupyter renders as PNG even without pyplot."""

            def _repr_png_(self):
                buf = io.BytesIO()
                self.savefig(buf, format="png", bbox_inches="tight")
                return buf.getvalue()

        _FIGURE_CLASS = VaecFigure
    fig = _FIGURE_CLASS(**kw)
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------
# helpers


def _as_float01(X) -> np.ndarray:
    """uint8 -> float32 / 255; other arrays -> float32 (values left as they are)."""
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X.astype(np.float32) / np.float32(255)
    return X.astype(np.float32, copy=False)


def _infer_shape(D: int, shape) -> tuple:
    """(h, w) for grey images, or (3, h, w) for colour ones (a (1, h, w) shape is grey)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3 and shape[0] != 3:
        raise ValueError(f"cannot show images of {shape[0]} channels; grey (1) or colour (3) only")
    if int(np.prod(shape)) == D:
        return shape
    if D == 560:  # Frey faces
        return (28, 20)
    r = math.isqrt(D)
    if r * r == D:
        return (r, r)
    raise ValueError(f"cannot show {D}-pixel images with shape {shape}; pass shape=(rows, cols)")


def _value_range(images):
    lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    if lo >= -1e-6 and hi <= 1 + 1e-6:
        return 0.0, 1.0
    return lo, (hi if hi > lo else lo + 1.0)


def _mosaic(images: np.ndarray, shape, ncol: int, pad: int = 1, pad_value=1.0):
    """Tile (n, D) images into one array with ``ncol`` images per row: 2-D for grey images
    (shape (h, w)), (rows, cols, 3) for colour ones (shape (3, h, w), channels first)."""
    n = images.shape[0]
    colour = len(shape) == 3
    h, w = shape[-2:]
    ncol = max(1, min(ncol, n))
    nrows = math.ceil(n / ncol)
    out = np.full(
        (nrows * h + (nrows - 1) * pad, ncol * w + (ncol - 1) * pad) + ((3,) if colour else ()), pad_value,
        dtype=np.float32
    )
    imgs = images.reshape(n, 3, h, w).transpose(0, 2, 3, 1) if colour else images.reshape(n, h, w)
    for k in range(n):
        r, c = divmod(k, ncol)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = imgs[k]
    return out


def _show(ax, mosaic, vmin, vmax, cmap="gray"):
    if mosaic.ndim == 3:   # colour: scaled to [0, 1], the padding white
        m = (mosaic - vmin) / (vmax - vmin if vmax > vmin else 1.0)
        ax.imshow(np.clip(np.nan_to_num(m, nan=1.0), 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _means(model, X):
    """Posterior means (a VAE's encode(X)[0]) or an autoencoder's codes (encode(X))."""
    e = model.encode(X)
    return e[0] if isinstance(e, tuple) else e


def _check_images(images, shape):
    images = _as_float01(images)
    if images.ndim == 4:  # (n, C, h, w)
        shape = images.shape[1:]
        images = images.reshape(images.shape[0], -1)
    if images.ndim == 3:  # (n, h, w)
        shape = images.shape[1:]
        images = images.reshape(images.shape[0], -1)
    if images.ndim != 2 or images.shape[0] == 0:
        raise ValueError(f"expected images of shape (n, D) with n >= 1, got {images.shape}")
    return images, _infer_shape(images.shape[1], shape)


# --------------------------------------------------------------------------
# plots


def samples_grid(images, nrow=None, shape=(28, 28), title=None, *, n=64, seed=None, cmap="gray"):
    """A grid of images.

    ``images`` is an ``(n, D)`` (or ``(n, h, w)``) array, uint8 or floats in
    [0, 1], or a model: then ``n`` images are drawn with ``images.sample(n,
    seed=seed)``.  ``nrow`` is the number of images per row (as in
    torchvision's ``make_grid``), by default about ``sqrt(n)``.
    """
    if hasattr(images, "sample") and not isinstance(images, np.ndarray):
        model = images
        images = model.sample(int(n), seed=seed)
        if title is None:
            title = f"{int(n)} samples from {type(model).__name__}"
    images, shape = _check_images(images, shape)
    count = images.shape[0]
    ncol = int(nrow) if nrow else math.ceil(math.sqrt(count))
    mosaic = _mosaic(images, shape, ncol, pad=1, pad_value=np.nan)
    vmin, vmax = _value_range(images)
    h, w = mosaic.shape[:2]
    scale = 6.0 / max(h, w)
    fig = _figure(figsize=(max(2.0, w * scale), max(2.0, h * scale) + (0.4 if title else 0)))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.96 - (0.4 / fig.get_figheight() if title else 0)])
    _show(ax, mosaic, vmin, vmax, cmap)
    ax.set_facecolor("white")
    if title:
        fig.suptitle(title)
    return fig


def interpolation_path(z_a, z_b, steps=10, path="linear"):
    """``steps`` points from ``z_a`` to ``z_b`` (both ends included), float64
    ``(steps, d)``, or ``(pairs, steps, d)`` for 2-D inputs holding one pair per row.

    ``"linear"``: (1 - t) z_a + t z_b. ``"spherical"``: slerp, sin((1 - t) w) / sin w z_a
    + sin(t w) / sin w z_b with w the angle between them (White 2016), which keeps a
    path through a Gaussian prior at typical norms; linear where the angle is ~0."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps: expected an integer >= 2, got {steps!r}")
    if not isinstance(path, str) or path not in ("linear", "spherical"):
        raise ValueError(f"path: expected 'linear' or 'spherical', got {path!r}")
    a = np.asarray(z_a, dtype=np.float64)
    b = np.asarray(z_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"z_a and z_b: expected two arrays of the same shape (d,) or (pairs, d), got {a.shape} and {b.shape}")
    single = a.ndim == 1
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    t = np.linspace(0.0, 1.0, int(steps))[None, :, None]
    lin = (1 - t) * a2[:, None, :] + t * b2[:, None, :]
    if path == "linear":
        out = lin
    else:
        na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
        cos = np.clip(np.sum(a2 * b2, axis=1) / np.maximum(na * nb, 1e-300), -1.0, 1.0)
        w = np.arccos(cos)[:, None, None]
        sw = np.sin(w)
        ok = sw > 1e-6
        sl = (np.sin((1 - t) * w) * a2[:, None, :] + np.sin(t * w) * b2[:, None, :]) / np.where(ok, sw, 1.0)
        out = np.where(ok, sl, lin)
    return out[0] if single else out


def interpolation(model, x_a, x_b, steps=10, path="linear", shape=(28, 28), *, cmap="gray", title=None):
    """Decode the path between the latent codes of images ``x_a`` and ``x_b``.

    The codes are ``model.code(x)`` (a VAE's posterior mean; with a flow posterior, q0's
    mean carried through the flow), or the autoencoder's codes. ``x_a``, ``x_b``: one
    image each (``(D,)``), or ``(pairs, D)`` for one row per pair. Each row shows x_a,
    the ``steps`` decoded points of the path (``interpolation_path``: ``"linear"`` or
    ``"spherical"``), then x_b. Returns the Figure; the decoded images are in its
    attribute ``decoded`` (pairs, steps, D)."""
    D = int(model.input_dim)
    xs = []
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        arr = _as_float01(x)
        if arr.ndim >= 3:   # an image (C, H, W) or images (pairs, C, H, W) of an image model
            arr = arr.reshape(1 if arr.shape == tuple(getattr(model, "input_shape", ())) else arr.shape[0], -1)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != D or arr.shape[0] == 0:
            raise ValueError(f"{name}: expected an image of {D} values, or an array (pairs, {D}); "
                             f"got shape {np.shape(x)}")
        xs.append(arr)
    if xs[0].shape != xs[1].shape:
        raise ValueError(f"x_a and x_b: expected the same number of images, got {xs[0].shape[0]} and {xs[1].shape[0]}")
    z = model.code(np.concatenate(xs)) if hasattr(model, "code") else _means(model, np.concatenate(xs))
    z = np.asarray(z, dtype=np.float64)
    P = xs[0].shape[0]
    zs = interpolation_path(z[:P], z[P:], steps, path)             # (P, steps, d)
    dec = _as_float01(model.decode(zs.reshape(P * steps, -1).astype(np.float32))).reshape(P, steps, D)
    rows = np.concatenate([xs[0][:, None], dec, xs[1][:, None]], axis=1).reshape(-1, D)
    shape = _infer_shape(D, shape)
    mosaic = _mosaic(rows, shape, steps + 2, pad=1, pad_value=np.nan)
    vmin, vmax = _value_range(rows)
    h, w = mosaic.shape[:2]
    scale = 9.0 / max(h, w)
    top = 0.4 if title else 0.25
    fig = _figure(figsize=(max(3.0, w * scale), max(1.2, h * scale) + top))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.96 - top / fig.get_figheight()])
    _show(ax, mosaic, vmin, vmax, cmap)
    ax.set_facecolor("white")
    fig.suptitle(title or f"{type(model).__name__}: {path} path, x_a \u2192 x_b in {steps} steps")
    fig.decoded = dec
    return fig


def reconstructions(model, X, n=10, shape=(28, 28), *, cmap="gray"):
    """Originals ``X[:n]`` (top row) above ``model.reconstruct(X[:n])`` (bottom row).

    uint8 data is scaled to [0, 1] before being passed to the model.
    """
    Xn = _as_float01(np.asarray(X)[: int(n)])
    if Xn.ndim == 4 and shape == (28, 28):
        shape = Xn.shape[1:]
    if Xn.ndim in (3, 4):
        Xn = Xn.reshape(Xn.shape[0], -1)
    R = _as_float01(model.reconstruct(Xn))
    if R.shape != Xn.shape:
        R = R.reshape(Xn.shape)
    orig, shape = _check_images(Xn, shape)
    rec, _ = _check_images(R, shape)
    k = orig.shape[0]
    h, w = shape[-2:]
    fig = _figure(figsize=(max(3.0, 0.9 * k * w / h + 1.2), 2.3))
    axes = fig.subplots(2, 1)
    for ax, imgs, label in ((axes[0], orig, "original"), (axes[1], rec, "reconstruction")):
        _show(ax, _mosaic(imgs, shape, k, pad=1, pad_value=np.nan), *_value_range(imgs), cmap)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.16, right=0.99, top=0.97, bottom=0.03, hspace=0.08)
    return fig


def _inv_normal_cdf(p):
    p = np.asarray(p, dtype=np.float64)
    try:
        from scipy.special import ndtri

        return ndtri(p)
    except ImportError:
        from statistics import NormalDist

        nd = NormalDist()
        return np.array([nd.inv_cdf(float(q)) for q in p.ravel()]).reshape(p.shape)


def latent_manifold(model, n=20, shape=(28, 28), dims=(0, 1), *, cmap="gray"):
    """The learned manifold (Kingma & Welling 2014, Fig. 4).

    An ``n x n`` grid of equally spaced quantiles ``(i + 0.5) / n`` of the
    unit square is mapped through the inverse Gaussian CDF to latent values
    for latent dimensions ``dims`` (others 0) and decoded with
    ``model.decode``.  The horizontal axis is ``z[dims[0]]``, the vertical
    (upwards) ``z[dims[1]]``.
    """
    n = int(n)
    L = int(model.latent_dim)
    d0, d1 = (int(d) for d in dims)
    if L < 2:
        raise ValueError("latent_manifold needs a latent space of at least 2 dimensions")
    if d0 == d1 or not (0 <= d0 < L and 0 <= d1 < L):
        raise ValueError(f"dims must be two different latent dimensions in 0..{L - 1}, got {dims}")
    z = _inv_normal_cdf((np.arange(n) + 0.5) / n)
    Z = np.zeros((n * n, L), dtype=np.float32)
    for r in range(n):  # row 0 at the top = largest z[d1]
        for c in range(n):
            Z[r * n + c, d0] = z[c]
            Z[r * n + c, d1] = z[n - 1 - r]
    images, shape = _check_images(model.decode(Z), shape)
    mosaic = _mosaic(images, shape, n, pad=0)
    h, w = shape[-2:]
    fig = _figure(figsize=(6.0 * min(1.0, (w / h)) + 0.9, 6.0 * min(1.0, h / w) + 0.7))
    ax = fig.add_subplot()
    vmin, vmax = _value_range(images)
    if mosaic.ndim == 3:
        ax.imshow(np.clip((mosaic - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0, 1), interpolation="nearest")
    else:
        ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ticks = sorted(set(np.linspace(0, n - 1, min(n, 5)).round().astype(int)))
    ax.set_xticks([c * w + (w - 1) / 2 for c in ticks], [f"{z[c]:.2f}" for c in ticks])
    ax.set_yticks([r * h + (h - 1) / 2 for r in ticks], [f"{z[n - 1 - r]:.2f}" for r in ticks])
    ax.set_xlabel(f"z[{d0}]")
    ax.set_ylabel(f"z[{d1}]")
    ax.set_title("latent manifold (Gaussian quantiles)")
    fig.tight_layout()
    return fig


def _pca2(M, dims):
    Mc = M - M.mean(axis=0)
    _, s, Vt = np.linalg.svd(Mc.astype(np.float64), full_matrices=False)
    Vt = Vt * np.sign(Vt[np.arange(Vt.shape[0]), np.abs(Vt).argmax(axis=1)])[:, None]
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    P = Mc @ Vt[list(dims)].T
    return P, ratio[list(dims)]


def latent_scatter(model, X, y=None, dims=(0, 1), *, pca=None, s=4.0, alpha=0.7):
    """Scatter of the latent means ``model.encode(X)[0]``, coloured by label ``y``.

    With a 2-D latent space the axes are ``z[dims[0]]`` and ``z[dims[1]]``.
    With more dimensions (or ``pca=True``) the means are projected on their
    principal components ``dims`` (PC1 and PC2 by default) and the axis
    labels say so; ``pca=False`` plots raw latent dimensions instead.
    A 1-D latent space is drawn as a strip: z on x, the label (jittered) on y.
    Up to 20 distinct integer labels get a legend, otherwise a colorbar.
    """
    Xf = _as_float01(X)
    if Xf.ndim == 3:
        Xf = Xf.reshape(Xf.shape[0], -1)
    mu = np.asarray(_means(model, Xf), dtype=np.float64)
    if mu.ndim == 1:
        mu = mu[:, None]
    L = mu.shape[1]
    d0, d1 = (int(d) for d in dims)
    if pca is None:
        pca = L > 2
    rng = np.random.default_rng(0)
    if L == 1:
        xs = mu[:, 0]
        ys = (np.asarray(y, dtype=np.float64) if y is not None else np.zeros(len(xs)))
        ys = ys + rng.uniform(-0.3, 0.3, len(xs))
        xlabel, ylabel = "z[0]", ("label (jittered)" if y is not None else "jitter")
    elif pca:
        if not (0 <= d0 < L and 0 <= d1 < L) or d0 == d1:
            raise ValueError(f"dims must be two different components in 0..{L - 1}, got {dims}")
        P, ratio = _pca2(mu, (d0, d1))
        xs, ys = P[:, 0], P[:, 1]
        xlabel = f"PC{d0 + 1} of the {L}-d latent means ({100 * ratio[0]:.0f}% of variance)"
        ylabel = f"PC{d1 + 1} of the {L}-d latent means ({100 * ratio[1]:.0f}% of variance)"
    else:
        if not (0 <= d0 < L and 0 <= d1 < L) or d0 == d1:
            raise ValueError(f"dims must be two different latent dimensions in 0..{L - 1}, got {dims}")
        xs, ys = mu[:, d0], mu[:, d1]
        xlabel, ylabel = f"z[{d0}] (mean)", f"z[{d1}] (mean)"

    fig = _figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    kw = dict(s=s, alpha=alpha, linewidths=0, rasterized=len(xs) > 2000)
    if y is None:
        ax.scatter(xs, ys, **kw)
    else:
        y = np.asarray(y).ravel()
        if y.shape[0] != len(xs):
            raise ValueError(f"y has {y.shape[0]} labels for {len(xs)} points")
        classes = np.unique(y)
        discrete = (np.issubdtype(y.dtype, np.integer) or y.dtype == bool or y.dtype.kind in "USO") \
            and len(classes) <= 20
        if discrete:
            import matplotlib

            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, c in enumerate(classes):
                m = y == c
                ax.scatter(xs[m], ys[m], color=cmap(i % cmap.N), label=str(c), **kw)
            leg = ax.legend(title="label", markerscale=max(1.0, 12.0 / s), loc="center left",
                            bbox_to_anchor=(1.01, 0.5), frameon=False)
            for h in leg.legend_handles if hasattr(leg, "legend_handles") else leg.legendHandles:
                h.set_alpha(1.0)
        else:
            sc = ax.scatter(xs, ys, c=y.astype(np.float64), cmap="viridis", **kw)
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("latent space" + (" (PCA)" if pca and L > 1 else ""))
    fig.tight_layout()
    return fig


def _series(values):
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def history(hist):
    """Training curves from ``fit``'s per-epoch history dict.

    ``"loss"`` is the training -ELBO; ``"val_elbo"`` (optional, may hold
    None for epochs without validation) is the validation ELBO, drawn as
    -ELBO on the same axes; ``"seconds"`` (optional) is drawn in a second
    panel.  Any other per-epoch numeric lists go to an extra panel.
    """
    if not isinstance(hist, dict) and isinstance(getattr(hist, "history", None), dict):
        hist = hist.history
    if not hist:
        raise ValueError("history is empty")
    hist = dict(hist)
    main = {}
    if "loss" in hist:
        main["train −ELBO (loss)"] = _series(hist.pop("loss"))
    if "val_elbo" in hist:
        v = _series(hist.pop("val_elbo"))
        if np.isfinite(v).any():
            main["validation −ELBO"] = -v
    secs = _series(hist.pop("seconds")) if "seconds" in hist else None
    other = {}
    for k, v in hist.items():
        try:
            arr = _series(v)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 1 and arr.size and np.isfinite(arr).any():
            other[k] = arr
    panels = [p for p in (main, secs, other) if p is not None and len(p)]
    if not panels:
        raise ValueError("history holds no per-epoch numbers (expected 'loss', 'val_elbo', 'seconds')")
    fig = _figure(figsize=(4.6 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    i = 0
    if main:
        ax = axes[i]
        i += 1
        for label, arr in main.items():
            ep = np.arange(1, arr.size + 1)
            ok = np.isfinite(arr)
            ax.plot(ep[ok], arr[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("−ELBO (nats)")
        ax.set_title("training curves")
        ax.legend()
        ax.grid(alpha=0.3)
    if secs is not None and len(secs):
        ax = axes[i]
        i += 1
        ep = np.arange(1, secs.size + 1)
        ax.bar(ep, np.nan_to_num(secs), color="0.6")
        ax.set_xlabel("epoch")
        ax.set_ylabel("seconds")
        total = np.nansum(secs)
        ax.set_title(f"time per epoch (total {total:.1f} s)")
        ax.grid(alpha=0.3, axis="y")
    if other:
        ax = axes[i]
        for label, arr in other.items():
            ep = np.arange(1, arr.size + 1)
            ok = np.isfinite(arr)
            ax.plot(ep[ok], arr[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(next(iter(other)) if len(other) == 1 else "other metrics")
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig
