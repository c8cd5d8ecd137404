"""The activations a Triton kernel applies in registers (GEMM and convolution epilogues, the
quantize kernel's fused activation): codes for a constexpr, so each kernel carries only its own,
and the float32 formulas, as kernels/reference/fused.py's ACTIVATIONS / the ONNX spec write them."""
from __future__ import annotations

import math
from typing import Sequence

import triton
import triton.language as tl

from kiln.kernels.triton.compiled import fast_reciprocal, fast_tanh

# Epilogue activations by code (a constexpr, so each kernel carries only its own). Names and
# parameters follow fused.ACTIVATIONS; Gelu splits by its approximation parameter.
ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_CLIP, ACT_SIGMOID, ACT_HARDSIGMOID = 0, 1, 2, 3, 4, 5
ACT_HARDSWISH, ACT_TANH, ACT_GELU_ERF, ACT_GELU_TANH, ACT_SILU = 6, 7, 8, 9, 10
# Gelu (either form) as its tanh form with the hardware tanh, for a layer whose output is float8
# codes (fast_gelu_code): never named by a graph, only chosen by a kernel config.
ACT_GELU_FAST = 11

_ACT_NAMES: dict[str, int] = {
    "": ACT_NONE, "Relu": ACT_RELU, "LeakyRelu": ACT_LEAKY, "Clip": ACT_CLIP, "Sigmoid": ACT_SIGMOID,
    "HardSigmoid": ACT_HARDSIGMOID, "HardSwish": ACT_HARDSWISH, "Tanh": ACT_TANH, "Gelu": ACT_GELU_ERF,
    "Silu": ACT_SILU,
}
# Parameter defaults per activation (as fused.ACTIVATIONS reads them): [p0, p1].
_ACT_DEFAULTS: dict[str, tuple[float, float]] = {
    "LeakyRelu": (0.01, 0.0), "Clip": (-math.inf, math.inf), "HardSigmoid": (0.2, 0.5),
}

ACTIVATIONS: frozenset[str] = frozenset(_ACT_NAMES)


def activation_code(activation: str, params: Sequence[float]) -> tuple[int, float, float]:
    """(code, p0, p1) for the kernel's epilogue; ValueError for an activation it lacks."""
    if activation not in _ACT_NAMES:
        raise ValueError(f"the Triton kernels have no activation {activation!r}; known: {sorted(_ACT_NAMES)}")
    d0, d1 = _ACT_DEFAULTS.get(activation, (0.0, 0.0))
    p0 = float(params[0]) if len(params) > 0 else d0
    p1 = float(params[1]) if len(params) > 1 else d1
    code = _ACT_NAMES[activation]
    if activation == "Gelu" and p0:
        code = ACT_GELU_TANH
    return code, p0, p1


def fast_gelu_code(code: int, cfg: dict, float8_out: bool) -> int:
    """ACT_GELU_FAST in place of a Gelu (exact or tanh) where the config asks for it (FAST_GELU)
    and the output is float8 codes; `code` otherwise. The tanh form differs from the exact Gelu by
    at most 4.7e-4 (the bound tactics/matmul.py's cuBLAS tanh-Gelu epilogue states for float16
    engines) and tanh.approx adds about 2^-11 of tanh; the e4m3 code the value rounds to next is
    2^-4 to 2^-3 of it apart from its neighbours. The tuner keeps such a config only where the
    codes meet the quantized tolerance against the exact reference (compiler/tolerance.py)."""
    if cfg.get("FAST_GELU") and float8_out and code in (ACT_GELU_ERF, ACT_GELU_TANH):
        return ACT_GELU_FAST
    return code



@triton.jit
def _tanh(x):
    # tanh from exp, stable for large |x| (e -> 0): sign(x) * (1 - e) / (1 + e), e = exp(-2|x|).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) * fast_reciprocal(1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _gelu_erf(x):
    # Exact GELU, x * Phi(x) = x * (1 + erf(x / sqrt 2)) / 2, as x * (1 - h) for x >= 0 and
    # x * h for x < 0 (erf is odd), h = (1 - erf(|x| / sqrt 2)) / 2. erf by Abramowitz & Stegun
    # 7.1.28 (|error| <= 3e-7): erf t = 1 - p(t)^-16 with p a degree-6 polynomial, here with
    # 1 / sqrt 2 folded into its coefficients, so h = 0.5 / p(|x|)^16: six FMAs, four squarings,
    # one reciprocal (fast_reciprocal: p >= 1), a select and a multiply; no exp. In a GEMM
    # epilogue this is ALU time no other work hides; 7.1.26 (an exp and a reciprocal) and
    # libdevice's erf spilled registers over a 128x128 tile (`benchmarks/kernels_qgemm.py
    # --epilogue` times the cost, `benchmarks/kernel_resources.py` counts the instructions).
    ax = tl.abs(x)
    p = 1.0 + ax * (0.04986734697 + ax * (0.02114100615 + ax * (0.003277626324 + ax * (3.8003575e-05 + ax * (
        4.889063564e-05 + ax * 5.382975e-06)))))
    p2 = p * p
    p4 = p2 * p2
    p8 = p4 * p4
    h = 0.5 * fast_reciprocal(p8 * p8)
    return x * tl.where(x < 0, h, 1.0 - h)


@triton.jit
def gelu_fast(x):
    # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): five float32 operations and one MUFU
    # tanh, against _gelu_erf's fifteen and a MUFU reciprocal.
    h = 0.5 * x
    return h + h * fast_tanh(x * (0.7978845608028654 + 0.035677408136300125 * x * x))


@triton.jit
def activate(x, ACT: tl.constexpr, p0, p1):
    """act(x) on a float32 tile; formulas as fused.ACTIVATIONS / the ONNX spec write them."""
    if ACT == 1:    # Relu: one max instruction (a select costs a compare too)
        x = tl.maximum(x, 0.0)
    elif ACT == 2:  # LeakyRelu(alpha=p0)
        x = tl.where(x >= 0, x, x * p0)
    elif ACT == 3:  # Clip(min=p0, max=p1)
        x = tl.minimum(tl.maximum(x, p0), p1)
    elif ACT == 4:  # Sigmoid
        x = fast_reciprocal(1.0 + tl.exp(-x))
    elif ACT == 5:  # HardSigmoid(alpha=p0, beta=p1)
        x = tl.minimum(tl.maximum(p0 * x + p1, 0.0), 1.0)
    elif ACT == 6:  # HardSwish
        x = x * tl.minimum(tl.maximum(x * (1.0 / 6.0) + 0.5, 0.0), 1.0)
    elif ACT == 7:  # Tanh
        x = _tanh(x)
    elif ACT == 8:  # Gelu, exact: x * Phi(x)
        x = _gelu_erf(x)
    elif ACT == 9:  # Gelu, tanh approximation
        x = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == 10:  # Silu
        x = x * fast_reciprocal(1.0 + tl.exp(-x))
    elif ACT == 11:  # Gelu for float8 codes: the tanh form, hardware tanh (fast_gelu_code)
        x = gelu_fast(x)
    return x
