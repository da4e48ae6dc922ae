"""The threading contract (README, "Threads"), under load (#21): a model is used by one thread
at a time; calls on different models run in parallel (the GIL is released around the C work)
and give the results they give serially, bit for bit; a call on a model another thread is
using raises RuntimeError at once and changes nothing. .ci/run also runs this file against
a build with -fsanitize=thread."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import vaec

T = 8


def data(seed, n=200, d=64):
    return (np.random.default_rng(seed).random((n, d)) < 0.3).astype(np.float32)


def workload(i):
    """Build, train, evaluate, save and load a model: every array it gives."""
    X = data(i)
    if i % 3 == 2:   # a conv VAE on 8x8 images: the conv layers' lanes and scratch slots
        from vaec import layers as L
        enc = [L.Conv2d(8, 3, padding=1), L.ReLU(), L.Conv2d(16, 3, stride=2, padding=1), L.ReLU(), L.Flatten(),
               L.Linear(16 + i), L.ReLU()]
        dec = [L.Linear(16 * 4 * 4), L.ReLU(), L.Unflatten(16, 4, 4), L.ConvTranspose2d(8, 4, stride=2, padding=1),
               L.ReLU(), L.Conv2d(1, 3, padding=1)]
        m = vaec.VAE(input_shape=(1, 8, 8), latent_dim=4, encoder=enc, decoder=dec, seed=i, threads=2,
                     flow="planar:2" if i % 2 else None)
    else:
        m = vaec.VAE(64, latent_dim=4, hidden=(32 + i,), seed=i, threads=2, flow="planar:2" if i % 2 else None)
    for s in range(6):
        m.train_step(X[:100], lr=1e-2, seed=s)
    hist = m.fit(X, epochs=2, batch_size=50, seed=i, progress=False)
    out = {"elbo": m.elbo(X, samples=3, seed=1), "iwae": m.iwae_bound(X, samples=8, seed=2),
           "mu": m.encode(X)[0], "decoded": m.decode(m.encode(X)[0]), "loss": np.array(hist["loss"])}
    out.update({k: v.copy() for k, v in m.params.items()})
    return out


def test_eight_threads_on_eight_models_equal_serial(tmp_path):
    serial = [workload(i) for i in range(T)]
    with ThreadPoolExecutor(T) as ex:
        parallel = list(ex.map(workload, range(T)))
    for i in range(T):
        assert serial[i].keys() == parallel[i].keys()
        for k in serial[i]:
            assert np.array_equal(serial[i][k], parallel[i][k]), (i, k)


def test_eight_threads_on_one_model_never_corrupt_it(tmp_path):
    """Eight threads hammer one model with training steps (the model's own noise stream, one
    batch), evaluations under fixed seeds, encodes and saves. Each call either runs or gets
    RuntimeError('... in use by another thread'); afterwards the model equals a serial run of
    exactly the steps that ran, and evaluations returned while it was hammered were whole."""
    X = data(0)
    m = vaec.VAE(64, latent_dim=4, hidden=(48,), seed=3, threads=2)
    counts = {"step": 0, "busy": 0, "other": 0}
    lock = threading.Lock()
    start = threading.Barrier(T)
    errors = []

    def hammer(t):
        start.wait()
        rng = np.random.default_rng(t)
        for _ in range(40):
            op = rng.integers(4)
            try:
                if op == 0:
                    m.train_step(X[:100], lr=1e-2)
                    with lock:
                        counts["step"] += 1
                elif op == 1:
                    e = m.elbo(X, samples=2, seed=5)
                    assert e.shape == (200,) and np.isfinite(e).all()
                elif op == 2:
                    mu, lv = m.encode(X)
                    assert np.isfinite(mu).all() and np.isfinite(lv).all()
                else:
                    m.save(tmp_path / f"t{t}.vaec")
            except RuntimeError as e:
                assert "in use by another thread" in str(e)
                with lock:
                    counts["busy"] += 1
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(repr(e))
    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(T)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert counts["step"] > 0 and counts["busy"] > 0, counts   # the contract was exercised
    ref = vaec.VAE(64, latent_dim=4, hidden=(48,), seed=3, threads=2)
    for _ in range(counts["step"]):
        ref.train_step(X[:100], lr=1e-2)
    for k in m.params:
        assert np.array_equal(m.params[k], ref.params[k]), k
    assert m.optimizer_state == ref.optimizer_state
    for t in range(T):   # every file written is a whole model
        p = tmp_path / f"t{t}.vaec"
        if p.exists():
            vaec.load(p)


def test_a_second_thread_gets_runtime_error_while_the_first_runs():
    """Deterministic: while one thread is inside a long call, another's call on the same model
    raises RuntimeError at once."""
    m = vaec.VAE(64, latent_dim=4, hidden=(32,), seed=0)
    X = data(1, n=300)
    started = threading.Event()
    result = {}

    def long_call():
        started.set()
        result["ll"] = m.log_likelihood(X, samples=4000)
    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    hits = 0
    while t.is_alive():
        try:
            m.encode(X[:1])
        except RuntimeError as e:
            assert "in use by another thread" in str(e)
            hits += 1
    t.join()
    assert hits > 0 and np.isfinite(result["ll"]).all()


@pytest.mark.parametrize("n", [T])
def test_concurrent_first_use_in_a_fresh_process(n):
    """The lazy global state (ISA choice, feature string, CRC table) first touched by n
    threads at once, in a new interpreter: every thread sees the same, and files agree."""
    import subprocess
    import sys
    script = r"""
import threading, tempfile, os, json, vaec, numpy as np
d = tempfile.mkdtemp()
b = threading.Barrier(%d)
out = {}
m = [vaec.VAE(16, latent_dim=2, hidden=(4,), seed=i, threads=1) for i in range(%d)]
def f(i):
    b.wait()
    out[i] = (json.dumps(vaec.cpu_features(), sort_keys=True), m[i].save(os.path.join(d, str(i))), vaec.load(os.path.join(d, str(i))).params["decoder.out.bias"].tolist())
ts = [threading.Thread(target=f, args=(i,)) for i in range(%d)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"features": len({v[0] for v in out.values()}), "files": all(out[i][2] == m[i].params["decoder.out.bias"].tolist() for i in out)}))
""" % (n, n, n)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith('{"features": 1, "files": true}'), r.stderr


def test_roundtrip_probe_times_a_cache_line_between_two_of_the_pools_threads():
    """vaec._core.roundtrip_ns, which the bench runs before each training repeat: a
    positive time on two threads when two CPUs are free (on one CPU the threads would
    swap the line once per time slice and the probe may time nothing: None), None on one
    thread, errors that name the argument."""
    from vaec import _core
    assert _core.roundtrip_ns(1) is None
    if len(os.sched_getaffinity(0)) >= 2:   # up to 5 tries: a busy machine can leave a probe empty
        ns = next((x for x in (_core.roundtrip_ns(2, 2000) for _ in range(5)) if x is not None), None)
        assert ns is not None and 0 < ns < 1e6, ns
    with pytest.raises(ValueError, match="rounds"):
        _core.roundtrip_ns(2, 0)
    with pytest.raises(ValueError, match="threads"):
        _core.roundtrip_ns(0)
