"""kiln's Triton MaxPool (MaxPool.triton) against torch's max_pool2d on ResNet-50's stem pool.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_pool.py [--iters 50]

[64, 64, 112, 112] channels-last, 3x3 stride 2 pad 1, in fp16 (kiln fp16 engines; torch's
channels-last kernel is what MaxPool.torch runs) and in int8 / float8 (kiln's int8 and fp8
engines pool the requantized stem output, precision/quantize_before_pool.py; torch has no 8-bit
max pool, so they are timed against the fp16 pool they replace). The outputs are checked
against the reference first; times are CUDA-event medians of --iters calls after warm-up (the
GPU held across the Python launch), with the bytes moved per microsecond beside them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import cuda_median_ms  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import pool as tp  # noqa: E402

REF = lookup("MaxPool").fn
ATTRS = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
SHAPE = (64, 64, 112, 112)


def _input(dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(SHAPE, device="cuda") * 8
    x = x.round().clamp(-128, 127).to(torch.int8) if dtype == torch.int8 else x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; ResNet-50 stem pool {list(SHAPE)} "
          f"channels-last; us per call (median of {args.iters})")
    x16 = _input(torch.float16)
    torch_us = cuda_median_ms(lambda: F.max_pool2d(x16, 3, 2, 1), args.iters) * 1000
    print(f"  torch max_pool2d fp16 {torch_us:8.1f}")
    for dtype in (torch.float16, torch.int8, torch.float8_e4m3fn):
        x = _input(dtype)
        want = REF(x[:4].float().cpu() if dtype == torch.float8_e4m3fn else x[:4].cpu(), **ATTRS)[0]
        out_bytes = x.numel() // 4 * x.element_size()
        for cfg in tp.CONFIGS:
            got = tp.max_pool2d(x[:4], config=dict(cfg), **ATTRS).cpu()
            wrong = (got.float() != want.float()).nonzero()
            differ = len(wrong)
            if differ:   # where, for the record: (n, c, oh, ow), got, want
                at = tuple(wrong[0].tolist())
                print(f"    first mismatch at {at}: {got[at].item()} vs {want[at].item()}")
            us = cuda_median_ms(lambda: tp.max_pool2d(x, config=dict(cfg), **ATTRS), args.iters) * 1000
            gbs = (x.numel() * x.element_size() + out_bytes) / us / 1e3
            print(f"  triton {str(dtype).replace('torch.', ''):14s} {str(cfg):50s} {us:8.1f}  "
                  f"({torch_us / us:.2f}x torch fp16, {gbs:.0f} GB/s)"
                  + ("" if not differ else f"  MISMATCH in {differ} of {want.numel()}"))


if __name__ == "__main__":
    main()
