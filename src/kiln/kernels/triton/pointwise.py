"""kiln::Pointwise as one generated Triton kernel: program -> source -> compiled kernel.

Design note. A Pointwise program (format: kiln.kernels.reference.fused) is first *traced* through the
reference ops on one-element probes, which gives every value its dtype exactly as the
reference computes it (torch type promotion, rank-0 rules and all), and its shape. The iteration
space is the broadcast of the inputs; each operand (inputs, then outputs) gets its strides
against it (0 on broadcast dims), and adjacent dims that every operand walks contiguously are
merged, so a bias over [M, N] becomes 2-D and most programs 1-D. Outputs take the strides of
a dense input of their shape (as torch.empty_like would: channels-last stays channels-last), and
dims are visited in the order the output walks memory, so NHWC tensors merge as well as NCHW. The kernel walks the flat
index `offs` of the merged space; a "dense" operand (strides = the space's own) is addressed
by `offs` itself (vectorised loads), a "scalar" one (all strides 0) is loaded once, and a
"strided" one from per-dim indices (`offs % n_d`, ...) times its strides (passed as arguments;
stride 1 is written into the source). Each input is loaded once, each instruction is one
assignment, each output one store; floats compute in float32 and are stored in their dtype (in a
program with a QuantizeLinear also rounded to it after every op, as the reference rounds);
int8/uint8 values, which only QuantizeLinear makes and DequantizeLinear reads here (an explicitly
quantized model's Q/DQ chains, pointwise_ops), are held in int32 and stored as bytes; a program
of one such input runs as a lookup in the reference's table of its 256 codes (pointwise_table).
The program's constants are parameters of the kernel (pointwise_constants), so the source depends
only on the program's structure, the dtypes and this broadcast pattern: compiled kernels are cached
by source text, and the layers of a model that repeat a program with other scales share one;
launches are cached by program, input dtypes, shapes and strides.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import triton

from kiln.ir.dtypes import from_name
from kiln.kernels.reference.fused import pointwise as reference_pointwise
from kiln.kernels.triton.pointwise_layout import (
    Layout,
    broadcast_strides,
    collapse,
    contiguous_strides,
    dim_order,
    output_strides,
)
from kiln.kernels.triton import pointwise_table
from kiln.kernels.triton.pointwise_constants import FLOATS, Constants
from kiln.kernels.triton.generated import compile_source
from kiln.kernels.triton.pdl import launch_options
from kiln.kernels.triton.pointwise_ops import (EMITTED_IMPORT, RULES, EmitContext, Unsupported,
                                               as_the_reference_rounds)
from kiln.kernels.triton.pointwise_trace import Step, Trace, trace

Tensor = torch.Tensor

MAX_RANK = 6
# The tuning space (BLOCK elements per program); the first is the untuned default.
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK": 1024, "num_warps": 4},
    {"BLOCK": 512, "num_warps": 4},
    {"BLOCK": 2048, "num_warps": 8},
    {"BLOCK": 4096, "num_warps": 8},
    {"BLOCK": 256, "num_warps": 2},
)
# dtype -> the Triton type it is held in inside the kernel, and the one it is stored as.
# int8/uint8 only as what QuantizeLinear makes and DequantizeLinear reads (QUANTIZED), held in int32.
_HELD = {torch.float16: "tl.float32", torch.bfloat16: "tl.float32", torch.float32: "tl.float32",
         torch.bool: "tl.int1", torch.int32: "tl.int32", torch.int64: "tl.int64",
         torch.int8: "tl.int32", torch.uint8: "tl.int32"}
_STORED = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32",
           torch.bool: "tl.int1", torch.int32: "tl.int32", torch.int64: "tl.int64",
           torch.int8: "tl.int8", torch.uint8: "tl.uint8"}
_WIDENED = (torch.float16, torch.bfloat16, torch.int8, torch.uint8)   # converted to their held type on load
BYTES = (torch.int8, torch.uint8)
QUANTIZED = ("QuantizeLinear", "DequantizeLinear")

# ---------------------------------------------------------------------------- source


def convert(expr: str, src: torch.dtype, dst: torch.dtype) -> str:
    """`expr` (held as `src` is) converted to `dst` with torch's rounding (casts, promotion)."""
    if src == dst:
        return expr
    if dst == torch.bool:
        return f"({expr} != 0)"
    if dst in FLOATS:
        if src in FLOATS and (dst == torch.float32 or src == dst):
            return expr                      # widening is exact, and floats are held in float32
        if src not in FLOATS and dst == torch.float32:
            return f"{expr}.to(tl.float32)"
        return f"{expr}.to({_STORED[dst]}).to(tl.float32)"   # round to the 16-bit type
    return f"{expr}.to({_HELD[dst]})"        # to an integer: truncates floats, wraps integers


def _check(dtype: torch.dtype | None, what: str) -> None:
    if dtype is not None and dtype not in _HELD:
        raise Unsupported(f"{what} of dtype {dtype}")


_TARGETS = {
    "result": lambda s, n: [s.dtype] * n,
    "common": lambda s, n: [s.common] * n,
    "first": lambda s, n: [s.arg_dtypes[0]] * n,
    "bool": lambda s, n: [torch.bool] * n,
    "where": lambda s, n: [torch.bool] + [s.dtype] * (n - 1),
    "none": lambda s, n: list(s.arg_dtypes),
}
_DOMAINS = {
    "float": lambda ts: all(t in FLOATS for t in ts),
    "num": lambda ts: all(t != torch.bool for t in ts),
    "bool": lambda ts: all(t == torch.bool for t in ts),
    "any": lambda ts: True,
}


def instruction(k: int, step: Step, held: dict[tuple[str, int], torch.dtype], consts: Constants,
                 per_op: bool = False, exact: bool = True) -> str:
    """`t<k> = <expression>` for one traced step (`per_op`: rounded as the reference rounds each op;
    `exact` False: Q/DQ the quick way, EmitContext.exact); its constants become kernel parameters."""
    rule = RULES[step.op]
    _check(step.dtype, f"{step.op}'s result")
    if all(a is None or a[0] == "c" for a in step.args):
        raise Unsupported(f"{step.op} of constants only (fold it first)")
    targets = _TARGETS[rule.operands](step, len(step.args))
    present = [t for a, t in zip(step.args, targets) if a is not None]
    if step.op not in QUANTIZED and any(t in BYTES for t in (*present, step.dtype)):
        raise Unsupported(f"{step.op} on 8-bit integers (only QuantizeLinear/DequantizeLinear take them here)")
    if not _DOMAINS[rule.domain](present):
        raise Unsupported(f"{step.op} on {present}")
    operands: list[str | None] = []
    for a, target in zip(step.args, targets):
        _check(target, f"{step.op}'s operand")
        if a is None:
            operands.append(None)
        elif a[0] == "c":
            operands.append(consts.of(a[1], a[2], target))
        else:
            operands.append(convert(f"x{a[1]}" if a[0] == "i" else f"t{a[1]}", held[a[:2]], target))
    if step.op in ("Cast", "CastLike"):
        expr = convert(operands[0], step.arg_dtypes[0], step.dtype)
    else:
        values = tuple(a[1] if a is not None and a[0] == "c" else None for a in step.args)
        is_float = all(t in FLOATS for t in present)
        context = EmitContext(step.attrs, values, is_float, consts.float, step.arg_dtypes, step.dtype, exact)
        expr = rule.emit(operands, context)
        if per_op and step.op not in QUANTIZED:
            expr = as_the_reference_rounds(expr, step.op, operands, context)
    held[("t", k)] = step.dtype
    return f"t{k} = {expr}"


def _address(layout: Layout, j: int) -> str:
    """The element offset of operand j at the program's lanes."""
    kind = layout.kind(j)
    if kind == "dense":
        return "offs"
    if kind == "scalar":
        return "0"
    terms = [f"i{d}" if s == 1 else f"i{d} * st{j}_{d}" for d, s in enumerate(layout.strides[j]) if s]
    return " + ".join(terms)


def _indices(layout: Layout, n_in: int) -> tuple[list[str], list[str]]:
    """(source lines that split `offs` into the per-dim indices strided operands need, size args).

    Inputs need the dims they walk; an output narrower than the space needs the dims it is
    broadcast over too (only the lanes at index 0 there store, so each element is written once).
    """
    r = len(layout.sizes)
    needed = {d for j, st in enumerate(layout.strides) if layout.kind(j) == "strided"
              for d, s in enumerate(st) if s or j >= n_in}
    if not needed:
        return [], []
    lines, args, cur = [], [], "offs"
    for d in range(r - 1, min(needed) - 1, -1):
        if d == 0:
            lines.append(f"i0 = {cur}")
            break
        args.append(f"n{d}")
        if d in needed:
            lines.append(f"i{d} = {cur} % n{d}")
        if d > min(needed):
            lines.append(f"q{d} = {cur} // n{d}")
            cur = f"q{d}"
    return lines, sorted(args)


def _source(tr: Trace, in_dtypes: Sequence[torch.dtype], layout: Layout) -> tuple[str, list[str], Constants]:
    """(the kernel module's source, the names of its parameters after the pointers, its constants)."""
    n_in = len(in_dtypes)
    for i, d in enumerate(in_dtypes):
        _check(d, f"input {i}")
    held: dict[tuple[str, int], torch.dtype] = {("i", i): d for i, d in enumerate(in_dtypes)}
    # A program that quantizes rounds op by op as the reference does: its codes must be the reference's.
    per_op = any(s.op == "QuantizeLinear" for s in tr.steps)
    consts = Constants()
    body = [instruction(k, s, held, consts, per_op) for k, s in enumerate(tr.steps)]
    stores = []
    for j, (ref, dt) in enumerate(zip(tr.outputs, tr.out_dtypes)):
        _check(dt, f"output {j}")
        value = f"x{ref[1]}" if ref[0] == "i" else f"t{ref[1]}"
        if _HELD[dt] != _STORED[dt]:
            value = f"{value}.to({_STORED[dt]})"
        kind, st = layout.kind(n_in + j), layout.strides[n_in + j]
        where = ("mask & (offs == 0)" if kind == "scalar" else
                 " & ".join(["mask"] + [f"(i{d} == 0)" for d, s in enumerate(st) if not s]))
        address = "offs * 0" if kind == "scalar" else _address(layout, n_in + j)
        stores.append(f"tl.store(out{j} + {address}, {value}, mask={where})")
    used = {int(m) for m in re.findall(r"\bx(\d+)\b", "\n".join(body + stores))}
    loads = []
    for i in sorted(used):
        kind = layout.kind(i)
        load = f"tl.load(in{i})" if kind == "scalar" else f"tl.load(in{i} + {_address(layout, i)}, mask=mask)"
        loads.append(f"x{i} = {load}" + (f".to({_HELD[in_dtypes[i]]})" if in_dtypes[i] in _WIDENED else ""))
    index_lines, size_args = _indices(layout, n_in)
    stride_args = [f"st{j}_{d}" for j, st in enumerate(layout.strides) if layout.kind(j) == "strided"
                   for d, s in enumerate(st) if s not in (0, 1)]
    params = ([f"in{i}" for i in range(n_in)] + [f"out{j}" for j in range(len(tr.outputs))]
              + ["numel"] + size_args + stride_args + consts.names
              + ["BLOCK: tl.constexpr", "PDL: tl.constexpr = False"])
    pid = "tl.program_id(0).to(tl.int64)" if layout.wide() else "tl.program_id(0)"
    lines = ["offs = pid * BLOCK + tl.arange(0, BLOCK)", "mask = offs < numel", *index_lines,
             *loads, *body, *stores]
    source = "\n".join([
        '"""Generated by kiln.kernels.triton.pointwise; do not edit."""',
        "import triton",
        "import triton.language as tl",
        EMITTED_IMPORT,
        "from kiln.kernels.triton.pdl import wait_for_inputs",
        "",
        "",
        "@triton.jit",
        f"def kiln_pointwise({', '.join(params)}):",
        f"    # ops: {' '.join(s.op for s in tr.steps)}",
        f"    # rank {len(layout.sizes)}; operands: {[layout.kind(j) for j in range(len(layout.strides))]}",
        "    wait_for_inputs(PDL)   # first: pdl.py's rule",
        f"    pid = {pid}",
        *[f"    {line}" for line in lines],
        "",
    ])
    return source, ["numel"] + size_args + stride_args + consts.names, consts

# ---------------------------------------------------------------------------- plan and launch


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything a call needs but the tensors: the kernel, its integer arguments, the outputs."""
    kernel: Any
    args: tuple[int, ...]
    numel: int
    out_shapes: tuple[tuple[int, ...], ...]
    out_strides: tuple[tuple[int, ...], ...]
    out_dtypes: tuple[torch.dtype, ...]
    source: str
    tabulable: bool = False     # one 8-bit input: pointwise_table's lookup (source: the fallback)
    wide: bool = False


def _plan(program: Sequence[Any], dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]],
          strides: Sequence[Sequence[int]] | None, outputs: Sequence[str] | None, n_outputs: int
          ) -> tuple[str, list[str], Layout, Trace, list[tuple[int, ...]], Constants]:
    tr = trace(program, dtypes, shapes, outputs, n_outputs)
    space = tr.shape
    strides = strides if strides is not None else [contiguous_strides(s) for s in shapes]
    out_strides = [output_strides(space, shapes, strides, sh) for sh in tr.out_shapes]
    operand_strides = [broadcast_strides(sh, st, space) for sh, st in zip(shapes, strides)]
    operand_strides += [broadcast_strides(sh, st, space) for sh, st in zip(tr.out_shapes, out_strides)]
    full = next((st for sh, st in zip(tr.out_shapes, operand_strides[len(shapes):]) if tuple(sh) == space),
                operand_strides[len(shapes)])
    layout = collapse(space, operand_strides, dim_order(space, full))
    if len(layout.sizes) > MAX_RANK:
        raise Unsupported(f"{len(layout.sizes)} dims after merging (at most {MAX_RANK})")
    source, params, consts = _source(tr, dtypes, layout)
    return source, params, layout, tr, out_strides, consts


def generate(program: Sequence[Any], input_dtypes: Sequence[torch.dtype | str],
             input_shapes: Sequence[Sequence[int]], outputs: Sequence[str] | None = None,
             n_outputs: int = 1, input_strides: Sequence[Sequence[int]] | None = None
             ) -> tuple[str, dict[str, float | int]]:
    """The Triton module the program becomes for inputs of these dtypes, shapes (and strides;
    contiguous if not given), and the values of its constant parameters (k0, k1, ...). Raises
    Unsupported when the generator cannot write it."""
    dtypes = [d if isinstance(d, torch.dtype) else from_name(d).torch for d in input_dtypes]
    plan = _plan(program, dtypes, [tuple(s) for s in input_shapes], input_strides, outputs, n_outputs)
    return plan[0], dict(zip(plan[5].names, plan[5].values))


def generate_source(program: Sequence[Any], input_dtypes: Sequence[torch.dtype | str],
                    input_shapes: Sequence[Sequence[int]], outputs: Sequence[str] | None = None,
                    n_outputs: int = 1, input_strides: Sequence[Sequence[int]] | None = None) -> str:
    """generate's source only."""
    return generate(program, input_dtypes, input_shapes, outputs, n_outputs, input_strides)[0]


# id(program) -> (program, its JSON text): the attribute object is reused call after call, so the
# text (part of every launch key) is computed once; holding the program keeps the id unique.
_PROGRAM_KEYS: dict[int, tuple[Any, str]] = {}
_LAUNCHES: dict[tuple[Any, ...], Launch | None] = {}
_MAX_LAUNCHES = 4096


def program_key(program: Any) -> str:
    entry = _PROGRAM_KEYS.get(id(program))
    if entry is None or entry[0] is not program:
        entry = _PROGRAM_KEYS[id(program)] = (program, json.dumps(program, sort_keys=True))
    return entry[1]


def _launch(inputs: Sequence[Tensor], program: Any, outputs: Sequence[str] | None, n_outputs: int) -> Launch | None:
    key = (program_key(program), tuple(outputs or ()), n_outputs,
           tuple((t.dtype, tuple(t.shape), t.stride()) for t in inputs))
    if key in _LAUNCHES:
        return _LAUNCHES[key]
    if len(_LAUNCHES) >= _MAX_LAUNCHES:
        _LAUNCHES.clear()
    try:
        shapes = [tuple(t.shape) for t in inputs]
        source, params, layout, tr, out_strides, consts = _plan(program, [t.dtype for t in inputs], shapes,
                                                                [t.stride() for t in inputs], outputs, n_outputs)
    except Unsupported:
        _LAUNCHES[key] = None
        return None
    values = {"numel": layout.numel}
    values.update({f"n{d}": n for d, n in enumerate(layout.sizes)})
    values.update({f"st{j}_{d}": s for j, st in enumerate(layout.strides) for d, s in enumerate(st)})
    values.update(zip(consts.names, consts.values))
    kinds = [layout.kind(j) for j in range(len(layout.strides))]
    launch = Launch(compile_source(source), tuple(values[p] for p in params), layout.numel,
                    tr.out_shapes, tuple(out_strides), tr.out_dtypes, source,
                    pointwise_table.tabulable([t.dtype for t in inputs], kinds, n_outputs, tr.out_shapes, tr.shape),
                    layout.wide())
    _LAUNCHES[key] = launch
    return launch


def pointwise(*inputs: Tensor, program: list, outputs: Sequence[str] | None = None, n_outputs: int = 1,
              config: dict[str, int] | None = None) -> Tensor | tuple[Tensor, ...]:
    """kiln::Pointwise in one generated kernel (the reference op's calling convention; config TABLE 0
    computes a program of one 8-bit input instead of looking it up, as while a graph is captured
    before its table exists). Inputs the
    generator cannot take at run time (a rank past MAX_RANK after merging dims, mixed devices, an
    absent input) run the reference op instead, so the result is always right."""
    launch = None
    if inputs and all(t is not None for t in inputs) and len({t.device for t in inputs}) == 1:
        launch = _launch(inputs, program, outputs, n_outputs)
    if launch is None:
        return reference_pointwise(*inputs, program=program, outputs=outputs, n_outputs=n_outputs)
    device = inputs[0].device
    outs = tuple(torch.empty_strided(s, st, dtype=d, device=device)
                 for s, st, d in zip(launch.out_shapes, launch.out_strides, launch.out_dtypes))
    if launch.numel:
        cfg = config or CONFIGS[0]
        values = (pointwise_table.table(program_key(program), program, outputs, inputs[0].dtype, device)
                  if launch.tabulable and cfg.get("TABLE", 1) else None)
        if values is not None:
            pointwise_table.lookup(inputs[0], values, outs[0], launch.numel, launch.wide, cfg)
            return outs[0]
        grid = (triton.cdiv(launch.numel, cfg["BLOCK"]),)
        launch.kernel[grid](*inputs, *outs, *launch.args, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
                            **launch_options(inputs[0]))
    return outs[0] if n_outputs == 1 else outs


def supports_program(program: Any, input_dtypes: Sequence[str | None],
                     input_shapes: Sequence[Sequence[int | str] | None] = (),
                     outputs: Sequence[str] | None = None, n_outputs: int = 1) -> bool:
    """Whether the generator writes this program for these input dtypes (and shapes, where known).
    Unknown ranks and symbolic dims are taken as 1 (broadcasts with anything, dimensioned for type
    promotion); the kernel plans again with the real shapes and falls back to the reference if needed."""
    if not input_dtypes or any(d is None for d in input_dtypes):
        return False
    try:
        dtypes = [from_name(d).torch for d in input_dtypes]
    except (KeyError, TypeError, ValueError):
        return False
    shapes = []
    for i in range(len(dtypes)):
        shape = input_shapes[i] if i < len(input_shapes) else None
        if shape is not None and len(shape) > MAX_RANK:
            return False
        shapes.append((1,) if shape is None else tuple(d if isinstance(d, int) else 1 for d in shape))
    try:
        _plan(program, dtypes, shapes, None, outputs, n_outputs)
    except (Unsupported, RuntimeError, ValueError, TypeError, KeyError, IndexError):
        return False
    return True
