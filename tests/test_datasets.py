"""Tests for vaec.datasets.  They write their own small fixture files; the
tests that read the full data sets under /work/shared/data are skipped when
that folder is absent."""

import gzip
import hashlib
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from vaec import datasets as D

SHARED = Path(os.environ.get("VAEC_SHARED_DATA", "/work/shared/data"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No network, empty $VAEC_DATA and cache, fresh once-per-process state."""
    data, cache = tmp_path / "envdata", tmp_path / "cache"
    data.mkdir()
    cache.mkdir()
    monkeypatch.setenv("VAEC_OFFLINE", "1")
    monkeypatch.setenv("VAEC_DATA", str(data))
    monkeypatch.setenv("VAEC_CACHE", str(cache))
    monkeypatch.setattr(D, "_fallback_warned", False)
    monkeypatch.setattr(D, "_download_failures", {})
    return data, cache


# --------------------------------------------------------------------------
# fixture writers


def idx_bytes(arr, magic=None, dims=None):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x800 + arr.ndim
    dims = arr.shape if dims is None else dims
    return struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + arr.tobytes()


def write(path, data, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    return X, y


def write_mnist(folder, split="train", n=20, gz=True, dotted=False, seed=0):
    X, y = fake_mnist(n, seed)
    prefix = "train" if split == "train" else "t10k"
    if dotted:
        img, lbl = f"{prefix}-images.idx3-ubyte", f"{prefix}-labels.idx1-ubyte"
    else:
        img, lbl = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    sfx = ".gz" if gz else ""
    write(Path(folder) / (img + sfx), idx_bytes(X), gz)
    write(Path(folder) / (lbl + sfx), idx_bytes(y), gz)
    return X.reshape(n, 784), y


def _mat_element(typ, payload, bo="<"):
    out = struct.pack(bo + "II", typ, len(payload)) + payload
    return out + b"\0" * (-len(out) % 8)


def mat_bytes(name, arr, mx_class, stored_dtype, mi_type, compress=False, header=True, bo="<"):
    """A MATLAB v5 file (byte order ``bo``) holding one 2-D numeric variable."""
    arr = np.asarray(arr)
    flags = _mat_element(6, struct.pack(bo + "II", mx_class, 0), bo)
    dims = _mat_element(5, struct.pack(bo + "ii", *arr.shape), bo)
    nm = name.encode()
    if len(nm) <= 4:  # small data element: the uint32 (nbytes << 16 | type), then data
        nm_el = struct.pack(bo + "I", len(nm) << 16 | 1) + nm + b"\0" * (4 - len(nm))
    else:
        nm_el = _mat_element(1, nm, bo)
    stored = np.asarray(arr, dtype=np.dtype(stored_dtype).newbyteorder(bo))
    data = _mat_element(mi_type, stored.ravel(order="F").tobytes(), bo)
    matrix = _mat_element(14, flags + dims + nm_el + data, bo)
    if compress:
        z = zlib.compress(matrix)
        body = struct.pack(bo + "II", 15, len(z)) + z
    else:
        body = matrix
    endian = b"IM" if bo == "<" else b"MI"
    hdr = b"MATLAB 5.0 MAT-file, Platform: test".ljust(116, b" ") + b"\0" * 8
    hdr += struct.pack(bo + "H", 0x0100) + endian
    return (hdr if header else b"") + body


# --------------------------------------------------------------------------
# IDX / MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [False, True])
def test_load_mnist_from_path(tmp_path, gz, dotted):
    X, y = write_mnist(tmp_path / "m", "train", 30, gz=gz, dotted=dotted)
    Xt, yt = write_mnist(tmp_path / "m", "test", 7, gz=gz, dotted=dotted, seed=1)
    A, b = D.load_mnist("train", path=tmp_path / "m")
    assert A.dtype == np.uint8 and A.shape == (30, 784) and b.dtype == np.uint8 and b.shape == (30,)
    np.testing.assert_array_equal(A, X)
    np.testing.assert_array_equal(b, y)
    A, b = D.load_mnist("test", path=str(tmp_path / "m"))
    np.testing.assert_array_equal(A, Xt)
    np.testing.assert_array_equal(b, yt)
    assert A.flags.writeable and A.flags.c_contiguous


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        D.load_mnist("valid")


def test_search_order(tmp_path, isolated_env, monkeypatch):
    data, cache = isolated_env
    Xc, _ = write_mnist(cache / "mnist", n=10, seed=3)
    assert np.array_equal(D.load_mnist()[0], Xc)  # cache/mnist
    # an explicit path is the only place looked: a typo raises, it never loads other data
    with pytest.raises(FileNotFoundError, match="only place searched"):
        D.load_mnist(path=tmp_path / "nothing-here")
    Xe, _ = write_mnist(data / "mnist", n=11, seed=2)
    assert np.array_equal(D.load_mnist()[0], Xe)  # $VAEC_DATA/mnist beats the cache
    Xe2, _ = write_mnist(data, n=12, seed=4)
    assert np.array_equal(D.load_mnist()[0], Xe2)  # $VAEC_DATA itself before its mnist/
    Xp, _ = write_mnist(tmp_path / "p", n=13, seed=1)
    assert np.array_equal(D.load_mnist(path=tmp_path / "p")[0], Xp)  # path beats all
    # the cache root itself is searched too
    monkeypatch.setenv("VAEC_DATA", str(tmp_path / "empty"))
    Xr, _ = write_mnist(cache, n=14, seed=5)
    assert np.array_equal(D.load_mnist()[0], Xr)
    # only images in one folder, only labels in another: not a pair
    d = D.data_dirs("mnist", tmp_path / "p")
    assert d[:2] == [tmp_path / "p", tmp_path / "p" / "mnist"]


def test_images_without_labels_are_not_used(tmp_path):
    X, y = fake_mnist(5)
    write(tmp_path / "a" / "train-images-idx3-ubyte.gz", idx_bytes(X), gz=True)
    write(tmp_path / "b" / "train-labels-idx1-ubyte.gz", idx_bytes(y), gz=True)
    with pytest.raises(FileNotFoundError, match="looked in"):
        D.load_mnist(path=tmp_path / "a", fallback=False)


def _malformed_cases():
    X, y = fake_mnist(10)
    good_img, good_lbl = idx_bytes(X), idx_bytes(y)
    bad_magic = b"\x12\x34\x08\x03" + good_img[4:]
    return {
        "bad-magic": (bad_magic, good_lbl, "train-images", "magic"),
        "bad-magic-labels": (good_img, b"\x00\x00\x07\x01" + good_lbl[4:], "train-labels", "magic"),
        "truncated": (good_img[:-100], good_lbl, "train-images", "truncated"),
        "truncated-header": (good_img[:10], good_lbl, "train-images", "truncated"),
        "too-long": (good_img + b"\0" * 784, good_lbl, "train-images", "longer"),
        "count-too-big": (idx_bytes(X, dims=(11, 28, 28)), good_lbl, "train-images", "truncated"),
        "wrong-image-size": (idx_bytes(X.reshape(10, 784), magic=0x803, dims=(10, 784, 1)),
                             good_lbl, "train-images", "28x28"),
        "labels-as-images": (good_lbl, good_lbl, "train-images", "image"),
        "count-mismatch": (good_img, idx_bytes(y[:9]), "train-images", "9 labels"),
        "label-range": (good_img, idx_bytes(np.full(10, 12, np.uint8)), "train-labels", "range"),
    }


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(_malformed_cases()))
def test_malformed_idx(tmp_path, case, gz):
    img, lbl, culprit, msg = _malformed_cases()[case]
    sfx = ".gz" if gz else ""
    write(tmp_path / ("train-images-idx3-ubyte" + sfx), img, gz)
    write(tmp_path / ("train-labels-idx1-ubyte" + sfx), lbl, gz)
    with pytest.raises(ValueError, match=msg) as e:
        D.load_mnist("train", path=tmp_path)
    assert culprit in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_truncated_gzip(tmp_path):
    X, y = fake_mnist(10)
    z = gzip.compress(idx_bytes(X))
    write(tmp_path / "train-images-idx3-ubyte.gz", z[: len(z) // 2])
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(y), gz=True)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        D.load_mnist(path=tmp_path)


def test_read_idx_other_dtypes(tmp_path):
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    raw = b"\x00\x00\x0c\x02" + struct.pack(">II", 3, 4) + a.tobytes()
    np.testing.assert_array_equal(D.read_idx(write(tmp_path / "x.idx", raw)), a)


# --------------------------------------------------------------------------
# shipped subset and download


def test_shipped_fallback(tmp_path):
    with pytest.warns(D.VaecDataWarning, match="subset") as rec:
        X, y = D.load_mnist("train")
    assert len(rec) == 1
    assert "VAEC_OFFLINE" in str(rec[0].message)
    assert X.shape == (10000, 784) and X.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process only
        Xt, yt = D.load_mnist("test")
    assert Xt.shape == (2000, 784) and np.bincount(yt, minlength=10).tolist() == [200] * 10
    # real digits: MNIST-like statistics, mixed (file) order, not sorted by class
    assert 25 < X.mean() < 40 and X.max() == 255
    assert len(np.unique(y[:50])) > 5
    # the shipped files hash to the recorded content sha256s
    for fname, sha in D._SUBSET_SHA256.items():
        raw = gzip.decompress((D._DATA_DIR / fname).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == sha
    # and the data stays small
    assert sum((D._DATA_DIR / f).stat().st_size for f in D._SUBSET_SHA256) < 3_000_000


def test_shipped_fallback_sha_is_checked(monkeypatch):
    bad = dict(D._SUBSET_SHA256)
    bad["mnist-subset-t10k-labels-idx1-ubyte.gz"] = "0" * 64
    monkeypatch.setattr(D, "_SUBSET_SHA256", bad)
    with pytest.raises(ValueError, match="sha256"):
        D.load_mnist("test")


def test_no_fallback_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked in") as e:
        D.load_mnist("test", path=tmp_path, fallback=False)
    assert str(tmp_path) in str(e.value)


def _fake_mirror(tmp_path, monkeypatch, corrupt=False):
    mirror = tmp_path / "mirror"
    X, y = fake_mnist(12)
    md5 = {}
    for name, data in (("t10k-images-idx3-ubyte.gz", idx_bytes(X)),
                       ("t10k-labels-idx1-ubyte.gz", idx_bytes(y))):
        z = gzip.compress(data)
        md5[name] = hashlib.md5(z).hexdigest()
        write(mirror / name, z + (b"junk" if corrupt else b""))
    monkeypatch.setattr(D, "_MNIST_MIRRORS", [(tmp_path / "nowhere").as_uri() + "/",
                                              mirror.as_uri() + "/"])
    monkeypatch.setattr(D, "_MNIST_MD5", {**D._MNIST_MD5, **md5})
    monkeypatch.delenv("VAEC_OFFLINE")
    return X.reshape(12, 784), y


def test_download_into_cache(tmp_path, isolated_env, monkeypatch):
    _, cache = isolated_env
    X, y = _fake_mirror(tmp_path, monkeypatch)
    A, b = D.load_mnist("test")
    np.testing.assert_array_equal(A, X)
    np.testing.assert_array_equal(b, y)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_md5_mismatch_leaves_nothing(tmp_path, isolated_env, monkeypatch):
    _, cache = isolated_env
    _fake_mirror(tmp_path, monkeypatch, corrupt=True)
    with pytest.warns(D.VaecDataWarning, match="md5 mismatch"):
        X, _ = D.load_mnist("test")
    assert X.shape == (2000, 784)  # shipped subset
    assert list((cache / "mnist").iterdir()) == []  # no partial or temp files


def test_offline_skips_download(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used although VAEC_OFFLINE=1")

    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    with pytest.warns(D.VaecDataWarning):
        D.load_mnist("test")


# --------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist(tmp_path, isolated_env, monkeypatch):
    data, _ = isolated_env
    monkeypatch.setattr(D, "_DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    write_mnist(data, n=8)  # plain MNIST at the $VAEC_DATA root must not be taken
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        D.load_fashion_mnist("train")
    assert str(data / "fashion-mnist") in str(e.value)
    X, y = write_mnist(data / "fashion-mnist", n=9, seed=7)
    A, b = D.load_fashion_mnist("train")
    np.testing.assert_array_equal(A, X)
    np.testing.assert_array_equal(b, y)
    X2, _ = write_mnist(tmp_path / "deb", "test", n=6, seed=8)
    monkeypatch.setattr(D, "_DEBIAN_FASHION_DIR", tmp_path / "deb")
    np.testing.assert_array_equal(D.load_fashion_mnist("test")[0], X2)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_debian():
    X, y = D.load_fashion_mnist("test")
    assert X.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10


# --------------------------------------------------------------------------
# MAT-files: Frey faces and binarised MNIST


@pytest.fixture(params=["scipy", "builtin"])
def mat_reader(request, monkeypatch):
    if request.param == "scipy":
        pytest.importorskip("scipy.io")
    else:
        monkeypatch.setattr(D, "_have_scipy", lambda: False)
    return request.param


def frey_like(n=7):
    rng = np.random.default_rng(0)
    return rng.integers(8, 239, size=(n, 560), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_frey_faces(tmp_path, compress, mat_reader):
    F = frey_like()
    # uint8 class (9) stored as miUINT8 (2); 'ff' is 560 x n, one image per column
    write(tmp_path / "frey_rawface.mat", mat_bytes("ff", F.T, 9, np.uint8, 2, compress))
    for p in (tmp_path, tmp_path / "frey_rawface.mat"):
        A = D.load_frey_faces(p)
        assert A.dtype == np.uint8 and A.shape == F.shape and A.flags.c_contiguous
        np.testing.assert_array_equal(A, F)


def test_frey_search_and_missing(tmp_path, isolated_env):
    data, cache = isolated_env
    with pytest.raises(FileNotFoundError, match="frey_rawface.mat") as e:
        D.load_frey_faces()
    assert str(cache) in str(e.value)
    F = frey_like(3)
    write(cache / "frey_faces" / "frey_rawface.mat", mat_bytes("ff", F.T, 9, np.uint8, 2))
    np.testing.assert_array_equal(D.load_frey_faces(), F)
    G = frey_like(4)[::-1]
    write(data / "frey_rawface.mat", mat_bytes("ff", G.T, 9, np.uint8, 2, True))
    np.testing.assert_array_equal(D.load_frey_faces(), G)


def test_frey_double_class(tmp_path, mat_reader):
    F = frey_like(2)
    write(tmp_path / "frey_rawface.mat", mat_bytes("ff", F.T, 6, np.float64, 9))
    np.testing.assert_array_equal(D.load_frey_faces(tmp_path), F)


@pytest.mark.parametrize("how", ["truncated", "bad-header", "wrong-shape", "no-ff", "bad-zlib"])
def test_frey_malformed(tmp_path, how, mat_reader):
    F = frey_like(3)
    good = mat_bytes("ff", F.T, 9, np.uint8, 2, compress=(how == "bad-zlib"))
    data = {
        "truncated": good[:-200],
        "bad-header": b"NOT A MAT FILE".ljust(200, b"\0") + good[128:],
        "wrong-shape": mat_bytes("ff", np.zeros((100, 3), np.uint8), 9, np.uint8, 2),
        "no-ff": mat_bytes("gg", F.T, 9, np.uint8, 2),
        "bad-zlib": good[:140] + b"\xff" * 16 + good[156:],
    }[how]
    f = write(tmp_path / "frey_rawface.mat", data)
    with pytest.raises(ValueError) as e:
        D.load_frey_faces(tmp_path)
    assert str(f) in str(e.value)


def binarized_like(n=5, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.13).astype(np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_binarized_mat(tmp_path, compress, mat_reader):
    B = binarized_like()
    # as in the real files: double class (6) stored as miUINT8 (2), compressed
    write(tmp_path / "binarized_mnist_valid.mat", mat_bytes("X", B, 6, np.uint8, 2, compress))
    A = D.load_binarized_mnist("valid", tmp_path)
    # float32 0/1: a uint8 0/1 array would be read by the models as grey levels /255
    assert A.dtype == np.float32 and A.shape == (5, 784) and A.flags.c_contiguous
    np.testing.assert_array_equal(A, B)


def test_binarized_reaches_the_model_as_zeros_and_ones(tmp_path, mat_reader):
    import vaec

    B = binarized_like(8, 3)
    write(tmp_path / "binarized_mnist_test.mat", mat_bytes("X", B, 6, np.uint8, 2, True))
    A = D.load_binarized_mnist("test", tmp_path)
    m = vaec.VAE(784, 2, hidden=(8,), seed=0)
    np.testing.assert_allclose(m.elbo(A, seed=1), m.elbo(B.astype(np.float32), seed=1))
    assert not np.allclose(m.elbo(A, seed=1), m.elbo(B, seed=1))  # uint8 0/1 would be 0 and 1/255


def test_builtin_mat_reader_casts(tmp_path):
    B = binarized_like(3)
    f = write(tmp_path / "b.mat", mat_bytes("X", B, 6, np.uint8, 2, True))
    d = D._read_mat_v5(f)
    assert d["X"].dtype == np.float64 and d["X"].shape == (3, 784)
    np.testing.assert_array_equal(d["X"], B)
    assert D._read_mat_v5(f, cast=False)["X"].dtype == np.uint8


@pytest.mark.parametrize("bo", ["<", ">"])
def test_builtin_mat_reader_layouts(tmp_path, bo):
    """Several variables, long names, both byte orders, int16 / single storage."""
    A = np.arange(6, dtype=np.int16).reshape(2, 3) - 2
    B = np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3)
    raw = mat_bytes("short", A, 10, np.int16, 3, bo=bo)
    raw += mat_bytes("a_longer_name", B, 7, np.float32, 7, compress=True, header=False, bo=bo)
    raw += mat_bytes("dbl", B, 6, np.float64, 9, header=False, bo=bo)
    d = D._read_mat_v5(write(tmp_path / "x.mat", raw))
    assert sorted(d) == ["a_longer_name", "dbl", "short"]
    assert d["short"].dtype == np.int16 and d["a_longer_name"].dtype == np.float32
    np.testing.assert_array_equal(d["short"], A)
    np.testing.assert_array_equal(d["a_longer_name"], B)
    np.testing.assert_allclose(d["dbl"], B)
    try:
        import scipy.io
    except ImportError:
        return
    ref = scipy.io.loadmat(str(tmp_path / "x.mat"))
    for k in d:
        np.testing.assert_array_equal(ref[k], d[k])


def test_binarized_amat(tmp_path):
    B = binarized_like(4, 1)
    text = "\n".join(" ".join(str(v) for v in row) for row in B) + "\n"
    write(tmp_path / "binarized_mnist_train.amat", text.encode())
    np.testing.assert_array_equal(D.load_binarized_mnist("train", tmp_path), B)
    # float spelling and no trailing newline
    text2 = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in B)
    write(tmp_path / "t" / "binarized_mnist_test.amat", text2.encode())
    np.testing.assert_array_equal(D.load_binarized_mnist("test", tmp_path / "t"), B)
    # a MAT-file misnamed .amat is recognised by its content
    write(tmp_path / "v" / "binarized_mnist_valid.amat", mat_bytes("X", B, 6, np.uint8, 2, True))
    np.testing.assert_array_equal(D.load_binarized_mnist("valid", tmp_path / "v"), B)


@pytest.mark.parametrize("how", ["short-row", "not-binary", "garbage", "empty"])
def test_binarized_amat_malformed(tmp_path, how):
    B = binarized_like(3)
    rows = [" ".join(str(v) for v in row) for row in B]
    if how == "short-row":
        rows[1] = " ".join(["0"] * 783)
    elif how == "not-binary":
        rows[2] = rows[2].replace("1", "2", 1)
    elif how == "garbage":
        rows[0] = "hello world"
    elif how == "empty":
        rows = []
    f = write(tmp_path / "binarized_mnist_train.amat", "\n".join(rows).encode())
    with pytest.raises(ValueError) as e:
        D.load_binarized_mnist("train", tmp_path)
    assert str(f) in str(e.value)


def test_binarized_mat_not_binary(tmp_path):
    B = binarized_like(2) * 3
    f = write(tmp_path / "binarized_mnist_test.mat", mat_bytes("X", B, 6, np.uint8, 2, True))
    with pytest.raises(ValueError, match=str(f)):
        D.load_binarized_mnist("test", tmp_path)


def test_binarized_missing_and_split(tmp_path, isolated_env):
    data, _ = isolated_env
    with pytest.raises(ValueError, match="split"):
        D.load_binarized_mnist("validation")
    with pytest.raises(FileNotFoundError, match="binarized_mnist_test") as e:
        D.load_binarized_mnist("test")
    assert str(data / "binarized_mnist") in str(e.value)
    B = binarized_like(2)
    write(data / "binarized_mnist" / "binarized_mnist_test.mat", mat_bytes("X", B, 6, np.uint8, 2, True))
    np.testing.assert_array_equal(D.load_binarized_mnist("test"), B)


# --------------------------------------------------------------------------
# binarize / labelled_subset


def test_binarize_static_and_dynamic():
    X, _ = fake_mnist(50)
    X = X.reshape(50, 784)
    s1, s2 = D.binarize(X), D.binarize(X)
    assert s1.dtype == np.uint8 and s1.shape == X.shape and set(np.unique(s1)) <= {0, 1}
    np.testing.assert_array_equal(s1, s2)  # static: same fixed draw
    np.testing.assert_array_equal(D.binarize(X, seed=5), D.binarize(X, "static", seed=5))
    assert not np.array_equal(D.binarize(X, seed=5), D.binarize(X, seed=6))
    d1, d2 = D.binarize(X, "dynamic"), D.binarize(X, "dynamic")
    assert not np.array_equal(d1, d2)  # a fresh draw each call
    np.testing.assert_array_equal(D.binarize(X, "dynamic", seed=3), D.binarize(X, "dynamic", seed=3))
    # probabilities are respected: 0 -> 0, 255 / 1.0 -> 1, p -> mean about p
    assert D.binarize(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]
    P = np.full((200, 784), 0.3)
    assert abs(D.binarize(P, "dynamic").mean() - 0.3) < 0.01
    assert abs(D.binarize(np.full((200, 784), 77, np.uint8)).mean() - 77 / 255) < 0.01
    np.testing.assert_array_equal(D.binarize(X.astype(np.float32) / 255, seed=1),
                                  D.binarize(X, seed=1))


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError):
        D.binarize(np.array([0.5, 1.5]))
    with pytest.raises(ValueError):
        D.binarize(np.array([np.nan]))
    with pytest.raises(ValueError, match="mode"):
        D.binarize(np.zeros(3), mode="sometimes")


def test_labelled_subset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1000).astype(np.uint8)
    X = np.arange(1000)[:, None] * np.ones((1, 3), int)
    Xl, yl = D.labelled_subset(X, y, 10, seed=1)
    assert Xl.shape == (100, 3) and np.bincount(yl, minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(y[Xl[:, 0]], yl)  # rows stay paired with labels
    assert len(np.unique(Xl[:, 0])) == 100  # no repeats
    Xl2, yl2, idx = D.labelled_subset(X, y, 10, seed=1, return_indices=True)
    np.testing.assert_array_equal(Xl, Xl2)
    np.testing.assert_array_equal(X[idx], Xl)
    assert not np.array_equal(D.labelled_subset(X, y, 10, seed=2)[0], Xl)
    with pytest.raises(ValueError, match="fewer"):
        D.labelled_subset(X, y, 500)
    with pytest.raises(ValueError):
        D.labelled_subset(X[:10], y, 1)


# --------------------------------------------------------------------------
# the real files, when this machine has them


@pytest.mark.skipif(not (SHARED / "binarized_mnist").is_dir(), reason="no shared binarized MNIST")
@pytest.mark.parametrize("split,md5", [("valid", "3e33becd40c694040e5e6c812e2f4b50"),
                                       ("test", "fc34623e13bd64fed2f8b61365198339")])
def test_real_binarized_mnist(split, md5, mat_reader):
    X = D.load_binarized_mnist(split, SHARED / "binarized_mnist")
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert hashlib.md5(X.astype(np.uint8).tobytes()).hexdigest() == md5


@pytest.mark.skipif(not (SHARED / "frey_faces").is_dir(), reason="no shared Frey faces")
def test_real_frey_faces(mat_reader):
    F = D.load_frey_faces(SHARED / "frey_faces")
    assert F.shape == (1965, 560) and F.min() == 8 and F.max() == 238
    assert abs(F.mean() - 154.46) < 0.01


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST")
def test_real_mnist_and_subset_provenance():
    X, y = D.load_mnist("test", SHARED / "mnist")
    assert X.shape == (10000, 784)
    raw = idx_bytes(X.reshape(-1, 28, 28))
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    idx = D._select_first_per_class(y, 200)
    with pytest.warns(D.VaecDataWarning):
        Xs, ys = D.load_mnist("test", fallback=True)
    np.testing.assert_array_equal(Xs, X[idx])
    np.testing.assert_array_equal(ys, y[idx])


def _write_pictures(folder, n, size=(20, 18), colour=True, seed=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros(size + (3,), np.uint8)
        a[r.integers(0, size[0] // 2):, :, r.integers(0, 3)] = 200
        Image.fromarray(a if colour else a[..., 0]).save(folder / f"p{i:02d}.png")


def test_load_images(tmp_path):
    """Pictures of a folder (and its sub-folders) as uint8 (n, C, H, W), resized; a file that
    is not a picture, an empty folder and bad arguments are errors naming them."""
    pytest.importorskip("PIL")
    datasets = D
    _write_pictures(tmp_path / "a", 3, colour=True)
    _write_pictures(tmp_path / "a" / "sub", 2, colour=False, seed=1)
    X = datasets.load_images(tmp_path / "a", size=(8, 6), mode="RGB")
    assert X.shape == (5, 3, 8, 6) and X.dtype == np.uint8
    assert datasets.load_images(tmp_path / "a", size=(8, 6), recursive=False).shape == (3, 1, 8, 6)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="broken.jpg: not a readable picture"):
        datasets.load_images(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG/JPG/JPEG files"):
        datasets.load_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="mode: expected"):
        datasets.load_images(tmp_path / "a", mode="CMYK")
    with pytest.raises(ValueError, match="size: expected"):
        datasets.load_images(tmp_path / "a", size=(0, 5))
