"""The agreement check between a candidate's outputs and the reference's (tolerance.py)."""
from __future__ import annotations

import pytest
import torch

from kiln.compiler.tolerance import mismatch

G = torch.Generator().manual_seed(0)


def test_fp32_accepts_rounding_differences_and_rejects_real_errors() -> None:
    r = torch.randn(64, 64, generator=G)
    assert mismatch(r + r.abs() * 1e-6, r) is None
    assert mismatch(r + 1e-3, r) is not None
    bad = r.clone()
    bad[3, 5] += 0.01 * r.abs().max()
    assert "max error" in mismatch(bad, r)


def test_the_absolute_term_scales_with_the_tensor_s_magnitude() -> None:
    # A sum that cancels to ~0 carries an error the size of its terms, not of the result.
    r = torch.tensor([1000.0, 0.0, -500.0])
    c = r + torch.tensor([0.0, 5e-3, 0.0])
    assert mismatch(c, r) is None  # 5e-3 <= 1e-5 * 1000 + 0
    assert mismatch(r * 1e-6 + torch.tensor([0.0, 5e-9, 0.0]), r * 1e-6) is None  # scale-free
    assert mismatch(c * 1e-6 + torch.tensor([0.0, 1e-7, 0.0]), r * 1e-6) is not None


def test_tf32_holds_float32_to_the_float16_tolerance() -> None:
    r = torch.randn(256, generator=G)
    c = r * (1 + 5e-4)  # a TF32 kernel against another: float16's 10-bit significand
    assert mismatch(c, r) is not None and mismatch(c, r, tf32=True) is None
    assert mismatch(r * 1.05, r, tf32=True) is not None
    h = r.half()
    assert mismatch((h.float() * 1.05).half(), h, tf32=True) is not None  # other types keep theirs
    assert mismatch([c, r], [r, r], tf32=True) is None  # every output of a layer


def test_half_precision_is_looser() -> None:
    r = torch.randn(128, generator=G).half()
    c = (r.float() * 1.005).half()
    assert mismatch(c, r) is None
    assert mismatch((r.float() * 1.05).half(), r) is not None
    assert mismatch(c.bfloat16(), r) is not None  # dtypes must match exactly


def test_infinities_must_match_in_place_and_reference_nans_are_dont_care() -> None:
    r = torch.tensor([1.0, float("nan"), float("inf"), -2.0])
    assert mismatch(r.clone(), r) is None
    assert mismatch(torch.tensor([1.0, 0.0, float("inf"), -2.0]), r) is None       # undefined there
    assert mismatch(torch.tensor([1.0, float("nan"), float("-inf"), -2.0]), r) is not None
    assert mismatch(torch.tensor([float("nan"), float("nan"), float("inf"), -2.0]), r) is not None


def test_integers_shapes_and_structures_compare_exactly() -> None:
    i = torch.arange(6)
    assert mismatch(i.clone(), i) is None and mismatch(i + 1, i) is not None
    assert mismatch(i.reshape(2, 3), i) is not None
    a, b = torch.ones(2), torch.zeros(2)
    assert mismatch((a, b), (a.clone(), b.clone())) is None
    assert mismatch((a,), (a, b)) is not None
    assert "output 1" in mismatch((a, a), (a, b))
    assert mismatch((a, None), (a, None)) is None


def test_mid_quantized_conv_may_move_by_its_mid_step() -> None:
    """A kiln::QConv with mid quantization rounds twice: its allowance is 1 + ceil(mid / out) steps."""
    from kiln.compiler.tolerance import quantized_steps
    from kiln.kernels.reference.quantized import QCONV_INPUTS

    args = [None] * len(QCONV_INPUTS)
    args[QCONV_INPUTS.index("out_scale")] = torch.tensor(0.05)
    assert quantized_steps("kiln::QConv", args) == 1 and quantized_steps("kiln::QMatMul", args) == 1
    args[QCONV_INPUTS.index("mid_scale")] = torch.tensor(0.12)
    assert quantized_steps("kiln::QConv", args) == 4
    from kiln.compiler.tolerance import mid_step
    from kiln.kernels.reference.quantized import QMATMUL_INPUTS
    merged = [None] * len(QMATMUL_INPUTS)                                     # merged projections: per column
    merged[QMATMUL_INPUTS.index("out_scale")] = torch.tensor([0.05, 0.05, 0.2])
    merged[QMATMUL_INPUTS.index("mid_scale")] = torch.tensor([0.04, 0.12, 0.3])
    assert quantized_steps("kiln::QMatMul", merged) == 4     # the largest column's: 1 + ceil(0.12 / 0.05)
    merged[QMATMUL_INPUTS.index("out_scale")] = None
    assert mid_step("kiln::QMatMul", merged) == pytest.approx(0.3)
    r = torch.randint(10, 240, (100, 100), generator=G, dtype=torch.int32).to(torch.uint8)
    c = r.clone()
    c[0, :3] += 3                                                             # a mid step, three elements
    assert "up to 3 steps" in mismatch(c, r, "kiln::QConv")
    assert mismatch(c, r, "kiln::QConv", steps=4) is None
    c[1:4] += 1                                                               # 300 more: too many off
    assert "more than the" in mismatch(c, r, "kiln::QConv", steps=4)


def test_a_code_table_multiplies_the_steps_by_its_largest_jump() -> None:
    """A kiln::QMatMul that looks its codes up in a table: a code one step off reads the
    neighbouring entry, up to the table's largest jump between neighbours (in the codes' order,
    their zero point's type) away."""
    from kiln.compiler.tolerance import quantized_steps
    from kiln.kernels.reference.quantized import QMATMUL_INPUTS

    args = [None] * len(QMATMUL_INPUTS)
    args[QMATMUL_INPUTS.index("out_scale")] = torch.tensor(0.05)
    codes = torch.arange(256).to(torch.uint8).view(torch.int8).to(torch.int32)   # entry i: the code of bits i
    args[QMATMUL_INPUTS.index("table")] = torch.clamp(codes * 3, -128, 127).to(torch.int8)   # slope 3
    assert quantized_steps("kiln::QMatMul", args) == 3       # no zero point: the stricter order's
    args[QMATMUL_INPUTS.index("out_zp")] = torch.tensor(0, dtype=torch.uint8)    # uint8 codes: 127 -> 128 wraps
    assert quantized_steps("kiln::QMatMul", args) == 255
    args[QMATMUL_INPUTS.index("out_zp")] = torch.tensor(0, dtype=torch.int8)
    assert quantized_steps("kiln::QMatMul", args) == 3
    args[QMATMUL_INPUTS.index("mid_scale")] = torch.tensor(0.06)                  # 1 + ceil(0.06 / 0.05) = 3
    assert quantized_steps("kiln::QMatMul", args) == 9
    args[QMATMUL_INPUTS.index("table")] = torch.zeros(256, dtype=torch.int8)      # constant: at least 1
    assert quantized_steps("kiln::QMatMul", args) == 3
