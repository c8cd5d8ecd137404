"""Tactics for MatMul / Gemm / kiln::FusedMatMul: cuBLAS(Lt) through torch with fused epilogues,
and a Triton GEMM with fused epilogues.

cuBLAS: A's leading dims fold into M ([B, S, K] -> [B*S, K]) and the product is one
torch.addmm / torch.mm call. torch routes addmm with a contiguous [N] bias (beta 1) to
cublasLt with a bias epilogue, and torch._addmm_activation adds a ReLU or GELU epilogue to
it. On CUDA that GELU is the tanh approximation (both the cublasLt epilogue and torch's own
fallback), so only Gelu(approximate="tanh") uses it; exact Gelu runs after the GEMM. A
residual alone is addmm's C operand (beta 1); beside a bias it is one in-place add after
the bias epilogue (see _gemm_2d). Whatever epilogue is left runs as fused.ACTIVATIONS
does, on the GEMM's output. float32 GEMMs follow torch's global tf32 switch, as the reference does.

Triton (kernels/triton/gemm.py): the whole epilogue in the GEMM's store, any activation,
fp16/bf16 only (its float32 path is IEEE fp32 without tensor cores: never faster than cuBLAS).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from kiln.kernels.reference.fused import ACTIVATIONS, apply_activation
from kiln.kernels.reference.fused import fused_matmul as reference_fused_matmul
from kiln.kernels.triton import available as triton_available
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Tensor = torch.Tensor

CUBLAS_DTYPES = ("float16", "bfloat16", "float32")
TRITON_DTYPES = ("float16", "bfloat16")
# Triton GEMM: K and N must be multiples of 16 (when static). Triton specializes integer
# arguments divisible by 16; only with that hint on the row strides does it prove 16-byte
# aligned rows, issue 16-byte async copies and pipeline the K loop (checked in the PTX).
# Other sizes run correctly but unpipelined, and belong to cuBLAS.
TRITON_ALIGN = 16


def lt_activation(activation: str, params: Sequence[float], device: torch.device, dtype: torch.dtype) -> str | None:
    """The epilogue torch._addmm_activation computes like fused.ACTIVATIONS, or None.

    "relu" anywhere. "gelu" on CUDA for the tanh approximation only (torch's CUDA GELU
    epilogue is tanh-approximate; on CPU it is exact, so CPU never uses it for Gelu), and
    only for fp16/bf16 outputs: cublasLt's tanh may be a fast approximation whose error
    (~1e-4) the float32 tolerance does not cover, while fp16/bf16 rounding swamps it.
    """
    if activation == "Relu":
        return "relu"
    tanh_gelu = activation == "Gelu" and len(params) > 0 and float(params[0]) != 0.0
    if tanh_gelu and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "gelu"
    return None


def _gemm_2d(a2: Tensor, w: Tensor, bias: Tensor | None, r2: Tensor | None, alpha: float,
             activation: str, params: Sequence[float]) -> Tensor:
    """act(alpha * a2 @ w + bias + r2) for a2 [M, K], w [K, N], bias [N], r2 [M, N].

    Memory traffic decides the split: the bias epilogue is free, while addmm with C = r2
    first copies r2 into Y (torch never writes over an input), so with both a bias and a
    residual the bias goes to cublasLt and the residual is one in-place add after it.
    """
    if bias is not None:
        fused = lt_activation(activation, params, a2.device, a2.dtype) if r2 is None else None
        if fused is not None:                              # cublasLt bias + ReLU/GELU epilogue
            return torch._addmm_activation(bias, a2, w, alpha=alpha, use_gelu=fused == "gelu")
        y = torch.addmm(bias, a2, w, alpha=alpha)          # cublasLt bias epilogue
        if r2 is not None:
            y.add_(r2)
    elif r2 is not None:
        y = torch.addmm(r2, a2, w, alpha=alpha)            # C = residual, beta 1
    else:
        y = torch.mm(a2, w)
        if alpha != 1.0:
            y.mul_(alpha)
    return apply_activation(y, activation, params) if activation else y


def _folds_to_2d(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, trans_b: int) -> bool:
    """Whether the product is [M, K] @ [K, N] with a [N] bias and a residual that fits Y."""
    if a.dim() < 2 or b.dim() != 2 or (bias is not None and bias.dim() != 1):
        return False
    out = (*a.shape[:-1], b.shape[0] if trans_b else b.shape[1])
    return residual is None or torch.broadcast_shapes(tuple(residual.shape), out) == out


def cublas_fused_matmul(a: Tensor, b: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, *,
                        trans_b: int = 0, alpha: float = 1.0, activation: str = "",
                        activation_params: Sequence[float] = ()) -> Tensor:
    """kiln::FusedMatMul as one cuBLAS(Lt) call plus what epilogue it cannot fuse."""
    if not _folds_to_2d(a, b, bias, residual, trans_b):
        # Batched B, a broadcast bias, or a residual that broadcasts Y: the reference's
        # torch.matmul is one cuBLAS call already.
        return reference_fused_matmul(a, b, bias, residual, trans_b=trans_b, alpha=alpha,
                                      activation=activation, activation_params=activation_params)
    lead, k = tuple(a.shape[:-1]), a.shape[-1]
    w = b.t() if trans_b else b                                        # [K, N], a view
    n = w.shape[1]
    m = math.prod(lead)
    a2 = a.reshape(m, k)                                               # [M, K]
    r2 = None if residual is None else residual.expand(*lead, n).reshape(m, n)  # [M, N]
    y = _gemm_2d(a2, w, bias, r2, float(alpha), activation, list(activation_params))
    return y.reshape(*lead, n)


def cublas_matmul(a: Tensor, b: Tensor) -> Tensor:
    """MatMul with 2-D B as one [M, K] @ [K, N] cuBLAS call; other shapes as torch.matmul."""
    if a.dim() < 2 or b.dim() != 2:
        return torch.matmul(a, b)
    return torch.mm(a.reshape(math.prod(a.shape[:-1]), a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[1])


def cublas_gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha: float = 1.0, beta: float = 1.0,
                transA: int = 0, transB: int = 0) -> Tensor:  # noqa: N803 (ONNX attribute names)
    """Gemm as torch.addmm (cublasLt with a bias epilogue when C is a [N] vector and beta is 1)."""
    a = a.t() if transA else a
    b = b.t() if transB else b
    if c is None:
        y = torch.mm(a, b)
        return y.mul_(alpha) if alpha != 1.0 else y
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


# --- supports ---------------------------------------------------------------------------------

def _rank(query: TacticQuery, i: int) -> int | None:
    shapes = query.input_shapes
    return None if i >= len(shapes) or shapes[i] is None else len(shapes[i])


def _dim(query: TacticQuery, i: int, axis: int) -> int | str | None:
    shapes = query.input_shapes
    return None if i >= len(shapes) or shapes[i] is None else shapes[i][axis]


def _same_dtype(query: TacticQuery, allowed: tuple[str, ...]) -> bool:
    """A and B share an allowed dtype; bias/residual, where present, have it too."""
    dts = query.input_dtypes
    if len(dts) < 2 or dts[0] not in allowed or dts[1] != dts[0]:
        return False
    return all(d is None or d == dts[0] for d in dts[2:4]) and len(dts) <= 4


def _fused_shapes_ok(query: TacticQuery) -> bool:
    """Known ranks fit: A [..., M, K], B 2-D, bias [N]. Unknown ranks are fine (see kernels)."""
    ra, rb, rbias = _rank(query, 0), _rank(query, 1), _rank(query, 2)
    return (ra is None or ra >= 2) and (rb is None or rb == 2) and (rbias is None or rbias == 1)


def supports_cublas_fused(query: TacticQuery) -> bool:
    return (query.device == "cuda" and _same_dtype(query, CUBLAS_DTYPES)
            and query.attrs.get("activation", "") in ACTIVATIONS and _fused_shapes_ok(query))


def supports_cublas_matmul(query: TacticQuery) -> bool:
    return query.device == "cuda" and _same_dtype(query, CUBLAS_DTYPES)


def supports_cublas_gemm(query: TacticQuery) -> bool:
    ra, rb, rc = _rank(query, 0), _rank(query, 1), _rank(query, 2)
    ranks_ok = ra in (None, 2) and rb in (None, 2) and (rc is None or rc <= 2)
    return query.device == "cuda" and _same_dtype(query, CUBLAS_DTYPES) and ranks_ok


def _aligned(d: int | str | None) -> bool:
    return not isinstance(d, int) or d % TRITON_ALIGN == 0


def supports_triton_fused(query: TacticQuery) -> bool:
    """fp16/bf16 on CUDA, A [..., M, K] and B 2-D with known ranks, K and N multiples of 16."""
    if query.device != "cuda" or not _same_dtype(query, TRITON_DTYPES):
        return False
    if query.attrs.get("activation", "") not in ACTIVATIONS:
        return False
    ra, rb = _rank(query, 0), _rank(query, 1)
    if ra is None or rb is None or ra < 2 or rb != 2 or not _fused_shapes_ok(query):
        return False
    trans_b = int(query.attrs.get("trans_b", 0))
    k, n = _dim(query, 0, -1), _dim(query, 1, 1 - trans_b)
    return _aligned(k) and _aligned(n) and _residual_fits(query, n)


def _residual_fits(query: TacticQuery, n: int | str | None) -> bool:
    """No residual, or one whose known shape broadcasts into Y's without growing it."""
    if len(query.input_dtypes) < 4 or query.input_dtypes[3] is None:
        return True
    if len(query.input_shapes) < 4 or query.input_shapes[3] is None:
        return False
    out, r = (*query.input_shapes[0][:-1], n), query.input_shapes[3]
    return len(r) <= len(out) and all(rd == od or rd == 1 for rd, od in zip(reversed(r), reversed(out)))


def cublas_fused_matmul_tanh_gelu(a: Tensor, b: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
                                  *, trans_b: int = 0, alpha: float = 1.0, activation: str = "",
                                  activation_params: Sequence[float] = ()) -> Tensor:
    """An exact (erf) Gelu epilogue computed in its tanh form, inside cublasLt's GELU epilogue.

    For fp16/bf16 outputs only: the two forms differ by at most 4.7e-4 (at x = 2.70, where
    fp16's spacing is 2e-3 and bf16's 1.6e-2), less than half a unit in the last place of the
    rounded result there, and less elsewhere in absolute terms. The tuner still checks the
    output against the exact reference within the precision's tolerance before choosing it.
    """
    params = [1.0] if activation == "Gelu" else list(activation_params)
    if bias is None:  # the epilogue comes with a bias: a zero one (made once per width and type)
        bias = _zeros(b.shape[0] if trans_b else b.shape[1], b.dtype, b.device)
    return cublas_fused_matmul(a, b, bias, residual, trans_b=trans_b, alpha=alpha, activation=activation,
                               activation_params=params)


@functools.lru_cache(maxsize=64)
def _zeros(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(n, dtype=dtype, device=device)


def supports_cublas_tanh_gelu(query: TacticQuery) -> bool:
    """Exact Gelu and no residual (cublasLt's bias+GELU epilogue; a zero bias when none), fp16/bf16."""
    params = query.attrs.get("activation_params", ())
    exact = query.attrs.get("activation", "") == "Gelu" and (not params or float(params[0]) == 0.0)
    no_residual = len(query.input_dtypes) < 4 or query.input_dtypes[3] is None
    return (exact and no_residual and query.device == "cuda"
            and _same_dtype(query, ("float16", "bfloat16")) and _fused_shapes_ok(query))


register_tactic(Tactic("kiln::FusedMatMul.cublas", "kiln::FusedMatMul", 1, ("cuda",),
                       cublas_fused_matmul, supports_cublas_fused))
register_tactic(Tactic("kiln::FusedMatMul.cublas_tanh_gelu", "kiln::FusedMatMul", 1, ("cuda",),
                       cublas_fused_matmul_tanh_gelu, supports_cublas_tanh_gelu))
register_tactic(Tactic("MatMul.cublas", "MatMul", 1, ("cuda",), cublas_matmul, supports_cublas_matmul))
register_tactic(Tactic("Gemm.cublas", "Gemm", 1, ("cuda",), cublas_gemm, supports_cublas_gemm))

if triton_available():
    from kiln.kernels.triton import gemm as _triton_gemm

    register_tactic(Tactic("kiln::FusedMatMul.triton", "kiln::FusedMatMul", 2, ("cuda",),
                           _triton_gemm.fused_matmul, supports_triton_fused, configs=_triton_gemm.CONFIGS))
