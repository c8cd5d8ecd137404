"""Compiled or interpreted: which code a kernel takes where the GPU has an instruction that
Triton's interpreter lacks.

COMPILED is a constexpr, read once at import as triton.jit itself decides (TRITON_INTERPRET).
Where it is true the kernels use hardware instructions: the float8 conversion that rounds to
nearest even (quantize.py) and the approximate reciprocal below; in the interpreter (CPU
tests) they take exact equivalents, so the tests check the arithmetic around them and the GPU
conformance tests check the instructions."""
from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """Does triton.jit make interpreted functions in this process (TRITON_INTERPRET)?"""
    try:
        from triton import knobs
        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):   # Triton before knobs
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


COMPILED: tl.constexpr = tl.constexpr(not interpreting())


@triton.jit
def fast_reciprocal(x):
    """1 / x in float32 for x >= 1 or x = inf (what the activations pass), within an ulp:
    rcp.approx.ftz.f32, one MUFU instruction, where an IEEE-style division (`/`, div.full) adds
    range checks and rescaling, about eight instructions per element of a GEMM epilogue. A
    result below float32's normal range flushes to 0 (for x > 2**126; 1 / inf is 0). In the
    interpreter: a division."""
    if COMPILED:
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = 1.0 / x
    return r


@triton.jit
def product_rn(a, b):
    """a * b in float32, rounded on its own: mul.rn.f32, which the compiler never contracts with a
    following add into one FMA (a plain multiply may be: the sum would then round once where ONNX
    rounds the product, then the sum). b may be a scalar. In the interpreter: the multiply."""
    b = tl.zeros_like(a) + b
    if COMPILED:
        r = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = a * b
    return r


@triton.jit
def fast_tanh(x):
    """tanh(x) in float32 by tanh.approx.f32, one MUFU instruction (maximum relative error about
    2^-11, what a float16 rounding adds): for activations whose result is rounded to 8 bits next
    (activation.gelu_fast). In the interpreter: (1 - e) / (1 + e) with e = exp(-2|x|), signed."""
    if COMPILED:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(x < 0, -t, t)
    return t
