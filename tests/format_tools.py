"""The model file's layout for tests (docs/FORMAT.md describes it): its sections, the
checksum, and today's config records rewritten in version 1 (as vaec 0.1.0 wrote them)."""
import struct
import zlib

HEAD = 24                 # magic, file version, endian marker, kind, config length
VAE_CONFIG_V1 = 152
M2_CONFIG_V1 = 184
KIND_VAE, KIND_M2, KIND_FLOW, KIND_AE = 1, 2, 3, 4


def sections(data):
    """(kind, config bytes, the bytes after the config without the checksum)."""
    kind, clen = struct.unpack_from("<II", data, 16)
    return kind, data[HEAD:HEAD + clen], data[HEAD + clen:-4]


def assemble(data, kind, config, rest):
    """A file with data's head, the given kind, config and rest, and a fresh checksum."""
    body = data[:16] + struct.pack("<II", kind, len(config)) + config + rest
    return body + struct.pack("<I", zlib.crc32(body))


def with_crc(body):
    """body (a file without its checksum) with its CRC-32 appended."""
    return body + struct.pack("<I", zlib.crc32(body))


def as_config_v1(data):
    """The same file with a version-2 VAE/AE/M2 config record rewritten as version 1 (None for
    a file whose model version 1 could not describe: layer lists other than an MLP's, or a
    flow, whose record has a single version)."""
    kind, config, rest = sections(data)
    if kind in (KIND_VAE, KIND_AE) and config[:4] == b"VAE\0":
        layers = struct.unpack_from("<i", config, 8 + VAE_CONFIG_V1)[0]
        return None if layers else assemble(data, kind, config[8:8 + VAE_CONFIG_V1], rest)
    if kind == KIND_M2 and config[:4] == b"M2\0\0":
        return assemble(data, kind, config[8:8 + M2_CONFIG_V1], rest)
    return None
