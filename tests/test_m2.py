"""The semi-supervised M2 model: losses and every gradient against an independent float64
NumPy reference (tests/reference_m2.py), finite differences, the unlabelled bound done
class by class, the classifier's outputs, argument checking, files, thread-count
determinism, and a short fit on the shipped MNIST subset."""
import numpy as np
import pytest

import vaec
from vaec import datasets

from reference_m2 import m2_bound, m2_loss_grad

D, Z, C = 12, 3, 4


def make(likelihood="bernoulli", hidden=(9, 7), activation="tanh", classifier_hidden=None, alpha=0.1, threads=1,
         seed=11, scale=0.4):
    m = vaec.M2(D, C, Z, hidden=hidden, activation=activation, likelihood=likelihood, alpha=alpha,
                classifier_hidden=classifier_hidden, seed=seed, threads=threads)
    rng = np.random.default_rng(seed)
    m.load_state_dict({k: rng.standard_normal(v.shape) * scale for k, v in m.params.items()})
    return m


def batch(rng, nl=5, nu=6):
    xl = rng.random((nl, D), dtype=np.float32)
    yl = rng.integers(0, C, nl)
    xu = rng.random((nu, D), dtype=np.float32)
    el = rng.standard_normal((nl, Z)).astype(np.float32)
    eu = rng.standard_normal((nu, C, Z)).astype(np.float32)
    return xl, yl, xu, el, eu


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("hidden,chid", [((), ()), ((9, 7), (8,)), ((6,), None)])
@pytest.mark.parametrize("parts", ["both", "labelled", "unlabelled"])
def test_loss_and_every_gradient_match_the_reference(likelihood, hidden, chid, parts):
    rng = np.random.default_rng(3)
    m = make(likelihood, hidden, "softplus", chid, alpha=0.3)
    xl, yl, xu, el, eu = batch(rng)
    if parts == "labelled":
        xu = eu = None
    if parts == "unlabelled":
        xl = yl = el = None
    n_l = 0 if xl is None else len(xl)
    N = n_l + (0 if xu is None else len(xu))
    loss = m.loss_and_grad(xl, yl, xu, eps=(el, eu))
    cfg = m.config()
    # a = alpha * N / N_l per labelled example, the counts the batch's own (none given)
    a = 0.3 * N / n_l if n_l else 0.0
    ref, G, sums = m2_loss_grad(m.params, cfg, xl, yl, xu, el, eu, a, 1.0 / N, 1.0 / N)
    assert abs(loss - ref) <= 1e-5 * abs(ref), (loss, ref)
    assert np.allclose(m.last_parts, sums, rtol=1e-5, atol=1e-5)
    assert set(G) == set(m.grads)
    for name, g in m.grads.items():
        if parts == "labelled" or np.linalg.norm(G[name]) > 0:
            assert rel(g, G[name]) < 1e-4, (name, rel(g, G[name]))


def test_alpha_weighs_the_labelled_mean_by_the_data_set_size():
    """The paper's eq. (9): a = alpha * n_total / n_labeled per labelled example, the counts
    of the data set the batch is drawn from; by default the batch's, so that the
    classification term is alpha times the batch's mean -log q(y|x)."""
    rng = np.random.default_rng(5)
    m = make(alpha=0.3)
    xl, yl, xu, el, eu = batch(rng)
    N = len(xl) + len(xu)
    loss = m.loss_and_grad(xl, yl, xu, eps=(el, eu), n_labeled=40, n_total=1000)
    ref, _, _ = m2_loss_grad(m.params, m.config(), xl, yl, xu, el, eu, 0.3 * 1000 / 40, 1.0 / N, 1.0 / N)
    assert abs(loss - ref) <= 1e-5 * abs(ref), (loss, ref)
    # the default: loss = (sum_l -L + sum_u -U) / N + alpha * mean_l[-log q(y|x)]
    own = m.loss_and_grad(xl, yl, xu, eps=(el, eu))
    nll = m.last_parts[1]
    no_class = make(alpha=0.0)
    bounds = no_class.loss_and_grad(xl, yl, xu, eps=(el, eu))
    assert abs(own - (bounds + 0.3 * nll / len(xl))) <= 1e-5 * abs(own), (own, bounds, nll)
    other = m.loss_and_grad(xl, yl, xu, eps=(el, eu), n_labeled=20, n_total=1000)
    assert other > loss  # twice the weight on a positive cross-entropy
    with pytest.raises(ValueError, match="n_labeled"):
        m.loss_and_grad(xl, yl, xu, n_labeled=0)
    with pytest.raises(ValueError, match="n_total"):
        m.loss_and_grad(xl, yl, xu, n_labeled=50, n_total=49)


def test_labelled_gradient_of_the_classifier_is_alpha_weighted():
    """Without unlabelled data the classifier only sees the alpha-weighted -log q(y|x)."""
    rng = np.random.default_rng(0)
    m = make(alpha=0.0)
    xl, yl, _, el, _ = batch(rng)
    m.loss_and_grad(xl, yl, None, eps=(el, None))
    assert all(np.all(v == 0) for k, v in m.grads.items() if k.startswith("classifier"))
    m2 = make(alpha=1.0)
    m2.loss_and_grad(xl, yl, None, eps=(el, None))
    assert any(np.any(v != 0) for k, v in m2.grads.items() if k.startswith("classifier"))


def directional_errors(m, args, h, rng):
    m.loss_and_grad(*args[:3], eps=args[3])
    grads = {k: v.copy() for k, v in m.grads.items()}
    errors = {}
    for name, p in m.params.items():
        v = rng.standard_normal(p.shape).astype(np.float32)
        v /= np.linalg.norm(v)
        p0 = p.copy()
        p[...] = p0 + h * v
        lp = m.loss_and_grad(*args[:3], eps=args[3])
        p[...] = p0 - h * v
        lm = m.loss_and_grad(*args[:3], eps=args[3])
        p[...] = p0
        fd = (lp - lm) / (2 * h)
        an = float(np.sum(grads[name].astype(np.float64) * v))
        errors[name] = abs(fd - an) / max(abs(an), abs(fd), 1e-2)
    return errors


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_match_finite_differences(likelihood):
    rng = np.random.default_rng(7)
    m = make(likelihood, (9,), "tanh", (8,), alpha=0.5, scale=0.3)
    xl, yl, xu, el, eu = batch(rng)
    errors = directional_errors(m, (xl, yl, xu, (el, eu)), 1e-2, rng)
    assert set(errors) == set(m.params)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 5e-3, (worst, errors[worst])


def test_reference_matches_finite_differences_in_float64():
    """The reference's own gradients are right (central differences in float64)."""
    rng = np.random.default_rng(1)
    m = make("bernoulli", (5,), "softplus", (4,))
    xl, yl, xu, el, eu = batch(rng, 3, 2)
    cfg = m.config()
    P = {k: v.astype(np.float64) for k, v in m.params.items()}
    _, G, _ = m2_loss_grad(P, cfg, xl, yl, xu, el, eu, 2.0, 0.2, 0.2)
    for name in P:
        v = rng.standard_normal(P[name].shape)
        v /= np.linalg.norm(v)
        Pp, Pm = dict(P), dict(P)
        Pp[name] = P[name] + 1e-6 * v
        Pm[name] = P[name] - 1e-6 * v
        fd = (m2_loss_grad(Pp, cfg, xl, yl, xu, el, eu, 2.0, 0.2, 0.2)[0]
              - m2_loss_grad(Pm, cfg, xl, yl, xu, el, eu, 2.0, 0.2, 0.2)[0]) / 2e-6
        an = np.sum(G[name] * v)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), name


def test_unlabelled_bound_equals_the_sum_over_classes():
    rng = np.random.default_rng(5)
    m = make("bernoulli", (9,), "softplus")
    _, _, xu, _, eu = batch(rng, 1, 7)
    q = m.predict_proba(xu).astype(np.float64)
    Ls = np.stack([m.elbo(xu, np.full(len(xu), c), eps=eu[:, c]) for c in range(C)], axis=1)
    explicit = np.sum(q * Ls, axis=1) - np.sum(q * np.log(q), axis=1)
    U = m.elbo(xu, eps=eu)
    assert np.allclose(U, explicit, rtol=1e-5, atol=1e-4)
    assert np.allclose(U, m2_bound(m.params, m.config(), xu, None, eu), rtol=1e-5, atol=1e-4)
    loss = m.loss_and_grad(None, None, xu, eps=(None, eu))
    assert abs(loss + explicit.mean()) < 1e-4 * abs(loss)
    assert np.all(U <= Ls.max(axis=1) + np.log(C) + 1e-4)  # U <= log sum_y exp L(x,y)


def test_labelled_bound_matches_the_reference():
    rng = np.random.default_rng(6)
    m = make("gaussian", (9,))
    xl, yl, _, el, _ = batch(rng)
    assert np.allclose(m.elbo(xl, yl, eps=el), m2_bound(m.params, m.config(), xl, yl, el), rtol=1e-5, atol=1e-4)


def test_seeded_noise_is_reproducible_and_replaces_eps():
    rng = np.random.default_rng(2)
    m = make()
    xl, yl, xu, _, _ = batch(rng)
    a = m.loss_and_grad(xl, yl, xu, seed=4)
    b = m.loss_and_grad(xl, yl, xu, seed=4)
    c = m.loss_and_grad(xl, yl, xu, seed=5)
    assert a == b and a != c


def test_predict_proba_and_predict():
    rng = np.random.default_rng(0)
    m = make(hidden=(9,), classifier_hidden=(6, 5))
    X = rng.random((300, D), dtype=np.float32)  # more than one chunk
    p = m.predict_proba(X)
    assert p.shape == (300, C) and p.dtype == np.float32
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.array_equal(m.predict(X), p.argmax(1))
    assert m.predict(X).shape == (300,)
    u8 = (X * 255).astype(np.uint8)
    assert np.allclose(m.predict_proba(u8), m.predict_proba(u8.astype(np.float32) / 255), atol=1e-6)
    mu, lv = m.encode(X[:4], [0, 1, 2, 3])
    assert mu.shape == lv.shape == (4, Z)
    g = m.generate([0, 1, 2], np.zeros((3, Z)))
    assert g.shape == (3, D) and np.all((g > 0) & (g < 1))
    assert not np.allclose(g[0], g[1])  # the label changes the image


def test_bad_arguments_are_named():
    rng = np.random.default_rng(0)
    m = make()
    xl, yl, xu, el, eu = batch(rng)
    with pytest.raises(ValueError, match="y_labeled.*out of range"):
        m.loss_and_grad(xl, np.array([0, 1, 2, 3, C]), xu)
    with pytest.raises(ValueError, match="y_labeled.*out of range"):
        m.loss_and_grad(xl, np.array([0, -1, 2, 3, 0]), xu)
    with pytest.raises(ValueError, match="y_labeled"):
        m.loss_and_grad(xl, yl[:3], xu)
    with pytest.raises(TypeError, match="y_labeled"):
        m.loss_and_grad(xl, yl.astype(float), xu)
    with pytest.raises(ValueError, match="X_unlabeled"):
        m.loss_and_grad(xl, yl, xu[:, :5])
    with pytest.raises(ValueError, match="X_labeled"):
        m.loss_and_grad(xl * 3, yl, xu)
    with pytest.raises(TypeError, match="X_unlabeled"):
        m.loss_and_grad(xl, yl, np.full((2, D), "a"))
    with pytest.raises(ValueError, match="eps_u"):
        m.loss_and_grad(xl, yl, xu, eps=(el, eu[:, :2]))
    with pytest.raises(ValueError, match="empty"):
        m.loss_and_grad(None, None, None)
    with pytest.raises(ValueError, match="y_labeled.*out of range"):
        m.fit(xl, np.array([0, 1, 2, 3, 9]), xu, epochs=1, progress=False)
    with pytest.raises(ValueError, match="validation_data"):
        m.fit(xl, yl, xu, epochs=1, progress=False, validation_data=(xu, np.zeros(2, int)))
    with pytest.raises(ValueError, match="y.*out of range"):
        m.encode(xl, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="y.*out of range"):
        m.generate([7], np.zeros((1, Z)))
    with pytest.raises(ValueError, match="z"):
        m.generate([0], np.zeros((1, Z + 1)))
    with pytest.raises(ValueError, match="X"):
        m.predict(np.zeros((2, D + 1), np.float32))
    with pytest.raises(ValueError, match="n_classes"):
        vaec.M2(D, 1)
    with pytest.raises(ValueError, match="activation"):
        vaec.M2(D, activation="swish")
    with pytest.raises(ValueError, match="alpha"):
        vaec.M2(D, alpha=-1)


def test_parameter_names_and_shapes():
    m = vaec.M2(784, 10, 50, hidden=(500,), seed=0)
    shapes = {k: v.shape for k, v in m.params.items()}
    assert shapes["encoder.0.weight"] == (500, 784 + 10)
    assert shapes["decoder.0.weight"] == (500, 50 + 10)
    assert shapes["encoder.mu.weight"] == shapes["encoder.logvar.weight"] == (50, 500)
    assert shapes["decoder.out.weight"] == (784, 500)
    assert shapes["classifier.0.weight"] == (500, 784) and shapes["classifier.out.weight"] == (10, 500)
    assert "decoder.logvar.weight" not in shapes
    g = vaec.M2(20, 3, 4, hidden=(), likelihood="gaussian", seed=0)
    assert g.params["decoder.out.weight"].shape == g.params["decoder.logvar.weight"].shape == (20, 4 + 3)
    # torch.nn.Linear initialization bound 1/sqrt(in)
    assert np.abs(m.params["encoder.0.weight"]).max() <= 1 / np.sqrt(794)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    m = make("gaussian", (9,), classifier_hidden=(5,), alpha=0.7)
    xl, yl, xu, _, _ = batch(rng)
    m.fit(xl, yl, xu, epochs=2, batch_size=3, progress=False, seed=1)
    path = tmp_path / "m2.vaec"
    m.save(path)
    m2 = vaec.m2.load_m2(path, threads=1)
    assert m2.config() == m.config()
    for k in m.params:
        assert np.array_equal(m.params[k], m2.params[k])
    assert np.array_equal(m.predict_proba(xu), m2.predict_proba(xu))
    assert m2.optimizer_state["step"] == m.optimizer_state["step"] > 0
    # training continues identically
    a = m.loss_and_grad(xl, yl, xu)
    b = m2.loss_and_grad(xl, yl, xu)
    assert a == b
    vae_path = tmp_path / "vae.vaec"
    vaec.VAE(D, Z, seed=0).save(vae_path)
    with pytest.raises(ValueError, match="not an M2"):
        vaec.m2.load_m2(vae_path)
    via_load = vaec.load(path, threads=1)  # vaec.load dispatches on the file's kind
    assert isinstance(via_load, vaec.M2) and np.array_equal(via_load.predict_proba(xu), m.predict_proba(xu))
    with pytest.raises(FileNotFoundError):
        vaec.m2.load_m2(tmp_path / "missing.vaec")


def test_same_seed_is_bitwise_identical_with_1_and_2_threads():
    rng = np.random.default_rng(0)
    X = rng.random((90, D), dtype=np.float32)  # unlabelled chunks of 64 rows: several per call
    y = rng.integers(0, C, 90)
    runs = []
    for threads in (1, 2):
        m = vaec.M2(D, C, Z, hidden=(40,), seed=3, threads=threads)
        m.fit(X[:20], y[:20], X, epochs=2, batch_size=70, progress=False, seed=9, binarize="dynamic")
        m.loss_and_grad(X[:20], y[:20], X, seed=2)
        runs.append((m.state_dict(), {k: v.copy() for k, v in m.grads.items()}, m.elbo(X, seed=1)))
    for k in runs[0][0]:
        assert np.array_equal(runs[0][0][k], runs[1][0][k]), k
        assert np.array_equal(runs[0][1][k], runs[1][1][k]), k
    assert np.array_equal(runs[0][2], runs[1][2])


def test_short_fit_on_mnist_subset_with_100_labels_beats_chance(shipped_mnist):
    X, y, Xt, yt = shipped_mnist
    X_l, y_l, idx = datasets.labelled_subset(X, y, 10, seed=0, return_indices=True)
    X_u = np.delete(X, idx, axis=0)[:3000]
    m = vaec.M2(784, 10, latent_dim=20, hidden=(200,), seed=0, threads=2)
    hist = m.fit(X_l, y_l, X_u, epochs=2, batch_size=100, lr=1e-3, validation_data=(Xt[:1000], yt[:1000]),
                 seed=0, progress=False, binarize="dynamic")
    assert len(hist["val_error"]) == 2 and hist["labeled_nll"][-1] < hist["labeled_nll"][0]
    err = m.error_rate(Xt, yt)
    assert err < 0.5, err  # chance is 0.9


def test_fit_weightings_and_history():
    rng = np.random.default_rng(0)
    xl, yl, xu, _, _ = batch(rng, 8, 30)
    for w in ("balanced", "proportional"):
        m = make(hidden=(9,))
        h = m.fit(xl, yl, xu, epochs=2, batch_size=10, labeled_batch_size=4, progress=False, weighting=w,
                  validation_data=(xl, yl))
        # the history's common keys (loss, lr, seconds, examples_per_s) and M2's own
        assert set(h) == {"loss", "labeled_nll", "val_error", "lr", "seconds", "examples_per_s"}
        assert all(len(v) == 2 for v in h.values()) and h["lr"] == [1e-3, 1e-3]
        assert m.optimizer_state["step"] == 6
        assert all(np.isfinite(h["loss"])) and 0 <= h["val_error"][-1] <= 1
    with pytest.raises(ValueError, match="weighting"):
        make().fit(xl, yl, xu, epochs=1, progress=False, weighting="equal")
