"""The model-file format's compatibility promise (docs/FORMAT.md): every file an earlier
release wrote loads. tests/data keeps one fixture per (format version, model kind, config
record version); this file checks that the set is complete, that today's fixtures load to
what they held, and that files of an unknown version are refused clearly."""
import glob
import os
import struct

import numpy as np
import pytest

import vaec
from format_tools import HEAD, KIND_AE, KIND_FLOW, KIND_M2, KIND_VAE, assemble, sections, with_crc

DATA = os.path.join(os.path.dirname(__file__), "data")
FORMAT = os.path.join(DATA, "format")

# (file version, kind, config record version): every combination a release has written
WRITTEN = {
    (1, KIND_VAE, 1), (1, KIND_VAE, 2),
    (1, KIND_AE, 1), (1, KIND_AE, 2),
    (1, KIND_M2, 1), (1, KIND_M2, 2),
    (1, KIND_FLOW, 1),
}


def classify(path):
    data = open(path, "rb").read()
    version = struct.unpack_from("<I", data, 8)[0]
    kind, config, _ = sections(data)
    if kind in (KIND_VAE, KIND_AE):
        record = 2 if config[:4] == b"VAE\0" else 1
    elif kind == KIND_M2:
        record = 2 if config[:4] == b"M2\0\0" else 1
    else:
        record = 1
    return version, kind, record


def fixtures():
    return sorted(glob.glob(os.path.join(DATA, "**", "*.vaec"), recursive=True))


def test_one_fixture_per_written_version():
    have = {classify(p) for p in fixtures()}
    assert WRITTEN <= have, f"no fixture for {sorted(WRITTEN - have)}: add one to tests/data (docs/FORMAT.md)"
    assert have <= WRITTEN, f"fixtures of {sorted(have - WRITTEN)}: add them to WRITTEN and docs/FORMAT.md"


def test_todays_files_are_the_newest_record_versions(tmp_path):
    """What this vaec writes is in WRITTEN (a new record version needs a fixture and a line in
    docs/FORMAT.md before it ships)."""
    from vaec import layers as L
    for m in (vaec.VAE(8, latent_dim=2, hidden=(4,)), vaec.Autoencoder(8, latent_dim=2, hidden=(4,)),
              vaec.M2(8, n_classes=2, latent_dim=2, hidden=(4,)), vaec.Flow(2, "planar:2"),
              vaec.VAE(input_shape=(1, 2, 2), latent_dim=2, encoder=[L.Flatten()], decoder=[L.Linear(4)])):
        m.save(tmp_path / "m.vaec")
        assert classify(tmp_path / "m.vaec") in WRITTEN


@pytest.mark.parametrize("name", ["vae_mlp_record2", "vae_conv_record2", "ae_record2", "m2_record2", "vae_adagrad"])
def test_record2_fixtures_load_to_what_they_held(name):
    expected = np.load(os.path.join(FORMAT, "expected.npz"))
    m = vaec.load(os.path.join(FORMAT, name + ".vaec"), threads=1)
    for k in expected.files:
        if not k.startswith(name + "/"):
            continue
        what = k[len(name) + 1:]
        if what.startswith("param/"):
            assert np.array_equal(m.params[what[6:]], expected[k]), k   # stored: bit for bit
        elif what == "step":
            assert m.optimizer_state["step"] == int(expected[k])
    X = (np.random.default_rng(0).random((6, 16)) < 0.4).astype(np.float32)
    Y = np.array([0, 1, 2, 0, 1, 2])
    got = {"vae_mlp_record2": lambda: {"elbo": m.elbo(X, seed=1), "mu": m.encode(X)[0]},
           "vae_conv_record2": lambda: {"elbo": m.elbo(X, seed=1), "mu": m.encode(X)[0]},
           "ae_record2": lambda: {"code": m.encode(X), "loss": m.loss(X)},
           "m2_record2": lambda: {"proba": m.predict_proba(X), "elbo": m.elbo(X, Y, seed=1)},
           "vae_adagrad": lambda: {"elbo": m.elbo(X, seed=1), "mu": m.encode(X)[0]}}[name]()
    if name == "vae_adagrad":   # the optimizer field: the state is Adagrad's sums, loaded as such
        assert m.optimizer_state["optimizer"] == "adagrad"
        assert np.array_equal(m._arenas["adam_v"], expected["vae_adagrad/adagrad_sums"])
        assert m._arenas["adam_v"].any()
    for k, v in got.items():   # computed: to the last few bits of the kernel path
        np.testing.assert_allclose(v, expected[f"{name}/{k}"], rtol=2e-5, atol=1e-5, err_msg=k)


def test_a_future_format_version_is_refused_clearly(tmp_path):
    data = open(os.path.join(FORMAT, "vae_mlp_record2.vaec"), "rb").read()
    newer = bytearray(data)
    struct.pack_into("<I", newer, 8, 2)
    (tmp_path / "new.vaec").write_bytes(with_crc(bytes(newer[:-4])))
    with pytest.raises(ValueError, match="new.vaec' has format version 2; this vaec reads version 1"):
        vaec.load(tmp_path / "new.vaec")


def test_an_unknown_config_record_version_is_refused_clearly(tmp_path):
    data = open(os.path.join(FORMAT, "vae_mlp_record2.vaec"), "rb").read()
    kind, config, rest = sections(data)
    config = bytearray(config)
    struct.pack_into("<I", config, 4, 3)
    (tmp_path / "rec3.vaec").write_bytes(assemble(data, kind, bytes(config), rest))
    with pytest.raises(ValueError, match=r"rec3.vaec' is inconsistent: a VAE config record of \d+ bytes \(version 3\)"):
        vaec.load(tmp_path / "rec3.vaec")


def test_head_layout_as_documented():
    data = open(os.path.join(FORMAT, "ae_record2.vaec"), "rb").read()
    assert data[:8] == b"\x89VAEC\r\n\x1a"
    assert struct.unpack_from("<IIII", data, 8)[:3] == (1, 0x01020304, KIND_AE)
    assert HEAD == 24
