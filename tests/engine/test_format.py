import struct

import pytest
import torch

from kiln.engine.format import FORMAT_VERSION, read_engine, write_engine
from kiln.errors import EngineFormatError


def _tensors():
    return {
        "a": torch.arange(10, dtype=torch.float32).reshape(2, 5),
        "b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "c": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3, dtype=torch.int64),
        "scalar": torch.tensor(7, dtype=torch.int64),
    }


def test_round_trip_is_exact(tmp_path):
    p = tmp_path / "e.kiln"
    write_engine(p, {"hello": [1, 2]}, _tensors())
    header, tensors = read_engine(p)
    assert header == {"hello": [1, 2]}
    for k, t in _tensors().items():
        assert tensors[k].dtype == t.dtype and tensors[k].shape == t.shape
        assert torch.equal(tensors[k], t)


def test_every_tensor_is_aligned(tmp_path):
    p = tmp_path / "e.kiln"
    write_engine(p, {}, _tensors())
    data = p.read_bytes()
    _, _, head_len = struct.unpack_from("<8sIQ", data)
    start = 20 + head_len
    assert (start + (-start) % 64) % 64 == 0


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "e.kiln"

    class Boom(dict):
        def items(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_engine(p, {}, Boom())
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_flipped_files_are_rejected(tmp_path):
    p = tmp_path / "e.kiln"
    write_engine(p, {"x": 1}, _tensors())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineFormatError, match="corrupt or truncated"):
        read_engine(p)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(flipped))
    with pytest.raises(EngineFormatError, match="checksum does not match"):
        read_engine(p)


def test_newer_format_version_is_named(tmp_path):
    import hashlib

    p = tmp_path / "e.kiln"
    write_engine(p, {}, _tensors())
    data = bytearray(p.read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    body = bytes(data[:-32])
    p.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(EngineFormatError, match=f"format version {FORMAT_VERSION + 1}, newer"):
        read_engine(p)


def test_not_an_engine(tmp_path):
    p = tmp_path / "e.kiln"
    p.write_bytes(b"this is not an engine at all" * 4)
    with pytest.raises(EngineFormatError, match="not a kiln engine"):
        read_engine(p)
