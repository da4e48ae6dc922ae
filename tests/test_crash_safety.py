"""Crash-safe files and training (#21): a save or checkpoint killed at random points leaves
the old file or the new one; a full disk or a read-only folder gives a clear OSError, the
old file intact and no temporary file; a run killed mid-epoch and resumed ends with the
parameters of an uninterrupted run, bit for bit.

The killed processes are forks of the test process (a fork costs milliseconds where a new
interpreter importing vaec costs a second), each with a single-threaded model of its own."""
import errno
import glob
import json
import os
import random
import resource
import signal
import subprocess
import time

import numpy as np
import pytest

import vaec

FAST = not os.environ.get("VAEC_LONG_TESTS")   # 1: ten times the kills


def flat(m):
    return np.concatenate([v.ravel() for v in m.params.values()])


def fork(fn):
    """Run fn() in a child process (which never returns into pytest); returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def leftovers(path):
    return glob.glob(glob.escape(str(path)) + ".tmp-*")


# ------------------------------------------------------------------ saving
def test_save_killed_at_random_points_leaves_the_old_or_the_new_file(tmp_path):
    """A child saves two models (10 MB files) in turn to one path until it is killed; after each
    SIGKILL the path loads, to one of the two, bit for bit."""
    a, b = (vaec.VAE(784, latent_dim=50, hidden=(500,), seed=s, threads=1) for s in (1, 2))
    refs = [flat(a), flat(b)]
    path = tmp_path / "model.vaec"
    a.save(path)
    rng = random.Random(0)
    rounds = 20 if FAST else 300
    torn = i = 0
    # every round checks the file; rounds go on (up to 5x) until 3 kills have landed in a write
    while i < rounds or (torn < 3 and i < 5 * rounds):
        i += 1
        def loop():
            k = i
            while True:
                (a, b)[k % 2].save(path)
                k += 1
        pid = fork(loop)
        if i % 2:   # at any moment
            time.sleep(rng.uniform(0.0, 0.3))
        else:       # while a temporary file is being written, fsynced or renamed
            t0 = time.monotonic()
            while not leftovers(path) and time.monotonic() - t0 < 5:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
        kill(pid)
        torn += bool(leftovers(path))
        for t in leftovers(path):
            assert t.startswith(f"{path}.tmp-{pid}-"), t   # the killed writer's, never path itself
            os.remove(t)
        m = vaec.load(path, threads=1)
        got = flat(m)
        assert any(np.array_equal(got, r) for r in refs), f"round {i}: the file holds neither model"
    # the kills did land inside saves (a temporary file was left behind) in some rounds
    assert torn >= 3, f"only {torn} of {i} kills landed during a write"


def test_checkpoint_killed_at_random_points_stays_loadable(tmp_path):
    """fit with a checkpoint after every epoch, killed at random points: the checkpoint is
    always a whole file that resume reads."""
    X = np.random.default_rng(0).random((4000, 200), dtype=np.float32)
    rng = random.Random(1)
    ckpt = tmp_path / "checkpoint.vaec"
    for i in range(8 if FAST else 60):
        m = vaec.VAE(200, latent_dim=10, hidden=(400,), seed=i, threads=1)
        pid = fork(lambda: m.fit(X, epochs=1000, batch_size=100, seed=0, progress=False, checkpoint_dir=tmp_path))
        while not ckpt.exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        kill(pid)
        for t in leftovers(ckpt):
            os.remove(t)
        state = vaec.load(ckpt, threads=1).optimizer_state
        assert state["step"] % 40 == 0 and state["step"] > 0   # whole epochs of 40 steps
        ckpt.unlink()


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("seed", [0, 1] if FAST else list(range(10)))
def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, seed):
    """SIGKILL at a random point of a run (mid-epoch, or while it writes a checkpoint); the
    resumed run ends with exactly the parameters, Adam state and history of an uninterrupted
    one."""
    X = np.random.default_rng(seed).random((3000, 100), dtype=np.float32)
    kw = dict(epochs=12, batch_size=50, seed=seed, progress=False, lr=2e-3)

    def model():
        return vaec.VAE(100, latent_dim=8, hidden=(64,), seed=seed, threads=1)
    ref = model()
    hist = ref.fit(X, **kw)
    rng = random.Random(seed)
    for attempt in range(20):
        run = tmp_path / f"run{attempt}"
        m = model()
        pid = fork(lambda: m.fit(X, checkpoint_dir=run, **kw))
        ckpt = run / "checkpoint.vaec"
        while not ckpt.exists():
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.15))
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            continue   # it finished before the kill: try again
        kill(pid)
        done = vaec.load(ckpt, threads=1).optimizer_state["step"]
        if done == 12 * 60:
            continue
        resumed = model()
        h2 = resumed.fit(X, checkpoint_dir=run, resume=ckpt, **kw)
        assert np.array_equal(flat(resumed), flat(ref))
        assert np.array_equal(resumed._arenas["adam_m"], ref._arenas["adam_m"])
        assert resumed.optimizer_state == ref.optimizer_state
        assert h2["loss"] == hist["loss"] and h2["val_elbo"] == hist["val_elbo"]
        return
    pytest.fail("no kill landed before the end of the run in 20 attempts")


# ------------------------------------------------------------ full disk, read-only
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def small_and_big():
    """A model whose file fits in 256 KB and one whose file does not (same path)."""
    return vaec.VAE(20, latent_dim=2, hidden=(8,), seed=0, threads=1), vaec.VAE(784, latent_dim=10, hidden=(100,), seed=1, threads=1)


def check_failed_save(path, old_bytes, exc, err):
    assert exc.value.errno == err, exc.value
    assert str(path) in str(exc.value)
    assert path.read_bytes() == old_bytes                  # the old file, untouched
    assert leftovers(path) == []                           # and no temporary file
    assert os.listdir(path.parent) == [path.name]


def test_full_disk_gives_oserror_and_keeps_the_old_file(small_tmpfs):
    small, big = small_and_big()
    path = small_tmpfs / "model.vaec"
    small.save(path)
    old = path.read_bytes()
    with pytest.raises(OSError, match="No space left on device") as e:
        big.save(path)
    check_failed_save(path, old, e, errno.ENOSPC)
    X = np.random.default_rng(0).random((50, 784), dtype=np.float32)
    with pytest.raises(OSError, match="No space left"):   # a checkpoint of fit too
        big.fit(X, epochs=1, progress=False, checkpoint_dir=small_tmpfs)
    assert not glob.glob(str(small_tmpfs / "*.tmp-*"))
    vaec.load(path)


def test_read_only_folder_gives_oserror_and_keeps_the_old_file(small_tmpfs):
    small, _ = small_and_big()
    path = small_tmpfs / "model.vaec"
    small.save(path)
    old = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(OSError, match="Read-only file system") as e:
        vaec.VAE(20, latent_dim=2, hidden=(8,), seed=5, threads=1).save(path)
    check_failed_save(path, old, e, errno.EROFS)


def test_file_size_limit_gives_oserror_and_keeps_the_old_file(tmp_path):
    """RLIMIT_FSIZE (works without root): the write fails with EFBIG (Python ignores SIGXFSZ)."""
    small, big = small_and_big()
    path = tmp_path / "model.vaec"
    small.save(path)
    old = path.read_bytes()
    r, w = os.pipe()

    def child():
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) + 4096, resource.RLIM_INFINITY))
        try:
            big.save(path)
            out = {"raised": None}
        except OSError as e:
            out = {"raised": type(e).__name__, "errno": e.errno, "msg": str(e)}
        os.write(w, json.dumps(out).encode())
    pid = fork(child)
    os.waitpid(pid, 0)
    os.close(w)
    out = json.loads(os.read(r, 65536))
    os.close(r)
    assert out["raised"] == "OSError" and out["errno"] == errno.EFBIG and str(path) in out["msg"], out
    assert path.read_bytes() == old and leftovers(path) == []


def test_permission_denied_is_a_permission_error(tmp_path):
    """A folder the process may not write (as a user other than root) or a missing folder:
    the OSError subclass Python gives that errno."""
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        vaec.VAE(4, latent_dim=1, hidden=(), seed=0).save(tmp_path / "missing" / "m.vaec")
    if os.geteuid() == 0:
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(PermissionError):
        vaec.VAE(4, latent_dim=1, hidden=(), seed=0).save(ro / "m.vaec")


def test_threads_saving_to_one_path_never_mix_their_files(tmp_path):
    """Before each save had a temporary file of its own, two threads saving to one path wrote
    into the same "<path>.tmp-<pid>", and the file renamed in place could hold parts of both."""
    from concurrent.futures import ThreadPoolExecutor
    models = [vaec.VAE(300, latent_dim=10, hidden=(300,), seed=s, threads=1) for s in range(8)]
    refs = [flat(m) for m in models]
    path = tmp_path / "shared.vaec"

    def work(m):
        for _ in range(15):
            m.save(path)
            got = flat(vaec.load(path, threads=1))
            assert any(np.array_equal(got, r) for r in refs)
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(work, models))
    assert os.listdir(tmp_path) == ["shared.vaec"]
