"""The arena's optimizers and initialization: Adagrad and L2 weight decay against a float64
reference, the same bits on every kernel path, the model file keeping which optimizer its
state is for (files of 0.1.0 load as Adam), N(0, std^2) initialization, fit's options."""
import struct
import zlib

import numpy as np
import pytest

import reference as R
import vaec
from _helpers import available_isas, forced_isa

D, K, N = 24, 3, 10


def _setup(likelihood="bernoulli", hidden=(7,), seed=71):
    p = R.init_params(D, K, hidden, likelihood, np.random.default_rng(seed))
    params = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}
    m = vaec.VAE(D, K, hidden=hidden, activation="tanh", likelihood=likelihood, seed=0)
    m.load_state_dict({k: v.astype(np.float32) for k, v in params.items()})
    rng = np.random.default_rng(1)
    x = rng.random((N, D)).astype(np.float32) if likelihood == "bernoulli" else \
        (0.5 + 0.8 * rng.standard_normal((N, D))).astype(np.float32)
    return m, params, x


def adagrad_step(params, grads, state, lr, eps, wd):
    """torch.optim.Adagrad (no lr decay, zero initial sums) in float64."""
    for k in params:
        g = grads[k] + wd * params[k]
        state[k] = state.get(k, 0.0) + g * g
        params[k] = params[k] - lr * g / (np.sqrt(state[k]) + eps)


def adam_step_wd(params, grads, state, lr, wd):
    R.adam_step(params, {k: grads[k] + wd * params[k] for k in params}, state, lr=lr)


@pytest.mark.parametrize("likelihood,wd", [("bernoulli", 0.0), ("gaussian", 0.0), ("bernoulli", 0.05)])
def test_adagrad_matches_a_float64_reference(likelihood, wd):
    m, params, x = _setup(likelihood)
    start = {k: v.copy() for k, v in params.items()}
    m.set_optimizer(optimizer="adagrad", weight_decay=wd)
    assert m.optimizer_state["optimizer"] == "adagrad"
    state = {}
    lr = 0.02
    for step in range(6):
        eps = np.random.default_rng(200 + step).standard_normal((2, N, K)).astype(np.float32)
        loss_ref, g = R.loss_and_grad(params, x, eps, "tanh", likelihood)
        adagrad_step(params, g, state, lr, 1e-8, wd)
        assert m.train_step(x, lr=lr, eps=eps) == pytest.approx(loss_ref, rel=2e-5)
    for k in params:
        # the displacement itself, not only the end point
        assert R.rel_err(m.params[k] - start[k], params[k] - start[k]) < 1e-3, k
        # Adagrad's sums of squares are kept in adam_v, row-major like every tensor
        assert R.rel_err(m._views("adam_v")[k], state[k]) < 1e-4, k


def test_adam_weight_decay_matches_a_float64_reference():
    m, params, x = _setup()
    start = {k: v.copy() for k, v in params.items()}
    m.set_optimizer(weight_decay=0.1)
    st = R.adam_init(params)
    for step in range(5):
        eps = np.random.default_rng(300 + step).standard_normal((1, N, K)).astype(np.float32)
        _, g = R.loss_and_grad(params, x, eps, "tanh", "bernoulli")
        adam_step_wd(params, g, st, 1e-2, 0.1)
        m.train_step(x, lr=1e-2, eps=eps)
    for k in params:
        assert R.rel_err(m.params[k] - start[k], params[k] - start[k]) < 1e-3, k


def test_weight_decay_zero_is_todays_adam_bit_for_bit():
    a, _, x = _setup()
    b, _, _ = _setup()
    b.set_optimizer(weight_decay=0.0)
    for i in range(3):
        a.train_step(x, lr=1e-2, seed=i)
        b.train_step(x, lr=1e-2, seed=i)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("optimizer,wd", [("adagrad", 0.0), ("adagrad", 0.3), ("adam", 0.3)])
def test_every_kernel_path_takes_the_same_step_bit_for_bit(optimizer, wd):
    """One step from the same parameters, gradients and state on each ISA (odd sizes, so the
    vector tails run too)."""
    rng = np.random.default_rng(5)
    results = {}
    for isa in available_isas():
        m = vaec.VAE(37, 5, hidden=(11,), seed=2, threads=2)
        m.set_optimizer(optimizer=optimizer, weight_decay=wd)
        m._arenas["grads"][...] = rng.standard_normal(m._arenas["grads"].size).astype(np.float32) \
            if not results else results["grads"]
        results.setdefault("grads", m._arenas["grads"].copy())
        m._arenas["adam_v"][...] = 0.25
        with forced_isa(isa):
            m._core.adam_step(0.05)
            m._core.adam_step(0.05)
        results[isa] = (m._arenas["params"].copy(), m._arenas["adam_v"].copy())
    base = results[available_isas()[0]]
    for isa in available_isas():
        assert np.array_equal(results[isa][0], base[0]) and np.array_equal(results[isa][1], base[1]), isa


def test_adagrad_refuses_a_non_finite_gradient():
    m, _, x = _setup()
    m.set_optimizer(optimizer="adagrad")
    before = m._arenas["params"].copy()
    m.loss_and_grad(x, seed=0)
    m.grads["decoder.out.bias"][3] = np.inf
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        m._core.adam_step(1e-2)
    assert np.array_equal(m._arenas["params"], before)


def test_switching_optimizers_zeroes_the_state():
    m, _, x = _setup()
    for i in range(2):
        m.train_step(x, lr=1e-2, seed=i)
    assert np.any(m._arenas["adam_m"] != 0) and m.optimizer_state["step"] == 2
    m.set_optimizer(optimizer="adagrad")
    assert not np.any(m._arenas["adam_m"]) and not np.any(m._arenas["adam_v"]) and m.optimizer_state["step"] == 0
    m.train_step(x, lr=1e-2, seed=3)
    assert not np.any(m._arenas["adam_m"]) and np.any(m._arenas["adam_v"])   # Adagrad keeps no first moment
    v = m._arenas["adam_v"].copy()
    m.set_optimizer(optimizer="adagrad", weight_decay=0.5)   # the same optimizer: the state stays
    assert np.array_equal(m._arenas["adam_v"], v) and m.optimizer_state["weight_decay"] == 0.5


@pytest.mark.parametrize("bad,match", [({"optimizer": "sgd"}, "optimizer"), ({"optimizer": 3}, "optimizer"),
                                       ({"weight_decay": -1e-3}, "weight_decay"),
                                       ({"weight_decay": float("nan")}, "weight_decay")])
def test_bad_optimizer_arguments_are_refused(bad, match):
    m, _, x = _setup()
    with pytest.raises(ValueError, match=match):
        m.fit(x, epochs=1, progress=False, **bad)
    with pytest.raises(ValueError, match=match):
        m.set_optimizer(**bad)
    with pytest.raises(ValueError, match="optimizer"):
        m._core.set_optimizer(optimizer="sgd")


def test_the_file_keeps_the_optimizer(tmp_path):
    m, _, x = _setup()
    m.set_optimizer(optimizer="adagrad", weight_decay=0.01)
    for i in range(3):
        m.train_step(x, lr=1e-2, seed=i)
    m.save(tmp_path / "a.vaec")
    r = vaec.load(tmp_path / "a.vaec")
    assert r.optimizer_state["optimizer"] == "adagrad" and r.optimizer_state["step"] == 3
    assert r.optimizer_state["weight_decay"] == 0.0   # a training option, not kept
    assert np.array_equal(r._arenas["adam_v"], m._arenas["adam_v"])
    r.set_optimizer(optimizer="adagrad", weight_decay=0.01)   # the same optimizer: the sums stay
    a = [m.train_step(x, lr=1e-2, seed=10 + i) for i in range(2)]
    b = [r.train_step(x, lr=1e-2, seed=10 + i) for i in range(2)]
    assert a == b and all(np.array_equal(m.params[k], r.params[k]) for k in m.params)
    # the field is the head's former zero pad: byte 24 + config + 20 (after n and the 3 floats)
    data = (tmp_path / "a.vaec").read_bytes()
    at = 24 + struct.unpack("<I", data[20:24])[0] + 20
    assert struct.unpack("<i", data[at:at + 4])[0] == 1
    bad = data[:at] + struct.pack("<i", 7) + data[at + 4:-4]
    (tmp_path / "b.vaec").write_bytes(bad + struct.pack("<I", zlib.crc32(bad)))
    with pytest.raises(ValueError, match="unknown optimizer"):
        vaec.load(tmp_path / "b.vaec")


def test_files_of_0_1_0_load_as_adam(data_dir):
    m = vaec.load(data_dir / "vae_536a70d.vaec")
    assert m.optimizer_state["optimizer"] == "adam" and m.optimizer_state["weight_decay"] == 0.0


def test_pickles_keep_the_optimizer():
    import pickle
    m, _, x = _setup()
    m.set_optimizer(optimizer="adagrad", weight_decay=0.2)
    m.train_step(x, lr=1e-2, seed=0)
    r = pickle.loads(pickle.dumps(m))
    assert r.optimizer_state["optimizer"] == "adagrad" and r.optimizer_state["weight_decay"] == pytest.approx(0.2)
    assert m.train_step(x, lr=1e-2, seed=1) == r.train_step(x, lr=1e-2, seed=1)


# ------------------------------------------------------------------ initialization
def test_normal_initialization():
    m = vaec.VAE(784, 3, hidden=(100,), seed=4, init_std=0.01)
    every = np.concatenate([v.ravel() for v in m.params.values()]).astype(np.float64)
    assert abs(every.std() - 0.01) < 1e-4 and abs(every.mean()) < 1e-4
    for k, v in m.params.items():
        if v.size >= 100:   # each tensor within 5.7 standard errors of its standard deviation
            assert abs(v.std() - 0.01) < 0.04 * 0.01 * 100 / np.sqrt(v.size), k
    same = vaec.VAE(784, 3, hidden=(100,), seed=4, init_std=0.01)
    other = vaec.VAE(784, 3, hidden=(100,), seed=5, init_std=0.01)
    for k in m.params:
        assert np.array_equal(m.params[k], same.params[k]) and not np.array_equal(m.params[k], other.params[k])
    # the first weight is kept transposed: its values are still the row-major stream's
    w = m.params["encoder.0.weight"]
    want = vaec._core.rng("normal", w.size, 4, 2, 0).reshape(w.shape) * np.float32(0.01)
    assert np.array_equal(w, want)
    assert not np.any(m._arenas["grads"])
    # the default is unchanged: torch's uniform bound
    u = vaec.VAE(784, 3, hidden=(100,), seed=4)
    assert np.abs(u.params["decoder.0.weight"]).max() <= 1 / np.sqrt(3)


def test_normal_initialization_keeps_zero_tensors_zero():
    m = vaec.VAE(10, 2, hidden=(6,), flow="planar:2", seed=1, init_std=0.5)
    ref = vaec.VAE(10, 2, hidden=(6,), flow="planar:2", seed=1)
    for k in m.params:
        if not np.any(ref.params[k]):
            assert not np.any(m.params[k]), k


@pytest.mark.parametrize("bad", [0.0, -0.01, float("inf")])
def test_bad_init_std_is_refused(bad):
    with pytest.raises(ValueError, match="init_std"):
        vaec.VAE(10, 2, hidden=(6,), init_std=bad)


# ---------------------------------------------------------------------- fit
@pytest.mark.parametrize("algorithm", ["aevb", "wake-sleep"])
def test_fit_with_adagrad_trains(algorithm):
    rng = np.random.default_rng(0)
    x = (rng.random((300, 20)) < np.linspace(0.1, 0.9, 20)).astype(np.float32)
    m = vaec.VAE(20, 2, hidden=(10,), seed=1, init_std=0.01)
    h = m.fit(x, epochs=12, batch_size=30, lr=0.05, optimizer="adagrad", weight_decay=1 / 300, seed=0,
              progress=False, algorithm=algorithm)
    assert m.optimizer_state["optimizer"] == "adagrad" and m.optimizer_state["weight_decay"] == pytest.approx(1 / 300)
    assert h["loss"][-1] < h["loss"][0] - 1.0
    # the next default fit goes back to Adam, from a zeroed state
    m.fit(x, epochs=1, batch_size=300, progress=False)
    assert m.optimizer_state["optimizer"] == "adam" and m.optimizer_state["step"] == 1


def test_adagrad_checkpoints_resume_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((120, 20)) < 0.4).astype(np.float32)
    kw = dict(batch_size=40, lr=0.05, optimizer="adagrad", weight_decay=0.01, seed=3, progress=False)
    full = vaec.VAE(20, 2, hidden=(10,), seed=1)
    full.fit(x, epochs=4, **kw)
    part = vaec.VAE(20, 2, hidden=(10,), seed=1)
    part.fit(x, epochs=2, checkpoint_dir=tmp_path, **kw)
    resumed = vaec.VAE(20, 2, hidden=(10,), seed=1)
    resumed.fit(x, epochs=4, resume=tmp_path / "checkpoint.vaec", **kw)
    for k in full.params:
        assert np.array_equal(full.params[k], resumed.params[k]), k
    assert full.history["loss"] == resumed.history["loss"]


def test_m2_and_flow_fit_take_the_optimizer():
    rng = np.random.default_rng(0)
    f = vaec.Flow(2, "realnvp:2", seed=0)
    f.fit(rng.standard_normal((64, 2)).astype(np.float32), epochs=1, batch_size=32, optimizer="adagrad",
          weight_decay=1e-3, progress=False)
    assert f.optimizer_state["optimizer"] == "adagrad" and f.optimizer_state["step"] == 2
    m = vaec.M2(20, n_classes=3, latent_dim=2, hidden=(8,), seed=0)
    xl = (rng.random((6, 20)) < 0.5).astype(np.float32)
    m.fit(xl, np.arange(6) % 3, xl, epochs=1, batch_size=6, optimizer="adagrad", progress=False)
    assert m.optimizer_state["optimizer"] == "adagrad"
    with pytest.raises(ValueError, match="optimizer"):
        m.fit(xl, np.arange(6) % 3, xl, epochs=1, optimizer="rmsprop", progress=False)
