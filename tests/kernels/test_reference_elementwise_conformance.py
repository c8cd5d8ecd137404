"""Element-wise, cast, activation and reduction reference ops on the cases the ONNX node
tests stress: unsigned integers torch has few kernels for, integer division by zero,
float8/float4/e8m0/int4 casts, BitCast, Swish and reductions over empty sets."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from onnx_oracle import Case, build_model, check_case, run_kiln

from kiln.kernels.reference.registry import lookup

U64_BIG = np.array([2**64 - 1, 2**63 + 5, 2**63, 12345678901234567890, 7, 0], dtype=np.uint64)
U64_DIV = np.array([3, 2**63 + 1, 2**64 - 1, 10, 2**63, 9], dtype=np.uint64)
U32 = np.array([4294967295, 2**31 + 3, 7, 0, 100], dtype=np.uint32)
U16 = np.array([65535, 40000, 7, 0, 100], dtype=np.uint16)

CASES = [
    Case("Add", (U16, U16[::-1].copy()), name="uint16_wraps"),
    Case("Sub", (U32, U32[::-1].copy()), name="uint32_wraps"),
    Case("Mul", (U64_BIG, U64_DIV), name="uint64_wraps"),
    Case("Add", (U64_BIG, U64_DIV), name="uint64_wraps"),
    Case("Div", (U64_BIG, U64_DIV), name="uint64_large"),
    Case("Mod", (U64_BIG, U64_DIV), name="uint64_large"),
    Case("Div", (U32, np.array([2, 3, 0, 5, 7], np.uint32)), name="uint32_by_zero"),
    Case("Div", (np.array([5, -7, 3, -128], np.int8), np.array([0, 2, 0, -1], np.int8)), name="int8_by_zero"),
    Case("Mod", (np.array([5, -7, 3, 4], np.int32), np.array([0, 3, -2, 0], np.int32)), name="int32_by_zero"),
    Case("Mod", (np.array([5, -7, 3, 4], np.int64), np.array([0, 3, -2, 0], np.int64)), {"fmod": 1},
         name="int64_fmod_by_zero"),
    Case("Greater", (U64_BIG, U64_DIV), name="uint64"),
    Case("LessOrEqual", (U64_BIG, U64_DIV), name="uint64"),
    Case("GreaterOrEqual", (U16, U16[::-1].copy()), name="uint16"),
    Case("Less", (U32, U32[::-1].copy()), name="uint32"),
    Case("Max", (U64_BIG, U64_DIV, np.array([2**63 + 2], np.uint64)), name="uint64"),
    Case("Min", (U32, U32[::-1].copy()), name="uint32"),
    Case("BitShift", (U64_BIG, np.array([1, 3, 63, 0, 2, 5], np.uint64)), {"direction": "RIGHT"},
         name="uint64_right"),
    Case("BitShift", (U64_BIG, np.array([1, 3, 63, 0, 2, 5], np.uint64)), {"direction": "LEFT"},
         name="uint64_left"),
    Case("BitShift", (U16, np.array([1, 3, 15, 0, 2], np.uint16)), {"direction": "LEFT"}, name="uint16_left"),
    Case("BitShift", (U32, np.array([1, 3, 31, 0, 2], np.uint32)), {"direction": "RIGHT"}, name="uint32_right"),
    Case("BitwiseNot", (U16,), name="uint16"),
    Case("BitwiseNot", (U64_BIG,), name="uint64"),
    Case("Clip", (U32, np.uint32(5), np.uint32(2**31 + 1)), opset=13, name="uint32"),
    Case("Clip", (np.array([-128, 5, 127], np.int8), np.int8(-3)), opset=13, name="int8_min_only"),
    Case("ReduceMax", (np.zeros((2, 0, 4), np.float32), np.array([1], np.int64)), opset=20, name="empty"),
    Case("ReduceMin", (np.zeros((2, 0, 4), np.float32), np.array([1], np.int64)), opset=20, name="empty"),
    Case("ReduceMax", (np.array([[True, False], [False, False]]), np.array([1], np.int64)), opset=20,
         name="bool"),
    Case("ReduceMin", (U64_BIG.reshape(2, 3), np.array([1], np.int64)), {"keepdims": 0}, opset=20,
         name="uint64"),
    Case("Swish", (np.array([-3.0, -0.5, 0.0, 2.0, 5.0], np.float32),), {"alpha": 0.7}, opset=24),
    Case("Pow", (np.array([2, 3, 65535], np.uint32), np.array([3, 2, 2], np.uint32)), name="uint32"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_against_onnx_reference(case: Case) -> None:
    with np.errstate(divide="ignore", over="ignore"):
        check_case(case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_against_onnx_reference_cuda(case: Case) -> None:
    with np.errstate(divide="ignore", over="ignore"):
        check_case(case, device="cuda")


# ----------------------------------------------------------------------------- casts

SPECIAL = np.array([0.0, -0.0, 0.3, -1.7, 3.14159, 100.5, 240.0, 247.9, 250.0, 448.0, 460.0, 470.0,
                    1e4, 57344.0, 61439.0, 70000.0, 1e9, np.inf, -np.inf, np.nan, 1e-7, -2.5e-3],
                   dtype=np.float32)


def _reference(x: np.ndarray, to: int, opset: int = 25, **attrs: object) -> np.ndarray:
    case = Case("Cast", (x,), {"to": to, **attrs}, opset=opset)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(ReferenceEvaluator(build_model(case)).run(None, {"in0": x})[0])


def _kiln_cast(x: np.ndarray, to: int, **attrs: object) -> torch.Tensor:
    # Computed on the GPU too where there is one: both must give the same bits.
    out = lookup("Cast").fn(torch.from_numpy(x), to=to, **attrs)
    if torch.cuda.is_available():
        on_gpu = lookup("Cast").fn(torch.from_numpy(x).cuda(), to=to, **attrs).cpu()
        assert on_gpu.dtype == out.dtype
        np.testing.assert_array_equal(on_gpu.float().numpy(), out.float().numpy())
    return out


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("to, dtype", [(TensorProto.FLOAT8E4M3FN, torch.float8_e4m3fn),
                                       (TensorProto.FLOAT8E5M2, torch.float8_e5m2),
                                       (TensorProto.FLOAT8E4M3FNUZ, torch.float8_e4m3fnuz),
                                       (TensorProto.FLOAT8E5M2FNUZ, torch.float8_e5m2fnuz)])
def test_cast_float8(to: int, dtype: torch.dtype, saturate: int) -> None:
    with np.errstate(over="ignore"):
        half = SPECIAL.astype(np.float16)
    for x in (SPECIAL, half):
        got = _kiln_cast(x, to, saturate=saturate)
        assert got.dtype == dtype
        want = _reference(x, to, saturate=saturate).astype(np.float32)
        np.testing.assert_array_equal(got.float().numpy(), want)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_float8e8m0(saturate: int, round_mode: str) -> None:
    x = np.concatenate([np.abs(SPECIAL), np.array([1.5, 1.75, 3.0, 2.0**127 * 1.5, 2.0**-127, 1e-40],
                                                  np.float32)])
    got = _kiln_cast(x, TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)
    assert got.dtype == torch.float32  # e8m0 is held in float32
    want = _reference(x, TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))


def test_cast_float4e2m1() -> None:
    x = np.concatenate([SPECIAL[np.isfinite(SPECIAL)],
                        np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.5, 7.0, -7.0], np.float32)])
    got = _kiln_cast(x, TensorProto.FLOAT4E2M1)
    assert got.dtype == torch.float32
    want = _reference(x, TensorProto.FLOAT4E2M1).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), want)
    # Values already on the grid stay; a round trip through the type is exact.
    np.testing.assert_array_equal(_kiln_cast(got.numpy(), TensorProto.FLOAT4E2M1).numpy(), want)


@pytest.mark.parametrize("to, held", [(TensorProto.INT4, torch.int8), (TensorProto.UINT4, torch.uint8),
                                      (TensorProto.INT2, torch.int8), (TensorProto.UINT2, torch.uint8)])
def test_cast_sub_byte_ints(to: int, held: torch.dtype) -> None:
    floats = np.array([-9.0, -8.7, -1.5, 0.5, 1.9, 7.9, 8.0, 9.0, 15.0, 17.0, 100.0], np.float32)
    ints = np.array([-9, -8, -1, 0, 3, 7, 8, 15, 16, 200, 300], np.int32)
    for x in (floats, ints):
        got = _kiln_cast(x, to)
        assert got.dtype == held
        want = _reference(x, to).astype(np.int8 if held == torch.int8 else np.uint8)
        np.testing.assert_array_equal(got.numpy(), want)


def test_cast_from_float8_and_unsigned() -> None:
    x = torch.tensor([1.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    np.testing.assert_array_equal(lookup("Cast").fn(x, to=TensorProto.INT32).numpy(), [1, -2, 448])
    np.testing.assert_array_equal(
        lookup("Cast").fn(x, to=TensorProto.FLOAT8E5M2FNUZ).float().numpy(), [1.5, -2.0, 448.0])
    u = torch.from_numpy(U64_BIG)
    np.testing.assert_array_equal(lookup("Cast").fn(u, to=TensorProto.INT64).numpy(), U64_BIG.astype(np.int64))


# ----------------------------------------------------------------------------- BitCast


def _bit_cast(x: torch.Tensor, to: int) -> torch.Tensor:
    return lookup("BitCast").fn(x, to=to)


def test_bitcast_plain_types() -> None:
    f = np.array([1.0, -2.5, np.inf, 0.0], np.float32)
    np.testing.assert_array_equal(_bit_cast(torch.from_numpy(f), TensorProto.INT32).numpy(), f.view(np.int32))
    np.testing.assert_array_equal(_bit_cast(torch.from_numpy(U16), TensorProto.INT16).numpy(), U16.view(np.int16))
    b = np.array([True, False, True])
    out = _bit_cast(torch.from_numpy(b), TensorProto.UINT8)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), [1, 0, 1])
    h = torch.tensor([1.0, -3.0], dtype=torch.bfloat16)
    np.testing.assert_array_equal(_bit_cast(h, TensorProto.UINT16).to(torch.int64).numpy(), [0x3F80, 0xC040])


def test_bitcast_widened_types() -> None:
    i4 = torch.tensor([-8, -1, 0, 7], dtype=torch.int8)
    np.testing.assert_array_equal(_bit_cast(i4, TensorProto.UINT4).numpy(), [8, 15, 0, 7])
    u4 = torch.arange(16, dtype=torch.uint8)
    fp4 = _bit_cast(u4, TensorProto.FLOAT4E2M1)
    want = np.arange(16, dtype=np.uint8).view(ml_dtypes.uint4).astype(np.uint8)
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    np.testing.assert_array_equal(fp4.numpy(), np.concatenate([grid, -grid]))
    np.testing.assert_array_equal(_bit_cast(fp4, TensorProto.UINT4).numpy(), want)
    np.testing.assert_array_equal(_bit_cast(fp4, TensorProto.INT4).numpy(), [*range(8), *range(-8, 0)])
    raw = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    e8 = _bit_cast(raw, TensorProto.FLOAT8E8M0)
    want_e8 = raw.numpy().view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    np.testing.assert_array_equal(e8.numpy(), want_e8)
    np.testing.assert_array_equal(_bit_cast(e8, TensorProto.UINT8).numpy(), raw.numpy())
    fp8 = _bit_cast(e8, TensorProto.FLOAT8E4M3FN)
    assert fp8.dtype == torch.float8_e4m3fn
    np.testing.assert_array_equal(fp8.view(torch.uint8).numpy(), raw.numpy())


# ----------------------------------------------------------------------------- misc


def test_identity_passes_anything_through() -> None:
    fn = lookup("Identity").fn
    seq = [torch.ones(2), torch.zeros(3)]
    assert fn(seq) is seq
    assert fn(None) is None
    assert fn() is None
    t = torch.arange(3)
    assert fn(t) is t


def test_dropout_inference_and_zero_ratio() -> None:
    x = torch.randn(3, 4)
    fn = lookup("Dropout").fn
    y, mask = fn(x)
    assert y is x and mask.dtype == torch.bool and bool(mask.all())
    y, mask = fn(x, torch.tensor(0.0), torch.tensor(True))
    assert torch.equal(y, x) and bool(mask.all())


def test_castlike_float8_saturation() -> None:
    x = torch.tensor([1e6, -np.inf, 0.5])
    like = torch.zeros(1, dtype=torch.float8_e4m3fnuz)
    got = lookup("CastLike").fn(x, like)
    np.testing.assert_array_equal(got.float().numpy(), [240.0, -240.0, 0.5])
    got = run_kiln(Case("CastLike", (np.array([1e6], np.float32), np.zeros(1, np.float32))))[0]
    assert got.dtype == torch.float32
