"""Split-K for the 8-bit GEMM (kernels/triton/qgemm_splitk.py) against the reference kiln::QMatMul
and the one-pass kernel (qgemm.py).

CPU: Triton's interpreter at small shapes with 16x16x32 tiles: int8 sums equal the one-pass
kernel's bit for bit (float and requantized outputs); float8 within the tuner's rule
(compiler/tolerance.py); K past the last whole step, more splits than steps (empty shares),
leading dims, both weight layouts, bias, residual, Relu; the launcher's refusals. The same
tests run compiled with `pytest --device cuda` on a GPU."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available

REF = lookup("kiln::QMatMul").fn
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"

if triton_available():
    from kiln.kernels.triton import qgemm, qgemm_splitk
else:
    qgemm = qgemm_splitk = None
pytestmark = pytest.mark.skipif(qgemm is None, reason="Triton is not installed")


def _layer(m, n, k, dtype, lead=(), trans_b=0, residual=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (*lead, m, k), generator=g, dtype=torch.int32).to(dtype)
        b = torch.randint(-128, 128, (n, k) if trans_b else (k, n), generator=g, dtype=torch.int32).to(dtype)
    else:
        a = (torch.randn((*lead, m, k), generator=g) * 40).to(dtype)
        b = (torch.randn((n, k) if trans_b else (k, n), generator=g) * 40).to(dtype)
    a_scale = torch.tensor(1.0 / 64)
    b_scale = (torch.rand(n, generator=g) + 0.5) / (k ** 0.5 * (64 if dtype == torch.int8 else 40 * 40))
    bias = torch.randn(n, generator=g)
    r = torch.randn(*lead, m, n, generator=g) if residual else None
    return [t.to(DEV) if isinstance(t, torch.Tensor) else t for t in (a, b, a_scale, None, b_scale, None, bias, r)]


OUTS = {"float": {}, "int8": {"out_dtype": TensorProto.INT8}, "fp8": {"out_dtype": TensorProto.FLOAT8E4M3FN}}


@pytest.mark.parametrize("split", [1, 3, 8])
@pytest.mark.parametrize("out", ["float", "int8", "fp8"])
@pytest.mark.parametrize("k", [160, 200])
def test_int8_equals_the_one_pass_kernel(split, out, k):
    """160: five whole 32-deep steps; 200: a masked last step. 8 splits of 7 steps: one empty."""
    args = _layer(21, 40, k, torch.int8, residual=out == "float")
    extra = {} if out == "float" else {"out_scale": torch.tensor(0.05, device=DEV), **OUTS[out]}
    got = qgemm_splitk.qmatmul_splitk(*args, **extra, activation="Relu", config={**TINY, "SPLIT_K": split})
    one = qgemm.qmatmul(*args, **extra, activation="Relu", config=TINY)
    assert got.dtype == one.dtype and got.shape == one.shape
    assert torch.equal(got.cpu().view(torch.uint8) if got.element_size() == 1 else got.cpu(),
                       one.cpu().view(torch.uint8) if one.element_size() == 1 else one.cpu())


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("out", ["float", "int8", "fp8"])
def test_matches_the_reference(trans_b, out):
    for dtype in (torch.int8, torch.float8_e4m3fn):
        args = _layer(5, 24, 256, dtype, lead=(2,), trans_b=trans_b, seed=1)
        extra = {} if out == "float" else {"out_scale": torch.tensor(0.05, device=DEV), **OUTS[out]}
        got = qgemm_splitk.qmatmul_splitk(*args, **extra, trans_b=trans_b, config={**TINY, "SPLIT_K": 4})
        want = REF(*[t.cpu() if isinstance(t, torch.Tensor) else t for t in args],
                   **{n: v.cpu() if isinstance(v, torch.Tensor) else v for n, v in extra.items()}, trans_b=trans_b)
        assert got.shape == (2, 5, 24) and got.dtype == want.dtype
        assert mismatch(got.cpu(), want, "kiln::QMatMul") is None, (dtype, out)


def test_refusals():
    args = _layer(4, 16, 64, torch.int8)
    with pytest.raises(ValueError, match="zero points must be 0"):
        qgemm_splitk.qmatmul_splitk(*args[:3], torch.tensor(3, dtype=torch.int8, device=DEV), *args[4:])
    with pytest.raises(ValueError, match="int8 or float8_e4m3fn A and B alike"):
        qgemm_splitk.qmatmul_splitk(args[0].view(torch.uint8), *args[1:])
    with pytest.raises(ValueError, match="no mid quantization"):
        qgemm_splitk.qmatmul_splitk(*args, mid_scale=torch.tensor(0.1, device=DEV))
    # all-zero zero points are dropped, as the one-pass kernel drops them
    zero = torch.zeros((), dtype=torch.int8, device=DEV)
    got = qgemm_splitk.qmatmul_splitk(*args[:3], zero, *args[4:], config={**TINY, "SPLIT_K": 2})
    assert torch.equal(got.cpu(), qgemm.qmatmul(*args, config=TINY).cpu())
