"""Element-wise and activation reference ops against onnx's ReferenceEvaluator, plus
registry-wide checks (every op documented). nn/reduce/tensor ops have their own files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx_oracle import Case, Rand, check_case, run_kiln

from kiln.kernels.reference import supported_ops

R = Rand(seed=1)
X = R.f(2, 3, 4)  # a generic float input
HALVES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6], dtype=np.float32)
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 2.0], dtype=np.float32)

_FLOAT_UNARY = ["Neg", "Abs", "Exp", "Sin", "Cos", "Tan", "Atan", "Sinh", "Cosh", "Asinh", "Erf",
                "Floor", "Ceil", "Sign", "Relu", "Sigmoid", "Softplus", "Softsign", "Tanh", "Mish",
                "HardSwish", "Identity"]

CASES = [Case(op, (X,)) for op in _FLOAT_UNARY] + [
    Case("Sqrt", (R.f(3, 4, lo=0.0),)),
    Case("Log", (R.f(3, 4, lo=0.01),)),
    Case("Reciprocal", (R.f(3, 4, lo=0.5),)),
    Case("Asin", (R.f(3, 4, lo=-0.99, hi=0.99),)),
    Case("Acos", (R.f(3, 4, lo=-0.99, hi=0.99),)),
    Case("Atanh", (R.f(3, 4, lo=-0.9, hi=0.9),)),
    Case("Acosh", (R.f(3, 4, lo=1.0, hi=5.0),)),
    Case("Round", (HALVES,), name="half_to_even"),
    Case("IsNaN", (SPECIAL,)),
    Case("IsInf", (SPECIAL,)),
    Case("IsInf", (SPECIAL,), {"detect_negative": 0}, name="positive_only"),
    Case("IsInf", (SPECIAL,), {"detect_positive": 0}, name="negative_only"),
    Case("Neg", (R.i(3, 4),), name="int32"),
    Case("Abs", (R.i(3, 4, dtype=np.int64),), name="int64"),
    Case("Sign", (R.i(3, 4),), name="int32"),
    Case("Relu", (R.i(3, 4, dtype=np.int8),), name="int8"),
    Case("Exp", (R.f(3, 4, dtype=np.float64),), name="float64"),
    Case("Tanh", (R.f(3, 4, dtype=np.float16),), name="float16"),
    Case("LeakyRelu", (X,), {"alpha": 0.2}),
    Case("PRelu", (X, R.f(3, 1)), name="broadcast_slope"),
    Case("Elu", (X,), {"alpha": 0.7}),
    Case("Selu", (X,)),
    Case("Celu", (X,), {"alpha": 1.5}),
    Case("HardSigmoid", (X,), {"alpha": 0.3, "beta": 0.4}),
    Case("ThresholdedRelu", (X,), {"alpha": 0.5}),
    Case("Gelu", (X,)),
    Case("Gelu", (X,), {"approximate": "tanh"}, name="tanh"),
    Case("Shrink", (X,), {"bias": 0.5, "lambd": 1.0}),
    Case("Clip", (X, np.float32(-1), np.float32(1.5))),
    Case("Clip", (X, None, np.float32(0.5)), name="max_only"),
    Case("Clip", (X,), name="no_bounds"),
    Case("Clip", (R.i(3, 4), np.int32(-3)), name="int32_min_only"),
    Case("Add", (X, R.f(4))),
    Case("Sub", (X, R.f(3, 1))),
    Case("Mul", (X, R.f(2, 1, 4))),
    Case("Div", (X, R.f(4, lo=0.5))),
    Case("Div", (R.i(4, 5, lo=-20, hi=20), R.i(5, lo=1, hi=6) * np.int32(-1) ** R.i(5, lo=0, hi=2)),
         name="int_truncates"),
    Case("Add", (R.i(3, 4, dtype=np.int64), R.i(1, 4, dtype=np.int64)), name="int64"),
    Case("Mod", (R.i(4, 5, lo=-20, hi=20), R.i(5, lo=1, hi=6) * np.int32(-1) ** R.i(5, lo=0, hi=2))),
    Case("Mod", (R.i(4, 5, lo=-20, hi=20), R.i(5, lo=1, hi=6)), {"fmod": 1}, name="fmod_int"),
    Case("Mod", (X, R.f(4, lo=0.5)), {"fmod": 1}, name="fmod_float"),
    Case("Pow", (R.f(3, 4, lo=0.1), R.f(4))),
    Case("Pow", (X, np.array(2, dtype=np.int64)), name="int_exponent"),
    Case("Pow", (R.i(3, 4, lo=-5, hi=5), np.array([0, 1, 2, 3], dtype=np.int32)), name="int"),
    Case("Max", (X, R.f(4), R.f(3, 1))),
    Case("Min", (X, R.f(4), R.f(3, 1))),
    Case("Sum", (X, R.f(4), R.f(3, 1))),
    Case("Mean", (X, R.f(4), R.f(3, 1))),
    Case("Max", (R.i(3, 4),), name="single_int"),
    Case("Equal", (R.i(3, 4, lo=0, hi=3), R.i(4, lo=0, hi=3))),
    Case("Greater", (X, R.f(4))),
    Case("GreaterOrEqual", (R.i(3, 4, lo=0, hi=3), R.i(4, lo=0, hi=3))),
    Case("Less", (X, R.f(4))),
    Case("LessOrEqual", (R.i(3, 4, lo=0, hi=3), R.i(4, lo=0, hi=3))),
    Case("Not", (R.b(3, 4),)),
    Case("And", (R.b(3, 4), R.b(4))),
    Case("Or", (R.b(3, 4), R.b(4))),
    Case("Xor", (R.b(3, 4), R.b(4))),
    Case("BitShift", (R.i(3, 4, lo=0, hi=60, dtype=np.uint8), R.i(4, lo=0, hi=3, dtype=np.uint8)),
         {"direction": "LEFT"}),
    Case("BitShift", (R.i(3, 4, lo=0, hi=250, dtype=np.uint8), R.i(4, lo=0, hi=7, dtype=np.uint8)),
         {"direction": "RIGHT"}, name="right"),
    Case("BitwiseAnd", (R.i(3, 4, lo=-99, hi=99), R.i(4, lo=-99, hi=99))),
    Case("BitwiseOr", (R.i(3, 4, lo=-99, hi=99), R.i(4, lo=-99, hi=99))),
    Case("BitwiseXor", (R.i(3, 4, lo=0, hi=255, dtype=np.uint8), R.i(4, lo=0, hi=255, dtype=np.uint8))),
    Case("BitwiseNot", (R.i(3, 4, lo=-99, hi=99),)),
    Case("Where", (R.b(3, 4), R.f(3, 4), R.f(4))),
    Case("Where", (R.b(1, 4), R.i(3, 1, dtype=np.int64), R.i(4, dtype=np.int64)), name="int64"),
    Case("Cast", (R.f(3, 4, lo=-9, hi=9),), {"to": TensorProto.INT32}, name="float_to_int_truncates"),
    Case("Cast", (R.i(3, 4),), {"to": TensorProto.FLOAT}, name="int_to_float"),
    Case("Cast", (np.array([0.0, -0.0, 1.5, np.nan], np.float32),), {"to": TensorProto.BOOL}, name="to_bool"),
    Case("Cast", (R.b(3, 4),), {"to": TensorProto.FLOAT16}, name="bool_to_half"),
    Case("Cast", (X,), {"to": TensorProto.DOUBLE}, name="to_double"),
    Case("Cast", (R.i(3, 4, dtype=np.int64),), {"to": TensorProto.UINT8}, name="int64_to_uint8"),
    Case("Cast", (np.array([1.0, -3.3, 500.0, -1e6, np.inf, np.nan], np.float32),),
         {"to": TensorProto.FLOAT8E4M3FN}, name="fp8_e4m3_saturate"),
    Case("Cast", (np.array([1.0, -3.3, 70000.0, np.inf, np.nan], np.float32),),
         {"to": TensorProto.FLOAT8E5M2}, name="fp8_e5m2_saturate"),
    Case("Cast", (np.array([1.0, -3.3, 500.0, -1e6, np.nan], np.float32),),
         {"to": TensorProto.FLOAT8E4M3FN, "saturate": 0}, name="fp8_e4m3_no_saturate"),
    Case("CastLike", (R.f(3, 4, lo=-9, hi=9), np.zeros(1, np.int64))),
    Case("Dropout", (X,), outputs=2),
    Case("Dropout", (X, np.float32(0.3), np.bool_(False)), name="inference_mode"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


def test_every_op_has_a_docstring() -> None:
    ops = supported_ops()
    assert len(ops) > 100
    missing = [name for name, op in ops.items() if len(op.doc) < 8]
    assert not missing, f"reference ops without a one-line docstring: {missing}"


def test_dropout_returns_mask_for_two_output_nodes() -> None:
    (y, mask) = run_kiln(Case("Dropout", (X,)))
    assert torch.equal(y, torch.from_numpy(X)) and mask.dtype == torch.bool and bool(mask.all())


def test_bfloat16_math_follows_float32() -> None:
    x = torch.from_numpy(X)
    for op in ("Gelu", "Sigmoid", "HardSwish", "Erf"):
        got = run_kiln(Case(op, (X,)))[0]
        from kiln.kernels.reference import lookup
        low = lookup(op).fn(x.to(torch.bfloat16))
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), got, rtol=2e-2, atol=2e-2)
