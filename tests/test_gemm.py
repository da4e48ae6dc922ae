"""The packed SIMD GEMM against the naive triple loop, on every ISA path this CPU has."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from vaec import _core

from _helpers import available_isas, forced_isa

SHAPES = [(1, 1, 1), (1, 7, 17), (7, 1, 63), (17, 63, 7), (63, 17, 257), (257, 300, 5), (6, 16, 256),
          (96, 256, 257), (97, 257, 513), (5, 1000, 3), (300, 33, 1),
          (100, 40, 400), (400, 20, 100), (50, 8, 300), (61, 24, 130),  # one- and two-panel widths
          (2, 300, 785), (3, 33, 64), (4, 1000, 17), (1, 400, 784)]  # M <= 4: the unpacked small-M path


def op(a, t):
    return a.T if t else a


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_sgemm_matches_naive(isa, ta, tb):
    rng = np.random.default_rng(123)
    for M, N, K in SHAPES:
        A = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        C0 = rng.standard_normal((M, N), dtype=np.float32)
        exact = op(A, ta).astype(np.float64) @ op(B, tb).astype(np.float64)
        naive = _core.sgemm(A, B, ta, tb, naive=True)
        with forced_isa(isa):
            fast = _core.sgemm(A, B, ta, tb)
            fast_acc = _core.sgemm(A, B, ta, tb, C=C0)
            fast_mt = _core.sgemm(A, B, ta, tb, threads=2)
        # float32 sums of K products: error grows like sqrt(K) * eps * |a||b|
        scale = np.sqrt(K) * 1e-6 * (np.abs(op(A, ta)) @ np.abs(op(B, tb)) + 1)
        assert np.all(np.abs(naive - exact) <= scale), (M, N, K)
        assert np.all(np.abs(fast - exact) <= 4 * scale), (isa, M, N, K, np.max(np.abs(fast - exact)))
        assert np.all(np.abs(fast_acc - (exact + C0)) <= 4 * scale + 1e-6 * np.abs(C0)), (isa, M, N, K)
        # the split over threads never changes the arithmetic
        assert np.array_equal(fast, fast_mt), (isa, M, N, K)


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("M,N,K", [(100, 20, 400), (400, 20, 100), (61, 8, 130), (13, 24, 70)])
def test_narrow_products_match_the_same_columns_of_a_wide_one(isa, ta, tb, M, N, K):
    """A product one panel wide reads op(A) in place and may use AVX-512's half-vector
    tile; as the first N columns of a wider product, op(A) is packed and the tile is the
    full one. A column's arithmetic must not depend on which: the same bits."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    wide = rng.standard_normal((N + 100, K) if tb else (K, N + 100), dtype=np.float32)
    B = np.ascontiguousarray(wide[:N] if tb else wide[:, :N])
    C0 = rng.standard_normal((M, N + 100), dtype=np.float32)
    with forced_isa(isa):
        for threads in (1, 2):
            narrow = _core.sgemm(A, B, ta, tb, threads=threads)
            full = _core.sgemm(A, wide, ta, tb, threads=threads)
            assert np.array_equal(narrow, full[:, :N]), (isa, threads)
            narrow_acc = _core.sgemm(A, B, ta, tb, C=np.ascontiguousarray(C0[:, :N]), threads=threads)
            full_acc = _core.sgemm(A, wide, ta, tb, C=C0, threads=threads)
            assert np.array_equal(narrow_acc, full_acc[:, :N]), (isa, threads)


def test_sgemm_out_writes_in_place_and_checks_its_argument():
    """The benchmark's out=: the product lands in the caller's array, bit for bit what a new
    array gets, whatever was in it before, also when timed; a wrong array is refused by name."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((70, 33), dtype=np.float32)
    B = rng.standard_normal((40, 33), dtype=np.float32)
    want = _core.sgemm(A, B, False, True, threads=2)
    out = np.full((70, 40), np.nan, np.float32)
    assert _core.sgemm(A, B, False, True, threads=2, out=out) is out
    assert np.array_equal(out, want)
    out[...] = 7.0
    got, t = _core.sgemm(A, B, False, True, threads=2, calls=3, out=out)
    assert got is out and np.array_equal(out, want) and t > 0
    for bad, err, words in [(np.empty((70, 40)), TypeError, "float32"),
                            (np.empty((70, 80), np.float32)[:, ::2], TypeError, "C-contiguous"),
                            (np.empty((40, 70), np.float32), ValueError, "expected shape (70, 40), got")]:
        with pytest.raises(err, match=r"^out: .*" + re.escape(words)):
            _core.sgemm(A, B, False, True, out=bad)
    ro = np.empty((70, 40), np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="^out: expected a writeable"):
        _core.sgemm(A, B, False, True, out=ro)
    unaligned = np.frombuffer(np.zeros(70 * 40 * 4 + 1, np.uint8).data, np.float32, 70 * 40, 1).reshape(70, 40)
    assert unaligned.flags.writeable and not unaligned.flags.aligned
    with pytest.raises(TypeError, match="^out: expected a writeable, aligned"):
        _core.sgemm(A, B, False, True, out=unaligned)
    S = rng.standard_normal((33, 33), dtype=np.float32)
    with pytest.raises(ValueError, match="^out: must not share memory with A or B"):
        _core.sgemm(S, S, out=S)
    with pytest.raises(ValueError, match="^out: give C"):
        _core.sgemm(A, B, False, True, C=want, out=out)


def test_sgemm_catches_a_wrong_result():
    """The comparison above is able to fail: a perturbed product is flagged."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((17, 63), dtype=np.float32)
    B = rng.standard_normal((63, 7), dtype=np.float32)
    C = _core.sgemm(A, B)
    C[3, 4] += 1e-2
    exact = A.astype(np.float64) @ B
    scale = np.sqrt(63) * 1e-6 * (np.abs(A) @ np.abs(B) + 1)
    assert not np.all(np.abs(C - exact) <= 4 * scale)


def test_sgemm_empty_and_bad_shapes():
    A = np.zeros((0, 5), np.float32)
    B = np.ones((5, 3), np.float32)
    assert _core.sgemm(A, B).shape == (0, 3)
    K0 = _core.sgemm(np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32))
    assert K0.shape == (4, 3) and not K0.any()
    with pytest.raises(ValueError, match="B: inner dimensions"):
        _core.sgemm(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="A: expected a real-valued"):
        _core.sgemm(np.ones((2, 2), complex), np.ones((2, 2), np.float32))


def test_cpu_features_reports_the_active_path():
    import vaec
    f = vaec.cpu_features()
    assert f["isa"] in ("avx512", "avx2", "neon", "scalar", "naive")
    assert f["cores"] >= 1
    with forced_isa("scalar"):
        assert vaec.cpu_features()["isa"] == "scalar"
    # never above what the CPU has
    assert _core.set_isa("avx512") == f["best_isa"] or f["best_isa"] == "avx512"
    _core.set_isa(f["isa"])


def test_vaec_isa_environment_variable_lowers_the_path():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import vaec; print(vaec.cpu_features()['isa'])"],
                         env={**__import__('os').environ, "VAEC_ISA": "scalar"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scalar"



@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("M", [1, 64])   # the small-M path and the packed one
@pytest.mark.parametrize("threads", [1, 2])
def test_subnormal_results_are_flushed_and_the_callers_mode_is_kept(isa, M, threads):
    """vaec computes with subnormals flushed to zero (a subnormal costs a microcode assist
    on x86); the calling thread's own floating-point mode is restored afterwards."""
    a = np.full((M, 8), 1e-20, np.float32)
    b = np.full((8, 5), 1e-20, np.float32)
    with forced_isa(isa):
        c = _core.sgemm(a, b, threads=threads)
    assert np.all(c == 0), c.max()                       # 8e-40 is below float32's normal range
    tiny = np.float32(1e-20) * np.float32(1e-20)         # NumPy, on this thread, after vaec
    assert abs(float(tiny) - 1e-40) < 1e-44, tiny


@pytest.mark.parametrize("threads", [1, 2])
def test_VAEC_DENORMALS_keep_computes_with_subnormals(threads):
    """VAEC_DENORMALS=keep (read once, so in a fresh process) turns the flushing off."""
    code = ("import numpy as np; from vaec import _core; "
            "a = np.full((64, 8), 1e-20, np.float32); b = np.full((8, 5), 1e-20, np.float32); "
            f"print(float(_core.sgemm(a, b, threads={threads})[0, 0]))")
    out = {}
    for mode in ("keep", None):
        env = {k: v for k, v in os.environ.items() if k != "VAEC_DENORMALS"}
        if mode:
            env["VAEC_DENORMALS"] = mode
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        out[mode] = float(r.stdout)
    assert abs(out["keep"] - 8e-40) < 1e-43, out
    assert out[None] == 0.0, out
