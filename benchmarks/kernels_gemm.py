"""GEMM tactics at BERT-base shapes: torch.matmul vs kiln's cuBLAS and Triton FusedMatMul tactics.

Usage (GPU machine): PYTHONPATH=src python benchmarks/kernels_gemm.py [--dtype fp16] [--iters 100]
    [--act erf|tanh|none] [--residual] [--trans-b]
For each shape (A [M, K] @ B [K, N] + bias, then GELU) it checks every contender against the
reference kiln::FusedMatMul (fp32 math on the same inputs), then times it: CUDA events around
each call, median of --iters runs after warm-up, with a 256 MiB buffer rewritten before every
run so no operand starts in L2. TFLOP/s counts the GEMM only (2*M*N*K).
Contenders:
  torch.matmul        the bare GEMM, no epilogue: the roofline to beat
  eager               the reference op (matmul, + bias, GELU as separate torch kernels)
  cublas              kiln::FusedMatMul.cublas
  triton[i]           kiln::FusedMatMul.triton with CONFIGS[i]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from kiln.kernels.reference import lookup
from kiln.kernels.triton import gemm
from kiln.tactics import get_tactic

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
from benchmarks.measure import cuda_median_ms  # noqa: E402

SHAPES = ((4096, 768, 3072), (4096, 3072, 768), (4096, 768, 768))   # (M, K, N): FFN up, FFN down, QKV/out proj
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
GELU = {"erf": ("Gelu", [0.0]), "tanh": ("Gelu", [1.0]), "none": ("", [])}


def median_ms(fn: Callable[[], object], iters: int, flush: torch.Tensor) -> float:
    """Median with L2 evicted before each run (A, B and Y would otherwise stay in its 50 MiB)."""
    return cuda_median_ms(fn, iters, before_each=flush.zero_)


def config_name(c: dict) -> str:
    return f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--act", default="erf", choices=sorted(GELU))
    ap.add_argument("--residual", action="store_true", help="add a residual input (as BERT's down projection)")
    ap.add_argument("--trans-b", action="store_true", help="B stored [N, K] (Gemm transB / nn.Linear layout)")
    args = ap.parse_args()
    dtype, (act, params) = DTYPES[args.dtype], GELU[args.act]
    trans_b = int(args.trans_b)
    ref = lookup("kiln::FusedMatMul").fn
    cublas, triton_tactic = get_tactic("kiln::FusedMatMul.cublas"), get_tactic("kiln::FusedMatMul.triton")
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  "
          f"epilogue bias+{act or 'none'}{'(' + args.act + ')' if act else ''}{' +residual' if args.residual else ''}"
          f"  trans_b={trans_b}")
    for m, k, n in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(m, k, device="cuda", generator=g).to(dtype)
        b = (torch.randn(*((n, k) if trans_b else (k, n)), device="cuda", generator=g) / k**0.5).to(dtype)
        bias = torch.randn(n, device="cuda", generator=g).to(dtype)
        res = torch.randn(m, n, device="cuda", generator=g).to(dtype) if args.residual else None
        ops = (a, b, bias) if res is None else (a, b, bias, res)
        attrs = {"trans_b": trans_b, "activation": act, "activation_params": params}
        want = ref(*(t.float() for t in ops), **attrs)
        w = b.t() if trans_b else b
        contenders: list[tuple[str, Callable[[], torch.Tensor], bool]] = [
            ("torch.matmul (no epilogue)", lambda: torch.matmul(a, w), False),
            ("eager reference", lambda: ref(*ops, **attrs), True),
            ("kiln::FusedMatMul.cublas", lambda: cublas.kernel(*ops, **attrs), True),
        ]
        for i, c in enumerate(gemm.CONFIGS):
            contenders.append((f"triton[{i}] {config_name(c)}",
                               lambda c=c: triton_tactic.kernel(*ops, **attrs, config=c), True))
        flops = 2.0 * m * n * k
        print(f"\n## [{m},{k}] x [{k},{n}]")
        print(f"| {'contender':<36} | {'ms':>8} | {'TFLOP/s':>8} | {'max err':>8} |")
        print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
        for name, fn, checked in contenders:
            try:
                err = (fn().float() - want).abs().max().item() if checked else float("nan")
                ms = median_ms(fn, args.iters, flush)
            except Exception as e:  # a config that does not compile here (shared memory) is reported, not fatal
                print(f"| {name:<36} | failed: {type(e).__name__}: {str(e)[:60]}")
                continue
            print(f"| {name:<36} | {ms:8.4f} | {flops / ms / 1e9:8.1f} | {err:8.2e} |")


if __name__ == "__main__":
    main()
