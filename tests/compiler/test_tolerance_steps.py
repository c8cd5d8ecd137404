"""tolerance.py's one-step rule for quantized layers (kiln::QMatMul, kiln::QConv) and its exact
comparison of float8 outputs everywhere else."""
from __future__ import annotations

import torch

from kiln.compiler.tolerance import QUANTIZED_OPS, STEP_FRACTION, mismatch

G = torch.Generator().manual_seed(0)
Q = "kiln::QMatMul"


def _int8(n: int = 4000) -> torch.Tensor:
    return torch.randint(-120, 120, (n,), generator=G, dtype=torch.int32).to(torch.int8)


def test_quantized_ops_allow_one_step_in_a_few_elements():
    assert {"kiln::QMatMul", "kiln::QConv"} <= QUANTIZED_OPS
    r = _int8()
    allowed = int(r.numel() * STEP_FRACTION)                     # 4 of 4000
    c = r.clone()
    c[:allowed] += 1
    assert mismatch(c, r, Q) is None
    assert mismatch(c, r, "kiln::QConv") is None
    c[allowed] -= 1                                              # one more: too many
    assert "more than the 4" in mismatch(c, r, Q)


def test_two_steps_or_other_ops_are_exact():
    r = _int8()
    c = r.clone()
    c[7] += 2
    assert "up to 2 steps" in mismatch(c, r, Q)
    c = r.clone()
    c[7] += 1
    assert mismatch(c, r) is not None                            # no op: exact
    assert mismatch(c, r, "QuantizeLinear") is not None          # QuantizeLinear is bit-exact
    assert mismatch(r.clone(), r, "QuantizeLinear") is None


def test_small_outputs_allow_one_element():
    r = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert mismatch(torch.tensor([1, 3, 3], dtype=torch.uint8), r, Q) is None
    assert mismatch(torch.tensor([2, 3, 3], dtype=torch.uint8), r, Q) is not None
    # uint8 0 vs 255 is 255 steps, not a wrap-around neighbour.
    assert mismatch(torch.tensor([1, 2, 255], dtype=torch.uint8), torch.tensor([1, 2, 0], dtype=torch.uint8),
                    Q) is not None


def test_float8_steps_are_neighbouring_grid_values():
    f8 = torch.float8_e4m3fn
    r = torch.tensor([1.0, 1.125, 15.0, -2.0, 0.0, 448.0, 2 ** -9] * 200).to(f8)
    # Neighbours: 1.125 -> 1.25, 15 -> 16 (across a binade), -2 -> -1.875, 0 -> 2^-9, 448 -> 416.
    for i, v in [(1, 1.25), (2, 16.0), (3, -1.875), (4, 2 ** -9), (5, 416.0), (6, 0.0)]:
        c = r.clone()
        c[i] = torch.tensor(v).to(f8)
        assert mismatch(c, r, Q) is None, v
        assert mismatch(c, r) is not None                        # exact elsewhere
    c = r.clone()
    c[2] = torch.tensor(-15.0).to(f8)                            # the sign flipped
    assert mismatch(c, r, Q) is not None


def test_float8_outputs_of_quantized_ops_allow_float16_sized_errors():
    """More than one step passes when the error is within the float16 tolerance of the tensor's
    scale (float8's fine grid near zero); beyond it, it fails, one step always passes."""
    f8 = torch.float8_e4m3fn
    r = torch.tensor([8.0, 0.01, 0.5, -3.0] * 100).to(f8)         # max |r| = 8: atol x max = 0.08
    c = r.clone()
    c[1] = torch.tensor(0.05).to(f8)                             # many subnormal steps, error 0.04
    assert mismatch(c, r, Q) is None
    assert mismatch(c, r) is not None                            # exact outside quantized ops
    c[2] = torch.tensor(0.625).to(f8)                            # 2 steps, error 0.125 > 0.08 + 0.005
    assert "up to 2 steps" in mismatch(c, r, Q) and "in 1 elements" in mismatch(c, r, Q)
    c = r.clone()
    c[:] = torch.tensor(9.0).to(f8)                              # 8 -> 9: one step everywhere
    c[1::4], c[2::4], c[3::4] = r[1::4], r[2::4], r[3::4]
    assert mismatch(c, r, Q) is None
    assert mismatch(r.float().mul(2).to(f8), r, Q) is not None   # a wrong scale: 8 steps


def test_float8_exact_compare_treats_nan_and_signed_zero_like_floats():
    f8 = torch.float8_e4m3fn
    r = torch.tensor([1.0, float("nan"), 0.0, 3.0]).to(f8)
    assert mismatch(r.clone(), r) is None                        # torch.equal would say NaN != NaN
    assert mismatch(torch.tensor([1.0, 5.0, -0.0, 3.0]).to(f8), r) is None   # NaN don't-care, -0 == 0
    assert "non-finite" in mismatch(torch.tensor([float("nan"), 1.0, 0.0, 3.0]).to(f8), r)
    assert mismatch(torch.tensor([1.0, 1.0, 0.0, 3.5]).to(f8), r) is not None


def test_float_outputs_of_quantized_ops_use_the_float_tolerance():
    r = torch.randn(64, generator=G).half()
    assert mismatch((r.float() * 1.005).half(), r, Q) is None
    assert mismatch((r.float() * 1.05).half(), r, Q) is not None
    i = r.int()
    c = i.clone()
    c[0] += 1
    assert mismatch((r, c), (r.clone(), i), Q) is None           # structures pass the op down
    assert mismatch((r, c), (r.clone(), i)) is not None
