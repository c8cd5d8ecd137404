"""kiln's Triton LayerNorm / RMSNorm / Softmax / LogSoftmax against torch, on one GPU.

Usage (GPU machine): PYTHONPATH=src python benchmarks/kernels_norm.py [--dtype float16] [--iters 200]
Shapes are BERT-base at batch 32, sequence 128 (plus a few wider rows). Each kernel is first
checked against torch, then timed with triton.testing.do_bench (median, L2 flushed between
runs): untuned (no config), every config of the tactic's tuning space (best shown), and torch.
Prints a markdown table; "x torch" > 1 means kiln is faster.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F
import triton.testing

from kiln.kernels.triton import norm, softmax

B, S, H, HEADS, VOCAB = 32, 128, 768, 12, 30522


def cases(dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], Callable, Callable]]:
    """(name, shape, kiln fn(x, config=...), torch fn(x)) per benchmark row."""
    dev = "cuda"

    def ln(cols: int):
        w, b = torch.randn(cols, device=dev, dtype=dtype), torch.randn(cols, device=dev, dtype=dtype)
        return (lambda x, **kw: norm.layer_norm(x, w, b, epsilon=1e-12, **kw)[0],
                lambda x: F.layer_norm(x, (cols,), w, b, eps=1e-12))

    def rms(cols: int):
        w = torch.randn(cols, device=dev, dtype=dtype)
        return (lambda x, **kw: norm.rms_norm(x, w, epsilon=1e-6, **kw),
                lambda x: F.rms_norm(x, (cols,), w, eps=1e-6))

    sm = (lambda x, **kw: softmax.softmax(x, **kw), lambda x: torch.softmax(x, dim=-1))
    lsm = (lambda x, **kw: softmax.log_softmax(x, **kw), lambda x: torch.log_softmax(x, dim=-1))
    sm1 = (lambda x, **kw: softmax.softmax(x, axis=1, **kw), lambda x: torch.softmax(x, dim=1))
    return [
        ("LayerNorm", (B * S, H), *ln(H)),
        ("LayerNorm", (B, S, H), *ln(H)),
        ("LayerNorm", (B * S, 4096), *ln(4096)),
        ("RMSNorm", (B * S, H), *rms(H)),
        ("RMSNorm", (B * S, 4096), *rms(4096)),
        ("Softmax", (B, HEADS, S, S), *sm),
        ("Softmax", (B, HEADS, 512, 512), *sm),
        ("Softmax axis=1", (B, HEADS, S, S), *sm1),
        ("LogSoftmax", (B * S // 4, VOCAB), *lsm),
    ]


def bench(fn: Callable[[], object], iters: int) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=iters, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--iters", type=int, default=100, help="do_bench's rep: milliseconds of timed runs per contender")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, torch {torch.__version__}, triton {triton.__version__}\n")
    print("| op | shape | torch ms | kiln untuned ms | kiln best ms | best config | x torch (best) | GB/s (best) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape, kiln_fn, torch_fn in cases(dtype):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        want = torch_fn(x).float()
        err = (kiln_fn(x).float() - want).abs().max().item()
        assert err < 5e-2 * max(1.0, want.abs().max().item()), f"{name} {shape}: max error {err}"
        t_torch = bench(lambda: torch_fn(x), args.iters)
        t_plain = bench(lambda: kiln_fn(x), args.iters)
        timed = [(bench(lambda c=c: kiln_fn(x, config=c), args.iters), c) for c in norm.CONFIGS]
        t_best, best = min(timed, key=lambda tc: tc[0])
        gbs = 2 * x.numel() * x.element_size() / (t_best * 1e-3) / 1e9  # one read + one write of X
        cfg = ",".join(f"{k}={v}" for k, v in best.items())
        print(f"| {name} | {list(shape)} | {t_torch:.4f} | {t_plain:.4f} | {t_best:.4f} | {cfg} | "
              f"{t_torch / t_best:.2f} | {gbs:.0f} |")


if __name__ == "__main__":
    main()
