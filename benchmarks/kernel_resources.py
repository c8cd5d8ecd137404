"""What kiln's Triton GEMM kernels compile to for a GPU, without one: registers, spills and
machine instructions per kernel variant.

    PYTHONPATH=src python benchmarks/kernel_resources.py [--arch 90] [--top 12] [--cases SUBSTRING] [--operands]
                                                        [--space | --conv-space]

Each case (benchmarks/kernel_cases.py) calls a real launcher (qgemm.qmatmul, qconv.qconv, ...) on
CPU tensors of the shapes it names, with the kernel swapped for a recorder, so the arguments,
constexprs and specialisations (16-byte alignment, ints equal to 1 or divisible by 16) are the
ones the launcher would pass on the GPU; then triton.compile builds that variant for sm_ARCH and the
CUDA tools Triton ships (cuobjdump) read the cubin. Instruction counts are static (the K loop
counted once), so they compare epilogues: per element of a 128x128 tile over 4 warps, a
thread holds 128 accumulators, and an instruction that appears 128 times more is one more
instruction per element. Not a timing: the Triton here may differ from the device's, and the
GPU decides what an instruction costs.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9 warns without it; the runtime's default

import triton  # noqa: E402
from onnx import TensorProto  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.kernel_cases import CASES, qconv_case, qgemm_case  # noqa: E402
from kiln.kernels.triton import qconv  # noqa: E402

TYPES = {torch.int8: "i8", torch.uint8: "u8", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.int32: "i32", torch.int64: "i64", torch.float8_e4m3fn: "fp8e4nv"}
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@dataclass(frozen=True)
class Resources:
    registers: int
    stack: int            # bytes per thread
    local: int            # spilled bytes per thread
    instructions: int     # static count of the SASS
    opcodes: collections.Counter
    # each WARPGROUP.DEPBAR's count: the warp-group MMA groups it lets stay in flight (0: it waits for
    # every one issued; Triton keeps a dot in flight across K steps only with a float32 accumulator)
    mma_waits: collections.Counter
    mma: tuple[str, ...] = ()   # the warp-group MMA instructions, shape and types included (IGMMA.64x128x32...)


def _signature(jit: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Triton's signature, constexprs and divisibility attributes for this call, as the runtime
    specialises them."""
    values = {p.name: p.default for p in inspect.signature(jit.fn).parameters.values()
              if p.default is not inspect.Parameter.empty}      # defaults: PDL (False) and the like
    values.update(zip(jit.arg_names, args))
    values.update(kw)
    sig: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[tuple[int], list] = {}
    for i, name in enumerate(jit.arg_names):
        v = values[name]
        if i in jit.constexprs or v is None:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + TYPES[v.dtype]
            if v.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int) and v == 1:
            sig[name], consts[name] = "constexpr", 1
        elif isinstance(v, int):
            sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        elif type(v).__name__ == "TensorDescriptor":   # host TMA descriptor: its type names dtype and block
            from triton.runtime.jit import mangle_type
            sig[name] = mangle_type(v)
        else:
            raise TypeError(f"argument {name}: {type(v).__name__} is not handled here")
    return sig, consts, attrs


def compile_kernel(jit: Any, args: tuple[Any, ...], kw: dict[str, Any], arch: int) -> Any:
    """The recorded call compiled for sm_`arch` (Triton's CompiledKernel: .asm holds each stage)."""
    from triton.backends.compiler import GPUTarget

    kw = dict(kw)
    options = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
    sig, consts, attrs = _signature(jit, args, kw)
    return triton.compile(ASTSource(jit, sig, consts, attrs), target=GPUTarget("cuda", arch, 32), options=options)


def mma_operands(ttgir: str) -> str:
    """How the warp-group MMAs of a compiled kernel get their A operand: from shared memory (a
    memdesc, as TMA wrote it) or from registers (a tensor: a shared-memory load, then layout
    conversions to the MMA's operand layout), with the counts of those loads and conversions."""
    dots = re.findall(r"ttng\.warp_group_dot %\S+, %\S+, %\S+ \{[^}]*\} : (\S+)", ttgir)
    from_smem = sum(1 for a in dots if a.startswith("!ttg.memdesc"))
    return (f"{len(dots)} warp_group_dot: A from shared memory {from_smem}, from registers {len(dots) - from_smem}; "
            f"local_load {ttgir.count('ttg.local_load')}, convert_layout {ttgir.count('ttg.convert_layout')}, "
            f"reshape {ttgir.count('tt.reshape')}")


def compile_call(jit: Any, args: tuple[Any, ...], kw: dict[str, Any], arch: int) -> Resources:
    """Compile the recorded call for sm_`arch` and read its resources and SASS."""
    return cubin_resources(compile_kernel(jit, args, kw, arch))


def cubin_resources(kernel: Any) -> Resources:
    """A compiled kernel's registers, stack, spills, SASS opcodes and MMA waits, read from its cubin
    by the cuobjdump Triton ships (Triton and Gluon kernels alike)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path],
                              capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"cuobjdump gave no resource usage:\n{usage}")
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    waits = collections.Counter(int(n, 16) for n in re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", sass))
    mma = tuple(sorted(set(re.findall(r"\b([IQH]GMMA\.\S+)", sass))))
    return Resources(int(m[1]), int(m[2]), int(m[3]), len(ops), collections.Counter(ops), waits, mma)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an integer [%(default)s]")
    ap.add_argument("--top", type=int, default=10, help="most frequent opcodes listed per case [%(default)s]")
    ap.add_argument("--cases", default=None, help="substring: only the cases whose name contains it")
    ap.add_argument("--space", action="store_true",
                    help="instead: every config of the 8-bit GEMM's tuning spaces on BERT's FFN1 with the GELU + "
                         "requantizing epilogue (which spill, which do not)")
    ap.add_argument("--operands", action="store_true",
                    help="also: how each case's warp-group MMAs read their A operand (mma_operands)")
    ap.add_argument("--conv-space", action="store_true",
                    help="instead: every config of the 8-bit conv's tuning spaces on a ResNet-50 stage-3 3x3 conv "
                         "(Relu, requantized) and a 1x1 conv reading an 8-bit residual")
    args = ap.parse_args(argv)
    print(f"triton {triton.__version__}, sm_{args.arch}; static SASS counts (module docstring)")
    if args.space or args.conv_space:
        from kiln.kernels.triton import qgemm_space
        for dtype, out, name in ((torch.int8, TensorProto.INT8, "INT8_CONFIGS"),
                                 (torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FN, "FP8_CONFIGS")):
            cases = ([("FFN1", lambda cfg: qgemm_case(dtype, "Gelu", out, config=cfg))] if args.space else
                     [("3x3", lambda cfg: qconv_case(dtype, out, False, config=cfg)),
                      ("1x1 res8", lambda cfg: qconv_case(dtype, out, True, kernel=1, config=cfg, residual_8bit=True))])
            for label, make in cases:
                for cfg in getattr(qgemm_space if args.space else qconv, name):
                    r = compile_call(*make(cfg), args.arch)
                    print(f"{str(dtype)[6:]:14s} {label:9s} {qgemm_space.describe(cfg):40s} regs {r.registers:3d}  "
                          f"spill {r.local:4d} B  stack {r.stack:4d} B  instructions {r.instructions:5d}")
        return
    for name, make in CASES.items():
        if args.cases and args.cases not in name:
            continue
        jit, call_args, kw = make()
        r = compile_call(jit, call_args, kw, args.arch)
        top = ", ".join(f"{op} {n}" for op, n in r.opcodes.most_common(args.top))
        print(f"{name:52s} regs {r.registers:3d}  spill {r.local:4d} B  stack {r.stack:4d} B  "
              f"instructions {r.instructions:5d}\n    {top}")
        if args.operands:
            waits = ", ".join(f"{n} x{k}" for n, k in sorted(r.mma_waits.items())) or "none"
            print(f"    {mma_operands(compile_kernel(jit, call_args, kw, args.arch).asm['ttgir'])}; "
                  f"MMA groups left in flight by each wait (SASS): {waits}")


if __name__ == "__main__":
    main()
