"""Element types of the IR and their mappings to ONNX, numpy and torch.

A DType is a stable string id (it is written into engine files): "float32", "bfloat16",
"float8_e4m3fn", "int4" ... Conversions go through the tables below, never through
ad-hoc `if` chains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto


@dataclass(frozen=True, slots=True)
class DType:
    name: str          # stable id, used in engine files
    onnx: int          # TensorProto enum
    itemsize_bits: int
    is_float: bool
    torch_name: str | None  # attribute of the torch module; None when torch lacks the type

    @property
    def torch(self) -> torch.dtype:
        if self.torch_name is None:
            raise TypeError(f"dtype {self.name} has no torch equivalent")
        return getattr(torch, self.torch_name)

    @property
    def itemsize(self) -> int:
        """Bytes per element, rounded up (int4 packs two per byte on disk but is held as int8)."""
        return max(1, self.itemsize_bits // 8)

    def __str__(self) -> str:
        return self.name


_ALL = [
    DType("float32", TensorProto.FLOAT, 32, True, "float32"),
    DType("float16", TensorProto.FLOAT16, 16, True, "float16"),
    DType("bfloat16", TensorProto.BFLOAT16, 16, True, "bfloat16"),
    DType("float64", TensorProto.DOUBLE, 64, True, "float64"),
    DType("float8_e4m3fn", TensorProto.FLOAT8E4M3FN, 8, True, "float8_e4m3fn"),
    DType("float8_e5m2", TensorProto.FLOAT8E5M2, 8, True, "float8_e5m2"),
    DType("float8_e4m3fnuz", TensorProto.FLOAT8E4M3FNUZ, 8, True, "float8_e4m3fnuz"),
    DType("float8_e5m2fnuz", TensorProto.FLOAT8E5M2FNUZ, 8, True, "float8_e5m2fnuz"),
    DType("int8", TensorProto.INT8, 8, False, "int8"),
    DType("uint8", TensorProto.UINT8, 8, False, "uint8"),
    DType("int16", TensorProto.INT16, 16, False, "int16"),
    DType("uint16", TensorProto.UINT16, 16, False, "uint16"),
    DType("int32", TensorProto.INT32, 32, False, "int32"),
    DType("uint32", TensorProto.UINT32, 32, False, "uint32"),
    DType("int64", TensorProto.INT64, 64, False, "int64"),
    DType("uint64", TensorProto.UINT64, 64, False, "uint64"),
    DType("bool", TensorProto.BOOL, 8, False, "bool"),
    # int4/int2 values are held unpacked, one per int8, inside kiln.
    DType("int4", TensorProto.INT4, 4, False, "int8"),
    DType("uint4", TensorProto.UINT4, 4, False, "uint8"),
    DType("int2", TensorProto.INT2, 2, False, "int8"),
    DType("uint2", TensorProto.UINT2, 2, False, "uint8"),
    # float4 (e2m1) and float8 e8m0 values are held exactly in float32 inside kiln.
    DType("float4_e2m1", TensorProto.FLOAT4E2M1, 4, True, "float32"),
    DType("float8_e8m0", TensorProto.FLOAT8E8M0, 8, True, "float32"),
    DType("string", TensorProto.STRING, 0, False, None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_ONNX: dict[int, DType] = {d.onnx: d for d in _ALL}

FLOAT32 = BY_NAME["float32"]
FLOAT16 = BY_NAME["float16"]
BFLOAT16 = BY_NAME["bfloat16"]
INT64 = BY_NAME["int64"]
INT32 = BY_NAME["int32"]
BOOL = BY_NAME["bool"]
# The float types kernels compute in, by name: what the tactics and precision passes accept as "float".
FLOAT_NAMES = ("float16", "bfloat16", "float32")
# 8-bit integer codes: what quantized layers read and write (float8 is named apart)
CODE_NAMES = ("int8", "uint8")

# torch dtype -> DType; the sub-byte types alias int8/uint8/float32 in torch, so the full types win.
_BY_TORCH: dict[torch.dtype, DType] = {}
for _d in reversed(_ALL):
    if _d.torch_name is not None:
        _BY_TORCH[getattr(torch, _d.torch_name)] = _d


def from_onnx(code: int) -> DType:
    try:
        return BY_ONNX[code]
    except KeyError:
        raise TypeError(f"ONNX element type {code} is not supported by kiln") from None


def from_name(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise TypeError(f"unknown dtype name {name!r}; known: {sorted(BY_NAME)}") from None


def from_torch(dtype: torch.dtype) -> DType:
    return _BY_TORCH[dtype]


def from_numpy(dtype: np.dtype) -> DType:
    return from_torch(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)


def onnx_to_torch(code: int) -> torch.dtype:
    return from_onnx(code).torch
