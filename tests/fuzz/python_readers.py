"""atheris targets for vaec's Python parsers: the IDX reader (plain and gzip), the MATLAB v5
reader and the image-folder loader (Pillow under it).

    python tests/fuzz/python_readers.py idx|mat|images [libFuzzer options] [corpus dirs]

Each input is written to a file and read the way a user's file is. The contract checked:
a file either reads, or raises ValueError (a folder without pictures: FileNotFoundError)
whose message names the file; anything else (IndexError, struct.error, OverflowError, a
MemoryError from a size the header made up, ...) is a finding. Reading must also be
bounded: the readers refuse sizes the file cannot hold before allocating them."""
import os
import struct
import sys
import tempfile
import zlib

import atheris

with atheris.instrument_imports(include=["vaec.datasets"]):
    from vaec import datasets

# pictures up to 2^20 pixels: the limit's check is what is fuzzed, not Pillow's speed on
# 2^25-pixel pictures (seconds each under the instrumentation)
datasets.MAX_IMAGE_PIXELS = 1 << 20

TARGET = sys.argv.pop(1) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "idx"
TMP = tempfile.mkdtemp(prefix=f"vaec-fuzz-{TARGET}-")
PATH = os.path.join(TMP, {"idx": "x-idx3-ubyte", "mat": "x.mat", "images": "pictures/x.png"}[TARGET])
os.makedirs(os.path.dirname(PATH), exist_ok=True)


def check_message(e):
    if os.path.basename(PATH) not in str(e):
        raise AssertionError(f"{type(e).__name__} without the file's name: {e}") from e


def fix_png_crcs(data: bytes) -> bytes:
    """A PNG's chunk CRCs recomputed (as the model-file target recomputes its checksum), so
    that mutations of the header and chunks reach Pillow's decoder instead of its CRC check."""
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        n = struct.unpack_from(">I", out, pos)[0]
        if pos + 12 + n > len(out):
            break
        struct.pack_into(">I", out, pos + 8 + n, zlib.crc32(out[pos + 4:pos + 8 + n]))
        pos += 12 + n
    return bytes(out)


def one(data: bytes):
    if TARGET == "images" and data.startswith(b"\x89PNG\r\n\x1a\n"):
        data = fix_png_crcs(data)
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        if TARGET == "idx":
            arr = datasets.read_idx(PATH)
            assert arr.nbytes <= len(data) * 2000 + 8, "IDX array larger than its file allows"
        elif TARGET == "mat":
            for k, v in datasets._read_mat_v5(PATH).items():
                assert isinstance(k, str)
                assert v.nbytes <= len(data) * 2000 + 64, "MAT array larger than its file allows"
            datasets._read_mat_v5(PATH, cast=False)
        else:
            X = datasets.load_images(os.path.dirname(PATH), size=(8, 6), mode="RGB")
            assert X.shape == (1, 3, 8, 6) and X.dtype.name == "uint8"
            X = datasets.load_images(os.path.dirname(PATH), size=(3, 5), mode="L")
            assert X.shape == (1, 1, 3, 5)
    except ValueError as e:
        check_message(e)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    if TARGET == "images":
        with atheris.instrument_imports():
            import PIL.Image  # noqa: F401  (Pillow's Python plugins are parsers too)
            import PIL.PngImagePlugin  # noqa: F401
            import PIL.JpegImagePlugin  # noqa: F401
    atheris.Fuzz()
