"""QuantizeLinear / DequantizeLinear inside the generated kiln::Pointwise kernel (per tensor, int8
and uint8 codes): ONNX Runtime's DQ -> Add -> Q around a residual add as one kernel, its codes
equal to the reference ops' bit for bit (the same division, rounding and saturation as
kernels/triton/quantize.py). Interpreted on CPU; compiled with `--device cuda`."""
from __future__ import annotations

import os
import re

import pytest
import torch

from kiln.kernels import triton as kiln_triton

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton is not installed")

if kiln_triton.available():
    from kiln.kernels.triton import pointwise as pw
from kiln.kernels.reference.fused import pointwise as reference

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
U8, I8 = torch.uint8, torch.int8
C = lambda v, dtype="float32": {"const": v, "dtype": dtype}  # noqa: E731


def residual_add(a_zp, b_zp, y_zp, code: str, scales=(0.05, 0.031, 0.07), dtype: str = "float32",
                 relu: bool = False) -> list:
    """Q(act(DQ(a) + DQ(b))): a residual add as ONNX Runtime's QDQ models write it."""
    sa, sb, sy = scales
    prog = [["DequantizeLinear", ["i0", C(sa, dtype), C(a_zp, code)], {}],
            ["DequantizeLinear", ["i1", C(sb, dtype), C(b_zp, code)], {}],
            ["Add", ["t0", "t1"], {}]]
    if relu:
        prog.append(["Relu", ["t2"], {}])
    prog.append(["QuantizeLinear", [f"t{len(prog) - 1}", C(sy, dtype), C(y_zp, code)], {}])
    return prog


def _codes(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 255) if dtype == U8 else (-128, 127)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


def _both(program, *inputs):
    got = pw.pointwise(*[t.to(DEV) for t in inputs], program=program).cpu()
    want = reference(*inputs, program=program)
    return got, want


@pytest.mark.parametrize("dtype, zps", [(U8, (131, 90, 7)), (I8, (-3, 12, -128)), (U8, (0, 0, 0))],
                         ids=["uint8", "int8", "uint8-zp0"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_residual_add_codes_are_the_reference_codes(dtype, zps, relu):
    code = "uint8" if dtype == U8 else "int8"
    a = _codes((2, 6, 5, 7), dtype, 0).contiguous(memory_format=torch.channels_last)
    b = _codes((2, 6, 5, 7), dtype, 1).contiguous(memory_format=torch.channels_last)
    got, want = _both(residual_add(*zps, code, relu=relu), a, b)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want) and len(torch.unique(want)) > 20


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_scales_divide_in_their_type(dtype):
    """A --fp16 build's scales (retype.py moves the program's float32 scalars): DQ rounds to the
    scale's type, the Add runs there, Q divides in it."""
    a, b = _codes((3, 50), U8, 2), _codes((3, 50), U8, 3)
    got, want = _both(residual_add(128, 100, 3, "uint8", dtype=dtype), a, b)
    assert torch.equal(got, want)


def test_ties_round_to_even_and_codes_saturate():
    """Sums on quarters divided by 0.5: every .5 quotient is a tie (to even), and the sums past the
    range saturate at 0 and 255."""
    a = torch.arange(0, 256, dtype=torch.int32).to(U8).reshape(16, 16)
    b = a.t().contiguous()
    got, want = _both(residual_add(100, 200, 120, "uint8", scales=(0.25, 0.75, 0.5)), a, b)
    assert torch.equal(got, want)
    assert bool((want == 0).any()) and bool((want == 255).any())
    ties = (a.double() - 100) * 0.25 + (b.double() - 200) * 0.75
    assert bool(((ties / 0.5) % 1 == 0.5).any())


def test_source_widens_codes_on_load_and_narrows_on_store():
    src = pw.generate_source(residual_add(1, 2, 3, "uint8"), ["uint8", "uint8"], [(64,), (64,)])
    assert src.count("@triton.jit") == 1 and src.count("tl.store(") == 1
    assert len(re.findall(r"x\d = tl\.load\(in\d \+ offs, mask=mask\)\.to\(tl\.int32\)", src)) == 2
    assert "quantize_code(" in src and ".to(tl.uint8), mask=mask)" in src


def test_8bit_values_only_through_quantize_ops():
    assert pw.supports_program(residual_add(1, 2, 3, "uint8"), ["uint8", "uint8"])
    add_codes = [["Add", ["i0", "i1"], {}], ["Relu", ["t0"], {}]]
    assert not pw.supports_program(add_codes, ["uint8", "uint8"])              # uint8 arithmetic wraps
    runtime_scale = [["Relu", ["i0"], {}], ["QuantizeLinear", ["t0", "i1", C(0, "uint8")], {}]]
    assert not pw.supports_program(runtime_scale, ["float32", "float32"])      # 1 / scale made on the host
    dq_int32 = [["DequantizeLinear", ["i0", C(0.5)], {}], ["Relu", ["t0"], {}]]
    assert not pw.supports_program(dq_int32, ["int32"])
    float_zp = [["QuantizeLinear", ["i0", C(0.5), C(3.0, "float16")], {"output_dtype": 3}]]
    assert not pw.supports_program(float_zp, ["float32"])                       # not ONNX: the codes' type
    float_zp_dq = [["DequantizeLinear", ["i0", C(0.5), C(3.0)], {}], ["Relu", ["t0"], {}]]
    assert not pw.supports_program(float_zp_dq, ["int8"])


def ort_gelu(code: str, dtype: str = "float16") -> list:
    """ONNX Runtime's QDQ Gelu as a Pointwise program (its exporter's x * 0.5 * (1 + erf(x / sqrt 2)),
    every intermediate quantized): DQ -> Div -> Erf -> Q/DQ -> Add -> Q/DQ -> Mul -> Q/DQ -> Mul -> Q."""
    prog = [["DequantizeLinear", ["i0", C(0.011352984, dtype), C(7, code)], {}],
            ["Div", ["t0", C(1.4142135381698608, dtype)], {}], ["Erf", ["t1"], {}]]
    for op, other, s, zp in (("Add", C(1.0, dtype), 0.0066737, 3), ("Mul", "t0", 0.0071688, -128),
                             ("Mul", C(0.5, dtype), 0.0111252, -97)):
        last = len(prog) - 1
        prog += [["QuantizeLinear", [f"t{last}", C(s, dtype), C(zp, code)], {}],
                 ["DequantizeLinear", [f"t{last + 1}", C(s, dtype), C(zp, code)], {}],
                 [op, [f"t{last + 2}", other] if op == "Add" or other != "t0" else ["t0", f"t{last + 2}"], {}]]
    prog.append(["QuantizeLinear", [f"t{len(prog) - 1}", C(0.0055626, dtype), C(-97, code)], {}])
    return prog


COMPUTED = {"BLOCK": 1024, "num_warps": 4, "TABLE": 0}   # the generated kernel even where a lookup applies


def test_ort_gelu_codes_are_the_reference_codes_on_the_same_device():
    """The tuner compares a Pointwise kernel's int8 output with the reference op's on the same
    device, exactly. The chain's 16-bit values held in float32 (rounded only where quantized) gave
    other codes in ~0.4% of elements in the interpreter, and on the GPU the whole chain ran on the
    reference; now every op rounds as the reference's does (and divides correctly rounded)."""
    x = _codes((1024, 3072), I8, 4).to(DEV)
    program = ort_gelu("int8")
    want = reference(x, program=program)
    for config in (None, COMPUTED):   # the lookup (the default: one 8-bit input) and the computed kernel
        got = pw.pointwise(x, program=program, config=config)
        assert got.dtype == torch.int8 and torch.equal(got, want)
    assert len(torch.unique(want)) > 100
    assert "tl.math.div_rn(" in pw.generate_source(program, ["int8"], [(1024, 3072)])


def test_a_quantizing_program_rounds_every_op_as_the_reference():
    """float16 results rounded after each op, float32 products never fused into the next add,
    where a QuantizeLinear follows; a float program keeps its float32 chain."""
    quantizing, consts = pw.generate(ort_gelu("int8"), ["int8"], [(64,)])
    divisor = re.search(r"t1 = in_precision\(tl\.math\.div_rn\(t0, (k\d+)\), 1\)", quantizing)
    assert divisor and consts[divisor.group(1)] == 1.4140625      # sqrt 2 as float16 holds it
    assert re.search(r"t2 = in_precision\(erf_f32\(t1\), 1\)", quantizing)
    fp32 = [["DequantizeLinear", ["i0", C(0.05), C(3, "int8")], {}], ["Mul", ["t0", "i1"], {}],
            ["Add", ["t1", C(0.25)], {}], ["QuantizeLinear", ["t2", C(0.07), C(0, "int8")], {}]]
    assert "t1 = product_rn(t0, x1)" in pw.generate_source(fp32, ["int8", "float32"], [(64,), (64,)])
    g = torch.Generator().manual_seed(5)
    got, want = _both(fp32, _codes((256, 300), I8, 6), torch.randn(256, 300, generator=g) * 3)
    assert torch.equal(got, want) and len(torch.unique(want)) > 100
    floats = pw.generate_source(ort_gelu("int8")[:3], ["int8"], [(64,)])
    assert "t2 = erf_f32(t1)" in floats


def test_ort_silu_codes_are_the_reference_codes():
    """ONNX Runtime's QDQ SiLU (DQ -> Sigmoid -> Q/DQ -> Mul -> Q) in one kernel: the exponential
    and the division as torch computes them on the GPU (exp_f32, div_rn), so the uint8 codes equal
    the reference's there too (checked with --device cuda; interpreted: numpy's exp)."""
    program = [["DequantizeLinear", ["i0", C(0.0421, "float16"), C(117, "uint8")], {}],
               ["Sigmoid", ["t0"], {}],
               ["QuantizeLinear", ["t1", C(0.0039215, "float16"), C(0, "uint8")], {}],
               ["DequantizeLinear", ["t2", C(0.0039215, "float16"), C(0, "uint8")], {}],
               ["Mul", ["t0", "t3"], {}],
               ["QuantizeLinear", ["t4", C(0.0213, "float16"), C(13, "uint8")], {}]]
    x = _codes((512, 1000), U8, 7).to(DEV)
    want = reference(x, program=program)
    assert len(torch.unique(want)) > 100
    for config in (None, COMPUTED):
        got = pw.pointwise(x, program=program, config=config)
        assert got.dtype == torch.uint8 and torch.equal(got, want)
    source = pw.generate_source(program, ["uint8"], [(512, 1000)])
    assert "tl.math.div_rn(1.0, (1.0 + exp_f32(-t0)))" in source


def test_one_8bit_input_runs_as_a_lookup_in_the_references_table(monkeypatch):
    """A program of one int8/uint8 input is a function of 256 codes: the kernel reads the
    reference's own outputs for them (made once per program and device), so its outputs are the
    reference's bit for bit, whatever the chain computes (here a float16 output and codes); an
    input with gaps or a second input takes the computed kernel; no table is made while a CUDA
    graph is captured."""
    from kiln.kernels.triton import pointwise_table
    gelu = ort_gelu("int8")
    dq_relu = [["DequantizeLinear", ["i0", C(0.0213, "float16"), C(-5, "int8")], {}], ["Relu", ["t0"], {}]]
    x = _codes((33, 70), I8, 9).to(DEV)
    for program in (gelu, dq_relu):
        launch = pw._launch([x], program, None, 1)
        assert launch.tabulable
        made = pointwise_table.table(pw.program_key(program), program, None, torch.int8, x.device)
        assert made.shape == (256,) and made.dtype == reference(x, program=program).dtype
        assert torch.equal(made, reference(torch.arange(256).to(torch.uint8).view(torch.int8).to(DEV), program=program))
        assert torch.equal(pw.pointwise(x, program=program), reference(x, program=program))
    # the input's bit patterns index the table: -1 is entry 255, -128 entry 128
    edges = torch.tensor([-128, -1, 0, 127], dtype=torch.int8, device=DEV)
    assert torch.equal(pw.pointwise(edges, program=gelu), reference(edges, program=gelu))
    transposed = _codes((70, 33), I8, 10).to(DEV).t()     # its output takes its strides: both dense
    assert pw._launch([transposed], gelu, None, 1).tabulable
    assert torch.equal(pw.pointwise(transposed, program=gelu), reference(transposed, program=gelu))
    strided = _codes((33, 140), I8, 11).to(DEV)[:, ::2]   # a gap between elements: computed
    assert not pw._launch([strided], gelu, None, 1).tabulable
    assert torch.equal(pw.pointwise(strided, program=gelu), reference(strided, program=gelu))
    assert not pw._launch([x, x], residual_add(1, 2, 3, "int8"), None, 1).tabulable
    fresh = [["DequantizeLinear", ["i0", C(0.5, "float16"), C(3, "int8")], {}]]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pointwise_table.table(pw.program_key(fresh), fresh, None, torch.int8, torch.device("cuda")) is None
