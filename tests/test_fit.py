"""Training with fit (the one driver of vaec/_base.py): a short fit on real digits (the
MNIST subset shipped with vaec) improves the model, the history appends and a callback
stops; the training features (IWAE training, beta warmup, learning-rate schedules, early
stopping, checkpoints and exact resume, the NaN guard); and the same driver under M2 and
Flow. (tests/test_training.py and tests/test_training_features.py before.)"""
import os
import pickle

import numpy as np
import pytest

import vaec


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    proto = rng.random((5, 64)) < 0.3
    X = (proto[rng.integers(0, 5, 600)] ^ (rng.random((600, 64)) < 0.05)).astype(np.uint8) * 255
    return X[:500], X[500:]


def make():
    return vaec.VAE(64, 4, hidden=(32,), seed=3, threads=2)


# ------------------------------------------------------------ on real digits
def mnist_subset(shipped):
    Xtr, _, Xte, _ = shipped
    return Xtr[:3000], Xte[:1000]


def test_a_short_fit_on_real_digits_lowers_the_loss(shipped_mnist):
    Xtr, Xte = mnist_subset(shipped_mnist)
    m = vaec.VAE(784, 10, hidden=(200,), seed=0)
    before = float(np.mean(m.elbo(Xte, seed=0, binarize="dynamic")))
    hist = m.fit(Xtr, epochs=3, batch_size=100, progress=False, validation_data=Xte, binarize="dynamic", seed=1)
    after = float(np.mean(m.elbo(Xte, seed=0, binarize="dynamic")))
    assert hist["loss"][-1] < hist["loss"][0] - 20
    assert hist["val_elbo"][-1] > hist["val_elbo"][0]
    assert after > before + 300, (before, after)  # -543 nats untrained, about -200 after 3 epochs
    assert len(hist["seconds"]) == 3 and all(s > 0 for s in hist["seconds"])


def test_fit_history_appends_and_callback_can_stop(shipped_mnist):
    Xtr, _ = mnist_subset(shipped_mnist)
    m = vaec.VAE(784, 5, hidden=(32,), seed=0)
    seen = []
    m.fit(Xtr[:500], epochs=5, progress=False, callback=lambda e, logs: seen.append(e) or e == 2)
    assert seen == [1, 2] and len(m.history["loss"]) == 2
    m.fit(Xtr[:500], epochs=1, progress=False)
    assert len(m.history["loss"]) == 3


def test_gaussian_decoder_trains_on_grey_levels(shipped_mnist):
    Xtr, _ = mnist_subset(shipped_mnist)
    m = vaec.VAE(784, 5, hidden=(64,), likelihood="gaussian", seed=0)
    hist = m.fit(Xtr[:1000], epochs=3, progress=False, lr=1e-3)
    assert hist["loss"][-1] < hist["loss"][0]
    mean = m.decode(np.zeros((2, 5), np.float32))
    assert mean.shape == (2, 784) and np.all(np.isfinite(mean))


# -------------------------------------------------------- training features
def test_resume_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    X, V = data
    kw = dict(epochs=5, batch_size=64, seed=11, validation_data=V, progress=False, binarize="dynamic",
              warmup=2, lr_schedule="exponential", lr_decay=0.9, patience=10)
    full = make()
    h_full = full.fit(X, **kw)
    part = make()
    part.fit(X, checkpoint_dir=tmp_path, callback=lambda e, logs: e == 2, **kw)  # interrupted after epoch 2
    assert len(part.history["loss"]) == 2
    resumed = vaec.VAE(64, 4, hidden=(32,), seed=99, threads=1)  # another seed and thread count
    h_res = resumed.fit(X, resume=tmp_path / "checkpoint.vaec", **kw)
    assert h_res["loss"] == h_full["loss"] and h_res["val_elbo"] == h_full["val_elbo"]
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k]), k
    strip = lambda s: {k: v for k, v in s.items() if k != "threads"}
    assert strip(full.optimizer_state) == strip(resumed.optimizer_state)


def test_resume_refuses_another_model_or_a_plain_file(data, tmp_path):
    X, _ = data
    m = make()
    m.fit(X, epochs=1, checkpoint_dir=tmp_path, progress=False)
    other = vaec.VAE(64, 5, hidden=(32,), seed=3)
    with pytest.raises(ValueError, match="another configuration"):
        other.fit(X, epochs=2, resume=tmp_path / "checkpoint.vaec", progress=False)
    m.save(tmp_path / "plain.vaec")
    with pytest.raises(ValueError, match="without training state"):
        make().fit(X, epochs=2, resume=tmp_path / "plain.vaec", progress=False)
    with pytest.raises(FileNotFoundError):
        make().fit(X, epochs=2, resume=tmp_path / "nope.vaec", progress=False)


def test_checkpoints_are_written_every_n_epochs_and_load_as_models(data, tmp_path):
    X, _ = data
    m = make()
    seen = []
    m.fit(X, epochs=4, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False,
          callback=lambda e, logs: seen.append(os.path.getmtime(tmp_path / "checkpoint.vaec")
                                               if (tmp_path / "checkpoint.vaec").exists() else None))
    assert seen[0] is None and seen[1] is not None  # first written after epoch 2
    assert os.listdir(tmp_path) == ["checkpoint.vaec"]
    c = vaec.load(tmp_path / "checkpoint.vaec")
    for k in m.params:
        assert np.array_equal(c.params[k], m.params[k])


def test_early_stopping_keeps_the_best_parameters(data):
    X, V = data
    m = make()
    best = {}

    def spy(epoch, logs):
        if not best or logs["val_elbo"] > best["val"]:
            best.update(val=logs["val_elbo"], params=m.state_dict(), epoch=epoch)

    # a learning rate that is far too high makes the validation ELBO get worse
    h = m.fit(X, epochs=30, lr=0.05, validation_data=V, patience=2, progress=False, callback=spy, seed=1)
    assert len(h["loss"]) < 30, "stopped early"
    assert h["best_epoch"] == best["epoch"]
    for k in best["params"]:
        assert np.array_equal(m.params[k], best["params"][k]), k
    assert abs(float(np.mean(m.elbo(V, seed=0))) - best["val"]) < 1e-9


def test_learning_rate_schedules(data):
    X, _ = data
    m = make()
    h = m.fit(X[:64], epochs=14, lr=1e-3, lr_schedule="burda", progress=False)
    want = [1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3 + [1e-3 * 10 ** (-2 / 7)] * 9 + [1e-3 * 10 ** (-3 / 7)]
    assert np.allclose(h["lr"], want)
    m = make()
    h = m.fit(X[:64], epochs=3, lr=1e-2, lr_schedule="exponential", lr_decay=0.5, progress=False)
    assert np.allclose(h["lr"], [1e-2, 5e-3, 2.5e-3])
    m = make()
    h = m.fit(X[:64], epochs=2, lr_schedule=lambda e: 1e-4 * (e + 1), progress=False)
    assert np.allclose(h["lr"], [1e-4, 2e-4])
    with pytest.raises(ValueError, match="lr_schedule"):
        m.fit(X, epochs=1, lr_schedule="cosine", progress=False)


def test_kl_warmup_schedules(data):
    X, _ = data
    m = make()
    h = m.fit(X, epochs=4, batch_size=100, warmup=2, beta=0.5, progress=False)  # 5 steps per epoch
    assert np.allclose(h["beta"], [0.5 * 5 / 10, 0.5, 0.5, 0.5])
    m = make()
    h = m.fit(X, epochs=1, batch_size=100, warmup="rezende", progress=False)
    assert np.isclose(h["beta"][0], 0.01 + 4 / 10000)
    with pytest.raises(ValueError, match="warmup"):
        m.fit(X, epochs=1, warmup=0, progress=False)


def test_iwae_training_improves_the_iwae_bound(data):
    X, V = data
    m = make()
    before = m.iwae_bound(V, 5, seed=0).mean()
    h = m.fit(X, epochs=5, iw_samples=5, batch_size=50, progress=False, binarize="dynamic")
    assert h["loss"][-1] < h["loss"][0]
    assert m.iwae_bound(V, 5, seed=0).mean() > before + 5
    with pytest.raises(ValueError, match="apply to the ELBO"):
        m.fit(X, epochs=1, iw_samples=5, beta=0.5, progress=False)


def test_a_nan_loss_stops_training_and_keeps_the_last_finite_parameters(data, tmp_path):
    X, _ = data
    m = make()
    m.fit(X, epochs=1, checkpoint_dir=tmp_path, progress=False)
    ckpt = (tmp_path / "checkpoint.vaec").read_bytes()
    good = m.state_dict()
    m.params["decoder.out.bias"][0] = np.inf  # a decoder that blows up on the next batch
    poisoned = m.state_dict()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 .*last finite parameters.*checkpoint"):
        m.fit(X, epochs=2, checkpoint_dir=tmp_path, progress=False)
    for k in poisoned:
        assert np.array_equal(m.params[k], poisoned[k]), "no step was taken"
    assert (tmp_path / "checkpoint.vaec").read_bytes() == ckpt
    restored = vaec.load(tmp_path / "checkpoint.vaec")
    for k in good:
        assert np.array_equal(restored.params[k], good[k])


def test_patience_needs_validation_data(data):
    X, _ = data
    with pytest.raises(ValueError, match="patience: early stopping needs validation_data"):
        make().fit(X, epochs=1, patience=2, progress=False)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, "last"])
def test_a_non_finite_gradient_refuses_the_adam_step(bad):
    """Only Inf and NaN stop the step; the largest finite floats and denormals do not."""
    m = vaec.VAE(12, 2, hidden=(5,), seed=0)
    g = m._core.arena("grads")
    p = m._core.arena("params")
    g[:] = np.float32(1e-40)                     # denormal: finite
    g[::7] = np.finfo(np.float32).max            # the largest finite float
    g[1::7] = -np.finfo(np.float32).max
    g[2::7] = np.float32(1e-3)                   # ordinary gradients, whose step shows in p
    where = len(g) - 1 if bad == "last" else len(g) // 2
    g[where] = np.nan if bad == "last" else bad
    ordinary = np.zeros(len(g), bool)
    ordinary[2::7] = True
    ordinary[where] = False
    before = p.copy()
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        m._core.adam_step(1e-3)
    assert np.array_equal(p, before)
    assert m._core.state()["step"] == 0
    g[np.isnan(g) | np.isinf(g)] = 0.0
    m._core.adam_step(1e-3)
    assert m._core.state()["step"] == 1
    assert not np.array_equal(p, before)
    assert np.all(p[ordinary] != before[ordinary])


def test_adam_eps_too_small_to_survive_the_bias_correction_is_refused():
    """Adam adds eps * sqrt(1 - beta2^t); below about 1e-35 that is a subnormal, which the
    thread pool flushes to zero, and a parameter whose gradients were all zero would get
    0/0. Such an eps is refused by name; the smallest accepted one trains finite."""
    m = vaec.VAE(12, 2, hidden=(5,), seed=0)
    for eps in (1e-37, 1e-31, 0.0, -1e-8):
        with pytest.raises(ValueError, match="eps"):
            m.set_optimizer(eps=eps)
    m.set_optimizer(beta2=0.9999999, eps=1e-30)
    x = (np.random.default_rng(0).random((16, 12)) < 0.5).astype(np.float32)
    x[:, 0] = 0.0   # a pixel that is never on: its weights' gradients are exactly zero
    for _ in range(3):
        m.train_step(x, seed=1)
    for k, p in m.params.items():
        assert np.all(np.isfinite(p)), k


# ------------------------------------------------ the same driver for M2 and Flow
def m2_data():
    rng = np.random.default_rng(4)
    X = (rng.random((260, 12)) < 0.3).astype(np.float32)
    return X[:20], rng.integers(0, 3, 20), X[20:], X[:60], rng.integers(0, 3, 60)


def make_m2(seed=1, threads=1):
    return vaec.M2(12, 3, 2, hidden=(8,), seed=seed, threads=threads)


def test_m2_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """M2's one NumPy stream (unlabelled orders and the cycled labelled order) is saved in
    its checkpoints: a resumed run draws what the uninterrupted run drew."""
    X_l, y_l, X_u, X_v, y_v = m2_data()
    kw = dict(epochs=4, batch_size=30, labeled_batch_size=7, seed=5, progress=False, binarize="dynamic",
              validation_data=(X_v, y_v), patience=10)
    full = make_m2()
    h_full = full.fit(X_l, y_l, X_u, **kw)
    part = make_m2()
    part.fit(X_l, y_l, X_u, checkpoint_dir=tmp_path, callback=lambda e, logs: e == 2, **kw)
    assert len(part.history["loss"]) == 2
    resumed = make_m2(seed=9, threads=2)
    h_res = resumed.fit(X_l, y_l, X_u, resume=tmp_path / "checkpoint.vaec", **kw)
    assert h_res["loss"] == h_full["loss"] and h_res["val_error"] == h_full["val_error"]
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k]), k
    # the checkpoint is an M2 model file too
    assert isinstance(vaec.load(tmp_path / "checkpoint.vaec"), vaec.M2)
    with pytest.raises(ValueError, match="another configuration"):
        make().fit(np.zeros((4, 64), np.float32), epochs=1, resume=tmp_path / "checkpoint.vaec", progress=False)


def test_m2_early_stopping_keeps_the_parameters_of_the_lowest_validation_error():
    X_l, y_l, X_u, X_v, y_v = m2_data()
    m = make_m2()
    seen = {}
    h = m.fit(X_l, y_l, X_u, epochs=12, batch_size=30, lr=0.05, validation_data=(X_v, y_v), patience=2,
              progress=False, seed=1, callback=lambda e, logs: seen.__setitem__(e, (logs["val_error"], m.state_dict())))
    best = min(seen, key=lambda e: (seen[e][0], e))
    assert h["best_epoch"] == best and len(h["loss"]) <= 12
    for k in m.params:
        assert np.array_equal(m.params[k], seen[best][1][k]), k
    assert m.error_rate(X_v, y_v) == seen[best][0]
    with pytest.raises(ValueError, match="patience: early stopping needs validation_data"):
        make_m2().fit(X_l, y_l, X_u, epochs=1, patience=2, progress=False)


def test_m2_nan_stops_training_naming_epoch_and_step(tmp_path):
    X_l, y_l, X_u, _, _ = m2_data()
    m = make_m2()
    m.params["decoder.out.bias"][0] = np.inf
    poisoned = m.state_dict()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 \(global step 1\).*last finite parameters"):
        m.fit(X_l, y_l, X_u, epochs=1, progress=False)
    for k in poisoned:
        assert np.array_equal(m.params[k], poisoned[k]), k


def test_m2_pickles_with_its_optimizer_rng_and_history():
    X_l, y_l, X_u, _, _ = m2_data()
    m = make_m2()
    m.fit(X_l, y_l, X_u, epochs=1, batch_size=50, progress=False, seed=3)
    r = pickle.loads(pickle.dumps(m))
    assert r.config() == m.config() and r.history == m.history
    strip = lambda s: {k: v for k, v in s.items() if k != "threads"}
    assert strip(r.optimizer_state) == strip(m.optimizer_state)
    assert r.loss_and_grad(X_l, y_l, X_u) == m.loss_and_grad(X_l, y_l, X_u)   # the same noise next


def test_flow_fit_history_is_flat_and_the_old_key_still_reads_it():
    X = np.random.default_rng(0).standard_normal((200, 2)).astype(np.float32)
    f = vaec.Flow(2, "realnvp:2:8", seed=0, threads=1)
    f.fit_energy(vaec.flows.potentials.U1, steps=4, batch_size=16, progress=False)
    h = f.fit(X, epochs=2, batch_size=64, lr=2e-3, progress=False, seed=1)
    assert h is f.history and {"loss", "lr", "seconds", "examples_per_s"} <= set(h)
    assert all(len(h[k]) == 2 for k in ("loss", "lr", "seconds", "examples_per_s")) and h["lr"] == [2e-3, 2e-3]
    assert h["fit"]["loss"] == h["loss"]                    # history["fit"] of earlier versions
    assert len(h["fit_energy"]["loss"]) == 4                # fit_energy's per-step record is kept
    f.fit(X, epochs=1, progress=False)
    assert len(f.history["loss"]) == 3 and len(f.history["fit_energy"]["loss"]) == 4
    # a pickle of an earlier version (history["fit"] nested) reads as the flat history
    state = f.__getstate__()
    state["history"] = {"fit": {"loss": [1.0, 0.5], "seconds": [0.1, 0.1]}, "fit_energy": h["fit_energy"]}
    g = vaec.Flow.__new__(vaec.Flow)
    g.__setstate__(state)
    assert g.history["loss"] == [1.0, 0.5] and g.history["fit"]["seconds"] == [0.1, 0.1]


def test_flow_fit_nan_names_epoch_and_step():
    X = np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    f = vaec.Flow(2, "realnvp:2:8", seed=0, threads=1)
    name = next(k for k in f.params if k.endswith("bias"))
    f.params[name][...] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 .*last finite parameters"):
        f.fit(X, epochs=1, progress=False)


def test_epoch_numbers_of_callbacks_count_as_before():
    """VAE and Autoencoder number the epochs of this call; M2 and Flow those of the history."""
    X, _ = data_small()
    m = make()
    seen = []
    m.fit(X, epochs=1, progress=False)
    m.fit(X, epochs=2, progress=False, callback=lambda e, logs: seen.append(e))
    assert seen == [1, 2]
    X_l, y_l, X_u, _, _ = m2_data()
    m2 = make_m2()
    m2.fit(X_l, y_l, X_u, epochs=1, progress=False)
    seen = []
    m2.fit(X_l, y_l, X_u, epochs=2, progress=False, callback=lambda e, logs: seen.append(e))
    assert seen == [2, 3]


def data_small():
    rng = np.random.default_rng(0)
    X = (rng.random((120, 64)) < 0.3).astype(np.float32)
    return X[:100], X[100:]


def test_a_checkpoint_written_before_the_shared_driver_resumes_exactly(data_dir):
    """tests/data/checkpoint_c8b7f31.vaec was written at c8b7f31, before fit became one driver
    for every model (tests/data/make_checkpoint_c8b7f31.py, on the scalar kernel path): a run
    stopped after epoch 2 of 5. Resumed today, it ends with the losses and parameters of
    that commit's uninterrupted run, bit for bit."""
    import platform

    import make_checkpoint_c8b7f31 as mk
    from _helpers import forced_isa

    if platform.machine() != "x86_64":
        pytest.skip("the numbers were made on x86_64")
    X = mk.data()
    want = np.load(data_dir / "checkpoint_c8b7f31.npz")
    with forced_isa("scalar"):
        m = vaec.VAE(64, 4, hidden=(32,), seed=99, threads=1)
        h = m.fit(X[:500], validation_data=X[500:], resume=data_dir / "checkpoint_c8b7f31.vaec", **mk.FIT)
    assert np.array_equal(np.array(h["loss"]), want["loss"])
    assert np.array_equal(np.concatenate([v.ravel() for v in m.params.values()]), want["params"])
