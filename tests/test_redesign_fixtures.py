"""The network redesign (issue 17) changes no result: every case of redesign_cases.py gives,
bit for bit, the numbers that commit 6ece87c gave on the same kernel path, and the model
files that commit wrote load and give its numbers too (tests/data/redesign/make.py)."""
import os
import platform

import numpy as np
import pytest

import redesign_cases as rc
from _helpers import available_isas, forced_isa

HERE = os.path.join(os.path.dirname(__file__), "data", "redesign")
MACHINE = "x86_64"   # the machine kind the fixtures were made on


def _stored(isa):
    path = os.path.join(HERE, f"numbers_{isa}.npz")
    if platform.machine() != MACHINE or not os.path.exists(path):
        pytest.skip(f"no fixtures for the {isa} path on {platform.machine()} (made on {MACHINE})")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _check(prefix, got, want):
    """Every stored number of `prefix` against `got`, bitwise; the message names each that differs."""
    keys = sorted({k[len(prefix):].split("#")[0] for k in want if k.startswith(prefix)})
    assert keys, f"no stored numbers for {prefix}"
    assert set(got) == set(keys), f"{prefix}: computed {sorted(got)}, stored {keys}"
    bad = []
    for k in keys:
        v = np.asarray(got[k])
        if prefix + k + "#sha" in want:
            if not np.array_equal(rc.digest(v), want[prefix + k + "#sha"]):
                bad.append(f"{k}: sum {np.sum(v, dtype=np.float64)!r}, stored {float(want[prefix + k + '#sum'])!r}")
            continue
        w = want[prefix + k]
        if v.shape != w.shape or v.dtype != w.dtype or v.tobytes() != w.tobytes():
            if v.shape == w.shape and v.dtype.kind == "f":
                d = np.max(np.abs(v.astype(np.float64) - w.astype(np.float64))) if v.size else 0.0
                bad.append(f"{k}: max |difference| {d:.3g}")
            else:
                bad.append(f"{k}: {v.dtype}{v.shape} vs stored {w.dtype}{w.shape}")
    assert not bad, f"{prefix} differs from 6ece87c: " + "; ".join(bad)


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("case", sorted(rc.CASES))
def test_case_bitwise(case, isa):
    want = _stored(isa)
    with forced_isa(isa):
        got = rc.CASES[case]()
    _check(f"{case}/", got, want)


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("name", rc.FILES)
def test_old_file_bitwise(name, isa):
    want = _stored(isa)
    with forced_isa(isa):
        got = rc.file_numbers(os.path.join(HERE, name))
    _check(f"file:{name}/", got, want)


def test_fixtures_are_from_before_the_redesign():
    want = _stored(available_isas()[-1])
    assert str(want["meta/commit"]) == "6ece87c"
