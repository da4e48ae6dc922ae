"""What the tests share: the import path of the helper modules beside them (_helpers.py,
reference.py, reference_m2.py, redesign_cases.py, and the scripts in data/ that made the
stored files), the paths of the stored data, the MNIST
subset shipped with vaec, and a small trained model.

Markers: ``slow`` (declared in pyproject.toml) is on the tests that take seconds each (the
notebooks, the benchmark and the M2 command end to end); ``pytest -m "not slow"`` leaves
them out."""
import pathlib
import sys

import numpy as np
import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
for _d in (TESTS_DIR, DATA_DIR):   # the helper modules (and data/'s makers) import as top-level modules
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))

import vaec  # noqa: E402
from vaec import datasets  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    """tests/data: model files and numbers written by earlier versions of vaec."""
    return DATA_DIR


@pytest.fixture(scope="session")
def shipped_mnist():
    """The MNIST subset shipped in the package (whatever else is on the machine), uint8:
    (X_train, y_train, X_test, y_test)."""
    Xtr, ytr = datasets._load_shipped_mnist("train")
    Xte, yte = datasets._load_shipped_mnist("test")
    return Xtr, ytr, Xte, yte


@pytest.fixture
def trained():
    """A small Gaussian VAE after three Adam steps with non-default Adam settings, and the
    batch it took them on: (model, x)."""
    m = vaec.VAE(20, 4, hidden=(12, 6), activation="elu", likelihood="gaussian", seed=3, threads=1)
    x = np.random.default_rng(0).random((40, 20), dtype=np.float32)
    m.set_optimizer(beta1=0.8, beta2=0.99, eps=1e-4)
    for _ in range(3):
        m.train_step(x, lr=1e-2)
    return m, x

