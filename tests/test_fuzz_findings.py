"""What fuzzing the parsers found (tests/fuzz/), each kept as a regression test; the inputs
that found them are in the seed corpora too (tests/fuzz/corpus/*/found_*)."""
import gzip
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

import vaec
from vaec import datasets
from format_tools import assemble, sections, with_crc

CORPUS = os.path.join(os.path.dirname(__file__), "fuzz", "corpus")


def tiny_file(tmp_path, model, name="m.vaec"):
    path = tmp_path / name
    model.save(path)
    return path.read_bytes()


# ------------------------------------------------------------------ model files
def test_m2_file_declaring_a_huge_model_is_refused_before_allocating(tmp_path):
    """libFuzzer (out-of-memory, 1.4 GB): an M2 file of 2 KB whose config declares wide layers
    made the loader allocate the model and its workspace before comparing its parameter count
    with the file's. Now the count is checked first: a model too big for any machine gives the
    same ValueError as any other inconsistent file, not MemoryError."""
    data = tiny_file(tmp_path, vaec.M2(6, n_classes=3, latent_dim=2, hidden=(3,), seed=0))
    kind, config, rest = sections(data)
    config = bytearray(config)
    struct.pack_into("<q", config, 8, 1 << 26)         # input_dim
    struct.pack_into("<q", config, 8 + 40, 1 << 20)    # hidden[0]
    bad = tmp_path / "huge.vaec"
    bad.write_bytes(assemble(data, kind, bytes(config), rest))
    with pytest.raises(ValueError, match=r"huge\.vaec' is inconsistent: \d+ parameters stored, its configuration has"):
        vaec.load(bad)
    # the file libFuzzer wrote (whose checksum the fuzz target recomputes)
    found = open(os.path.join(CORPUS, "model_file", "found_m2_huge_workspace.vaec"), "rb").read()
    (tmp_path / "found.vaec").write_bytes(with_crc(found[:-4]))
    with pytest.raises(ValueError, match="found.vaec' is inconsistent"):
        vaec.load(tmp_path / "found.vaec")


def test_vae_v2_record_with_an_impossible_hidden_count(tmp_path):
    """UBSan (index out of bounds, then a stack overflow by writes): a version-2 VAE record of
    an MLP was expanded into its layer lists by its hidden-layer count before that count was
    checked."""
    data = tiny_file(tmp_path, vaec.VAE(6, latent_dim=2, hidden=(3,), seed=0))
    kind, config, rest = sections(data)
    for n_hidden in (9, 40, 1 << 20, -1):
        c = bytearray(config)
        struct.pack_into("<i", c, 8 + 16, n_hidden)
        bad = tmp_path / "hidden.vaec"
        bad.write_bytes(assemble(data, kind, bytes(c), rest))
        with pytest.raises(ValueError, match=rf"hidden\.vaec' is inconsistent: {n_hidden} hidden layers"):
            vaec.load(bad)
    path = os.path.join(CORPUS, "model_file", "found_vae_v2_hidden_count.vaec")
    fixed = with_crc(open(path, "rb").read()[:-4])     # the fuzz target recomputes the checksum
    (tmp_path / "found.vaec").write_bytes(fixed)
    with pytest.raises(ValueError, match="hidden layers"):
        vaec.load(tmp_path / "found.vaec")


# ------------------------------------------------------------------------- IDX
def test_idx_dimensions_whose_product_overflows(tmp_path):
    """atheris: the element count of an IDX header was an int64 product, which wraps around;
    numpy's 'negative dimensions are not allowed' came out without the file's name."""
    head = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**31)
    for name, raw in [("plain-idx3-ubyte", head), ("gz-idx3-ubyte.gz", gzip.compress(head))]:
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=rf"{name}: implausible IDX dimensions"):
            datasets.read_idx(tmp_path / name)
    with pytest.raises(ValueError, match="found_gz_dims_overflow"):
        datasets.read_idx(os.path.join(CORPUS, "idx", "found_gz_dims_overflow.idx.gz"))


def test_idx_shape_with_a_zero_and_huge_other_dimensions(tmp_path):
    """atheris (a 5-minute run): 17 dimensions, one of them 0 and the others 0xffffffff,
    announce 0 data bytes, but NumPy's reshape refused the shape ('array is too big')
    without the file's name; and NumPy cannot hold more than 32 (2.x: 64) dimensions."""
    with pytest.raises(ValueError, match="found_zero_dim_with_huge_others.idx: implausible IDX dimensions"):
        datasets.read_idx(os.path.join(CORPUS, "idx", "found_zero_dim_with_huge_others.idx"))
    head = struct.pack(">BBBB", 0, 0, 0x08, 40) + struct.pack(">" + "I" * 40, *([1] * 40))
    (tmp_path / "deep-idx").write_bytes(head + b"\0")
    with pytest.raises(ValueError, match="deep-idx: implausible IDX dimensions"):
        datasets.read_idx(tmp_path / "deep-idx")


def test_idx_header_announcing_more_than_the_file_holds_allocates_nothing(tmp_path):
    """A 20-byte file announcing 32 GB (under the 64 GB plausibility cap) is refused from its
    size before the array is allocated (it was allocated, then found truncated)."""
    path = tmp_path / "big-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2**15, 2**10, 2**10) + b"\0" * 8)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="big-idx3-ubyte: truncated IDX file: header announces 34359738368"):
            datasets.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_gzip_idx_announcing_more_than_it_holds_allocates_nothing(tmp_path):
    """atheris (the 10-minute run), MemoryError: the first fix of the test above read a gzip
    stream with f.read(announced size), which allocates that size before reading; now it
    reads in blocks and stops where the stream does."""
    head = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2**15, 2**10, 2**10)
    path = tmp_path / "big-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(head + b"\0" * 100))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="big-idx3-ubyte.gz: truncated IDX file: header announces 34359738368"):
            datasets.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    with pytest.raises(ValueError, match="found_gz_huge_claim"):
        datasets.read_idx(os.path.join(CORPUS, "idx", "found_gz_huge_claim.idx.gz"))


# ------------------------------------------------------------------ MATLAB v5
def mat_file(flags_type, flags, dims_type, dims):
    def element(typ, payload):
        return struct.pack("<II", typ, len(payload)) + payload + b"\0" * (-len(payload) % 8)
    body = element(flags_type, flags) + element(dims_type, dims) + element(1, b"v") + element(9, np.zeros(1).tobytes())
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    return header + element(14, body)


@pytest.mark.parametrize("case,data", [
    ("float-dims", mat_file(6, struct.pack("<II", 6, 0), 7, np.array([np.nan, 1], np.float32).tobytes())),
    ("huge-dims", mat_file(6, struct.pack("<II", 6, 0), 9, np.array([1e30, 1e30]).tobytes())),
    ("float-flags", mat_file(7, np.array([np.inf, 0], np.float32).tobytes(), 5, struct.pack("<ii", 1, 1))),
])
def test_mat_flags_and_dimensions_of_a_float_type(tmp_path, case, data):
    """Found by hand-made inputs next to the MAT target (its 40 s run had not reached them):
    array flags or dimensions stored as floats gave OverflowError, or a ValueError without the
    file's name ('cannot convert float NaN to integer'). The format stores them as integers."""
    path = tmp_path / f"{case}.mat"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{case}\.mat: malformed MAT-file"):
        datasets._read_mat_v5(path)


# -------------------------------------------------------------------- images
def test_picture_header_claiming_a_decompression_bomb(tmp_path):
    """A 57-byte PNG claiming 40000 x 40000 pixels: Pillow refuses it with its own
    DecompressionBombError, which load_images let through; now the ValueError naming the file."""
    pytest.importorskip("PIL")

    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ValueError, match=r"bomb\.png: not a readable picture \(DecompressionBombError"):
        datasets.load_images(tmp_path)


def test_tiff_whose_strip_offsets_are_doubles(tmp_path):
    """atheris (a 5-minute run): a 186-byte TIFF (named .png, as the target writes every
    input) whose StripOffsets tag has the type DOUBLE made Pillow's loader raise TypeError
    ('float' object cannot be interpreted as an integer), which load_images let through.
    Whatever Pillow raises on a malformed file is now the ValueError naming it."""
    pytest.importorskip("PIL")
    import shutil
    shutil.copy(os.path.join(CORPUS, "images", "found_tiff_double_offsets.png"), tmp_path / "strips.png")
    with pytest.raises(ValueError, match=r"strips\.png: not a readable picture \(TypeError"):
        datasets.load_images(tmp_path, size=(8, 6), mode="RGB")


def test_picture_header_claiming_many_pixels_under_pillows_limit(tmp_path, monkeypatch):
    """atheris (the 10-minute run), a 12 s timeout and 1.1 GB: a 103-byte PNG (its chunk CRCs
    recomputed, as the fuzz target does) claiming 4 x
    16777216 grey pixels (under Pillow's limit) was decoded, converted to RGB and resized
    before its truncated data showed. Pictures of more than datasets.MAX_IMAGE_PIXELS are
    refused from their header."""
    pytest.importorskip("PIL")
    import shutil
    found = os.path.join(CORPUS, "images", "found_tall_png.png")
    shutil.copy(found, tmp_path / "tall.png")
    with pytest.raises(ValueError, match=r"tall\.png: 4 x 16777216 pixels, more than vaec.datasets.MAX_IMAGE_PIXELS"):
        datasets.load_images(tmp_path)
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", 100)   # the limit is the module's constant
    from PIL import Image
    Image.new("L", (11, 10)).save(tmp_path / "tall.png")
    with pytest.raises(ValueError, match="11 x 10 pixels"):
        datasets.load_images(tmp_path)


@pytest.mark.parametrize("target", ["model_file", "idx", "mat", "images"])
def test_seed_corpora_are_there(target):
    """The fuzz targets start from committed seeds (tests/fuzz/make_seeds.py writes them)."""
    assert len(os.listdir(os.path.join(CORPUS, target))) >= 7
