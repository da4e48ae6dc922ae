"""The elementwise kernels (csrc/elem*.c, csrc/vmath.inc) checked by the C harness
tests/c/elem_check.c, without the Python binding: it is compiled against the C sources
and run once per kernel path this CPU has (VAEC_ISA=naive, scalar, and avx2/avx512 or
neon when present). Each run checks the vector exp/expm1/log1p/tanh/sigmoid/softplus
against float64 libm in ULP over a sweep of the float range, the activations against
the naive loops, and the Bernoulli/Gaussian likelihood rows against the float64
reference rows."""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# Every STRIDE-th float bit pattern (plus specials); `elem_check --stride 1` is exhaustive.
STRIDE = 499


def _compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    return None


def _requested_isas():
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ["naive", "scalar", "neon"]
    return ["naive", "scalar", "avx2", "avx512"]


@pytest.fixture(scope="module")
def elem_check(tmp_path_factory):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler found")
    if not (ROOT / "tests" / "c" / "elem_check.c").exists() or not CSRC.is_dir():
        pytest.skip("C sources not present (installed package?)")
    exe = tmp_path_factory.mktemp("elem") / "elem_check"
    sources = sorted(str(p) for p in CSRC.glob("elem*.c")) + [str(CSRC / "cpu.c")]
    cmd = [cc, "-std=c11", "-O2", f"-I{CSRC}", str(ROOT / "tests" / "c" / "elem_check.c"), *sources,
           "-o", str(exe), "-lm", "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{res.stderr}"
    return exe



@pytest.mark.parametrize("isa", _requested_isas())
def test_elem_kernels(elem_check, isa):
    env = dict(os.environ, VAEC_ISA=isa)
    res = subprocess.run([str(elem_check), "--stride", str(STRIDE)], capture_output=True, text=True,
                         env=env, timeout=300)
    out = res.stdout
    m = re.search(r"^isa: (\w+)", out, re.M)
    assert m, out + res.stderr
    ran = m.group(1)
    if ran != isa:
        pytest.skip(f"{isa} is not available on this CPU (ran {ran})")
    print(out)
    assert res.returncode == 0, out + res.stderr
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"elem_check: (\d+) passed, (\d+) failed", last)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) == 0, out
