"""ResNet-50's convolution layers on one GPU: the reference FusedConv (NCHW torch conv, then the
epilogue) against the channels-last cuDNN tactic (kiln::FusedConv.cudnn_nhwc).

Usage (GPU machine): PYTHONPATH=src python benchmarks/kernels_conv.py [--batch 64] [--dtype fp16] [--iters 50]
Each layer is checked against the reference first, then timed with CUDA events (median of
--iters after warm-up). Columns (ms per call):
  ref          reference kiln::FusedConv, NCHW tensors, the process's default cuDNN flags
  ref+bench    the same with torch.backends.cudnn.benchmark=True (what the tactic sets)
  nhwc         the tactic, input already channels-last (inside a channels-last region)
  nhwc fused   the same with the "cudnn" epilogue config (one fused cuDNN call for ReLU)
  nhwc+in      the tactic fed an NCHW input (pays the conversion: a region's first conv)
  nhwc-wcache  the tactic converting the weight on every call (no memo), to price the memo
The "all" row weights each layer by how often ResNet-50 runs it. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from kiln.kernels.reference import lookup
from kiln.tactics import get_tactic
from kiln.tactics import conv as conv_tactics

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
from benchmarks.measure import cuda_median_ms  # noqa: E402

# (name, count in ResNet-50, C_in, C_out, kernel, stride, H=W of the input, residual)
LAYERS = [
    ("stem 7x7/2", 1, 3, 64, 7, 2, 224, False),
    ("l1 1x1 64>64", 1, 64, 64, 1, 1, 56, False),
    ("l1 3x3 64", 3, 64, 64, 3, 1, 56, False),
    ("l1 1x1 64>256 +res", 3, 64, 256, 1, 1, 56, True),
    ("l1 1x1 256>64", 2, 256, 64, 1, 1, 56, False),
    ("l2 1x1 256>128", 1, 256, 128, 1, 1, 56, False),
    ("l2 3x3/2 128", 1, 128, 128, 3, 2, 56, False),
    ("l2 3x3 128", 3, 128, 128, 3, 1, 28, False),
    ("l2 1x1 128>512 +res", 4, 128, 512, 1, 1, 28, True),
    ("l2 1x1 512>128", 3, 512, 128, 1, 1, 28, False),
    ("l3 1x1 512>256", 1, 512, 256, 1, 1, 28, False),
    ("l3 3x3/2 256", 1, 256, 256, 3, 2, 28, False),
    ("l3 3x3 256", 5, 256, 256, 3, 1, 14, False),
    ("l3 1x1 256>1024 +res", 6, 256, 1024, 1, 1, 14, True),
    ("l3 1x1 1024>256", 5, 1024, 256, 1, 1, 14, False),
    ("l4 1x1 1024>512", 1, 1024, 512, 1, 1, 14, False),
    ("l4 3x3/2 512", 1, 512, 512, 3, 2, 14, False),
    ("l4 3x3 512", 2, 512, 512, 3, 1, 7, False),
    ("l4 1x1 512>2048 +res", 3, 512, 2048, 1, 1, 7, True),
    ("l4 1x1 2048>512", 2, 2048, 512, 1, 1, 7, False),
    ("proj 1x1 64>256", 1, 64, 256, 1, 1, 56, False),
    ("proj 1x1/2 256>512", 1, 256, 512, 1, 2, 56, False),
    ("proj 1x1/2 512>1024", 1, 512, 1024, 1, 2, 28, False),
    ("proj 1x1/2 1024>2048", 1, 1024, 2048, 1, 2, 14, False),
]
COLUMNS = ["ref", "ref+bench", "nhwc", "nhwc fused", "nhwc+in", "nhwc-wcache"]


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 5) -> float:
    return cuda_median_ms(fn, iters, warmup)


def _with_benchmark(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=torch.backends.cudnn.allow_tf32):
            return fn()
    return run


def contenders(batch: int, dtype: torch.dtype, layer: tuple,
               device: str = "cuda") -> tuple[dict[str, Callable[[], torch.Tensor]], float]:
    _, _, cin, cout, k, s, hw, res = layer
    x = torch.randn(batch, cin, hw, hw, device=device, dtype=dtype)
    w = torch.randn(cout, cin, k, k, device=device, dtype=dtype) * (1.0 / (cin * k * k)) ** 0.5
    b = torch.randn(cout, device=device, dtype=dtype) * 0.1
    attrs = dict(pads=[k // 2] * 4, strides=[s, s], kernel_shape=[k, k], activation="Relu")
    out_hw = (hw + 2 * (k // 2) - k) // s + 1
    r = torch.randn(batch, cout, out_hw, out_hw, device=device, dtype=dtype) if res else None
    x_cl = x.contiguous(memory_format=torch.channels_last)
    r_cl = None if r is None else r.contiguous(memory_format=torch.channels_last)
    ref = lookup("kiln::FusedConv").fn
    tactic = get_tactic("kiln::FusedConv.cudnn_nhwc").kernel
    torch_cfg, cudnn_cfg = conv_tactics.CONFIGS

    def no_weight_memo() -> torch.Tensor:
        # A fresh weight object each call: the memo misses and converts (then drops the copy).
        return tactic(x_cl, w.view(w.shape), b, r_cl, **attrs, config=torch_cfg)

    fns = {
        "ref": lambda: ref(x, w, b, r, **attrs),
        "ref+bench": _with_benchmark(lambda: ref(x, w, b, r, **attrs)),
        "nhwc": lambda: tactic(x_cl, w, b, r_cl, **attrs, config=torch_cfg),
        "nhwc fused": lambda: tactic(x_cl, w, b, r_cl, **attrs, config=cudnn_cfg),
        "nhwc+in": lambda: tactic(x, w, b, r_cl, **attrs, config=torch_cfg),
        "nhwc-wcache": no_weight_memo,
    }
    flops = 2.0 * batch * cout * out_hw * out_hw * cin * k * k
    return fns, flops


def check(fns: dict[str, Callable[[], torch.Tensor]], name: str) -> None:
    want = fns["ref"]().float()
    scale = max(1.0, want.abs().max().item())
    for col, fn in fns.items():
        got = fn().float()
        err = (got - want).abs().max().item() / scale
        if err > 2e-2:
            raise SystemExit(f"{name}: {col} differs from the reference by {err:.3g} (relative to max |y|)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"batch {args.batch}, {args.dtype}; ms per call (median of {args.iters})\n")
    print("| layer | x | TFLOP/s nhwc | " + " | ".join(COLUMNS) + " | ref / nhwc |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    totals = dict.fromkeys(COLUMNS, 0.0)
    for layer in LAYERS:
        name, count = layer[0], layer[1]
        fns, flops = contenders(args.batch, dtype, layer)
        check(fns, name)
        ms = {col: median_ms(fn, args.iters) for col, fn in fns.items()}
        for col in COLUMNS:
            totals[col] += count * ms[col]
        cells = " | ".join(f"{ms[c]:.3f}" for c in COLUMNS)
        print(f"| {name} | {count} | {flops / ms['nhwc'] / 1e9:.0f} | {cells} | {ms['ref'] / ms['nhwc']:.2f} |")
        del fns
        torch.cuda.empty_cache()
    cells = " | ".join(f"{totals[c]:.2f}" for c in COLUMNS)
    print(f"| all (x count) | {sum(layer[1] for layer in LAYERS)} | | {cells} | {totals['ref'] / totals['nhwc']:.2f} |")


if __name__ == "__main__":
    main()
