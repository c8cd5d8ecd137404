"""GPU: the warp-specialized Gluon kernel for ResNet-50's 1x1 convs (kernels/gluon/qconv.py,
the tactic kiln::QConv.gluon) against kiln's Triton kiln::QConv on the same operands.

    PYTHONPATH=$PWD/src python3 benchmarks/gluon_conv1x1.py [int8|fp8 ...]      # H100/H200: check and time it
    PYTHONPATH=$PWD/src python3 benchmarks/gluon_conv1x1.py --compile 90       # no GPU: compile for sm_90

The residual 1x1 convs (16 of ResNet-50's 52) move ~2 bytes per FLOP and kiln's Triton kernels run
them at ~2.4 TB/s where a device copy reaches ~4.2 (benchmarks/kernels_qconv_residual.py, H200,
2026-11-29); no tile, stage count or occupancy moved that, nor loading the residual a tile ahead.
The Gluon kernel splits the work by warps (its module docstring). Per 1x1 stride-1 layer
(kernels_qconv_store.LAYERS, batch 64, bias + Relu, requantized, the residual where the block adds
one): kiln's fastest Triton config, then each Gluon config on the same operands, its codes
compared with the Triton kernel's (the tuner's tolerance is one step: the share of identical codes
and the largest difference printed), in GB/s of the bytes the layer must move; and the layers'
count-weighted totals, with the Gluon kernel where it is faster and within a step. CUDA graphs of
5 calls, median of 20 (kernels_qconv.bench). --compile: registers, spills, shared memory, SASS
waits and opcode counts of each config (compiled for sm_90 under Triton 3.6 and 3.9, 2026-11-29: no spills at
maxnreg 128, one wgmma group left in flight). H200, 2026-11-29 (b261f68): codes equal to the
Triton kernel's on every layer and config; count-weighted totals fp8 616.5 -> 546.0 us, int8
688.5 -> 635.3 (BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kiln.kernels.gluon.qconv import CONFIGS, compile_for, qconv  # noqa: E402


def compile_only(arch: int) -> None:
    """Compile conv_kernel for sm_`arch` without a GPU: registers, spills, shared memory, the SASS
    waits and the most frequent SASS opcodes of each variant."""
    from benchmarks.kernel_resources import cubin_resources
    for dtype in (torch.int8, torch.float8_e4m3fn):
        for cfg in CONFIGS:
            for k, has_res in ((64, True), (256, True), (256, False)):
                kernel = compile_for(arch, dtype, cfg, k, has_res)
                r = cubin_resources(kernel)
                top = ", ".join(f"{op} {n}" for op, n in r.opcodes.most_common(12))
                print(f"{str(dtype)[6:]:14s} K {k:3d}{' residual' if has_res else ''} {cfg}: regs {r.registers}, "
                      f"spill {r.local} B, shared {kernel.metadata.shared} B, "
                      f"SASS waits (groups left in flight: count) {dict(sorted(r.mma_waits.items()))}, "
                      f"{sum(r.opcodes.values())} instructions: {top}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", type=int, default=0, metavar="ARCH", help="no GPU: compile for sm_ARCH only")
    ap.add_argument("precisions", nargs="*", default=["fp8", "int8"])
    args = ap.parse_args()
    if args.compile:
        compile_only(args.compile)
        return
    from benchmarks.kernels_qconv import bench
    from benchmarks.kernels_qconv_residual import moved
    from benchmarks.kernels_qconv_store import LAYERS, make
    from kiln.kernels.triton import qconv as tq
    print(torch.cuda.get_device_name(), torch.__version__, "triton", triton.__version__, flush=True)
    for q in args.precisions:
        space = tq.FP8_CONFIGS if q == "fp8" else tq.INT8_CONFIGS
        total_kiln = total_gluon = 0.0
        for li, (name, count, *_) in enumerate(LAYERS):
            ops, attrs = make(li, q)
            kiln = []
            for cfg in space:
                try:
                    fn = lambda cfg=cfg: tq.qconv(*ops, **attrs, config=cfg)  # noqa: E731
                    kiln.append((bench(fn) * 1e3, fn))
                except Exception:  # noqa: BLE001 - a config that does not launch here
                    continue
            best_us, best_fn = min(kiln, key=lambda t: t[0])
            want = best_fn().view(torch.uint8).int()
            gb = moved(li) / 1e3
            print(f"{q} {name:24s} x{count}  kiln best {best_us:6.1f} us ({gb / best_us:5.0f} GB/s)", flush=True)
            best_gluon = float("inf")
            for cfg in CONFIGS:
                try:
                    got = qconv(*ops, **attrs, config=cfg)
                    diff = (got.view(torch.uint8).int() - want).abs()
                    us = bench(lambda cfg=cfg: qconv(*ops, **attrs, config=cfg)) * 1e3
                    if int(diff.max()) <= 1:
                        best_gluon = min(best_gluon, us)
                    print(f"    gluon {cfg}: {us:6.1f} us ({gb / us:5.0f} GB/s)  codes equal "
                          f"{float((diff == 0).float().mean()):.4%}, max code difference {int(diff.max())}", flush=True)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"    gluon {cfg}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            total_kiln += count * best_us
            total_gluon += count * min(best_us, best_gluon)
        print(f"{q}: the 1x1 layers weighted by their counts: kiln {total_kiln:.1f} us, with the Gluon kernel where it "
              f"is faster and within a code {total_gluon:.1f} us", flush=True)


if __name__ == "__main__":
    main()
