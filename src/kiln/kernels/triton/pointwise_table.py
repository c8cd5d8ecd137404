"""kiln::Pointwise of one 8-bit input as a table lookup.

A program whose only tensor input is an int8/uint8 tensor (its other operands constants) is a
function of 256 values. An explicitly quantized model is full of them: ONNX Runtime's QDQ Gelu
(DQ -> Div -> Erf -> Q/DQ -> Add -> Q/DQ -> Mul -> Q/DQ -> Mul -> Q), SiLU, a lone
DequantizeLinear. Computed element by element, rounded op by op as the reference rounds, the
Gelu chain is ~130 instructions per element (erf, correctly rounded divisions, four quantizations):
on BERT-base b32's FFN activation (4096 x 3072) 61 us on an H200, where moving the bytes takes a
tenth of that. As a table, the kernel loads a code, reads its entry and stores it.

The table is the reference op's own result on all 256 codes, computed on the device the kernel
runs on (the reference's float math there: torch's erf on the GPU), so the kernel's outputs are
the reference's bit for bit. It is made on the first call and kept per program, dtype and device;
a call made while a CUDA graph is being captured never makes one (that would put the reference's
kernels into the graph): the caller uses the computed kernel instead. Only single-output programs
whose input and output share one dense layout (the flat index addresses both) take this path.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantized import code_table
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor
CODES = (torch.int8, torch.uint8)
# Never evicted: a captured CUDA graph holds a table's address (a table is 256 entries, <= 1 KiB).
_TABLES: dict[tuple[Any, ...], Tensor] = {}


@triton.jit
def _lookup(X, T, Y, numel, BLOCK: tl.constexpr, WIDE: tl.constexpr, PDL: tl.constexpr = False):
    """Y[i] = T[bits of X[i]]: the table holds the output of each 8-bit pattern."""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    bits = tl.load(X + offs, mask=mask).to(tl.int32) & 255
    tl.store(Y + offs, tl.load(T + bits, mask=mask), mask=mask)


def tabulable(in_dtypes: Sequence[torch.dtype], kinds: Sequence[str], n_outputs: int,
              out_shapes: Sequence[Sequence[int]], space: Sequence[int]) -> bool:
    """Whether a program (traced: its output shapes, the iteration space; its operands' layout
    kinds, inputs then outputs) runs as a lookup: one 8-bit input, one output of the input's
    shape, both addressed by the flat index."""
    return (len(in_dtypes) == 1 and in_dtypes[0] in CODES and n_outputs == 1
            and tuple(out_shapes[0]) == tuple(space) and all(k == "dense" for k in kinds))


def table(program_key: str, program: Any, outputs: Sequence[str] | None, dtype: torch.dtype,
          device: torch.device) -> Tensor | None:
    """The reference's output for each of the 256 bit patterns of `dtype` (entry i: the code whose
    bits are i), made on `device` once; None while a CUDA graph is being captured and it is not
    made yet."""
    key = (program_key, tuple(outputs or ()), dtype, str(device))
    found = _TABLES.get(key)
    if found is not None:
        return found
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    _TABLES[key] = code_table(program, dtype, outputs, device)
    return _TABLES[key]


def lookup(x: Tensor, values: Tensor, out: Tensor, numel: int, wide: bool, config: dict[str, int]) -> None:
    """out = values[bits of x] over the flat index (x and out share one dense layout)."""
    grid = (triton.cdiv(numel, config["BLOCK"]),)
    _lookup[grid](x, values, out, numel, BLOCK=config["BLOCK"], WIDE=wide, num_warps=config["num_warps"],
                  **launch_options(x))
