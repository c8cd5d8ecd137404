"""GPU: how fast can a kernel stream ResNet-50's residual 1x1 layers' bytes, with no MMA at all?

    PYTHONPATH=$PWD/src python3 benchmarks/stream_probe.py [--batch 64]

The residual 1x1 convs of the 8-bit engines move ~2 bytes per FLOP and run at ~2.4 TB/s, where a
device-to-device copy reaches ~4.2 (benchmarks/kernels_qconv_residual.py, H200, 2026-11-29), and
neither a tile, a stage count, occupancy (a 64x64 tile at 7 programs per SM is no faster than
128x64 at 4; sm_90 compile) nor loading the residual a tile ahead moved them. This probe asks
whether the access pattern itself is the limit: per layer (stage 1: X [N*56*56, 64], residual and
Y [N*56*56, 256]; stage 2: X [N*28*28, 128], residual and Y [.., 512]), kernels that read X's tile
and the residual's and write Y = R + X[:, n mod C] (uint8, wrapping), tiled as the conv tiles its
output, with (a) pointer loads and stores, (b) the residual read and Y written as TMA boxes, (c)
persistent programs over the tiles; beside torch's copy of R into Y (the residual's bytes only)
and a plain copy of all the layer's bytes. Each kernel's output checked against torch first. If
(a)-(c) stream at the copy's rate, the conv kernels' structure is what holds them (their MMA and
epilogue per tile, one K step at stage 1); if not, the tiling of these shapes is. CUDA graphs of 5
calls, median of 20 (kernels_qconv.bench).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@triton.jit
def stream_kernel(X, R, Y, y_desc, r_desc, M, C, OC, tiles, programs, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BOXES: tl.constexpr, PERSISTENT: tl.constexpr):
    """Y[m, n] = R[m, n] + X[m, n mod C] over [BLOCK_M, BLOCK_N] tiles (tile t: rows t // tiles_n,
    columns t mod tiles_n); BOXES: R read and Y written as TMA boxes; PERSISTENT: `programs`
    programs take tiles i, i + programs, ..."""
    tiles_n = tl.cdiv(OC, BLOCK_N)
    first = tl.program_id(0)
    step = programs if PERSISTENT else tiles
    for t in tl.range(first, tiles, step):
        off_m = (t // tiles_n) * BLOCK_M
        off_n = (t % tiles_n) * BLOCK_N
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        x = tl.load(X + rm[:, None].to(tl.int64) * C + (rn % C)[None, :], mask=(rm < M)[:, None], other=0)
        if BOXES:
            r = r_desc.load([off_m, off_n])
            y_desc.store([off_m, off_n], r + x)
        else:
            mask = (rm < M)[:, None] & (rn < OC)[None, :]
            offs = rm[:, None].to(tl.int64) * OC + rn[None, :]
            r = tl.load(R + offs, mask=mask, other=0)
            tl.store(Y + offs, r + x, mask=mask)


def stream(x: torch.Tensor, r: torch.Tensor, y: torch.Tensor, bm: int, bn: int, warps: int, boxes: bool,
           persistent: bool) -> torch.Tensor:
    from triton.tools.tensor_descriptor import TensorDescriptor
    m, c = x.shape
    oc = r.shape[1]
    tiles = triton.cdiv(m, bm) * triton.cdiv(oc, bn)
    programs = min(tiles, 2 * torch.cuda.get_device_properties(x.device).multi_processor_count) \
        if persistent else tiles
    y_desc = TensorDescriptor.from_tensor(y, [bm, bn]) if boxes else y
    r_desc = TensorDescriptor.from_tensor(r, [bm, bn]) if boxes else r
    stream_kernel[(programs,)](x, r, y, y_desc, r_desc, m, c, oc, tiles, programs, BLOCK_M=bm, BLOCK_N=bn,
                               BOXES=boxes, PERSISTENT=persistent, num_warps=warps)
    return y


def main() -> None:
    from benchmarks.kernels_qconv import bench
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    big = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    print(f"  device-to-device copy, 128 MB: {2 * big.numel() / (bench(lambda: dst.copy_(big)) * 1e-3) / 1e9:.0f} GB/s")
    for name, hw, c, oc in (("s1 64 -> 256 + residual", 56, 64, 256), ("s2 128 -> 512 + residual", 28, 128, 512)):
        m = args.batch * hw * hw
        x = torch.randint(0, 256, (m, c), generator=g, device="cuda", dtype=torch.uint8)
        r = torch.randint(0, 256, (m, oc), generator=g, device="cuda", dtype=torch.uint8)
        y = torch.empty_like(r)
        want = r + x.repeat(1, oc // c)
        total = x.numel() + 2 * r.numel()
        print(f"== {name}: {total / 1e6:.1f} MB (X {x.numel() / 1e6:.1f}, residual and Y {r.numel() / 1e6:.1f} each)")
        ms = bench(lambda: y.copy_(r))
        print(f"  torch copy of the residual into Y      {ms * 1e3:7.1f} us {2 * r.numel() / (ms * 1e-3) / 1e9:6.0f} GB/s")
        rows = []
        for (bm, bn, warps), boxes, persistent in itertools.product(
                [(64, 64, 4), (128, 64, 4), (128, 128, 4), (128, 256, 8), (256, 128, 8)], (False, True),
                (False, True)):
            label = f"{bm}x{bn} w{warps} {'boxes' if boxes else 'pointers'}{' persistent' if persistent else ''}"
            try:
                y.zero_()
                ok = torch.equal(stream(x, r, y, bm, bn, warps, boxes, persistent), want)
                ms = bench(lambda: stream(x, r, y, bm, bn, warps, boxes, persistent))
                rows.append((ms, label, ok))
            except Exception as exc:  # noqa: BLE001 - report and go on
                rows.append((float("inf"), f"{label} FAILED {type(exc).__name__}: {str(exc)[:100]}", False))
        for ms, label, ok in sorted(rows):
            rate = total / (ms * 1e-3) / 1e9 if ms != float("inf") else 0.0
            print(f"  {label:38s} {ms * 1e3:7.1f} us {rate:6.0f} GB/s {'ok' if ok else 'WRONG'}", flush=True)


if __name__ == "__main__":
    main()
