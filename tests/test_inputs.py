"""What the binding accepts and refuses: zero-copy for float32/uint8, one copy for other
real dtypes, and a clear exception naming the argument for everything else."""
import gc
import os
import threading
import tracemalloc

import numpy as np
import pytest

import vaec


@pytest.fixture(scope="module")
def model():
    return vaec.VAE(16, 3, hidden=(8,), seed=1, threads=1)


@pytest.fixture(scope="module")
def gmodel():
    return vaec.VAE(16, 3, hidden=(8,), likelihood="gaussian", seed=1, threads=1)


def peak_numpy_bytes(fn):
    """Peak bytes NumPy allocated while fn ran (NumPy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_float32_and_uint8_are_used_in_place():
    """A 64 MB float32 data set goes through elbo/encode/loss_and_grad without NumPy
    allocating anything near its size; a float64 one costs one float32 copy."""
    m = vaec.VAE(1024, 2, hidden=(), seed=0, threads=1)
    n = 16384
    x32 = np.full((n, 1024), 0.5, np.float32)           # 64 MiB
    x8 = np.full((n, 1024), 128, np.uint8)              # 16 MiB
    x64 = np.full((n // 4, 1024), 0.5, np.float64)      # 32 MiB -> a 16 MiB float32 copy
    small = 2 * n * 8 + 2 * n * 2 * 4 + (1 << 20)       # outputs: elbo (n,), mu/logvar; plus slack
    assert peak_numpy_bytes(lambda: m.elbo(x32)) < small
    assert peak_numpy_bytes(lambda: m.encode(x32)) < small
    assert peak_numpy_bytes(lambda: m.loss_and_grad(x32[:4096])) < small
    assert peak_numpy_bytes(lambda: m.elbo(x8)) < small
    copy = peak_numpy_bytes(lambda: m.elbo(x64))
    assert copy >= x64.size * 4, "a float64 input must be converted (one float32 copy)"
    assert copy < x64.size * 4 + small, "and only once"


def test_uint8_is_scaled_by_1_over_255(model):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (6, 16), dtype=np.uint8)
    xf = x8.astype(np.float32) / 255
    eps = rng.standard_normal((6, 3)).astype(np.float32)
    assert np.allclose(model.elbo(x8, eps=eps), model.elbo(xf, eps=eps), rtol=1e-6, atol=1e-5)
    mu8, lv8 = model.encode(x8)
    muf, lvf = model.encode(xf)
    assert np.allclose(mu8, muf, atol=1e-6) and np.allclose(lv8, lvf, atol=1e-6)


def test_other_real_dtypes_and_layouts_are_converted(model):
    rng = np.random.default_rng(1)
    x = rng.random((5, 16)).astype(np.float32)
    eps = rng.standard_normal((5, 3)).astype(np.float32)
    ref = model.elbo(x, eps=eps)
    for variant in (x.astype(np.float64), x.astype(np.float16).astype(np.float32), np.asfortranarray(x),
                    x.tolist(), x.astype(">f4")):
        got = model.elbo(variant, eps=eps)
        assert np.allclose(got, ref, rtol=1e-3), type(variant)
    strided = np.zeros((5, 32), np.float32)
    strided[:, ::2] = x
    assert np.allclose(model.elbo(strided[:, ::2], eps=eps), ref)
    xb = rng.random((5, 16)) > 0.5
    assert np.allclose(model.elbo(xb, eps=eps), model.elbo(xb.astype(np.float32), eps=eps))


def test_inputs_are_not_modified(model):
    rng = np.random.default_rng(2)
    x = rng.random((7, 16), dtype=np.float32)
    x8 = rng.integers(0, 256, (7, 16), dtype=np.uint8)
    eps = rng.standard_normal((2, 7, 3)).astype(np.float32)
    z = rng.standard_normal((7, 3)).astype(np.float32)
    copies = [a.copy() for a in (x, x8, eps, z)]
    model.loss_and_grad(x, eps=eps)
    model.elbo(x8, samples=2)
    model.elbo(x, eps=eps)
    model.encode(x8)
    model.decode(z)
    model.fit(x8, epochs=1, batch_size=3, progress=False, binarize="dynamic")
    for a, c in zip((x, x8, eps, z), copies):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("bad,exc,match", [
    ("hello", TypeError, "x: expected a real-valued"),
    (np.ones((2, 16), complex), TypeError, "x: expected a real-valued.*complex"),
    (np.array([[object()] * 16]), TypeError, "x: expected a real-valued"),
    (None, TypeError, "x: expected an array, got None"),
    (np.ones(16, np.float32), ValueError, r"x: expected a 2-D array of shape \(n, 16\), got shape \(16,\)"),
    (np.ones((2, 15), np.float32), ValueError, r"x: expected a 2-D array of shape \(n, 16\), got shape \(2, 15\)"),
    (np.ones((2, 2, 16), np.float32), ValueError, "x: expected a 2-D array"),
    (np.full((2, 16), np.nan, np.float32), ValueError, "x: contains nan"),
    (np.full((2, 16), np.inf), ValueError, "x: contains inf"),
    (np.full((2, 16), 1.5, np.float32), ValueError, r"x: values must be in \[0, 1\] for a Bernoulli"),
    (np.full((2, 16), -0.1, np.float32), ValueError, r"x: values must be in \[0, 1\]"),
    (np.full((2, 16), 1e39), ValueError, "x: contains inf"),
    ([[0.5] * 16, [0.5] * 15], ValueError, "x: expected a rectangular array"),
])
def test_bad_x_is_refused_by_every_entry_point(model, bad, exc, match):
    for call in (model.loss_and_grad, model.elbo, model.encode, lambda a: model.train_step(a),
                 model.reconstruct):
        with pytest.raises(exc, match=match):
            call(bad)


@pytest.mark.parametrize("value,match", [(np.nan, "contains nan at flat index {i} "), (np.inf, "contains inf at flat index {i} "),
                                         (-np.inf, "contains -inf at flat index {i} "),
                                         (1.0000001, r"in \[0, 1\].*found 1\.0000001\d* at row"),
                                         (-1e-30, r"in \[0, 1\].*found -1\.0*\d*e-30 at row")])
def test_the_first_bad_value_is_found_wherever_it_is(model, value, match):
    """The scan tests blocks of 1024 values at once: a single bad value is found, and
    named by its row and column, at a block's first and last place, in the short last
    block, and after an earlier bad value of another kind in the same block."""
    n = 200  # 200 x 16 = 3200 values: three whole blocks and a short one
    for i in (0, 1023, 1024, 2047, 3071, 3072, 3199):
        x = np.full((n, 16), 0.5, np.float32)
        x.flat[i] = value
        if i + 5 < x.size:
            x.flat[i + 5] = 2.0 if np.isnan(value) else np.nan
        with pytest.raises(ValueError, match=match.format(i=i)) as err:
            model.elbo(x)
        assert f"row {i // 16}, column {i % 16}" in str(err.value), (i, str(err.value))


def test_gaussian_likelihood_takes_any_finite_values(gmodel):
    x = np.full((2, 16), 3.5, np.float32)
    assert np.all(np.isfinite(gmodel.elbo(x)))
    with pytest.raises(ValueError, match="x: contains nan"):
        gmodel.elbo(np.full((2, 16), np.nan))


def test_bad_eps(model):
    x = np.full((4, 16), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"eps: expected shape \(samples, 4, 3\) or \(4, 3\), got shape \(4, 2\)"):
        model.loss_and_grad(x, eps=np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="eps: expected shape"):
        model.loss_and_grad(x, eps=np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="eps: contains nan"):
        model.loss_and_grad(x, eps=np.full((4, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="eps: expected a real-valued"):
        model.loss_and_grad(x, eps=np.zeros((4, 3), complex))
    with pytest.raises(ValueError, match="samples: 3 does not match eps"):
        model.elbo(x, samples=3, eps=np.zeros((2, 4, 3), np.float32))


def test_bad_scalars(model):
    x = np.full((4, 16), 0.5, np.float32)
    with pytest.raises(ValueError, match="samples: expected an integer between 1"):
        model.elbo(x, samples=0)
    with pytest.raises(TypeError, match="samples: expected a positive integer"):
        model.elbo(x, samples=1.5)
    with pytest.raises(ValueError, match="lr: expected a number >= 0"):
        model.train_step(x, lr=-1)
    with pytest.raises(ValueError, match="lr: expected a finite number"):
        model.train_step(x, lr=float("nan"))
    with pytest.raises(TypeError, match="seed: expected None or a non-negative integer"):
        model.elbo(x, seed="a")
    with pytest.raises(ValueError, match="seed: expected an integer in"):
        model.elbo(x, seed=-1)
    with pytest.raises(ValueError, match="binarize: expected"):
        model.elbo(x, binarize="static")


def test_bad_z(model):
    with pytest.raises(ValueError, match=r"z: expected a 2-D array of shape \(n, 3\), got shape \(2, 4\)"):
        model.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="z: contains inf"):
        model.decode(np.full((2, 3), np.inf, np.float32))
    with pytest.raises(TypeError, match="z: expected a real-valued"):
        model.decode("z")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input_dim=0), ValueError, "input_dim: expected an integer between 1"),
    (dict(input_dim=2.5), TypeError, "input_dim: expected an integer"),
    (dict(input_dim=True), TypeError, "input_dim: expected an integer"),
    (dict(input_dim=4, latent_dim=0), ValueError, "latent_dim"),
    (dict(input_dim=4, hidden=(3, 0)), ValueError, r"hidden\[1\]"),
    (dict(input_dim=4, hidden=(3, "a")), TypeError, r"hidden\[1\]"),
    (dict(input_dim=4, hidden=(2,) * 9), ValueError, "hidden: at most 8"),
    (dict(input_dim=4, hidden=None), TypeError, "hidden: expected a sequence"),
    (dict(input_dim=4, activation="gelu"), ValueError, "activation: expected one of"),
    (dict(input_dim=4, likelihood="poisson"), ValueError, "likelihood: expected 'bernoulli' or 'gaussian'"),
    (dict(input_dim=4, seed=-3), ValueError, "seed"),
    (dict(input_dim=4, threads=0), ValueError, "threads"),
    (dict(input_dim=2**40), ValueError, "input_dim"),
    (dict(input_dim=1 << 26, latent_dim=1 << 20, hidden=(1 << 20,)), MemoryError, "out of memory"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        vaec.VAE(**kwargs)


def test_empty_batches(model):
    e = np.zeros((0, 16), np.float32)
    assert model.elbo(e).shape == (0,)
    mu, lv = model.encode(e)
    assert mu.shape == (0, 3) and lv.shape == (0, 3)
    assert model.decode(np.zeros((0, 3), np.float32)).shape == (0, 16)
    assert model.sample(0).shape == (0, 16)
    with pytest.raises(ValueError, match="x: empty batch"):
        model.loss_and_grad(e)
    with pytest.raises(ValueError, match="x: empty batch"):
        model.train_step(e)
    with pytest.raises(ValueError, match="X: empty data set"):
        model.fit(e, epochs=1, progress=False)


def test_hidden_none_means_no_hidden_layer_and_int_means_one():
    assert vaec.VAE(4, 2, hidden=()).hidden == ()
    m = vaec.VAE(4, 2, hidden=5)
    assert m.hidden == (5,) and m.params["decoder.0.weight"].shape == (5, 2)


def test_params_are_zero_copy_views(model):
    w = model.params["encoder.0.weight"]
    # the first layer's weight is kept as W^T (its sparse path's layout): the view is
    # column-major, in torch's (out, in) shape; every other tensor is row-major
    assert w.shape == (8, 16) and w.dtype == np.float32 and w.flags.f_contiguous and not w.flags.c_contiguous
    assert all(v.flags.c_contiguous for k, v in model.params.items() if k != "encoder.0.weight")
    assert model.grads["encoder.0.weight"].flags.f_contiguous
    fresh = vaec.VAE(16, 3, hidden=(8,), seed=1, threads=1)   # no gradient before a call
    assert not np.any(fresh._core.arena("grads"))
    x = np.full((3, 16), 0.5, np.float32)
    # a write through the transposed view is what C multiplies by: one input pixel on
    # moves the first hidden layer by that weight's column
    one = np.zeros((1, 16), np.float32)
    one[0, 5] = 1.0
    keep = w.copy()
    w[...] = 0.0
    w[:, 5] = np.arange(8, dtype=np.float32) / 8
    h = np.tanh(w[:, 5] + model.params["encoder.0.bias"])
    mu = h @ model.params["encoder.mu.weight"].T + model.params["encoder.mu.bias"]
    assert np.allclose(model.encode(one)[0][0], mu, atol=1e-5)
    w[...] = keep
    before = model.encode(x)[0].copy()
    old = model.params["encoder.mu.bias"].copy()
    model.params["encoder.mu.bias"][...] += 1.0
    after = model.encode(x)[0]
    assert np.allclose(after, before + 1.0, atol=1e-5)
    model.params["encoder.mu.bias"][...] = old
    # grads views see what loss_and_grad writes; all views share one buffer
    model.loss_and_grad(x, seed=0)
    g = model.grads["decoder.out.bias"]
    assert np.any(g != 0)
    # one contiguous arena: each view starts at its table offset from the first one
    addr = {k: v.__array_interface__["data"][0] for k, v in model.params.items()}
    offsets = {name: off for name, off, _, _ in model._core.tensors()}
    base = addr["encoder.0.weight"] - 4 * offsets["encoder.0.weight"]
    assert all(addr[k] == base + 4 * offsets[k] for k in addr)
    gaddr = {k: v.__array_interface__["data"][0] for k, v in model.grads.items()}
    assert all(gaddr[k] - gaddr["encoder.0.weight"] == addr[k] - addr["encoder.0.weight"] for k in addr)
    sd = model.state_dict()
    assert not np.shares_memory(sd["encoder.0.weight"], model.params["encoder.0.weight"])


def test_views_keep_the_model_alive():
    m = vaec.VAE(4, 2, hidden=(3,), seed=5)
    w = m.params["encoder.0.weight"]
    expect = w.copy()
    del m
    gc.collect()
    vaec.VAE(4, 2, hidden=(3,), seed=6)  # reuse freed memory if it had been freed
    assert np.array_equal(w, expect)


def test_load_state_dict_checks_everything(model):
    sd = model.state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "encoder.0.bias"})
    bad = dict(sd)
    bad["encoder.0.bias"] = np.zeros(9)
    with pytest.raises(ValueError, match=r"state_dict\['encoder.0.bias'\]: expected shape \(8,\), got \(9,\)"):
        model.load_state_dict(bad)
    bad["encoder.0.bias"] = np.full(8, np.nan)
    with pytest.raises(ValueError, match="NaN"):
        model.load_state_dict(bad)
    assert np.array_equal(model.params["encoder.0.bias"], sd["encoder.0.bias"]), "nothing changed on error"
    lists = {k: v.tolist() for k, v in sd.items()}
    model.load_state_dict(lists)
    for k in sd:
        assert np.array_equal(model.params[k], sd[k])


def test_gil_is_released_and_a_busy_model_refuses_a_second_caller():
    m = vaec.VAE(784, 20, hidden=(400,), seed=0, threads=1)
    x = np.random.default_rng(0).random((2000, 784), dtype=np.float32)
    errors, ticks = [], []
    done = threading.Event()

    def work():
        try:
            m.elbo(x, samples=4)
        finally:
            done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():  # the main thread keeps running while C computes
        ticks.append(1)
        try:
            m.elbo(x[:2])
        except RuntimeError as e:
            errors.append(str(e))
        done.wait(0.001)
    t.join()
    assert len(ticks) > 1
    assert errors and "in use by another thread" in errors[0]


@pytest.mark.parametrize("type_name", ["VAECore", "M2Core", "FlowCore"])
def test_an_uninitialised_core_refuses_every_call(type_name, tmp_path):
    """A core made by __new__ alone has no C model: every method raises, none dereferences it."""
    tp = getattr(vaec._core, type_name)
    core = tp.__new__(tp)
    what = "flow" if type_name == "FlowCore" else "model"
    path = tmp_path / "m.vaec"
    calls = {"set_rng": (1, 2, 3), "state": (), "save": (str(path),), "arena": ("params",), "tensors": (),
             "set_adam": (), "set_optimizer": (), "reset_optimizer": (), "adam_step": (1e-3,), "config": ()}
    for name, args in calls.items():
        with pytest.raises(RuntimeError, match=f"the {what} is not initialised"):
            getattr(core, name)(*args)
    assert not path.exists()
    del core
    gc.collect()  # and it is freed without a model


def test_setters_refuse_a_busy_core(tmp_path):
    """set_rng, set_adam and save touch what a running call uses without the GIL (a second
    __init__ is refused busy or not: the next test)."""
    args = (784, 20, (400,), "tanh", "bernoulli", 0, 1)
    core = vaec._core.VAECore(*args)
    x = np.random.default_rng(0).random((2000, 784), dtype=np.float32)
    calls = {"set_rng": lambda: core.set_rng(0, 0), "set_adam": lambda: core.set_adam(),
             "save": lambda: core.save(str(tmp_path / "m.vaec"))}
    refused = {name: [] for name in calls}
    done = threading.Event()

    def work():
        try:
            core.elbo(x, None, 4)
        finally:
            done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        for name, call in calls.items():
            try:
                call()
            except RuntimeError as e:
                refused[name].append(str(e))
        done.wait(0.001)
    t.join()
    for name, errors in refused.items():
        assert errors and all("the model is in use by another thread" == e for e in errors), name
    assert core.state()["step"] == 0


@pytest.mark.parametrize("type_name", ["VAECore", "M2Core", "FlowCore"])
def test_an_initialised_core_refuses_a_second_init(type_name):
    """__init__ again would free the arena under the NumPy views arena() handed out."""
    args = {"VAECore": (6, 2, (4,), "tanh", "bernoulli", 0, 1),
            "M2Core": (6, 2, 3, (4,), (), "softplus", "bernoulli", 0.1, 0, 1)}
    args["FlowCore"] = (2, "planar:2", 0, 1)
    core = getattr(vaec._core, type_name)(*args[type_name])
    init = lambda: core.__init__(*args[type_name])
    view = core.arena("params")
    before = view.copy()
    what = "flow" if type_name == "FlowCore" else "model"
    with pytest.raises(RuntimeError, match=f"the {what} is already initialised"):
        init()
    assert np.array_equal(core.arena("params"), before) and np.array_equal(view, before)


def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.environ.get("VAEC_SANITIZE"),
                    reason="needs /proc; AddressSanitizer's quarantine grows RSS by design")
def test_no_memory_leak_over_many_calls():
    x = np.random.default_rng(0).random((64, 100), dtype=np.float32)

    def cycle():
        m = vaec.VAE(100, 5, hidden=(32,), seed=0, threads=2)
        m.train_step(x)
        m.elbo(x, samples=2)
        m.encode(x)
        m.decode(np.zeros((3, 5), np.float32))
        _ = m.params, m.state_dict()
        for bad in (np.full((2, 100), np.nan), "s", np.ones((2, 3))):
            try:
                m.elbo(bad)
            except (TypeError, ValueError):
                pass

    for _ in range(30):
        cycle()
    gc.collect()
    before = rss_kb()
    for _ in range(300):
        cycle()
    gc.collect()
    grew = rss_kb() - before
    assert grew < 8 * 1024, f"RSS grew by {grew} kB over 300 cycles"


def test_binding_calls_take_keywords(model):
    """Every method of the binding types takes its arguments by name as well as by position."""
    x = np.full((3, 16), 0.5, np.float32)
    eps = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    core = model._core
    assert np.array_equal(core.elbo(x=x, eps=eps, binarize=False), core.elbo(x, eps, None, None, False))
    assert np.array_equal(core.encode(x=x)[0], core.encode(x)[0])
    assert np.array_equal(core.decode(z=eps[0]), core.decode(eps[0]))
    with pytest.raises(TypeError, match="bogus"):
        core.loss_grad(x=x, bogus=1)
    f = vaec.Flow(2, "realnvp:2:4", seed=0, threads=1)
    z = eps[0, :, :2].copy()
    assert np.array_equal(f._core.transform(z=z)[0], f._core.transform(z)[0])
    assert np.array_equal(f._core.sample(n=3, seed=1)[0], f._core.sample(3, 1)[0])
    m2 = vaec.M2(16, 3, 2, hidden=(4,), seed=0, threads=1)
    assert np.array_equal(m2._core.classify(x=x), m2._core.classify(x))


def test_one_noise_converter_names_the_argument_and_the_shape():
    f = vaec.Flow(2, "planar:2", seed=0, threads=1)
    with pytest.raises(ValueError, match=r"eps: expected shape \(4, 2\), got shape \(4, 3\)"):
        f.energy_loss_and_grad(vaec.flows.potentials.U1, eps=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="eps: contains nan"):
        f.energy_loss_and_grad(vaec.flows.potentials.U1, eps=np.full((4, 2), np.nan, np.float32))
    with pytest.raises(TypeError, match="seed: expected None or a non-negative integer"):
        f._core.sample(n=2, seed="s")
    m2 = vaec.M2(16, 3, 2, hidden=(4,), seed=0, threads=1)
    x = np.full((5, 16), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"eps: expected shape \(5, 3, 2\), got shape \(5, 2\)"):
        m2.elbo(x, eps=np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match=r"eps_l: expected shape \(5, 2\), got shape \(4, 2\)"):
        m2.loss_and_grad(x, np.zeros(5, int), None, eps=(np.zeros((4, 2), np.float32), None))
