"""`mpirun -n 2 python -m vaec train --distributed`, end to end: the same model as one
process, rank 0 alone printing and writing, a checkpoint of 2 ranks resumed by one, and a
mismatch between the ranks (MPMD: each rank its own command line) reported by both.
Skipped where mpirun or mpi4py is missing; .ci/run installs both."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import vaec

pytest.importorskip("mpi4py")
MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (Open MPI)")]

# root may start Open MPI jobs only with these; 2 ranks on a 2-core machine shared with
# other work need --oversubscribe
ENV = {**os.environ, "VAEC_OFFLINE": "1", "MPLBACKEND": "Agg", "OMPI_ALLOW_RUN_AS_ROOT": "1",
       "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
TRAIN = ["train", "--epochs", "2", "--limit", "1000", "--latent", "4", "--hidden", "32", "--threads", "1",
         "--batch-size", "64", "--quiet", "--seed", "3"]


def mpirun(*ranks, timeout=300):
    """mpirun with one command line per rank group: each item is (n, [args of python -m vaec])."""
    cmd = [MPIRUN, "--oversubscribe"]
    for i, (n, args) in enumerate(ranks):
        cmd += ([":"] if i else []) + ["-n", str(n), sys.executable, "-m", "vaec", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def vaec_cli(*args):
    return subprocess.run([sys.executable, "-m", "vaec", *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_train_distributed_end_to_end(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    r = mpirun((2, TRAIN + ["--distributed", "--out", str(two), "--checkpoint-every", "1"]))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2, r.stdout                      # rank 0 alone prints
    assert "2 ranks (MPI)" in r.stdout and r.stdout.count("wrote ") >= 2
    assert sorted(os.listdir(two)) == ["checkpoint.vaec", "history.png", "latent.png", "metrics.json",
                                       "model.vaec", "reconstructions.png", "samples.png"]
    r1 = vaec_cli(*TRAIN, "--out", str(one))
    assert r1.returncode == 0, r1.stderr
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["ranks"] == 2 and m1["ranks"] == 1
    np.testing.assert_allclose(m2["history"]["loss"], m1["history"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["history"]["test_elbo"], m1["history"]["test_elbo"], rtol=1e-5)
    a, b = vaec.load(two / "model.vaec"), vaec.load(one / "model.vaec")
    np.testing.assert_allclose(a._arenas["params"], b._arenas["params"], rtol=0, atol=5e-5)
    # the 2 ranks' checkpoint, continued by one process for two more epochs
    r3 = vaec_cli(*[x if x != "2" else "4" for x in TRAIN], "--resume", str(two / "checkpoint.vaec"),
                  "--out", str(tmp_path / "resumed"))
    assert r3.returncode == 0, r3.stderr
    assert [line.split("/")[0] for line in r3.stdout.splitlines() if line.startswith("epoch")] == ["epoch   3",
                                                                                                  "epoch   4"]


@pytest.mark.parametrize("other,words", [
    (["--seed", "4"], ["configuration", "seed = 3 on rank 0, 4 on rank 1"]),
    (["--limit", "900"], ["data", "X", "(1000, 784)", "(900, 784)"]),
])
def test_a_mismatch_between_the_ranks_is_reported_by_both(tmp_path, other, words):
    base = TRAIN + ["--distributed", "--out", str(tmp_path / "x")]
    changed = list(base)
    for flag, value in zip(other[::2], other[1::2]):
        changed[changed.index(flag) + 1] = value
    r = mpirun((1, base), (1, changed), timeout=120)
    assert r.returncode != 0
    # the ranks' lines may reach mpirun interleaved: split at each rank's prefix
    errors = [e for e in re.split(r"(?=error \(rank \d of 2\))", r.stderr) if e.startswith("error (rank")]
    assert sorted(e[:len("error (rank 0")] for e in errors) == ["error (rank 0", "error (rank 1"], r.stderr
    for e in errors:
        for w in words:
            assert w in e, (w, e)
    assert not os.path.exists(tmp_path / "x" / "model.vaec")


def test_a_rank_that_fails_alone_ends_the_job(tmp_path):
    """Rank 1 cannot read its data (another folder) while rank 0 can: both stop, no hang."""
    r = mpirun((1, TRAIN + ["--distributed", "--out", str(tmp_path / "x")]),
               (1, TRAIN + ["--distributed", "--out", str(tmp_path / "x"), "--dataset", "binarized-mnist",
                            "--data", str(tmp_path / "missing")]), timeout=200)
    assert r.returncode != 0
    assert "error (rank 1 of 2)" in r.stderr and "error (rank 0 of 2)" in r.stderr, r.stderr
