"""Data sets for vaec: MNIST, Fashion-MNIST, Frey faces and binarised MNIST.

Every loader returns plain NumPy ``uint8`` arrays, one flattened image per row.
Files are looked for, in order, in

1. the ``path`` argument (a directory; for the ``.mat`` data sets also a file),
2. ``$VAEC_DATA`` (and a per-data-set sub-folder such as ``$VAEC_DATA/mnist``),
3. the cache folder ``$VAEC_CACHE`` or ``~/.cache/vaec`` (and its sub-folder).

MNIST is additionally downloaded into the cache (md5-checked, written
atomically) when it is found nowhere; set ``VAEC_OFFLINE=1`` to skip that.
When that fails too, a class-balanced real MNIST subset shipped inside the
package (10,000 training / 2,000 test images) is used, with a one-time warning.

The shipped subset is made with (needs the full MNIST IDX files)::

    python -m vaec.datasets make-mnist-subset /path/to/mnist [vaec/data]

which calls :func:`_make_mnist_subset`; it prints the content sha256s that
must match ``_SUBSET_SHA256`` below.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "load_mnist",
    "load_fashion_mnist",
    "load_frey_faces",
    "load_binarized_mnist",
    "load_images",
    "binarize",
    "labelled_subset",
    "data_dirs",
    "VaecDataWarning",
]


class VaecDataWarning(UserWarning):
    """Warning about the data actually used (e.g. the shipped MNIST subset)."""


# --------------------------------------------------------------------------
# locations

_DATA_DIR = Path(__file__).resolve().parent / "data"

#: Where Debian's ``dataset-fashion-mnist`` package installs its files.
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _cache_dir() -> Path:
    env = os.environ.get("VAEC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vaec"


def _env_data_dirs() -> list[Path]:
    env = os.environ.get("VAEC_DATA")
    if not env:
        return []
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def data_dirs(subdir: str | None = None, path=None, *, env_root: bool = True) -> list[Path]:
    """The folders searched for a data set, in order (duplicates removed).

    ``subdir`` is the data set's sub-folder name (e.g. ``"mnist"``), also
    searched below each root.  ``env_root=False`` leaves out ``$VAEC_DATA``
    and the cache folder themselves (only their sub-folder is searched).
    """
    out: list[Path] = []

    def add(root: Path, root_too: bool = True):
        if root_too:
            out.append(root)
        if subdir:
            out.append(root / subdir)

    if path is not None:
        # an explicit path is the only place looked: a typo must not silently load
        # other data
        add(Path(path).expanduser())
        return out
    for root in _env_data_dirs():
        add(root, env_root)
    add(_cache_dir(), env_root)
    seen, uniq = set(), []
    for p in out:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            uniq.append(p)
    return uniq


def _offline() -> bool:
    return os.environ.get("VAEC_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _fmt_dirs(dirs) -> str:
    return ", ".join(str(d) for d in dirs) if dirs else "(no folders)"


# --------------------------------------------------------------------------
# IDX files

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZ_ERRORS = (OSError, EOFError, zlib.error)


def _read_exact_into(f, arr: np.ndarray, name) -> None:
    view = memoryview(arr).cast("B")
    total, got = view.nbytes, 0
    while got < total:
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(
                f"{name}: truncated IDX file: header announces {total} data bytes "
                f"but only {got} are present"
            )
        got += n


def _read_idx_stream(f, name, size=None) -> np.ndarray:
    """The array of an IDX stream; ``size``: the stream's length in bytes when known (a plain
    file), so that data its header announces but the file cannot hold are refused before
    anything is allocated (a gzip stream is read as far as it goes instead)."""
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{name}: not an IDX file (truncated before the 4-byte magic number)")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number 0x{head.hex()})")
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw)
    count = math.prod(dims)   # exact: a product of up to 255 dimensions overflows int64
    nbytes = count * dtype.itemsize
    # NumPy refuses more than 32 dimensions (64 in 2.x), and a shape whose nonzero sizes
    # overflow its index type even when another size is 0 (the fuzzer's 17 x 0xffffffff)
    if nbytes > 2**36 or ndim > 32 or math.prod(d for d in dims if d) * dtype.itemsize > 2**62:
        raise ValueError(f"{name}: implausible IDX dimensions {dims}")
    if size is not None and nbytes > size - 4 - 4 * ndim:
        # checked before allocating: a small file cannot make vaec allocate what its header claims
        raise ValueError(
            f"{name}: truncated IDX file: header announces {nbytes} data bytes "
            f"but only {size - 4 - 4 * ndim} are present"
        )
    if size is None:   # a gzip stream: read what is there, at most what the header announces,
        data = bytearray()   # in blocks (f.read(nbytes) would allocate nbytes first)
        while len(data) < nbytes:
            block = f.read(min(nbytes - len(data), 1 << 24))
            if not block:
                break
            data += block
        if len(data) < nbytes:
            raise ValueError(
                f"{name}: truncated IDX file: header announces {nbytes} data bytes "
                f"but only {len(data)} are present"
            )
        arr = np.frombuffer(data, dtype=dtype)   # writable: a bytearray
    else:
        arr = np.empty(count, dtype=dtype)
        _read_exact_into(f, arr, name)
    if f.read(1):
        raise ValueError(
            f"{name}: IDX file is longer than its header announces "
            f"(dimensions {dims}: {count * dtype.itemsize} data bytes)"
        )
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    return arr.reshape(dims)


def read_idx(filename) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, detected by content).

    Raises ``ValueError`` naming the file when it is malformed.
    """
    filename = Path(filename)
    with open(filename, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gz:
            return _read_idx_stream(raw, filename, os.fstat(raw.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx_stream(f, filename)
        except ValueError:
            raise
        except _GZ_ERRORS as e:
            raise ValueError(f"{filename}: corrupt or truncated gzip data ({e})") from e


def _check_images(arr, name, rows=28, cols=28) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (rows, cols):
        raise ValueError(
            f"{name}: expected an IDX image file of uint8 {rows}x{cols} images "
            f"(magic 0x00000803), got {arr.dtype} array of shape {arr.shape}"
        )
    return arr.reshape(arr.shape[0], rows * cols)


def _check_labels(arr, name) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(
            f"{name}: expected an IDX label file of uint8 labels "
            f"(magic 0x00000801), got {arr.dtype} array of shape {arr.shape}"
        )
    if arr.size and arr.max() > 9:
        raise ValueError(f"{name}: label {int(arr.max())} out of range 0..9")
    return arr


def _load_idx_pair(img_file, lbl_file):
    X = _check_images(read_idx(img_file), img_file)
    y = _check_labels(read_idx(lbl_file), lbl_file)
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{img_file} holds {X.shape[0]} images but {lbl_file} holds {y.shape[0]} labels"
        )
    return X, y


def _idx_candidates(prefix: str, kind: str) -> list[str]:
    # kind: "images" (idx3) or "labels" (idx1)
    nd = "3" if kind == "images" else "1"
    names = []
    for base in (f"{prefix}-{kind}-idx{nd}-ubyte", f"{prefix}-{kind}.idx{nd}-ubyte"):
        names += [base + ".gz", base]
    return names


def _find_idx_pair(dirs, prefix):
    for d in dirs:
        if not d.is_dir():
            continue
        img = next((d / n for n in _idx_candidates(prefix, "images") if (d / n).is_file()), None)
        lbl = next((d / n for n in _idx_candidates(prefix, "labels") if (d / n).is_file()), None)
        if img is not None and lbl is not None:
            return img, lbl
    return None


_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _prefix(split):
    try:
        return _SPLIT_PREFIX[split]
    except (KeyError, TypeError):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}") from None


# --------------------------------------------------------------------------
# MNIST download

_MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

#: md5 of the canonical ``.gz`` files.
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_DOWNLOAD_TIMEOUT = 10.0  # seconds, per socket operation
_download_failures: dict[str, str] = {}  # file name -> reason; not retried in this process


def _download(fname: str, md5: str, dest_dir: Path, mirrors) -> Path:
    """Fetch one file from the first mirror that serves it with the right md5.

    The file is written to a temporary file in ``dest_dir`` and renamed into
    place only once its md5 matches.  Raises ``OSError`` on failure.
    """
    import urllib.request

    errors = []
    for base in mirrors:
        url = base + fname
        tmp = None
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as r:
                print(f"vaec: downloading {url}", file=sys.stderr)
                h = hashlib.md5()
                dest_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=dest_dir)
                with os.fdopen(fd, "wb") as out:
                    while True:
                        chunk = r.read(1 << 16)
                        if not chunk:
                            break
                        h.update(chunk)
                        out.write(chunk)
            if h.hexdigest() != md5:
                raise OSError(f"md5 mismatch ({h.hexdigest()} != {md5})")
            final = dest_dir / fname
            os.replace(tmp, final)
            tmp = None
            return final
        except Exception as e:  # network errors come in many types
            errors.append((url, e))
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    if not errors:
        raise OSError("no mirrors configured")
    # report the most telling error: a served-but-wrong file or an HTTP status
    # says more than "host not reachable", which every mirror gives offline
    import urllib.error

    telling = [
        (u, e) for u, e in errors
        if isinstance(e, urllib.error.HTTPError) or not isinstance(e, urllib.error.URLError)
    ]
    url, err = (telling or errors)[0]
    more = f" (and {len(errors) - 1} other mirror(s) failed)" if len(errors) > 1 else ""
    raise OSError(f"{url}: {err}{more}")


def _try_download_mnist(split: str):
    """Download the split's two files into ``<cache>/mnist``; None + reason on failure."""
    if _offline():
        return None, "download skipped: VAEC_OFFLINE is set"
    prefix = _prefix(split)
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    dest = _cache_dir() / "mnist"
    for n in names:
        if n in _download_failures:
            return None, f"download failed earlier in this process: {_download_failures[n]}"
    try:
        files = []
        for n in names:
            f = dest / n
            if not f.is_file():
                f = _download(n, _MNIST_MD5[n], dest, _MNIST_MIRRORS)
            files.append(f)
    except Exception as e:
        _download_failures[n] = str(e)
        return None, f"download failed: {e}"
    return tuple(files), None


# --------------------------------------------------------------------------
# shipped MNIST subset

_SUBSET_FILES = {
    "train": ("mnist-subset-train-images-idx3-ubyte.gz", "mnist-subset-train-labels-idx1-ubyte.gz"),
    "test": ("mnist-subset-t10k-images-idx3-ubyte.gz", "mnist-subset-t10k-labels-idx1-ubyte.gz"),
}
_SUBSET_PER_CLASS = {"train": 1000, "test": 200}

#: sha256 of the *decompressed* IDX bytes of the shipped subset files.
_SUBSET_SHA256 = {
    "mnist-subset-train-images-idx3-ubyte.gz": "96448e792027ae8c3d693bf7f6685beb422442276734ffe24b7860a3581dcb08",
    "mnist-subset-train-labels-idx1-ubyte.gz": "dfa6309ccbfc44ab3df730fa9d1b133e2baeb0fe7db8e4bbdcd05d3e5bd811ea",
    "mnist-subset-t10k-images-idx3-ubyte.gz": "780e99a56e963f3affe4791a03545a6ddbdc0904dd880c7f3c50753282177303",
    "mnist-subset-t10k-labels-idx1-ubyte.gz": "b547e409b08f1d55c77b7f0964dfb27202f97c41c014d9427a3acecfcf6a7129",
}

_fallback_warned = False


def _read_shipped_idx(fname: str) -> np.ndarray:
    path = _DATA_DIR / fname
    with open(path, "rb") as f:
        try:
            raw = gzip.decompress(f.read())
        except _GZ_ERRORS as e:
            raise ValueError(f"{path}: corrupt shipped data ({e}); reinstall vaec") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _SUBSET_SHA256[fname]:
        raise ValueError(
            f"{path}: sha256 of the shipped MNIST subset is {digest}, expected "
            f"{_SUBSET_SHA256[fname]}; the file is corrupt, reinstall vaec"
        )
    return _read_idx_stream(io.BytesIO(raw), path)


def _load_shipped_mnist(split: str):
    img, lbl = _SUBSET_FILES[split]
    X = _check_images(_read_shipped_idx(img), _DATA_DIR / img)
    y = _check_labels(_read_shipped_idx(lbl), _DATA_DIR / lbl)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{_DATA_DIR / img}: shipped subset images/labels count mismatch")
    return X, y


def _select_first_per_class(y, per_class):
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    idx.sort()  # keep the original file order
    return idx


def _write_idx_gz(path: Path, arr: np.ndarray, magic: int) -> str:
    raw = struct.pack(">I", magic) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw += np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        # filename="" and mtime=0 make the gzip bytes reproducible
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
            gz.write(raw)
    return hashlib.sha256(raw).hexdigest()


def _make_mnist_subset(src, dst=None) -> dict:
    """Cut the shipped class-balanced subset from full MNIST IDX files in ``src``.

    Takes the first 1000 (train) / 200 (test) images of each digit in file
    order, keeps them in file order, and writes gzip IDX files to ``dst``
    (default: this package's ``data`` folder).  Returns {file: content sha256}.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else _DATA_DIR
    dst.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "test"):
        found = _find_idx_pair([src, src / "mnist"], _prefix(split))
        if found is None:
            raise FileNotFoundError(f"no MNIST {split} IDX files in {src}")
        X, y = _load_idx_pair(*found)
        idx = _select_first_per_class(y, _SUBSET_PER_CLASS[split])
        img_name, lbl_name = _SUBSET_FILES[split]
        out[img_name] = _write_idx_gz(dst / img_name, X[idx].reshape(-1, 28, 28), 0x803)
        out[lbl_name] = _write_idx_gz(dst / lbl_name, y[idx], 0x801)
    return out


# --------------------------------------------------------------------------
# MNIST / Fashion-MNIST


def load_mnist(split: str = "train", path=None, *, download: bool = True, fallback: bool = True):
    """Load MNIST as ``(X, y)``: ``X`` uint8 ``(n, 784)``, ``y`` uint8 ``(n,)``.

    Looks for the IDX files (``train-images-idx3-ubyte[.gz]``,
    ``t10k-labels-idx1-ubyte[.gz]``, ... or the dotted ``train-images.idx3-ubyte``
    spelling) in ``path`` (and ``path/mnist``) when given -- only there, raising
    FileNotFoundError if they are missing -- otherwise in ``$VAEC_DATA``,
    ``$VAEC_DATA/mnist``, the cache folder and ``<cache>/mnist``.  If none has them it downloads them into
    ``<cache>/mnist`` (unless ``download=False`` or ``VAEC_OFFLINE=1``), and
    if that fails too it returns the real MNIST subset shipped with vaec
    (1000 / 200 images per digit for train / test) and warns once per process
    (``fallback=False`` raises ``FileNotFoundError`` instead).
    """
    global _fallback_warned
    prefix = _prefix(split)
    dirs = data_dirs("mnist", path)
    found = _find_idx_pair(dirs, prefix)
    reason = "download disabled (download=False)"
    if found is None and path is not None:
        raise FileNotFoundError(
            f"MNIST {split} IDX files ({prefix}-images-idx3-ubyte[.gz], "
            f"{prefix}-labels-idx1-ubyte[.gz]) not found; looked in {_fmt_dirs(dirs)} "
            "(an explicit path is the only place searched)"
        )
    if found is None and download:
        found, reason = _try_download_mnist(split)
    if found is not None:
        return _load_idx_pair(*found)
    if not fallback:
        raise FileNotFoundError(
            f"MNIST {split} IDX files ({prefix}-images-idx3-ubyte[.gz], "
            f"{prefix}-labels-idx1-ubyte[.gz]) not found; looked in {_fmt_dirs(dirs)}; {reason}"
        )
    X, y = _load_shipped_mnist(split)
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"vaec: full MNIST not found (looked in {_fmt_dirs(dirs)}; {reason}). "
            "Using the real MNIST subset shipped with vaec: 10,000 train / 2,000 test "
            "images (1,000 / 200 per digit). For the full set put the four IDX files "
            f"in $VAEC_DATA or {_cache_dir() / 'mnist'}.",
            VaecDataWarning,
            stacklevel=2,
        )
    return X, y


def load_fashion_mnist(split: str = "train", path=None):
    """Load Fashion-MNIST as ``(X, y)``: ``X`` uint8 ``(n, 784)``, ``y`` uint8 ``(n,)``.

    Same IDX files and names as MNIST, looked for in ``path`` (and
    ``path/fashion-mnist``), ``$VAEC_DATA/fashion-mnist``,
    ``<cache>/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist`` package).
    """
    prefix = _prefix(split)
    dirs = data_dirs("fashion-mnist", path, env_root=False)
    dirs.append(_DEBIAN_FASHION_DIR)
    found = _find_idx_pair(dirs, prefix)
    if found is None:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} IDX files ({prefix}-images-idx3-ubyte[.gz], "
            f"{prefix}-labels-idx1-ubyte[.gz]) not found; looked in {_fmt_dirs(dirs)}. "
            "Get them from https://github.com/zalandoresearch/fashion-mnist (data/fashion) "
            "into $VAEC_DATA/fashion-mnist or ~/.cache/vaec/fashion-mnist, or on "
            "Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist"
        )
    return _load_idx_pair(*found)


# --------------------------------------------------------------------------
# MATLAB v5 MAT-files

_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


class _MatUnsupported(ValueError):
    pass


def _mat_tag(buf, pos, end, bo, name):
    if pos + 8 > end:
        raise ValueError(f"{name}: truncated MAT-file (data element tag at byte {pos})")
    typ, nbytes = struct.unpack_from(bo + "II", buf, pos)
    if typ >> 16:  # small data element: 2-byte size, 2-byte type, <= 4 bytes of data
        nbytes, typ = typ >> 16, typ & 0xFFFF
        if nbytes > 4:
            raise ValueError(f"{name}: malformed MAT-file (small element of {nbytes} bytes)")
        return typ, pos + 4, pos + 4 + nbytes, pos + 8
    start, stop = pos + 8, pos + 8 + nbytes
    if stop > end:
        raise ValueError(
            f"{name}: truncated MAT-file (element at byte {pos} needs {nbytes} bytes, "
            f"{end - start} left)"
        )
    nxt = stop if typ == _MI_COMPRESSED else min(start + (nbytes + 7) // 8 * 8, end)
    return typ, start, stop, nxt


def _mat_numeric(buf, typ, start, stop, bo, name):
    if typ not in _MI_DTYPES:
        raise _MatUnsupported(f"{name}: unsupported MAT data type {typ}")
    dt = np.dtype(_MI_DTYPES[typ]).newbyteorder(bo)
    if (stop - start) % dt.itemsize:
        raise ValueError(f"{name}: malformed MAT-file (element size not a multiple of its type)")
    return np.frombuffer(buf, dtype=dt, count=(stop - start) // dt.itemsize, offset=start)


def _mat_matrix(buf, start, end, bo, name, cast):
    """Parse the body of a miMATRIX element; returns (var name, array or None)."""
    if start == end:
        return None, None
    typ, s, e, pos = _mat_tag(buf, start, end, bo, name)
    flags = _mat_numeric(buf, typ, s, e, bo, name)
    if flags.size < 1 or flags.dtype.kind not in "iu":   # miUINT32 in the format; never floats
        raise ValueError(f"{name}: malformed MAT-file (array flags)")
    cls, is_complex, is_logical = int(flags[0]) & 0xFF, bool(int(flags[0]) & 0x800), bool(int(flags[0]) & 0x200)
    typ, s, e, pos = _mat_tag(buf, pos, end, bo, name)
    dims = _mat_numeric(buf, typ, s, e, bo, name)
    if dims.dtype.kind not in "iu":   # miINT32 in the format; never floats
        raise ValueError(f"{name}: malformed MAT-file (dimensions of type {dims.dtype})")
    dims = tuple(int(d) for d in dims)
    if len(dims) < 2 or any(d < 0 for d in dims):
        raise ValueError(f"{name}: malformed MAT-file (dimensions {dims})")
    typ, s, e, pos = _mat_tag(buf, pos, end, bo, name)
    varname = bytes(buf[s:e]).decode("latin-1")
    if cls not in _MX_CLASSES:
        return varname, None  # cell, struct, char, sparse, object: not needed here
    count = math.prod(dims)   # exact (np.prod would wrap around in int64)
    typ, s, e, pos = _mat_tag(buf, pos, end, bo, name)
    real = _mat_numeric(buf, typ, s, e, bo, name)
    if real.size != count:
        raise ValueError(
            f"{name}: malformed MAT-file (variable {varname!r}: {real.size} values for "
            f"dimensions {dims})"
        )
    target = np.dtype(_MX_CLASSES[cls])
    if is_complex:
        typ, s, e, pos = _mat_tag(buf, pos, end, bo, name)
        imag = _mat_numeric(buf, typ, s, e, bo, name)
        if imag.size != count:
            raise ValueError(f"{name}: malformed MAT-file (imaginary part of {varname!r})")
        arr = real.astype(np.complex128 if target == np.float64 else np.complex64)
        arr.imag = imag
    elif cast:
        arr = real.astype(bool if is_logical else target)
    else:
        arr = real.astype(real.dtype.newbyteorder("="))  # stored type, native order, a copy
    return varname, arr.reshape(dims, order="F")


def _read_mat_v5(filename, *, cast: bool = True) -> dict:
    """Minimal pure-NumPy reader for MATLAB v5 MAT-files (numeric arrays only).

    Handles miMATRIX and zlib-compressed (miCOMPRESSED) elements, both byte
    orders, all numeric classes, and column-major storage.  With
    ``cast=False`` the values keep their storage type (e.g. uint8 for a
    double matrix of 0/1 that MATLAB stored as bytes), which saves memory.
    Returns {variable name: ndarray}; non-numeric variables are skipped.
    """
    name = Path(filename)
    with open(filename, "rb") as f:
        buf = f.read()
    if len(buf) < 128:
        raise ValueError(f"{name}: not a MATLAB v5 MAT-file (shorter than its 128-byte header)")
    if buf.startswith(b"MATLAB 7.3") or buf[:8] == b"\x89HDF\r\n\x1a\n" or buf[512:520] == b"\x89HDF\r\n\x1a\n":
        raise _MatUnsupported(f"{name}: MATLAB v7.3 (HDF5) MAT-files are not supported; use h5py")
    endian = buf[126:128]
    if not buf.startswith(b"MATLAB") or endian not in (b"IM", b"MI"):
        raise ValueError(f"{name}: not a MATLAB v5 MAT-file (bad header)")
    bo = "<" if endian == b"IM" else ">"
    out = {}
    pos, end = 128, len(buf)
    while pos < end:
        if end - pos < 8 and not buf[pos:].strip(b"\0"):
            break  # trailing padding
        typ, s, e, nxt = _mat_tag(buf, pos, end, bo, name)
        if typ == _MI_COMPRESSED:
            d = zlib.decompressobj()
            try:
                body = d.decompress(buf[s:e])
            except zlib.error as err:
                raise ValueError(f"{name}: corrupt compressed MAT-file element ({err})") from err
            if not d.eof:
                raise ValueError(f"{name}: truncated compressed MAT-file element")
            typ, s2, e2, _ = _mat_tag(body, 0, len(body), bo, name)
            if typ == _MI_MATRIX:
                var, arr = _mat_matrix(body, s2, e2, bo, name, cast)
                if arr is not None:
                    out[var] = arr
        elif typ == _MI_MATRIX:
            var, arr = _mat_matrix(buf, s, e, bo, name, cast)
            if arr is not None:
                out[var] = arr
        pos = nxt
    return out


def _have_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True


def _loadmat(filename, *, prefer_scipy: bool, cast: bool = True) -> dict:
    """Read a MAT-file with scipy (if installed and preferred) or the built-in reader."""
    if prefer_scipy and _have_scipy():
        import scipy.io

        try:
            d = scipy.io.loadmat(str(filename))
        except Exception as e:
            raise ValueError(f"{filename}: cannot read MAT-file ({type(e).__name__}: {e})") from e
        return {k: v for k, v in d.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    try:
        return _read_mat_v5(filename, cast=cast)
    except _MatUnsupported:
        if prefer_scipy or not _have_scipy():
            raise
        return _loadmat(filename, prefer_scipy=True, cast=cast)


def _find_file(dirs, names):
    for d in dirs:
        if d.is_file():
            return d
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _to_uint8(arr, name, what, max_value=255):
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: {what} has non-real type {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > max_value or not np.array_equal(arr, np.round(arr))):
        raise ValueError(f"{name}: {what} holds values outside the integers 0..{max_value}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


# --------------------------------------------------------------------------
# Frey faces


def load_frey_faces(path=None) -> np.ndarray:
    """Load the Frey faces as uint8 ``(1965, 560)``: 28x20 images, row-major.

    Reads ``frey_rawface.mat`` (variable ``ff``, 560 x 1965) from ``path``
    (the file or its folder), ``$VAEC_DATA`` or the cache folder (or their
    ``frey_faces`` sub-folder).  Uses scipy when installed, else a built-in
    MAT v5 reader.
    """
    dirs = data_dirs("frey_faces", path)
    f = _find_file(dirs, ["frey_rawface.mat"])
    if f is None:
        raise FileNotFoundError(
            f"frey_rawface.mat not found; looked in {_fmt_dirs(dirs)}. It was distributed on "
            "Sam Roweis's data page (https://cs.nyu.edu/~roweis/data/frey_rawface.mat); "
            "put it in $VAEC_DATA or ~/.cache/vaec"
        )
    d = _loadmat(f, prefer_scipy=True)
    if "ff" not in d:
        raise ValueError(f"{f}: no variable 'ff' in this MAT-file (found {sorted(d)})")
    ff = d["ff"]
    if ff.ndim != 2 or ff.shape[0] != 560:
        raise ValueError(f"{f}: variable 'ff' should be 560 x N (28x20 images), is {ff.shape}")
    return _to_uint8(ff.T, f, "'ff'")


# --------------------------------------------------------------------------
# binarised MNIST (Larochelle & Murray)

_BIN_SPLITS = ("train", "valid", "test")


def _read_amat(filename) -> np.ndarray:
    """Larochelle's text .amat: one image per line, 784 whitespace-separated 0/1."""
    name = Path(filename)
    with open(filename, "rb") as f:
        data = f.read()
    a = np.frombuffer(data, dtype=np.uint8)
    allowed = np.zeros(256, bool)
    allowed[list(b"01 \t\r\n")] = True
    if a.size and allowed[a].all():
        # fast path: single-character tokens
        data_ = data if data.endswith(b"\n") else data + b"\n"
        a = np.frombuffer(data_, dtype=np.uint8)
        is_digit = (a == 48) | (a == 49)
        # a digit followed by a digit would be a token like "10"
        if np.any(is_digit[:-1] & is_digit[1:]):
            raise ValueError(f"{name}: .amat values must be 0 or 1")
        nl = np.flatnonzero(a == 10)
        csum = np.concatenate([[0], np.cumsum(is_digit)])
        per_line = np.diff(csum[np.concatenate([[0], nl + 1])])
        per_line = per_line[per_line > 0]  # blank lines
        if per_line.size == 0:
            raise ValueError(f"{name}: empty .amat file")
        if np.any(per_line != 784):
            bad = int(np.flatnonzero(per_line != 784)[0])
            raise ValueError(
                f"{name}: .amat row {bad + 1} has {int(per_line[bad])} values, expected 784"
            )
        return (a[is_digit] - 48).reshape(-1, 784)
    # general path: numbers such as "0.0" / "1.000000"
    rows = []
    try:
        for i, line in enumerate(data.decode("ascii").splitlines()):
            toks = line.split()
            if not toks:
                continue
            if len(toks) != 784:
                raise ValueError(f"{name}: .amat row {i + 1} has {len(toks)} values, expected 784")
            rows.append(np.array(toks, dtype=np.float64))
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, ValueError) and str(name) in str(e):
            raise
        raise ValueError(f"{name}: not a text .amat file ({e})") from e
    if not rows:
        raise ValueError(f"{name}: empty .amat file")
    X = np.vstack(rows)
    if not np.isin(X, (0.0, 1.0)).all():
        raise ValueError(f"{name}: .amat values must be 0 or 1")
    return X.astype(np.uint8)


def _read_binarized(filename) -> np.ndarray:
    with open(filename, "rb") as f:
        head = f.read(10)
    if head.startswith(b"MATLAB"):  # some copies call MAT-files ".amat"
        d = _loadmat(filename, prefer_scipy=False, cast=False)
        if "X" in d:
            X = d["X"]
        elif len(d) == 1:
            X = next(iter(d.values()))
        else:
            raise ValueError(f"{filename}: no variable 'X' in this MAT-file (found {sorted(d)})")
        if X.ndim != 2 or X.shape[1] != 784:
            raise ValueError(f"{filename}: expected an N x 784 matrix, got {X.shape}")
        X = _to_uint8(X, filename, "'X'", max_value=1)
    else:
        X = _read_amat(filename)
    if X.size and X.max() > 1:
        raise ValueError(f"{filename}: binarised MNIST must hold only 0/1 values")
    return X


def load_binarized_mnist(split: str = "train", path=None) -> np.ndarray:
    """Load Larochelle & Murray's statically binarised MNIST: float32 ``(n, 784)`` of 0.0/1.0.

    float32, not uint8: vaec reads a uint8 array as grey levels 0-255 (scaled by 1/255), so a
    uint8 array of 0/1 would be taken as nearly black images.

    ``split`` is ``"train"`` (50000), ``"valid"`` (10000) or ``"test"`` (10000).
    Reads ``binarized_mnist_{split}.mat`` (MATLAB v5, variable ``X``) or the
    text ``binarized_mnist_{split}.amat`` from ``path`` (a file or folder),
    ``$VAEC_DATA`` or the cache folder (or their ``binarized_mnist`` sub-folder).
    """
    if split not in _BIN_SPLITS:
        raise ValueError(f"split must be one of {_BIN_SPLITS}, not {split!r}")
    dirs = data_dirs("binarized_mnist", path)
    names = [f"binarized_mnist_{split}.mat", f"binarized_mnist_{split}.amat"]
    f = _find_file(dirs, names)
    if f is None:
        raise FileNotFoundError(
            f"{' or '.join(names)} not found; looked in {_fmt_dirs(dirs)}. The text files are at "
            f"http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/{names[1]}; "
            "put them in $VAEC_DATA or ~/.cache/vaec"
        )
    return _read_binarized(f).astype(np.float32)


# --------------------------------------------------------------------------
# helpers


def _as_probabilities(X) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X.astype(np.float32) * np.float32(1 / 255)
    if X.dtype == bool:
        return X.astype(np.float32)
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise TypeError(f"binarize needs a real array, got {X.dtype}")
    P = X.astype(np.float32) if X.dtype != np.float64 else X
    if P.size and np.isnan(P).any():
        raise ValueError("binarize got NaN grey levels")
    if P.size and not (np.all(P >= 0) and np.all(P <= 1)):
        raise ValueError(
            "binarize needs grey levels in [0, 1] (floats) or uint8 0..255; "
            f"got values in [{np.nanmin(P)}, {np.nanmax(P)}]"
        )
    return P


def binarize(X, mode: str = "static", seed=None) -> np.ndarray:
    """Draw binary images with P(pixel = 1) = grey level; returns uint8 0/1.

    ``X`` is uint8 (0..255, scaled by 1/255) or floats in [0, 1].

    * ``mode="static"``: one fixed draw; the same ``seed`` (default 0) always
      gives the same result, so the data set is binarised once.
    * ``mode="dynamic"``: a fresh draw at every call when ``seed`` is None
      (call it once per epoch); pass a seed or a ``numpy.random.Generator``
      to make it reproducible.
    """
    if mode not in ("static", "dynamic"):
        raise ValueError(f"mode must be 'static' or 'dynamic', not {mode!r}")
    P = _as_probabilities(X)
    if mode == "static" and seed is None:
        seed = 0
    rng = np.random.default_rng(seed)
    U = rng.random(P.shape, dtype=np.float64 if P.dtype == np.float64 else np.float32)
    return (U < P).astype(np.uint8)


def labelled_subset(X, y, n_per_class: int, seed=None, *, return_indices: bool = False):
    """A class-balanced random sample of ``n_per_class`` examples of every class.

    Returns ``(X_l, y_l)`` in the original order (or ``(X_l, y_l, idx)`` with
    ``return_indices=True``, so ``np.delete(X, idx, 0)`` gives the rest).
    Raises ``ValueError`` if a class has fewer than ``n_per_class`` examples.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has shape {y.shape}")
    n_per_class = int(n_per_class)
    if n_per_class < 1:
        raise ValueError("n_per_class must be >= 1")
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < n_per_class:
            raise ValueError(f"class {c!r} has only {members.size} examples, fewer than {n_per_class}")
        parts.append(rng.choice(members, size=n_per_class, replace=False))
    idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.intp)
    if return_indices:
        return X[idx], y[idx], idx
    return X[idx], y[idx]


if __name__ == "__main__":  # python -m vaec.datasets make-mnist-subset SRC [DST]
    if len(sys.argv) >= 3 and sys.argv[1] == "make-mnist-subset":
        for k, v in _make_mnist_subset(*sys.argv[2:4]).items():
            print(f"{k}  {v}")
    else:
        print("usage: python -m vaec.datasets make-mnist-subset SRC_DIR [DST_DIR]", file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------
# image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The most pixels load_images decodes from one file (2^25: an 8K picture, 7680 x 4320, fits):
#: a header claiming more is refused before decoding (a 103-byte PNG can claim 4 x 16777216
#: pixels, under Pillow's own limit, and took 12 s and 1 GB to fail). Raise it for bigger pictures.
MAX_IMAGE_PIXELS = 1 << 25


class _PictureTooLarge(ValueError):
    pass


def load_images(folder, size=(28, 28), mode="L", *, recursive=True, limit=None) -> np.ndarray:
    """The PNG and JPEG pictures of ``folder`` as uint8 images (n, C, H, W), C = 1 for
    ``mode="L"`` (grey) and 3 for ``"RGB"``, resized to ``size`` = (H, W) (Pillow's bicubic
    resampling; the aspect ratio is not kept), in the sorted order of their paths (``recursive``:
    sub-folders too; ``limit``: the first so many). Needs Pillow (``pip install 'vaec[images]'``).

    A file that cannot be read as a picture raises ValueError naming it; a folder without
    pictures, FileNotFoundError. The result trains a VAE as it is (uint8 stays uint8)::

        X = vaec.datasets.load_images("faces/", size=(64, 64), mode="RGB")
        m = vaec.VAE(input_shape=X.shape[1:], architecture="conv", likelihood="gaussian")
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError("load_images needs Pillow: pip install 'vaec[images]' (or pip install pillow)") from e
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode: expected 'L' (grey) or 'RGB', got {mode!r}")
    try:
        H, W = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"size: expected (height, width), got {size!r}") from None
    if not (1 <= H <= 4096 and 1 <= W <= 4096):
        raise ValueError(f"size: expected a height and a width between 1 and 4096, got {size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected None or a positive integer, got {limit!r}")
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} is not a folder")
    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir())
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"folder: no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files in {root}"
                                + (" or its sub-folders" if recursive else ""))
    files = files[:limit] if limit else files
    C = 1 if mode == "L" else 3
    out = np.empty((len(files), C, H, W), np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise _PictureTooLarge(f"{f}: {im.width} x {im.height} pixels, more than "
                                     f"vaec.datasets.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}")
                im = im.convert(mode)
                if im.size != (W, H):
                    im = im.resize((W, H), Image.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except (_PictureTooLarge, MemoryError):
            raise
        except Exception as e:
            # Pillow's decoders raise what a malformed file leads them to: UnidentifiedImageError,
            # OSError, SyntaxError, DecompressionBombError (a header claiming more pixels than its
            # limit: a 57-byte PNG can claim 40000 x 40000), and also TypeError (a TIFF whose strip
            # offsets are stored as doubles, found by a 5-minute atheris run), struct.error, ...
            raise ValueError(f"{f}: not a readable picture ({type(e).__name__}: {e})") from None
        out[i] = a[None] if C == 1 else a.transpose(2, 0, 1)
    return out
