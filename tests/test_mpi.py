"""Data-parallel training under MPI: fit(..., comm=MPI.COMM_WORLD).

Run under MPI (.ci/run does):

    mpirun -n 2 --oversubscribe python -m pytest -q -p no:cacheprovider --color=no tests/test_mpi.py

(as root Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1).
Every rank runs every test; a test makes its collective calls on all ranks first and
asserts after them, so a failure on one rank cannot leave the other waiting. Without
mpirun, or without mpi4py, the module is skipped (tests/test_mpi_cli.py starts mpirun
itself)."""
import os
import shutil
import tempfile
import zlib

import numpy as np
import pytest

_SIZE = int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)
if _SIZE < 2:
    pytest.skip("MPI tests: run under mpirun -n 2 (see this file's docstring)", allow_module_level=True)
MPI = pytest.importorskip("mpi4py.MPI")

import vaec  # noqa: E402
from vaec import distributed  # noqa: E402
from vaec.distributed import DistributedError  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.random((n, d)) < 0.3) * rng.random((n, d))).astype(np.float32)


def _crcs(model):
    """Every rank's CRC-32 of the model's parameters and Adam moments (a collective)."""
    mine = tuple(zlib.crc32(model._arenas[k].tobytes()) for k in ("params", "adam_m", "adam_v"))
    return COMM.allgather(mine)


def _outcome(fn):
    """fn()'s result or exception on this rank, gathered from every rank (a collective):
    a list of (type name, message) or ("ok", result) per rank."""
    try:
        mine = ("ok", fn())
    except Exception as e:   # noqa: BLE001
        mine = (type(e).__name__, str(e))
    return COMM.allgather(mine)


@pytest.fixture
def shared_dir():
    """One folder every rank sees (same machine), removed after the test."""
    path = COMM.bcast(tempfile.mkdtemp(prefix="vaec-mpi-") if RANK == 0 else None)
    yield path
    COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(path, ignore_errors=True)


# 129 rows in batches of 64: the last batch has one row, so with 2 ranks rank 0's share of
# it is empty (it still joins the Allreduce with zero gradients)
VAE_FIT = dict(epochs=3, batch_size=64, lr=3e-3, seed=4, binarize="dynamic", samples=2, progress=False)


def test_two_ranks_train_the_one_process_model():
    X = _data(129, 48)
    m = vaec.VAE(48, 5, hidden=(24,), seed=1, threads=1)
    h = m.fit(X, validation_data=X[:40], comm=COMM, **VAE_FIT)
    crcs = _crcs(m)
    one = vaec.VAE(48, 5, hidden=(24,), seed=1, threads=1)
    h1 = one.fit(X, validation_data=X[:40], **VAE_FIT)
    assert len(set(crcs)) == 1, f"the ranks' parameters or Adam moments differ: {crcs}"
    np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-6)
    np.testing.assert_allclose(h["val_elbo"], h1["val_elbo"], rtol=1e-5)
    np.testing.assert_allclose(m._arenas["params"], one._arenas["params"], rtol=0, atol=2e-5)
    assert np.abs(m._arenas["params"] - vaec.VAE(48, 5, hidden=(24,), seed=1)._arenas["params"]).max() > 1e-3
    assert m.optimizer_state["step"] == one.optimizer_state["step"] == 9
    assert m.optimizer_state["rng_counter"] == one.optimizer_state["rng_counter"]
    assert h["examples_per_s"][0] > 0 and len(h["loss"]) == 3


@pytest.mark.skipif(SIZE != 2, reason="the bitwise comparison is written for 2 ranks (g0 + g1)")
def test_bitwise_equal_to_the_same_shares_in_one_process():
    """With the reduction order fixed -- 2 ranks: the sum g0 + g1 -- the ranks' model is
    bit for bit the one process that computes the same two shares and adds them."""
    X, n, bs, seed, lr = _data(130, 40), 130, 64, 9, 2e-3
    kw = dict(flow="planar:2", hidden=(16,), seed=3, threads=1)
    m = vaec.VAE(40, 4, **kw)
    m.fit(X, epochs=2, batch_size=bs, lr=lr, seed=seed, binarize="dynamic", progress=False, comm=COMM)
    ref = vaec.VAE(40, 4, **kw)
    ref._core.set_rng(seed=seed, counter=0)
    for epoch in range(2):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n, bs):
            size = min(bs, n - start)
            counter = ref._core.state()["rng_counter"]
            total = None
            for k in range(2):
                a, b = size * k // 2, size * (k + 1) // 2
                ref._core.set_rng(seed=seed, counter=counter)
                ref._core.loss_grad(x=X[order[start + a:start + b]], samples=1, binarize=True, lr=-1.0, iw=False,
                                    beta=1.0, free_bits=0.0, score=False, baseline=0.0, row_offset=a, n_total=size)
                g = ref._arenas["grads"]
                total = g.copy() if total is None else total + g
            ref._arenas["grads"][...] = total
            ref._core.adam_step(lr=lr)
    crcs = _crcs(m)
    assert len(set(crcs)) == 1
    assert np.array_equal(m._arenas["params"], ref._arenas["params"])
    assert np.array_equal(m._arenas["adam_v"], ref._arenas["adam_v"])


@pytest.mark.parametrize("case", ["autoencoder", "conv", "score-baseline", "iwae"])
def test_other_vae_kinds_match_one_process(case):
    X = _data(150, 64)
    if case == "autoencoder":
        make, fit = lambda: vaec.Autoencoder(64, 4, hidden=(16,), seed=2, threads=1), {}
    elif case == "conv":
        make, fit = lambda: vaec.VAE(input_shape=(1, 8, 8), latent_dim=4, architecture="conv", seed=2, threads=1), {}
    elif case == "score-baseline":   # the running mean of log p(x|z) over the whole batch: a scalar sum per step
        make, fit = lambda: vaec.VAE(64, 4, hidden=(16,), seed=2, threads=1), {"estimator": "score",
                                                                              "baseline": "mean"}
    else:
        make, fit = lambda: vaec.VAE(64, 4, hidden=(16,), seed=2, threads=1), {"iw_samples": 3}
    m = make()
    p0 = m._arenas["params"].copy()
    h = m.fit(X, epochs=2, batch_size=50, seed=1, binarize="dynamic", progress=False, comm=COMM, **fit)
    crcs = _crcs(m)
    one = make()
    h1 = one.fit(X, epochs=2, batch_size=50, seed=1, binarize="dynamic", progress=False, **fit)
    assert len(set(crcs)) == 1
    np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-5)
    if case == "conv":
        # ReLU layers: many weights get a gradient of 0 or of a few 1e-9, where Adam's
        # normalized step m/sqrt(v) turns float32 rounding of the sums into steps of order
        # lr. So the trained displacement is compared as a whole: equal to 1 %.
        moved = np.linalg.norm(one._arenas["params"] - p0)
        assert np.linalg.norm(m._arenas["params"] - one._arenas["params"]) <= 0.01 * moved
    else:
        np.testing.assert_allclose(m._arenas["params"], one._arenas["params"], rtol=0, atol=5e-5)
    if case == "score-baseline":
        assert m._baseline == pytest.approx(one._baseline, rel=1e-6)


def test_m2_matches_one_process():
    rng = np.random.default_rng(3)
    X, y = _data(170, 36), rng.integers(0, 3, 170)
    make = lambda: vaec.M2(36, n_classes=3, latent_dim=4, hidden=(16,), seed=5, threads=1)  # noqa: E731
    fit = dict(epochs=2, batch_size=64, labeled_batch_size=15, seed=2, binarize="dynamic", progress=False,
               validation_data=(X[:50], y[:50]))
    m = make()
    h = m.fit(X[:30], y[:30], X[30:], comm=COMM, **fit)
    crcs = _crcs(m)
    one = make()
    h1 = one.fit(X[:30], y[:30], X[30:], **fit)
    assert len(set(crcs)) == 1
    np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-5)
    np.testing.assert_allclose(h["labeled_nll"], h1["labeled_nll"], rtol=1e-5)
    assert h["val_error"] == h1["val_error"]
    np.testing.assert_allclose(m._arenas["params"], one._arenas["params"], rtol=0, atol=5e-5)


def test_flow_matches_one_process():
    X = np.random.default_rng(4).standard_normal((301, 4)).astype(np.float32) * [1, 2, 0.5, 1]
    m = vaec.Flow(4, "realnvp:4", seed=1, threads=1)
    h = m.fit(X, epochs=2, batch_size=64, seed=3, progress=False, comm=COMM)
    crcs = _crcs(m)
    one = vaec.Flow(4, "realnvp:4", seed=1, threads=1)
    h1 = one.fit(X, epochs=2, batch_size=64, seed=3, progress=False)
    assert len(set(crcs)) == 1
    np.testing.assert_allclose(h["loss"], h1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m._arenas["params"], one._arenas["params"], rtol=0, atol=2e-5)


def test_a_checkpoint_of_two_ranks_resumes_under_one_and_under_two(shared_dir):
    X = _data(129, 48)
    make = lambda: vaec.VAE(48, 5, hidden=(24,), seed=1, threads=1)  # noqa: E731
    fit = dict(VAE_FIT, epochs=4)
    whole = make()
    whole.fit(X, comm=COMM, **fit)
    half = make()
    half.fit(X, comm=COMM, checkpoint_dir=shared_dir, **dict(fit, epochs=2))
    ckpt = os.path.join(shared_dir, "checkpoint.vaec")
    # under two ranks: rank 0 reads the file and sends it, so the others' path need not exist
    two = make()
    two.fit(X, comm=COMM, resume=ckpt if RANK == 0 else "/nonexistent/checkpoint.vaec", **fit)
    crcs = _crcs(two)
    # under one process (each rank alone, comm=None)
    one = make()
    h1 = one.fit(X, resume=ckpt, **fit)
    assert len(set(crcs)) == 1
    assert np.array_equal(two._arenas["params"], whole._arenas["params"])   # resume is exact
    assert two.history["loss"] == whole.history["loss"]
    np.testing.assert_allclose(one._arenas["params"], whole._arenas["params"], rtol=0, atol=2e-5)
    assert len(h1["loss"]) == 4 and h1["loss"][:2] == whole.history["loss"][:2]


def test_only_rank_0_writes_and_calls_back(shared_dir, capsys):
    X = _data(129, 48)
    calls = []
    m = vaec.VAE(48, 5, hidden=(24,), seed=1, threads=1)
    h = m.fit(X, comm=COMM, checkpoint_dir=os.path.join(shared_dir, f"ckpt{RANK}"), verbose=True,
              callback=lambda epoch, logs: calls.append(epoch) or epoch == 2, **VAE_FIT)
    out = capsys.readouterr().out
    seen = COMM.allgather((len(calls), os.path.exists(os.path.join(shared_dir, f"ckpt{RANK}")), out.count("epoch"),
                           len(h["loss"])))
    assert seen[0] == (2, True, 2, 2)                   # rank 0: the callback, the folder, the lines
    assert all(s == (0, False, 0, 2) for s in seen[1:])  # and the callback's stop reached every rank


@pytest.mark.parametrize("what", ["seed", "data", "shape", "fit", "argument"])
def test_a_mismatch_fails_fast_on_every_rank(what):
    X = _data(100, 30)
    seed, batch_size = 1, 20
    if RANK == 1:
        if what == "seed":
            seed = 2
        elif what == "data":
            X[17, 3] += 0.25
        elif what == "shape":
            X = X[:90]
        elif what == "fit":
            batch_size = 25
        else:
            batch_size = 0
    m = vaec.VAE(30, 3, hidden=(8,), seed=seed, threads=1)
    before = m._arenas["params"].copy()
    out = _outcome(lambda: m.fit(X, epochs=1, batch_size=batch_size, seed=0, progress=False, comm=COMM))
    untouched = np.array_equal(before, m._arenas["params"])
    want = {"seed": ["configuration", "seed", "parameters"], "data": ["data", "X: contents differ"],
            "shape": ["data", "(90, 30)"], "fit": ["fit settings", "batch_size = 20 on rank 0, 25 on rank 1"],
            "argument": ["refused on rank 1", "batch_size"]}[what]
    assert untouched
    for r, (kind, msg) in enumerate(out):
        if what == "argument" and r == 1:
            assert kind == "ValueError" and "batch_size" in msg
            continue
        assert kind == "DistributedError", (r, kind, msg)
        for w in want:
            assert w in msg, (r, w, msg)


def test_diverged_parameters_are_reported(monkeypatch):
    monkeypatch.setattr(distributed, "CHECK_EVERY", 2)
    calls = []
    X = _data(200, 30)
    m = vaec.VAE(30, 3, hidden=(8,), seed=1, threads=1)
    real = distributed.Dist.allreduce_grads

    def drift(self, grads):   # rank 1's parameters change behind the fit's back after step 3
        real(self, grads)
        calls.append(1)
        if self.rank == 1 and len(calls) == 3:
            m._arenas["params"][5] += 1e-3
    monkeypatch.setattr(distributed.Dist, "allreduce_grads", drift)
    out = _outcome(lambda: m.fit(X, epochs=1, batch_size=20, seed=0, progress=False, comm=COMM))
    for kind, msg in out:
        assert kind == "DistributedError" and "parameters differ between the ranks after global step 4" in msg, msg


def test_a_failing_step_on_one_rank_stops_every_rank(monkeypatch):
    from vaec.models import _CoderPlan
    real = _CoderPlan.step

    def step(self, batch, lr, step):
        if RANK == 1 and step == 2:
            raise FloatingPointError("the loss is NaN (non-finite)")
        return real(self, batch, lr, step)
    monkeypatch.setattr(_CoderPlan, "step", step)
    X = _data(200, 30)
    m = vaec.VAE(30, 3, hidden=(8,), seed=1, threads=1)
    out = _outcome(lambda: m.fit(X, epochs=1, batch_size=20, seed=0, progress=False, comm=COMM))
    crcs = _crcs(m)
    assert len(set(crcs)) == 1 and m.optimizer_state["step"] == 2   # the step was not taken anywhere
    for r, (kind, msg) in enumerate(out):
        assert kind == "FloatingPointError" and "epoch 1, step 3" in msg, msg
        assert ("the loss is NaN" if r == 1 else "summed over the ranks is NaN or Inf") in msg, msg


def test_refused_options_are_refused_on_every_rank():
    X = _data(60, 30)
    m = vaec.VAE(30, 3, hidden=(8,), seed=1, threads=1)
    out = [_outcome(lambda: m.fit(X, epochs=1, free_bits=0.5, progress=False, comm=COMM)),
           _outcome(lambda: m.fit(X, epochs=1, algorithm="wake-sleep", progress=False, comm=COMM)),
           _outcome(lambda: m.fit(X, epochs=1, algorithm="mcem", progress=False, comm=COMM))]
    for results, word in zip(out, ["free_bits", "wake-sleep", "mcem"]):
        assert all(kind == "ValueError" and word in msg for kind, msg in results), results
