"""Convolutional VAEs (issue 18): networks given as vaec.layers lists.

- PyTorch parity: the same network in torch (vaec.to_torch), the same weights and noise:
  the loss and every gradient within 1e-4 relative, on the issue's network and on one with
  odd sizes (a 3x13x11 input, kernel 3 with padding 1, MaxPool2d(2) on odd sizes, a stride-2
  convolution without padding, Upsample, AvgPool, a transposed convolution with a
  non-square output).
- Finite differences of the loss (float64 sums) along random directions, for every layer
  kind, through loss_and_grad(eps=...).
- 1, 2, 3 and 12 threads give the same bits; files, pickles and to_torch round trip; bad lists
  and bad data are ValueErrors naming the layer and the shapes.
"""
import pickle

import numpy as np
import pytest

import vaec
from vaec import layers as L


def issue_network(C=1, H=28, W=28):
    enc = [L.Conv2d(32, 4, stride=2, padding=1), L.ReLU(), L.Conv2d(64, 4, stride=2, padding=1), L.ReLU(),
           L.Flatten(), L.Linear(256), L.ReLU()]
    dec = [L.Linear(256), L.ReLU(), L.Linear(64 * 7 * 7), L.ReLU(), L.Unflatten(64, 7, 7),
           L.ConvTranspose2d(32, 4, stride=2, padding=1), L.ReLU(), L.ConvTranspose2d(C, 4, stride=2, padding=1)]
    return enc, dec


def odd_network(likelihood="bernoulli"):
    """3x13x11 input; every new kind; odd sizes everywhere."""
    enc = [L.Conv2d(5, 3, padding=1), L.Tanh(),                       # (5, 13, 11)
           L.MaxPool2d(2),                                            # (5, 6, 5)
           L.Conv2d(6, (3, 2), stride=2), L.ELU(),                    # (6, 2, 2)  stride 2, no padding
           L.Upsample(2),                                             # (6, 4, 4)
           L.AvgPool2d(2), L.LeakyReLU(0.2),                          # (6, 2, 2), a slope of its own
           L.Flatten(), L.Linear(12), L.Softplus()]
    out = 6 if likelihood == "gaussian" else 3
    dec = [L.Linear(20), L.Sigmoid(), L.Unflatten(5, 2, 2),
           L.ConvTranspose2d(4, (3, 4), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)),   # (4, 4, 9)
           L.ReLU(), L.LeakyReLU(),                                                             # one alone
           L.ConvTranspose2d(out, (4, 3), stride=(3, 1), padding=(1, 0), output_padding=(2, 0))]  # (out, 13, 11)
    return enc, dec


def make(kind="issue", likelihood="bernoulli", seed=0, threads=1, cls=vaec.VAE, **kw):
    if kind == "issue":
        enc, dec = issue_network()
        shape = (1, 28, 28)
    else:
        enc, dec = odd_network(likelihood)
        shape = (3, 13, 11)
    return cls(input_shape=shape, latent_dim=kw.pop("latent_dim", 8), encoder=enc, decoder=dec,
               likelihood=likelihood, seed=seed, threads=threads, **kw)


def data(m, n, rng):
    x = rng.random((n,) + m.input_shape, dtype=np.float32)
    return (x > 0.6).astype(np.float32) if m.likelihood == "bernoulli" else x


# ---------------------------------------------------------------- PyTorch
def torch_loss(tm, m, x, eps):
    """The batch mean -ELBO of the torch module, L = 1 sample of eps (n, Z)."""
    import torch
    import torch.nn.functional as F
    xt = torch.from_numpy(x.reshape(x.shape[0], -1))
    mu, lv = tm.encode(torch.from_numpy(x))
    z = mu + torch.exp(0.5 * lv) * torch.from_numpy(eps)
    h = tm.decoder(z).reshape(x.shape[0], -1)
    D = m.input_dim
    if m.likelihood == "bernoulli":
        rec = -F.binary_cross_entropy_with_logits(h, xt, reduction="none").sum(1)
    else:
        mean, lvx = h[:, :D], h[:, D:]
        rec = -0.5 * (np.log(2 * np.pi) + lvx + (xt - mean) ** 2 * torch.exp(-lvx)).sum(1)
    kl = 0.5 * (mu ** 2 + torch.exp(lv) - 1 - lv).sum(1)
    return (kl - rec).mean()


@pytest.mark.parametrize("kind,likelihood", [("issue", "bernoulli"), ("odd", "bernoulli"), ("odd", "gaussian")])
def test_loss_and_every_gradient_match_pytorch(kind, likelihood):
    torch = pytest.importorskip("torch")
    m = make(kind, likelihood, seed=3)
    rng = np.random.default_rng(1)
    x = data(m, 6, rng)
    eps = rng.standard_normal((6, m.latent_dim)).astype(np.float32)
    loss = m.loss_and_grad(x, eps=eps)
    tm = vaec.to_torch(m)
    tm.train()
    tl = torch_loss(tm, m, x, eps)
    tl.backward()
    assert abs(loss - tl.item()) <= 1e-5 * abs(tl.item())
    tg = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    assert set(tg) == set(m.grads)
    for k, g in m.grads.items():
        err = np.linalg.norm(g - tg[k]) / max(np.linalg.norm(tg[k]), 1e-12)
        assert err < 1e-4, (k, err)


@pytest.mark.parametrize("kind", ["issue", "odd"])
def test_to_torch_encode_decode_are_vaecs(kind):
    torch = pytest.importorskip("torch")
    m = make(kind, "bernoulli", seed=5)
    x = data(m, 5, np.random.default_rng(2))
    tm = vaec.to_torch(m)
    mu, lv = m.encode(x)
    with torch.no_grad():
        tmu, tlv = tm.encode(torch.from_numpy(x))
        z = np.random.default_rng(3).standard_normal((4, m.latent_dim)).astype(np.float32)
        td = tm.decode(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(mu, tmu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lv, tlv.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.decode(z), td, rtol=1e-4, atol=1e-5)
    assert m.decode(z).shape == (4,) + m.input_shape
    # and back: torch's weights into a new vaec model
    m2 = make(kind, "bernoulli", seed=9)
    m2.load_state_dict(tm.state_dict())
    np.testing.assert_array_equal(m2.encode(x)[0], mu)


def test_onnx_export(tmp_path):
    """PyTorch's ONNX export works from to_torch's module (when onnx and onnxscript, which
    torch's exporter needs, are installed: .ci/run installs them)."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    m = make("issue", seed=1)
    tm = vaec.to_torch(m)
    path = tmp_path / "vae.onnx"
    torch.onnx.export(tm, (torch.zeros(2, 1, 28, 28),), str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] and [o.name for o in model.graph.output]


# ------------------------------------------------------- finite differences
def directional(m, x, eps, rng, h, directions):
    """Per tensor: the median over random unit directions of |fd - grad . v| / scale."""
    m.loss_and_grad(x, eps=eps)
    grads = {k: v.copy() for k, v in m.grads.items()}
    errs = {}
    for name, p in m.params.items():
        e = []
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
            e.append(abs(fd - an) / max(abs(an), abs(fd), 1e-2))
        errs[name] = float(np.median(e))
    return errs


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_every_layer_kind_matches_finite_differences(likelihood):
    m = make("odd", likelihood, seed=2, latent_dim=3)
    rng = np.random.default_rng(4)
    x = data(m, 4, rng)
    eps = rng.standard_normal((4, 3)).astype(np.float32)
    # ReLU and max pooling have kinks and float32 sums make the loss noisy at about 1e-6:
    # the median of 7 directions is within a few per cent (a wrong gradient is off by O(1);
    # the PyTorch parity above holds every gradient to 1e-4)
    errs = directional(m, x, eps, rng, 3e-3, 7)
    bad = {k: e for k, e in errs.items() if e > 5e-2}
    assert not bad, bad


def test_activation_layers_first_and_alone_match_finite_differences():
    enc = [L.Sigmoid(), L.Conv2d(3, 2), L.Tanh(), L.Softplus(), L.Flatten(), L.Linear(5)]
    dec = [L.Linear(12), L.Unflatten(3, 2, 2), L.Upsample(2), L.Tanh(), L.Conv2d(2, 1)]
    m = vaec.VAE(input_shape=(2, 4, 4), latent_dim=2, encoder=enc, decoder=dec, seed=1, threads=1)
    rng = np.random.default_rng(0)
    x = (rng.random((3, 2, 4, 4)) > 0.5).astype(np.float32)
    eps = rng.standard_normal((3, 2)).astype(np.float32)
    errs = directional(m, x, eps, rng, 1e-2, 1)
    assert max(errs.values()) < 2e-2, errs


# ------------------------------------------------------- threads, files
@pytest.mark.parametrize("kind", ["issue", "odd"])
def test_any_thread_count_gives_the_same_bits(kind):
    """The conv layers split a call into groups of examples on at most 8 lanes, whose
    partial gradients are added in lane order: 1, 2, 3 threads and more threads than lanes
    (12) give the same bits, with batches of fewer rows than lanes and of several groups."""
    runs = []
    for threads in (1, 2, 3, 12):
        m = make(kind, seed=4, threads=threads)
        x = data(m, 70, np.random.default_rng(5))
        losses = [m.train_step(x[:n], lr=1e-3, seed=s) for s, n in enumerate((70, 5, 33))]
        runs.append((losses, {k: v.copy() for k, v in m.params.items()}, m.elbo(x, seed=1)))
    for r in runs[1:]:
        assert r[0] == runs[0][0]
        for k in runs[0][1]:
            assert np.array_equal(runs[0][1][k], r[1][k]), k
        assert np.array_equal(runs[0][2], r[2])


@pytest.mark.parametrize("cls", [vaec.VAE, vaec.Autoencoder])
def test_files_and_pickles_round_trip(cls, tmp_path):
    m = make("odd", seed=7, cls=cls)
    x = data(m, 9, np.random.default_rng(1))
    m.train_step(x, lr=1e-3)
    m.save(tmp_path / "m.vaec")
    for r in (vaec.load(tmp_path / "m.vaec"), pickle.loads(pickle.dumps(m))):
        assert type(r) is cls and r.encoder == m.encoder and r.decoder == m.decoder and r.input_shape == (3, 13, 11)
        for k in m.params:
            assert np.array_equal(r.params[k], m.params[k]), k
        assert np.array_equal(r.encode(x)[0] if cls is vaec.VAE else r.encode(x),
                              m.encode(x)[0] if cls is vaec.VAE else m.encode(x))
        assert r.train_step(x, lr=1e-3, seed=2) == pickle.loads(pickle.dumps(m)).train_step(x, lr=1e-3, seed=2)


def test_everything_else_works_on_a_conv_vae():
    m = make("issue", seed=2, flow="planar:3", threads=2)
    x = data(m, 40, np.random.default_rng(3))
    h = m.fit(x, epochs=2, batch_size=20, progress=False, seed=1)
    assert len(h["loss"]) == 2 and np.isfinite(h["loss"]).all()
    assert m.elbo(x, samples=2, seed=1).shape == (40,)
    assert m.iwae_bound(x[:5], samples=4, seed=1).shape == (5,)
    assert np.isfinite(m.log_likelihood(x[:3], samples=20, seed=1)).all()
    assert m.reconstruct(x[:2]).shape == (2, 1, 28, 28)
    assert m.sample(3, seed=0).shape == (3, 1, 28, 28)
    rows = x.reshape(40, -1)
    assert np.array_equal(m.encode(rows)[0], m.encode(x)[0])
    m.train_step(x[:10], iw_samples=3)
    var = vaec.gradient_variance(m, x[:8], samples=3)
    assert set(var) == set(m.params)


def test_the_conv_preset():
    m = vaec.VAE(input_shape=(1, 28, 28), latent_dim=16, architecture="conv", seed=0)
    enc, dec = issue_network()
    assert m.encoder == enc and m.decoder == dec
    odd = vaec.VAE(input_shape=(3, 13, 11), latent_dim=4, architecture="conv", likelihood="gaussian", seed=0)
    assert odd.decode(np.zeros((2, 4), np.float32)).shape == (2, 3, 13, 11)
    assert odd.decoder[-1].out_channels == 6


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("enc,dec,match", [
    ([L.Flatten(), L.Linear(5)], [L.Linear(10), L.Unflatten(2, 2, 2), L.Conv2d(1, 1)], r"decoder\.1.*Unflatten.*\(10\)"),
    ([L.Conv2d(4, 9)], [L.Linear(64)], r"encoder\.0.*kernel \(9, 9\).*larger than its padded input \(1, 8, 8\)"),
    ([L.Flatten(), L.Linear(5)], [L.Linear(60)], r"decoder: its output \(60\) has 60 values.*needs 64"),
    ([L.Linear(5), L.Conv2d(2, 1)], [L.Linear(64)], r"encoder\.1.*needs a \(C, H, W\) input, got \(5\)"),
    ([L.MaxPool2d(9)], [L.Linear(64)], r"encoder\.0 \(MaxPool2d\(9, 9\)\).*larger than its input \(1, 8, 8\)"),
])
def test_bad_lists_name_the_layer_and_the_shapes(enc, dec, match):
    with pytest.raises(ValueError, match=match):
        vaec.VAE(input_shape=(1, 8, 8), latent_dim=2, encoder=enc, decoder=dec)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(encoder=[L.Linear(3)]), ValueError, "encoder, decoder: give both"),
    (dict(encoder=[L.Linear(3)], decoder=["relu"]), TypeError, r"decoder\[0\]: expected a vaec.layers layer"),
    (dict(encoder=L.Linear(3), decoder=[L.Linear(64)]), TypeError, "encoder: expected a list"),
    (dict(input_shape=(1, 8)), ValueError, "input_shape: expected"),
    (dict(input_dim=65, input_shape=(1, 8, 8), architecture="conv"), ValueError, "input_dim: 65 does not match"),
    (dict(architecture="resnet"), ValueError, "architecture: expected"),
])
def test_bad_arguments(kw, exc, match):
    args = dict(input_shape=(1, 8, 8), latent_dim=2)
    args.update(kw)
    with pytest.raises(exc, match=match):
        vaec.VAE(**args)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        L.Conv2d(3, 0)
    with pytest.raises(TypeError, match="out_channels"):
        L.Conv2d(2.5, 3)
    with pytest.raises(ValueError, match="output_padding"):
        L.ConvTranspose2d(3, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="stride"):
        L.MaxPool2d(2, stride=(1, 2, 3))


def test_a_wrong_data_shape_names_the_expected_one():
    m = make("issue")
    with pytest.raises(ValueError, match=r"x: expected images of shape \(n, 1, 28, 28\) or rows of shape \(n, 784\)"):
        m.loss_and_grad(np.zeros((2, 1, 27, 28), np.float32))
    with pytest.raises(ValueError, match=r"X: expected images of shape \(n, 1, 28, 28\)"):
        m.fit(np.zeros((4, 3, 28, 28), np.float32), epochs=1, progress=False)
