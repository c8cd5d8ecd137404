"""Quantization reference ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv) against onnx's ReferenceEvaluator.

The oracle speaks ml_dtypes (float8, int4, float4 ...), which torch cannot take from numpy,
so inputs go through kiln's own numpy -> torch conversion and outputs are compared as
float64 values plus the kiln dtype the oracle's type maps to.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx_oracle import Case, Rand, expected_outputs

from kiln.ir import dtypes
from kiln.kernels.reference import lookup
from kiln.runtime.arrays import array_to_tensor

R = Rand(seed=3)
X = R.f(3, 4, lo=-40.0, hi=40.0)
HALVES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5], dtype=np.float32)
F8 = np.array([0.0, -0.0, 1.0, 0.3, 300.0, 449.0, 463.0, 464.0, 465.0, 600.0, 1e5, -1e5,
               57000.0, 61439.0, 61440.0, 70000.0, 239.0, 247.0, 248.0, np.inf, -np.inf, np.nan],
              dtype=np.float32)
FP4 = np.array([0.0, -0.0, 0.2, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.5, 7.0, 100.0, -2.5, -0.25],
               dtype=np.float32)
S = np.float32(0.5)


def u8(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.uint8)


def i8(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int8)


def ml(v: list[float], dt: type) -> np.ndarray:
    return np.array(v, dtype=np.float32).astype(dt)


CASES = [
    # QuantizeLinear
    Case("QuantizeLinear", (HALVES, S), name="uint8_default_rne"),
    Case("QuantizeLinear", (HALVES, S, i8(-3)), name="int8_zp"),
    Case("QuantizeLinear", (X, np.float32([2.0, 3.0, 4.0]), u8(10, 128, 250)), {"axis": 0}, name="per_axis"),
    Case("QuantizeLinear", (X, np.float32([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), i8(*[1] * 6).reshape(3, 2)),
         {"axis": 1, "block_size": 2}, name="blocked"),
    Case("QuantizeLinear", (R.f(2, 5), np.float32([[0.1, 0.2], [0.3, 0.4]])),
         {"axis": 1, "block_size": 3, "output_dtype": TensorProto.INT8}, name="blocked_ragged"),
    Case("QuantizeLinear", (X * 1000, np.float32(0.5), np.array(7, np.int16)), name="int16"),
    Case("QuantizeLinear", (X * 1000, np.float32(0.5), np.array(300, np.uint16)), name="uint16"),
    Case("QuantizeLinear", (X, np.float32([2.0, 3.0, 4.0])), {"axis": 0, "output_dtype": TensorProto.INT4},
         name="int4"),
    Case("QuantizeLinear", (X, np.float32(3.0)), {"output_dtype": TensorProto.UINT4}, name="uint4"),
    Case("QuantizeLinear", (X, np.float32(9.0)), {"output_dtype": TensorProto.INT2}, name="int2"),
    Case("QuantizeLinear", (X, np.float32(9.0)), {"output_dtype": TensorProto.UINT2}, name="uint2"),
    Case("QuantizeLinear", (FP4, np.float32(1.0)), {"output_dtype": TensorProto.FLOAT4E2M1}, name="float4"),
    Case("QuantizeLinear", (X, np.float32([2.0, 3.0, 4.0]), ml([0, 0, 0], ml_dtypes.float4_e2m1fn)),
         {"axis": 0}, name="float4_zp"),
    Case("QuantizeLinear", (R.f(3, 4), np.float32(0.01), u8(3)), {"precision": TensorProto.FLOAT16}, opset=25,
         name="precision"),
    *[Case("QuantizeLinear", (F8, np.float32(1.0)), {"output_dtype": t, "saturate": sat}, name=f"fp8_{t}_{sat}")
      for t in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E4M3FNUZ,
                TensorProto.FLOAT8E5M2FNUZ) for sat in (0, 1)],
    Case("QuantizeLinear", (F8[:12], np.float32(2.0), ml([0], ml_dtypes.float8_e4m3fn)), name="fp8_zp"),
    # DequantizeLinear
    Case("DequantizeLinear", (i8(-128, -1, 0, 5, 127), S, i8(3)), name="int8"),
    Case("DequantizeLinear", (R.i(1, 3, 2, 2, lo=0, hi=255, dtype=np.uint8), np.float32([0.5, 1.0, 2.0]),
                              u8(1, 128, 255)), name="per_axis"),
    Case("DequantizeLinear", (R.i(1, 4, 3, 2, lo=0, hi=255, dtype=np.uint8), R.f(1, 2, 3, 2, lo=0.1, hi=2.0),
                              R.i(1, 2, 3, 2, lo=0, hi=255, dtype=np.uint8)), {"axis": 1, "block_size": 2},
         name="blocked"),
    Case("DequantizeLinear", (np.array([-32768, 3, 32767], np.int16), np.float16(0.25), np.array(-7, np.int16)),
         name="int16_fp16_scale"),
    Case("DequantizeLinear", (np.array([0, 65535, 17], np.uint16), np.float32(0.5)),
         {"output_dtype": TensorProto.FLOAT16}, opset=25, name="uint16_output_dtype"),
    Case("DequantizeLinear", (np.array([-2**31, 5, 2**31 - 1], np.int32), np.float32(1e-3)), name="int32"),
    Case("DequantizeLinear", (ml([-8, 7, 0, 3], ml_dtypes.int4), np.float32(2.0), ml([1], ml_dtypes.int4)),
         {"axis": 0}, name="int4"),
    Case("DequantizeLinear", (ml([0, 3, 2], ml_dtypes.uint2), np.float32(2.0), ml([1], ml_dtypes.uint2)),
         {"axis": 0}, name="uint2"),
    Case("DequantizeLinear", (ml([-6, 0.5, 3, 1.5], ml_dtypes.float4_e2m1fn), np.float32(3.0)), name="float4"),
    Case("DequantizeLinear", (ml([0, 0.5, -448, 96], ml_dtypes.float8_e4m3fn), np.float16(2.0)), name="e4m3fn"),
    Case("DequantizeLinear", (ml([0, 0.5, 57344, 96], ml_dtypes.float8_e5m2), np.float32(2.0),
                              ml([0], ml_dtypes.float8_e5m2)), name="e5m2_zp"),
    # DynamicQuantizeLinear
    Case("DynamicQuantizeLinear", (R.f(3, 4),), outputs=3, name="mixed"),
    Case("DynamicQuantizeLinear", (R.f(2, 5, lo=1.0, hi=9.0),), outputs=3, name="positive"),
    Case("DynamicQuantizeLinear", (R.f(2, 5, lo=-9.0, hi=-1.0),), outputs=3, name="negative"),
    Case("DynamicQuantizeLinear", (np.zeros((2, 2), np.float32),), outputs=3, name="zeros"),
    # MatMulInteger
    Case("MatMulInteger", (R.i(4, 5, lo=0, hi=255, dtype=np.uint8), R.i(5, 3, lo=0, hi=255, dtype=np.uint8),
                           u8(12), u8(0, 255, 7)), name="uint8_per_column"),
    Case("MatMulInteger", (R.i(2, 3, 6, lo=-128, hi=127, dtype=np.int8), R.i(6, 2, lo=0, hi=255, dtype=np.uint8)),
         name="int8_uint8_batched"),
    # QLinearMatMul
    *[Case("QLinearMatMul", (R.i(*sa, lo=lo, hi=lo + 255, dtype=dt), sc(0.05), dt(lo + 100),
                             R.i(*sb, lo=lo, hi=lo + 255, dtype=dt), sc(0.03), dt(lo + 90), sc(0.9), dt(lo + 128)),
           name=f"{dt.__name__}_{sc.__name__}_{len(sa)}d")
      for dt, lo in ((np.uint8, 0), (np.int8, -128)) for sc in (np.float32, np.float16)
      for sa, sb in (((2, 4), (4, 3)), ((2, 2, 4), (2, 4, 3)))],
    # ConvInteger
    Case("ConvInteger", (R.i(1, 2, 5, 5, lo=0, hi=255, dtype=np.uint8), R.i(3, 2, 2, 2, lo=0, hi=255, dtype=np.uint8),
                         u8(100), u8(1, 128, 200)), {"pads": [1, 0, 1, 2]}, name="per_channel_pads"),
    Case("ConvInteger", (R.i(1, 1, 4, 4, lo=-128, hi=127, dtype=np.int8), R.i(2, 1, 3, 3, lo=-128, hi=127,
                                                                              dtype=np.int8)),
         {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, name="int8_same"),
    # QLinearConv
    Case("QLinearConv", (R.i(1, 2, 6, 6, lo=0, hi=255, dtype=np.uint8), np.float32(0.02), u8(120),
                         R.i(4, 2, 3, 3, lo=0, hi=255, dtype=np.uint8), np.float32([0.01, 0.02, 0.03, 0.04]),
                         u8(128, 120, 130, 125), np.float32(0.5), u8(100), R.i(4, lo=-500, hi=500)),
         {"pads": [1, 1, 1, 1]}, name="uint8_per_channel_bias"),
    Case("QLinearConv", (R.i(1, 4, 5, 5, lo=-128, hi=127, dtype=np.int8), np.float32(0.05), i8(-3),
                         R.i(4, 1, 3, 3, lo=-128, hi=127, dtype=np.int8), np.float32(0.01), i8(0),
                         np.float32(0.3), i8(5)),
         {"group": 4, "strides": [2, 2]}, name="int8_depthwise"),
]


def _run_kiln(case: Case, device: str) -> tuple[torch.Tensor, ...]:
    inputs = list(case.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    tensors = [None if a is None else array_to_tensor(np.asarray(a)).to(device) for a in inputs]
    result = lookup(case.op).fn(*tensors, **case.attrs)
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def _values(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a).astype(np.float64)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    expected = expected_outputs(case)
    got = _run_kiln(case, device)
    assert len(got) >= case.outputs
    for k, (g, e) in enumerate(zip(got, expected)):
        want = dtypes.from_onnx(helper.np_dtype_to_tensor_dtype(np.asarray(e).dtype)).torch
        assert g.dtype == want, f"{case.id} output {k}: dtype {g.dtype} != {want}"
        assert tuple(g.shape) == np.shape(e), f"{case.id} output {k}: shape {tuple(g.shape)} != {np.shape(e)}"
        np.testing.assert_allclose(_values(g), _values(e), rtol=1e-6, atol=0, equal_nan=True,
                                   err_msg=f"{case.id} output {k}")


def test_quantize_saturates_sub_byte_ranges() -> None:
    q = lookup("QuantizeLinear").fn
    x = torch.tensor([-100.0, -2.5, -1.5, 0.5, 1.5, 100.0])
    assert q(x, torch.tensor(1.0), output_dtype=TensorProto.INT4).tolist() == [-8, -2, -2, 0, 2, 7]
    assert q(x, torch.tensor(1.0), torch.tensor(1, dtype=torch.uint8), output_dtype=TensorProto.UINT2).tolist() == \
        [0, 0, 0, 1, 3, 3]


def test_quantize_float4_grid() -> None:
    got = lookup("QuantizeLinear").fn(torch.from_numpy(FP4), torch.tensor(1.0), output_dtype=TensorProto.FLOAT4E2M1)
    assert got.dtype == torch.float32
    assert got.tolist() == FP4.astype(ml_dtypes.float4_e2m1fn).astype(np.float32).tolist()


def test_integer_accumulation_is_exact() -> None:
    # 4096 products of 255 * 255 sum to 266342400: exact int32, beyond float32's 2^24.
    a = torch.full((2, 4096), 255, dtype=torch.uint8)
    y = lookup("MatMulInteger").fn(a, a.t().contiguous())
    assert y.dtype == torch.int32 and int(y[0, 0]) == 255 * 255 * 4096 and int(y[1, 1]) == 255 * 255 * 4096
