"""kiln's Triton attention (kiln::Attention.triton) against torch's SDPA on the suite's shapes.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_attention.py [--iters 50]

Per shape: the outputs checked against the float32 reference first (the tuner's tolerance),
then each config of the Triton kernels (streaming; one tile where S <= 256) and SDPA (what
kiln::Attention.sdpa runs: cuDNN or flash attention on Hopper) timed with CUDA events, median of
--iters after warm-up, same inputs.
Shapes: BERT-base b32 (S 128, D 64, additive padding mask), all-MiniLM-L6-v2 b32 (D 32), ViT-B/16
b32 (S 197, no mask), and a causal S 1024 case.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import cuda_median_ms  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import attention as ta  # noqa: E402
from kiln.tactics.attention import sdpa_attention  # noqa: E402

REF = lookup("kiln::Attention").fn
SHAPES = {  # name: (B, H, S, D, mask kind, causal)
    "BERT-base b32": (32, 12, 128, 64, "padding", 0),
    "MiniLM b32": (32, 12, 128, 32, "padding", 0),
    "ViT-B/16 b32": (32, 12, 197, 64, None, 0),
    "causal S1024": (8, 16, 1024, 64, None, 1),
}


def bench(fn, iters: int) -> float:
    """us per call: the kernel micro-benchmarks' CUDA-event median (measure.cuda_median_ms)."""
    return cuda_median_ms(fn, iters) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call (median of {args.iters})")
    for name, (b, h, s, d, mask_kind, causal) in SHAPES.items():
        q, k, v = (torch.randn(b, h, s, d, device="cuda", generator=g, dtype=torch.float16) for _ in range(3))
        mask = None
        if mask_kind == "padding":
            mask = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float16)
            mask[::3, ..., s * 3 // 4:] = -65504.0
        want = REF(q.float().cpu(), k.float().cpu(), v.float().cpu(), None if mask is None else mask.float().cpu(),
                   is_causal=causal)
        sdpa_ms = bench(lambda: sdpa_attention(q, k, v, mask, is_causal=causal), args.iters)
        print(f"\n== {name} [{b}, {h}, {s}, {d}]: SDPA {sdpa_ms:8.1f}")
        for cfg in ta.CONFIGS + (ta.ONE_TILE_CONFIGS if s <= ta.MAX_ONE_TILE_KEYS else ()):
            try:
                got = ta.attention(q, k, v, mask, is_causal=causal, config=dict(cfg))
                why = mismatch(got.cpu(), want.to(torch.float16))
                us = bench(lambda: ta.attention(q, k, v, mask, is_causal=causal, config=dict(cfg)), args.iters)
                print(f"   triton {str(cfg):72s} {us:8.1f}  ({sdpa_ms / us:.2f}x SDPA)"
                      + ("" if why is None else f"  MISMATCH: {why}"))
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"   triton {str(cfg):72s} FAILED {type(exc).__name__}: {exc}"[:300])


if __name__ == "__main__":
    main()
