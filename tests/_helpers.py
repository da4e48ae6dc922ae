"""Small helpers shared by the tests (imported as a module, not a fixture file)."""
import contextlib

import numpy as np

from vaec import _core

ISA_ORDER = ["naive", "scalar", "neon", "avx2", "avx512"]


def available_isas():
    """Every kernel path this CPU can run, lowest first."""
    best = _core.cpu_features()["best_isa"]
    if best == "neon":
        return ["naive", "scalar", "neon"]
    return [i for i in ["naive", "scalar", "avx2", "avx512"] if ISA_ORDER.index(i) <= ISA_ORDER.index(best)]


@contextlib.contextmanager
def forced_isa(name):
    before = _core.cpu_features()["isa"]
    got = _core.set_isa(name)
    assert got == name, f"could not force {name}, got {got}"
    try:
        yield
    finally:
        _core.set_isa(before)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
