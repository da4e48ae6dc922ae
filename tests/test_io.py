"""The .vaec model file: round trip, atomic writes, and corruption detection."""
import os
import pickle
import struct
import zlib

import numpy as np
import pytest

import vaec


def test_round_trip_restores_everything(trained, tmp_path):
    m, x = trained
    path = tmp_path / "model.vaec"
    m.save(path)
    r = vaec.load(path)
    assert (r.input_dim, r.latent_dim, r.hidden, r.activation, r.likelihood, r.seed) == \
        (m.input_dim, m.latent_dim, m.hidden, m.activation, m.likelihood, m.seed)
    for k in m.params:
        assert np.array_equal(m.params[k], r.params[k])
    assert r.optimizer_state["step"] == 3
    s = r.optimizer_state
    assert abs(s["beta1"] - 0.8) < 1e-7 and abs(s["adam_eps"] - 1e-4) < 1e-10
    # the optimizer moments and the RNG position came along: the next steps are identical
    a = [m.train_step(x, lr=1e-2) for _ in range(3)]
    b = [r.train_step(x, lr=1e-2) for _ in range(3)]
    assert a == b
    for k in m.params:
        assert np.array_equal(m.params[k], r.params[k])


def test_save_is_atomic_and_leaves_no_temporary(trained, tmp_path):
    m, _ = trained
    path = tmp_path / "m.vaec"
    m.save(str(path))
    first = path.read_bytes()
    m.params["encoder.0.bias"][...] += 1
    m.save(path)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["m.vaec"]


def test_file_layout_ends_with_a_crc32(trained, tmp_path):
    m, _ = trained
    path = tmp_path / "m.vaec"
    m.save(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89VAEC\r\n\x1a"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    config_len = struct.unpack("<I", data[20:24])[0]
    # the VAE's config record, version 2: tag, version, 0.1.0's 152 bytes, the layer lists'
    # head (40 bytes), an 88-byte record per layer of the encoder and of the decoder
    assert data[24:28] == b"VAE\0" and struct.unpack("<I", data[28:32])[0] == 2
    assert config_len == 8 + 152 + 40 + 88 * 2 * len(m.hidden)
    assert len(data) == 24 + config_len + 48 + 3 * 4 * m._arenas["params"].size + 4 + 4  # head, config, arena head, data, extra length, crc


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.vaec"):
        vaec.load(tmp_path / "nope.vaec")


def test_save_into_a_missing_directory(trained, tmp_path):
    m, _ = trained
    with pytest.raises(FileNotFoundError):
        m.save(tmp_path / "no" / "such" / "dir.vaec")


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version", "empty", "foreign", "append"])
def test_corrupted_files_are_refused(trained, tmp_path, damage):
    m, _ = trained
    path = tmp_path / "m.vaec"
    m.save(path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
        expect = "checksum"
    elif damage == "truncate":
        data = data[: len(data) - 100]
        expect = "checksum|truncated"
    elif damage == "magic":
        data[1:5] = b"XXXX"
        expect = "not a vaec model file"
    elif damage == "version":
        data[8:12] = struct.pack("<I", 99)
        expect = "format version 99"
    elif damage == "empty":
        data = b""
        expect = "too short"
    elif damage == "foreign":
        data = b"PK\x03\x04" + os.urandom(400)
        expect = "not a vaec model file"
    else:  # bytes appended after a valid file: the checksum no longer sits at the end
        data = data + b"\0" * 16
        expect = "checksum|inconsistent"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=expect):
        vaec.load(path)


def test_consistent_checksum_but_inconsistent_sizes_are_refused(trained, tmp_path):
    """A file whose header lies about its size, even with a recomputed checksum."""
    m, _ = trained
    path = tmp_path / "m.vaec"
    m.save(path)
    data = bytearray(path.read_bytes())
    # latent_dim (bytes 40..48: the VAE config record starts at 24, 0.1.0's fields 8 bytes
    # into it) changed: the parameter count no longer fits the config
    data[40:48] = struct.pack("<q", 5)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="inconsistent"):
        vaec.load(path)
    data[40:48] = struct.pack("<q", -1)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="invalid model configuration"):
        vaec.load(path)


def test_pickle_round_trip(trained):
    m, x = trained
    r = pickle.loads(pickle.dumps(m))
    for k in m.params:
        assert np.array_equal(m.params[k], r.params[k])
    assert r.optimizer_state["step"] == m.optimizer_state["step"]
    assert m.train_step(x) == r.train_step(x)


def test_load_threads_argument(trained, tmp_path):
    m, _ = trained
    m.save(tmp_path / "m.vaec")
    assert vaec.load(tmp_path / "m.vaec", threads=2).threads == 2
    with pytest.raises(ValueError, match="threads"):
        vaec.load(tmp_path / "m.vaec", threads=0)


MAKERS = {"vae": (lambda: vaec.VAE(20, 3, hidden=(6,), seed=1, threads=1), "KIND_VAE"),
          "autoencoder": (lambda: vaec.Autoencoder(20, 2, hidden=(6,), seed=1, threads=1), "KIND_AE"),
          "m2": (lambda: vaec.M2(20, 3, 2, hidden=(6,), seed=1, threads=1), "KIND_M2"),
          "flow": (lambda: vaec.Flow(3, "realnvp:2:4", seed=1, threads=1), "KIND_FLOW")}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_one_loader_for_every_kind_and_an_extra_record_in_every_file(name, tmp_path):
    """_core.load reads any kind through the binding's one table of kinds, and every kind's
    file can carry an extra record (the trainer's state of a checkpoint), written atomically."""
    make, kind_name = MAKERS[name]
    m = make()
    path = tmp_path / "m.vaec"
    m._core.save(path=str(path), extra=b"trainer\0state")
    kind, core, extra = vaec._core.load(path=str(path), threads=1)
    assert kind == vaec._core.file_kind(path=str(path)) == getattr(vaec._core, kind_name)
    assert type(core) is vaec._core.MODEL_KINDS[kind] is type(m._core)
    assert extra == b"trainer\0state"
    for which in ("params", "adam_m", "adam_v"):
        assert np.array_equal(core.arena(which=which), m._core.arena(which=which)), which
    assert core.config() == m._core.config() and core.state()["rng_counter"] == m._core.state()["rng_counter"]
    assert sorted(os.listdir(tmp_path)) == ["m.vaec"], "no temporary file is left"
    assert type(vaec.load(path)) is type(m)
    m.save(path)
    assert vaec._core.load(path=str(path))[2] is None


def test_a_loader_of_one_kind_names_the_kind_it_found(tmp_path):
    vaec.VAE(4, 2, hidden=(3,), seed=0).save(tmp_path / "vae.vaec")
    with pytest.raises(ValueError, match="kind 1, not an M2 model"):
        vaec._core.load(path=str(tmp_path / "vae.vaec"), kind=vaec._core.KIND_M2)
    with pytest.raises(ValueError, match="kind: unknown model kind 99"):
        vaec._core.load(path=str(tmp_path / "vae.vaec"), kind=99)
    data = bytearray((tmp_path / "vae.vaec").read_bytes())
    data[16:20] = struct.pack("<I", 77)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    (tmp_path / "future.vaec").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="unknown kind 77"):
        vaec.load(tmp_path / "future.vaec")


def test_a_crafted_file_with_a_valid_checksum_cannot_overrun(tmp_path):
    """The header claims parameters the file does not hold, the checksum is recomputed:
    the reader must refuse it from the sizes alone (no read past the end)."""
    head = b"\x89VAEC\r\n\x1a" + struct.pack("<IIII", 1, 0x01020304, 1, 0)
    arena = struct.pack("<qfffiqQQ", 5, 0.9, 0.999, 1e-8, 0, 0, 0, 0)
    for body in (head + arena, head + arena + b"\0" * 3, head + arena + b"\0" * 30):
        data = body + struct.pack("<I", zlib.crc32(body))
        p = tmp_path / "crafted.vaec"
        p.write_bytes(data)
        with pytest.raises(ValueError, match="inconsistent|too short"):
            vaec.load(p)


def test_the_file_holds_every_tensor_row_major(trained, tmp_path):
    """The first layer's weight is kept as W^T in memory; the file has it (and its Adam
    moments) in its (out, in) order, like every other tensor."""
    m, _ = trained
    assert [t[0] for t in m._core.tensors() if t[3]] == ["encoder.0.weight"]
    path = tmp_path / "m.vaec"
    m.save(path)
    data = path.read_bytes()
    n = m._arenas["params"].size
    start = 24 + struct.unpack("<I", data[20:24])[0] + 48
    stored = {k: np.frombuffer(data, "<f4", count=n, offset=start + 4 * n * i)
              for i, k in enumerate(("params", "adam_m", "adam_v"))}
    for which in ("params", "adam_m", "adam_v"):
        views = m._views(which)
        for name, offset, shape, _ in m._core.tensors():
            size = int(np.prod(shape))
            assert np.array_equal(stored[which][offset:offset + size], views[name].ravel(order="C")), (which, name)
    assert np.any(stored["adam_m"] != 0)


def test_a_file_from_before_the_transposed_layout_loads_the_same():
    """tests/data/vae_536a70d.vaec was written by vaec at commit 536a70d, when every tensor
    was row-major in memory too: it loads to the same parameters, and its next training
    steps give the losses that build gave."""
    here = os.path.join(os.path.dirname(__file__), "data")
    m = vaec.load(os.path.join(here, "vae_536a70d.vaec"))
    want = np.load(os.path.join(here, "vae_536a70d.npz"))
    for k in m.params:
        assert np.array_equal(m.params[k], want[k]), k
    losses = [m.train_step(want["x"], lr=1e-2) for _ in range(2)]
    assert np.allclose(losses, want["next_losses"], rtol=1e-6, atol=0)


def test_the_config_record_holds_the_layer_lists(trained, tmp_path):
    """The VAE's config record (version 2) lists its networks' layers; a list that is not
    the one its hidden layers give is refused as inconsistent, and a 0.1.0 record (version
    1, 152 bytes; tests/data/redesign holds such files) still loads."""
    m, _ = trained
    path = tmp_path / "m.vaec"
    m.save(path)
    data = bytearray(path.read_bytes())
    first = 24 + 8 + 152 + 40                      # the encoder's first layer record
    kind, act, out = struct.unpack("<iiq", data[first:first + 16])
    acts = ("identity", "tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
    assert (kind, out, acts[act]) == (1, m.hidden[0], m.activation)   # Linear(hidden[0]) + its activation
    data[first + 8:first + 16] = struct.pack("<q", out + 1)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="inconsistent: its layer lists"):
        vaec.load(path)
    old = vaec.load(os.path.join(os.path.dirname(__file__), "data", "redesign", "vae_planar.vaec"))
    assert old.flow == "planar:3" and old.hidden == (24,)
