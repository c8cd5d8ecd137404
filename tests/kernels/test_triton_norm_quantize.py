"""kiln::NormQuantize: the Triton norm kernel quantizing its own output (kernels/triton/norm.py
norm_quantize) against the two kernels it replaces and the reference op.

Without a GPU the cases run in Triton's interpreter on CPU tensors; with one on CUDA. The
fused kernel does the same float32 row math as LayerNorm (or AddLayerNorm), rounds Y to X's
type and quantizes it with QuantizeLinear.triton's division and rounding. Compiled, the two
kernels may sum a row in different orders (Triton picks the register layout per kernel, and
the int8 store changes it), so Y may differ by a float rounding and Yq by one step where Y/s
lies at a rounding boundary: compiler/tolerance.py's rule for quantized layers, which the
tuner applies. Sum (an element-wise add) is equal.
"""
from __future__ import annotations

import os

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.registry import lookup

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton does not import here")

if kiln_triton.available():
    from kiln.kernels.triton import norm, quantize

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
CONFIG = {"num_warps": 4, "rows": 4}
OP = "kiln::NormQuantize"
# (output_dtype attribute, zero point) per quantized type.
OUTPUTS = [(TensorProto.INT8, None), (TensorProto.INT8, torch.tensor(-5, dtype=torch.int8)),
           (0, torch.tensor(128, dtype=torch.uint8)), (TensorProto.FLOAT8E4M3FN, None)]


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype).to(DEV)


def unfused(x, r, w, b, scale, zp, out_dtype, sum_output):
    """The two kernels the fused one replaces."""
    if r is None:
        y = norm.layer_norm(x, w, b, epsilon=1e-3, config=CONFIG)[0]
        s = None
    else:
        y, s = norm.add_layer_norm(x, r, w, b, epsilon=1e-3, n_outputs=2 if sum_output else 1, config=CONFIG)
    return quantize.quantize_linear(y, scale, zp, output_dtype=out_dtype), y, s


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("residual,float_output,sum_output", [(False, 1, 0), (False, 0, 0), (True, 1, 0),
                                                              (True, 0, 1), (True, 1, 1)])
def test_norm_quantize_equals_norm_then_quantize(residual, float_output, sum_output, dtype, out_dtype, zp):
    if out_dtype == TensorProto.FLOAT8E4M3FN and DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs sm_89+")
    x, r = rand(6, 40, dtype=dtype), rand(6, 40, dtype=dtype, seed=3) if residual else None
    w, b = rand(40, seed=1).to(dtype), rand(40, seed=2).to(dtype)
    scale = torch.tensor(0.03, dtype=dtype).to(DEV)
    zp_dev = None if zp is None else zp.to(DEV)
    got = norm.norm_quantize(x, r, w, b, scale, zp_dev, epsilon=1e-3, output_dtype=out_dtype,
                             float_output=float_output, sum_output=sum_output, config=CONFIG)
    want_q, want_y, want_s = unfused(x, r, w, b, scale, zp_dev, out_dtype, sum_output)
    assert len(got) == 1 + float_output + (sum_output if residual else 0)
    assert mismatch(got[0], want_q, OP) is None
    if float_output:
        assert mismatch(got[1], want_y) is None
    if residual and sum_output:
        assert torch.equal(got[-1].cpu(), want_s.cpu())
    # The reference op: the same outputs, within the tuner's rule (Y is rounded differently).
    ref = lookup("kiln::NormQuantize").fn(x.cpu(), None if r is None else r.cpu(), w.cpu(), b.cpu(), scale.cpu(),
                                          zp, epsilon=1e-3, output_dtype=out_dtype, float_output=float_output,
                                          sum_output=sum_output)
    assert mismatch(tuple(g.cpu() for g in got), ref, OP) is None


@pytest.mark.parametrize("out_dtype,zp", OUTPUTS)
@pytest.mark.parametrize("residual", [False, True])
def test_norm_quantize_per_channel_scales(residual, out_dtype, zp):
    """A scale (and zero point) per channel of the row: SmoothQuant's activation scales."""
    if out_dtype == TensorProto.FLOAT8E4M3FN and DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs sm_89+")
    x, r = rand(5, 24, dtype=torch.float16), rand(5, 24, dtype=torch.float16, seed=3) if residual else None
    w, b = rand(24, seed=1).half(), rand(24, seed=2).half()
    g = torch.Generator().manual_seed(4)
    scale = (torch.rand(24, generator=g) * 0.05 + 0.005).to(DEV)
    zp_c = None if zp is None else zp.expand(24).clone().to(DEV)
    got = norm.norm_quantize(x, r, w, b, scale, zp_c, epsilon=1e-3, output_dtype=out_dtype, float_output=1,
                             sum_output=int(residual), config=CONFIG)
    y = got[1]
    want = quantize.quantize_linear(y, scale, zp_c, axis=-1, output_dtype=out_dtype)
    assert mismatch(got[0], want, OP) is None
    ref = lookup("kiln::NormQuantize").fn(x.cpu(), None if r is None else r.cpu(), w.cpu(), b.cpu(), scale.cpu(),
                                          None if zp_c is None else zp_c.cpu(), epsilon=1e-3, output_dtype=out_dtype,
                                          float_output=1, sum_output=int(residual))
    assert mismatch(tuple(t.cpu() for t in got), ref, OP) is None


def test_norm_quantize_refuses_long_rows_and_mismatched_residuals():
    x = rand(2, 8)
    with pytest.raises(ValueError, match="residual .* must match X"):
        norm.norm_quantize(x, rand(1, 8), rand(8), None, torch.tensor(0.1).to(DEV))
    with pytest.raises(ValueError, match="exceed the fused kernel"):
        norm.norm_quantize(rand(1, 20000), None, rand(20000), None, torch.tensor(0.1).to(DEV))


@pytest.mark.parametrize("dtypes,shapes,attrs,ok", [
    (("float16", "float16", "float16", "float16", "float16", "int8"),
     ((32, 128, 768), (32, 128, 768), (768,), (768,), (), ()), {"output_dtype": 3}, True),
    (("float16", None, "float16", "float16", "float32", None),
     ((32, 128, 768), None, (768,), (768,), (), None), {"output_dtype": 3}, True),
    (("float16", "float32", "float16", "float16", "float16", "int8"),                # residual of another type
     ((4, 768), (4, 768), (768,), (768,), (), ()), {"output_dtype": 3}, False),
    (("float16", None, "float16", "float16", "float16", None),                       # per channel of the row
     ((4, 768), None, (768,), (768,), (768,), None), {"output_dtype": 3}, True),
    (("float16", None, "float16", "float16", "float16", None),                       # ... not the row's
     ((4, 768), None, (768,), (768,), (4,), None), {"output_dtype": 3}, False),
    (("float16", None, "float16", "float16", "float16", None),                       # a row of two axes
     ((4, 8, 96), None, (8, 96), (8, 96), (96,), None), {"output_dtype": 3, "axis": 1}, False),
    (("float16", None, "float16", "float16", "float16", None),                       # a row too long
     ((4, 20000), None, (20000,), (20000,), (), None), {"output_dtype": 3}, False),
    (("float16", None, "float16", "float16", "float16", None),                       # int32 out
     ((4, 768), None, (768,), (768,), (), None), {"output_dtype": 6}, False),
])
def test_norm_quantize_supports(dtypes, shapes, attrs, ok, monkeypatch):
    from kiln.tactics import TacticQuery, get_tactic
    from kiln.tactics import quantized
    monkeypatch.setattr(quantized, "device_capability", lambda: (9, 0))
    q = TacticQuery("kiln::NormQuantize", "cuda", dtypes, {"axis": -1, **attrs}, shapes)  # attrs may set axis
    assert get_tactic("kiln::NormQuantize.triton").supports(q) is ok
    assert not get_tactic("kiln::NormQuantize.triton").supports(
        TacticQuery("kiln::NormQuantize", "cpu", dtypes, {"axis": -1, **attrs}, shapes))


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [TensorProto.INT8, TensorProto.FLOAT8E4M3FN])
@pytest.mark.parametrize("config", norm.CONFIGS if kiln_triton.available() else [])
def test_gpu_norm_quantize_bert_sized(config, out_dtype):
    """A BERT-base activation [32, 128, 768] fp16 with its residual, every config: the unfused
    kernels' values within the tuner's rule."""
    if out_dtype == TensorProto.FLOAT8E4M3FN and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs sm_89+")
    x, r = rand(32, 128, 768, dtype=torch.float16), rand(32, 128, 768, dtype=torch.float16, seed=3)
    w, b = rand(768, seed=1).half(), rand(768, seed=2).half()
    scale = torch.tensor(0.05, dtype=torch.float16, device=DEV)
    got = norm.norm_quantize(x, r, w, b, scale, None, output_dtype=out_dtype, float_output=1, sum_output=1,
                             config=config)
    y, s = norm.add_layer_norm(x, r, w, b, n_outputs=2, config=config)
    want = quantize.quantize_linear(y, scale, None, output_dtype=out_dtype)
    assert mismatch(got, (want, y, s), OP) is None and torch.equal(got[2], s)
