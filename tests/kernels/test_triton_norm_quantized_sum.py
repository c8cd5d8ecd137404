"""kiln::NormQuantize reading ONNX Runtime's quantized residual add (x_program: DQ + DQ -> Q -> DQ,
kernels/reference/quantized_sum.py): the Triton norm kernel adds the two 8-bit rows itself, op by
op as the Pointwise kernel does, against the reference (the program, then the norm, then the
QuantizeLinear). Interpreted on CPU, compiled with `--device cuda`."""
from __future__ import annotations

import os

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.quantized_sum import quantized_sum
from kiln.kernels.reference.registry import lookup

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton does not import here")
if kiln_triton.available():
    from kiln.kernels.triton import norm
    from kiln.kernels.triton.pointwise import pointwise

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
OP = "kiln::NormQuantize"
C = lambda v, dtype: {"const": v, "dtype": dtype}  # noqa: E731


def residual_add(fp: str, code: str, zps=(-1, 9, 2), scales=(0.0275, 0.0004, 0.0276)) -> list:
    """The program ONNX Runtime's QDQ BERT writes for a residual add (its constants' sizes)."""
    (za, zb, zs), (sa, sb, ss) = zps, scales
    return [["DequantizeLinear", ["i0", C(sa, fp), C(za, code)], {}],
            ["DequantizeLinear", ["i1", C(sb, fp), C(zb, code)], {}],
            ["Add", ["t1", "t0"], {}],
            ["QuantizeLinear", ["t2", C(ss, fp), C(zs, code)], {"output_dtype": TensorProto.INT8 if code == "int8"
                                                                 else TensorProto.UINT8}],
            ["DequantizeLinear", ["t3", C(ss, fp), C(zs, code)], {}]]


def codes(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def test_the_form_is_read_off_the_program():
    form = quantized_sum(residual_add("float16", "int8"))
    assert form is not None and form.float_type == "float16" and form.code_types == ("int8",) * 3
    assert (form.a_zp, form.b_zp, form.sum_zp) == (-1, 9, 2) and form.division == "float16"
    assert form.a_scale == float(torch.tensor(0.0275, dtype=torch.float16))
    assert form.sum_inverse == float(1 / torch.tensor(form.sum_scale, dtype=torch.float32))
    prog = residual_add("float16", "int8")
    assert quantized_sum(prog[:4]) is None                                   # no DQ of the sum
    assert quantized_sum([prog[0], prog[1], ["Mul", ["t1", "t0"], {}], *prog[3:]]) is None
    assert quantized_sum([prog[0], prog[1], ["Add", ["t1", C(1.0, "float16")], {}], *prog[3:]]) is None
    other = [*prog[:4], ["DequantizeLinear", ["t3", C(0.5, "float16"), C(2, "int8")], {}]]
    assert quantized_sum(other) is None                                      # another scale back
    assert quantized_sum([*prog[:1], ["DequantizeLinear", ["i1", C(0.1, "float32"), C(0, "int8")], {}],
                          *prog[2:]]) is None                                # mixed float types


@pytest.mark.parametrize("fp,code", [("float16", "int8"), ("float32", "int8"), ("float16", "uint8"),
                                     ("bfloat16", "int8")])
def test_the_kernel_adds_the_codes_as_the_pointwise_kernel(fp, code):
    """Y (float_output) and Yq against the reference; the row the norm reads equals the Pointwise
    kernel's output exactly (a LayerNorm of weight 1 and bias 0 over it is the same either way)."""
    dt, ct = getattr(torch, fp), getattr(torch, code)
    prog = residual_add(fp, code, zps=(-1, 9, 2) if code == "int8" else (127, 137, 130))
    a, b = codes((6, 40), ct, 1), codes((6, 40), ct, 2)
    w, bias = (torch.randn(40, generator=torch.Generator().manual_seed(s)).to(dt) for s in (3, 4))
    ys, yzp = torch.tensor(0.021, dtype=dt), torch.tensor(-4, dtype=torch.int8)
    want = lookup(OP).fn(a, b, w, bias, ys, yzp, epsilon=1e-12, output_dtype=TensorProto.INT8, float_output=1,
                         x_program=prog)
    got = norm.norm_quantize(*(t.to(DEV) for t in (a, b, w, bias, ys, yzp)), epsilon=1e-12,
                             output_dtype=TensorProto.INT8, float_output=1, x_program=prog,
                             config={"num_warps": 4, "rows": 4})
    got = tuple(t.cpu() for t in got)
    assert got[1].dtype == dt and got[0].dtype == torch.int8
    assert mismatch(got, want, OP) is None
    # the sum itself, through a norm that leaves it as it is up to the statistics: the Pointwise kernel's
    row = pointwise(a.to(DEV), b.to(DEV), program=prog).cpu()
    assert torch.equal(row, lookup("kiln::Pointwise").fn(a, b, program=prog))
    assert len(torch.unique(row)) > 50


@pytest.mark.parametrize("out", [TensorProto.INT8, TensorProto.FLOAT8E4M3FN])
def test_quick_configs_are_within_the_rule(out):
    """EXACT 0 (NormQuantize's QUANT_CONFIGS): the sum's QuantizeLinear and the output's by the
    reciprocal of their scales; the codes within the tuner's rule, almost all equal."""
    prog = residual_add("float16", "int8")
    a, b = codes((64, 768), torch.int8, 5), codes((64, 768), torch.int8, 6)
    w, bias = (torch.randn(768, generator=torch.Generator().manual_seed(s)).to(torch.float16) for s in (3, 4))
    ys = torch.tensor(0.021, dtype=torch.float16)
    yzp = torch.tensor(-4, dtype=torch.int8) if out == TensorProto.INT8 else None
    want = lookup(OP).fn(a, b, w, bias, ys, yzp, epsilon=1e-12, output_dtype=out, x_program=prog)[0]
    args = (a, b, w, bias, ys) + (() if yzp is None else (yzp,))
    quick = [c for c in norm.QUANT_CONFIGS if not c.get("EXACT", 1)]
    assert len(quick) == len(norm.CONFIGS)
    got = norm.norm_quantize(*(t.to(DEV) for t in args), epsilon=1e-12, output_dtype=out, x_program=prog,
                             config=quick[3])[0].cpu()
    assert mismatch(got, want, OP) is None
    assert (got.view(torch.uint8) == want.view(torch.uint8)).float().mean() > 0.99


def test_a_program_of_another_form_is_refused():
    a = codes((2, 16), torch.int8, 0)
    prog = residual_add("float16", "int8")[:4]
    with pytest.raises(ValueError, match="not a quantized residual add"):
        norm.norm_quantize(a.to(DEV), a.to(DEV), torch.ones(16, dtype=torch.float16, device=DEV), None,
                           torch.tensor(0.1, dtype=torch.float16, device=DEV), x_program=prog)


def test_the_tactic_takes_the_codes_only_with_the_form(monkeypatch):
    from kiln.tactics import TacticQuery, get_tactic, quantized
    monkeypatch.setattr(quantized, "device_capability", lambda: (9, 0))

    def ok(prog, dts=("int8", "int8")) -> bool:
        shape = (32, 128, 768)
        query = TacticQuery(OP, "cuda", (*dts, "float16", "float16", "float16", "int8"),
                            {"x_program": prog, "output_dtype": TensorProto.INT8, "axis": -1},
                            (shape, shape, (768,), (768,), (), ()))
        return get_tactic(f"{OP}.triton").supports(query)
    assert ok(residual_add("float16", "int8"))
    assert not ok(residual_add("float16", "int8")[:4])                        # not the form
    assert not ok(residual_add("float16", "int8"), ("uint8", "uint8"))        # codes of other types
    assert not ok(residual_add("float16", "int8"), ("int8", None))            # no second input
