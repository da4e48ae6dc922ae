"""Writes the seed corpora of the fuzz targets (run from the repository's root; the files are
committed, so this is only needed when the formats change):

    python tests/fuzz/make_seeds.py

model_file/: a tiny model of every kind, config-record version and layer kind (VAE and
autoencoder MLPs, a VAE with each flow, conv VAEs with every spatial layer, M2, stand-alone
flows, a checkpoint with an extra record; the version-1 records are today's files with
their config rewritten as 0.1.0 wrote it). idx/, mat/, images/: small valid files of each
layout the readers take."""
import gzip
import io
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import vaec  # noqa: E402
from vaec import layers as L  # noqa: E402
from format_tools import as_config_v1  # noqa: E402

HERE = os.path.join(ROOT, "tests", "fuzz", "corpus")


def models():
    yield "vae_mlp", vaec.VAE(6, latent_dim=2, hidden=(3,), seed=1)
    yield "vae_gauss_2h", vaec.VAE(5, latent_dim=2, hidden=(4, 3), activation="relu", likelihood="gaussian", seed=2)
    yield "vae_nohidden", vaec.VAE(4, latent_dim=1, hidden=(), seed=3)
    yield "ae", vaec.Autoencoder(6, latent_dim=2, hidden=(3,), seed=4)
    yield "vae_planar", vaec.VAE(6, latent_dim=2, hidden=(3,), flow="planar:2", seed=5)
    yield "vae_radial", vaec.VAE(6, latent_dim=2, hidden=(3,), flow="radial:2", seed=6)
    yield "vae_realnvp", vaec.VAE(6, latent_dim=2, hidden=(3,), flow="realnvp:2:4", seed=7)
    yield "vae_conv", vaec.VAE(input_shape=(1, 4, 4), latent_dim=2, seed=8,
                               encoder=[L.Conv2d(2, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Linear(3)],
                               decoder=[L.Linear(8), L.Unflatten(2, 2, 2), L.Upsample(2), L.ConvTranspose2d(1, 3, padding=1)])
    yield "vae_conv2", vaec.VAE(input_shape=(2, 4, 4), latent_dim=2, seed=9, likelihood="gaussian",
                                encoder=[L.Conv2d(2, 2, stride=2), L.Tanh(), L.AvgPool2d(2), L.Flatten(), L.LeakyReLU(0.2)],
                                decoder=[L.Linear(4), L.ELU(), L.Unflatten(1, 2, 2), L.ConvTranspose2d(4, 2, stride=2),
                                         L.Sigmoid(), L.Conv2d(4, 1), L.Softplus()])
    yield "m2", vaec.M2(6, n_classes=3, latent_dim=2, hidden=(3,), seed=10)
    yield "flow_planar", vaec.Flow(2, "planar:2", seed=11)
    yield "flow_radial", vaec.Flow(3, "radial:2", seed=12)
    yield "flow_realnvp", vaec.Flow(2, "realnvp:2:4", seed=13)


def model_seeds(out):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models():
            path = os.path.join(tmp, name + ".vaec")
            m.save(path)
            data = open(path, "rb").read()
            open(os.path.join(out, name + ".vaec"), "wb").write(data)
            v1 = as_config_v1(data)
            if v1 is not None:
                open(os.path.join(out, name + "_v1.vaec"), "wb").write(v1)
        m = vaec.VAE(6, latent_dim=2, hidden=(3,), seed=14)
        X = np.random.default_rng(0).random((20, 6), dtype=np.float32)
        m.fit(X, epochs=1, batch_size=10, progress=False, checkpoint_dir=tmp, seed=0)
        data = open(os.path.join(tmp, "checkpoint.vaec"), "rb").read()
        open(os.path.join(out, "checkpoint.vaec"), "wb").write(data)


def idx_bytes(arr, code):
    return struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + \
        arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def idx_seeds(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "images.idx": idx_bytes(rng.integers(0, 256, (3, 4, 4), dtype=np.uint8), 0x08),
        "labels.idx": idx_bytes(np.arange(5, dtype=np.uint8), 0x08),
        "i1.idx": idx_bytes(np.array([-1, 2], np.int8), 0x09),
        "i2.idx": idx_bytes(np.array([[1, -2], [3, 4]], np.int16), 0x0B),
        "i4.idx": idx_bytes(np.array([7], np.int32), 0x0C),
        "f4.idx": idx_bytes(np.array([[0.5, 1.5]], np.float32), 0x0D),
        "f8.idx": idx_bytes(np.array([2.25], np.float64), 0x0E),
    }
    files["images.idx.gz"] = gzip.compress(files["images.idx"], mtime=0)
    for k, v in files.items():
        open(os.path.join(out, k), "wb").write(v)


def mat_element(typ, payload, bo="<"):
    pad = (-len(payload)) % 8
    return struct.pack(bo + "II", typ, len(payload)) + payload + b"\0" * pad


def mat_matrix(name, arr, cls, mi, bo="<", small_name=False, complex_part=None):
    flags = mat_element(6, struct.pack(bo + "II", cls | (0x800 if complex_part is not None else 0), 0), bo)
    dims = mat_element(5, struct.pack(bo + "i" * arr.ndim, *arr.shape), bo)
    nb = name.encode()
    if small_name and len(nb) <= 4:
        nm = struct.pack(bo + "HH", 1, len(nb)) if bo == ">" else struct.pack(bo + "HH", 1, len(nb))
        nm = struct.pack(bo + "I", (len(nb) << 16) | 1) + nb + b"\0" * (4 - len(nb))
    else:
        nm = mat_element(1, nb, bo)
    data = mat_element(mi, arr.astype(arr.dtype.newbyteorder(bo)).tobytes(order="F"), bo)
    if complex_part is not None:
        data += mat_element(mi, complex_part.astype(arr.dtype.newbyteorder(bo)).tobytes(order="F"), bo)
    return mat_element(14, flags + dims + nm + data, bo)


def mat_header(bo="<"):
    text = b"MATLAB 5.0 MAT-file, written by vaec's fuzz seeds".ljust(116, b" ")
    return text + b"\0" * 8 + (b"\x00\x01IM" if bo == "<" else b"\x01\x00MI")


def mat_seeds(out):
    os.makedirs(out, exist_ok=True)
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    files = {
        "double.mat": mat_header() + mat_matrix("ff", a, 6, 9),
        "uint8_as_double.mat": mat_header() + mat_matrix("x", (a > 2).astype(np.uint8), 6, 2, small_name=True),
        "big_endian.mat": mat_header(">") + mat_matrix("be", a.astype(np.float32), 7, 7, bo=">"),
        "complex.mat": mat_header() + mat_matrix("c", a, 6, 9, complex_part=-a),
        "int16.mat": mat_header() + mat_matrix("s", a.astype(np.int16), 10, 3),
    }
    body = mat_matrix("z", a, 6, 9)
    files["compressed.mat"] = mat_header() + mat_element(15, zlib.compress(body))
    files["two_vars.mat"] = mat_header() + mat_matrix("a", a, 6, 9) + mat_matrix("b", a.astype(np.int32), 12, 5)
    for k, v in files.items():
        open(os.path.join(out, k), "wb").write(v)


def image_seeds(out):
    from PIL import Image
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (5, 4), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 256, (3, 6, 3), dtype=np.uint8), "RGB")
    for name, im, fmt, kw in [("grey.png", grey, "PNG", {}), ("rgb.png", rgb, "PNG", {}),
                              ("palette.png", rgb.convert("P"), "PNG", {}), ("rgba.png", rgb.convert("RGBA"), "PNG", {}),
                              ("grey16.png", Image.fromarray((np.arange(20).reshape(5, 4) * 3000).astype(np.uint16)), "PNG", {}),
                              ("rgb.jpg", rgb, "JPEG", {"quality": 50}), ("grey.jpg", grey, "JPEG", {}),
                              ("progressive.jpg", rgb, "JPEG", {"progressive": True}),
                              ("interlaced.png", rgb, "PNG", {"interlace": 1}),
                              # Pillow opens any format it knows, whatever the suffix: formats without
                              # checksums let mutations reach their decoders
                              ("rgb.bmp", rgb, "BMP", {}), ("grey.gif", grey, "GIF", {}), ("rgb.tiff", rgb, "TIFF", {}),
                              ("rgb.ppm", rgb, "PPM", {}), ("rle.tga", rgb, "TGA", {"compression": "tga_rle"})]:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        open(os.path.join(out, name), "wb").write(buf.getvalue())


if __name__ == "__main__":
    model_seeds(os.path.join(HERE, "model_file"))
    idx_seeds(os.path.join(HERE, "idx"))
    mat_seeds(os.path.join(HERE, "mat"))
    image_seeds(os.path.join(HERE, "images"))
    for d in sorted(os.listdir(HERE)):
        print(d, len(os.listdir(os.path.join(HERE, d))), "files")
