"""kiln::MatMulQuantize: the Triton GEMM quantizing its own output (kernels/triton/gemm.py
matmul_quantize) and the cuBLAS-then-quantize tactics, against the two kernels the fusion
replaces and the reference op.

Without a GPU the Triton cases run in Triton's interpreter on CPU tensors at tiny shapes (the
cuBLAS tactics need CUDA); with one, compiled. The fused store quantizes the float32 epilogue
value by a multiply, where the pair it replaces rounds Y to 16 bits
and divides: the codes agree with the pair's and the reference's within the tuner's rule for
this op (compiler/tolerance.py: one step, or the float16 tolerance per element).
"""
from __future__ import annotations

import math

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.registry import lookup
from kiln.tactics import TacticQuery, get_tactic

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton does not import here")

if kiln_triton.available():
    from kiln.kernels.triton import gemm, quantize

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
OP = "kiln::MatMulQuantize"
REF = lookup(OP).fn if lookup(OP) else None
# (output_dtype attribute, zero point) per quantized type.
OUTPUTS = [(TensorProto.INT8, None), (TensorProto.INT8, torch.tensor(-5, dtype=torch.int8)),
           (0, torch.tensor(128, dtype=torch.uint8)), (TensorProto.FLOAT8E4M3FN, None)]


def operands(lead, m, n, k, dtype, *, trans_b=0, bias=True, residual=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*lead, m, k, generator=g)
    b = torch.randn(*((n, k) if trans_b else (k, n)), generator=g) / math.sqrt(k)
    c = torch.randn(n, generator=g) if bias else None
    r = torch.randn(*lead, m, n, generator=g) if residual else None
    return tuple(None if t is None else t.to(dtype=dtype, device=DEV) for t in (a, b, c, r))


def skip_fp8(out_dtype):
    if out_dtype == TensorProto.FLOAT8E4M3FN and HAS_CUDA and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs sm_89+")


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation,params,residual,trans_b", [("", [], False, 0), ("Gelu", [0.0], False, 1),
                                                                ("Relu", [], True, 0)])
def test_matmul_quantize_equals_matmul_then_quantize(activation, params, residual, trans_b, dtype, out_dtype, zp):
    skip_fp8(out_dtype)
    a, b, c, r = operands((2,), 17, 40, 24, dtype, trans_b=trans_b, residual=residual)
    scale = torch.tensor(0.02, dtype=dtype, device=DEV)
    zp_dev = None if zp is None else zp.to(DEV)
    attrs = dict(trans_b=trans_b, alpha=0.5, activation=activation, activation_params=params)
    got = gemm.matmul_quantize(a, b, c, r, scale, zp_dev, output_dtype=out_dtype, config=TINY, **attrs)
    y = gemm.fused_matmul(a, b, c, r, config=TINY, **attrs)
    want = quantize.quantize_linear(y, scale, zp_dev, axis=-1, output_dtype=out_dtype)
    assert got.dtype == want.dtype and got.shape == (2, 17, 40)
    assert mismatch(got, want, OP) is None
    ref = REF(*(None if t is None else t.cpu() for t in (a, b, c, r, scale, zp_dev)), output_dtype=out_dtype, **attrs)
    assert mismatch(got.cpu(), ref, OP) is None


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS)
def test_matmul_quantize_per_column_scales(out_dtype, zp):
    """A scale (and zero point) per output column: SmoothQuant's scales of the next layer's input."""
    skip_fp8(out_dtype)
    a, b, c, _ = operands((), 20, 32, 16, torch.float16)
    g = torch.Generator().manual_seed(4)
    scale = (torch.rand(32, generator=g) * 0.05 + 0.005).half().to(DEV)
    zp_c = None if zp is None else zp.expand(32).clone().to(DEV)
    got = gemm.matmul_quantize(a, b, c, None, scale, zp_c, output_dtype=out_dtype, activation="Gelu", config=TINY)
    y = gemm.fused_matmul(a, b, c, activation="Gelu", config=TINY)
    assert mismatch(got, quantize.quantize_linear(y, scale, zp_c, axis=-1, output_dtype=out_dtype), OP) is None
    ref = REF(a.cpu(), b.cpu(), c.cpu(), None, scale.cpu(), None if zp_c is None else zp_c.cpu(),
              output_dtype=out_dtype, activation="Gelu")
    assert mismatch(got.cpu(), ref, OP) is None


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS)
@pytest.mark.parametrize("activation,params", [("Gelu", [0.0]), ("Relu", []), ("Clip", [-0.5, 0.75])])
def test_quantize_with_an_activation_in_the_pass(activation, params, out_dtype, zp):
    """quantize_linear(activation=...) (the .cublas_act_quantize tactic's second pass): the codes
    of QuantizeLinear(act(X)) with act(X) rounded to X's type, per tensor and per column."""
    skip_fp8(out_dtype)
    from kiln.kernels.reference.fused import apply_activation

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 7, 48, generator=g) * 2).half()
    quant = lookup("QuantizeLinear").fn
    for scale in (torch.tensor(0.02, dtype=torch.float16), (torch.rand(48, generator=g) * 0.05 + 0.005).half()):
        z = None if zp is None else zp.expand(scale.shape).clone()
        got = quantize.quantize_linear(x.to(DEV), scale.to(DEV), None if z is None else z.to(DEV), axis=-1,
                                       output_dtype=out_dtype, activation=activation, activation_params=params)
        y = apply_activation(x.float(), activation, params).half()
        want = quant(y, scale, z, axis=-1, output_dtype=out_dtype)
        assert got.dtype == want.dtype and mismatch(got.cpu(), want, OP) is None
        assert want.float().unique().numel() > 8   # codes spread over the range, not one value


def test_matmul_quantize_refuses_scales_of_another_width():
    a, b, c, _ = operands((), 4, 16, 16, torch.float16)
    with pytest.raises(AssertionError, match="per tensor or per output column"):
        gemm.matmul_quantize(a, b, c, None, torch.full((4,), 0.1, device=DEV), config=TINY)


def test_a_wrong_scale_is_caught_by_the_tolerance():
    """The tuner's rule is not so loose that a kernel with another scale passes."""
    a, b, c, _ = operands((), 32, 32, 32, torch.float16)
    got = gemm.matmul_quantize(a, b, c, None, torch.tensor(0.02, device=DEV), output_dtype=TensorProto.INT8,
                               config=TINY)
    ref = REF(a.cpu(), b.cpu(), c.cpu(), None, torch.tensor(0.021), output_dtype=TensorProto.INT8)
    assert mismatch(got.cpu(), ref, OP) is not None


SHAPES = ((4, 128, 384), (1536, 384), (1536,), None, (), None)


@pytest.mark.parametrize("name,dtypes,shapes,attrs,ok", [
    ("triton", ("float16", "float16", "float16", None, "float16", None), SHAPES, {"trans_b": 1}, True),
    ("triton", ("float16", "float16", "float16", None, "float16", None),            # per output column
     SHAPES[:4] + ((1536,), None), {"trans_b": 1}, True),
    ("triton", ("float16", "float16", "float16", None, "float16", None),            # ... not per column
     SHAPES[:4] + ((128,), None), {"trans_b": 1}, False),
    ("triton", ("float32", "float32", "float32", None, "float32", None), SHAPES, {"trans_b": 1}, False),
    ("triton", ("float16", "float16", "float16", None, "float16", None), SHAPES,   # int32 out
     {"trans_b": 1, "output_dtype": 6}, False),
    ("cublas", ("float32", "float32", "float32", None, "float32", None), SHAPES, {"trans_b": 1}, True),
    ("cublas_tanh_gelu", ("float16", "float16", "float16", None, "float16", None), SHAPES,
     {"trans_b": 1, "activation": "Gelu", "activation_params": [0.0]}, True),
    ("cublas_tanh_gelu", ("float16", "float16", "float16", None, "float16", None), SHAPES, {"trans_b": 1}, False),
    ("cublas_act_quantize", ("float16", "float16", "float16", None, "float16", None), SHAPES,
     {"trans_b": 1, "activation": "Gelu", "activation_params": [0.0]}, True),
    ("cublas_act_quantize", ("float16", "float16", "float16", None, "float16", None),   # per output column
     SHAPES[:4] + ((1536,), None), {"trans_b": 1, "activation": "Gelu"}, True),
    ("cublas_act_quantize", ("float16", "float16", "float16", None, "float16", None), SHAPES,   # no activation
     {"trans_b": 1}, False),
    ("cublas_act_quantize", ("float16", "float16", "float16", None, "float16", None), SHAPES,   # not a Triton one
     {"trans_b": 1, "activation": "Mish"}, False),
])
def test_matmul_quantize_supports(name, dtypes, shapes, attrs, ok, monkeypatch):
    from kiln.tactics import quantized
    monkeypatch.setattr(quantized, "device_capability", lambda: (9, 0))
    attrs = {"output_dtype": TensorProto.FLOAT8E4M3FN, **attrs}
    tactic = get_tactic(f"kiln::MatMulQuantize.{name}")
    assert tactic.supports(TacticQuery(OP, "cuda", dtypes, attrs, shapes)) is ok
    assert not tactic.supports(TacticQuery(OP, "cpu", dtypes, attrs, shapes))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cublas", "cublas_tanh_gelu", "cublas_act_quantize", "triton"])
@pytest.mark.parametrize("out_dtype", [TensorProto.INT8, TensorProto.FLOAT8E4M3FN])
def test_gpu_matmul_quantize_minilm_ffn(name, out_dtype):
    """MiniLM's FFN expansion at batch 8 ([8, 128, 384] @ [384, 1536], exact Gelu), fp16: each
    tactic within the tuner's rule of the reference."""
    skip_fp8(out_dtype)
    a, b, c, _ = operands((8,), 128, 1536, 384, torch.float16)
    scale = torch.tensor(0.01, dtype=torch.float16, device=DEV)
    attrs = dict(activation="Gelu", activation_params=[0.0], output_dtype=out_dtype)
    tactic = get_tactic(f"kiln::MatMulQuantize.{name}")
    kw = {"config": gemm.CONFIGS[-3]} if name == "triton" else {}   # the persistent 128x256 tiling
    got = tactic.kernel(a, b, c, None, scale, None, **attrs, **kw)
    ref = REF(a, b, c, None, scale, None, **attrs)
    assert mismatch(got, ref, OP) is None


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS[:1] + OUTPUTS[2:])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_matmul_quantize_persistent_tma_walk(trans_b, out_dtype, zp):
    """The quantizing store after gemm_tma.py's walk (config PERSISTENT=1): the plain kernel's codes."""
    skip_fp8(out_dtype)
    a, b, c, r = operands((2,), 37, 48, 40, torch.float16, trans_b=trans_b, residual=True)
    scale = torch.tensor(0.02, dtype=torch.float16, device=DEV)
    zp_dev = None if zp is None else zp.to(DEV)
    attrs = dict(trans_b=trans_b, activation="Gelu", activation_params=[0.0], output_dtype=out_dtype)
    got = gemm.matmul_quantize(a, b, c, r, scale, zp_dev, config={**TINY, "PERSISTENT": 1}, **attrs)
    plain = gemm.matmul_quantize(a, b, c, r, scale, zp_dev, config=TINY, **attrs)
    assert mismatch(got, plain, OP) is None
    boxed = gemm.matmul_quantize(a, b, c, r, scale, zp_dev, config={**TINY, "PERSISTENT": 1, "Y_TMA": 1}, **attrs)
    assert torch.equal(boxed, got)        # the same codes, stored through a TMA box
    ref = REF(*(None if t is None else t.cpu() for t in (a, b, c, r, scale, zp_dev)), **attrs)
    assert mismatch(got.cpu(), ref, OP) is None
