"""GPU: ResNet-50's 1x1 convs that add the block's residual (the expand convs, 16 of 52), against the
memory system. They move more bytes than they compute (stage 1 at batch 64: 12.8 MB in, an
8-bit residual of 51 MB read, 51 MB written, 2 FLOP per byte), so a tile walk that keeps too few
loads in flight shows here first.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_qconv_residual.py [--quick] [int8|fp8 ...]

Per layer (kernels_qconv_store.LAYERS' residual rows and the stage-1 downsample, batch 64,
channels-last, bias + residual + Relu, requantized): the best config of the tuning space, then the
best of a grid beyond it (tile shapes 64-256, 4 or 8 warps, 1-3 stages, each walk: pointer, WINDOW,
persistent, two persistent programs per SM; --quick: the persistent walks of four tiles only), every variant's output codes compared with the space's
first config's (int8 must agree exactly; fp8 sums in another order may move a code by one); each in GB/s of the bytes the layer must move, beside a device-to-device
copy's rate timed the same way (the ceiling). CUDA graphs of 5 calls, median of 20
(kernels_qconv.bench). Kernels compile first in 14 worker processes. Writes $OUT/qconv_residual.txt
when $OUT is set.

Tried and removed (411caf1, H200, 2026-11-29 12:20 UTC, `--quick fp8`): R_NEXT, the persistent
WINDOW walk loading the residual tile of a program's next tile while it computes this one (the
tile carried in registers across the loop; 16-byte loads, no spills for sm_90). No R_NEXT variant
was among the eight fastest configs of any of the four residual layers (s1 64->256: all >= 52.3
us against the space's 48.5), so the residual's latency in the epilogue is not what holds these
layers at ~2.4 TB/s.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernels_qconv import bench  # noqa: E402
from benchmarks.kernels_qconv_store import LAYERS, _run, say, short, timed, warm  # noqa: E402
import benchmarks.kernels_qconv_store as store  # noqa: E402

ROWS = [i for i, layer in enumerate(LAYERS) if layer[-1] or layer[0].endswith(" ds")]
TILES = [(64, 64, 4), (64, 128, 4), (64, 256, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8), (128, 256, 8),
         (256, 64, 8), (256, 128, 8)]
QUICK = "--quick" in sys.argv
WALKS = {"pointer": {}, "window": {"TMA": 1}, "persistent": {"TMA": 1, "PERSISTENT": 1},
         "2/SM": {"TMA": 1, "PERSISTENT": 1, "SM_PROGRAMS": 2}}


def grid(q: str) -> list[dict]:
    """The configs beyond the space: every tile, stage count and walk, Y through TMA boxes. QUICK:
    the four tiles and two stage counts that won a layer, persistent walks only."""
    out = []
    tiles = [(128, 128, 4), (64, 256, 4), (128, 64, 4), (128, 256, 8)] if QUICK else TILES
    walks = [w for w in WALKS.values() if w.get("PERSISTENT")] if QUICK else WALKS.values()
    for (bm, bn, warps), stages, walk in itertools.product(tiles, (2, 3) if QUICK else (1, 2, 3), walks):
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": warps,
               "num_stages": stages, "Y_TMA": 1, **walk}
        out.append({**cfg, "FP8_ACC": 0} if q == "fp8" else cfg)
    return out


def space(q: str) -> list[dict]:
    from kiln.kernels.triton import qconv as tq
    return [dict(c) for c in (tq.FP8_CONFIGS if q == "fp8" else tq.INT8_CONFIGS)]


def moved(li: int) -> int:
    """Bytes the layer must move: X, the residual and Y (8-bit each), the weights."""
    _, _, n, c, h, w, oc, has_res = LAYERS[li]
    return n * h * w * (c + oc * (2 if has_res else 1)) + oc * c


def copy_rate() -> float:
    """GB/s of a 256 MB device-to-device copy (bytes read + written), timed as the convs are."""
    src = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def measure(q: str) -> None:
    base, more = space(q), grid(q)
    for li in ROWS:
        name, count = LAYERS[li][:2]
        want = _run(li, q, base[0]).view(torch.uint8).clone()
        rows = []
        for label, configs in (("space", base), ("grid", more)):
            for cfg in configs:
                us = timed(li, q, cfg)
                if us == float("inf"):
                    continue
                differ = float((_run(li, q, cfg).view(torch.uint8) != want).float().mean())
                rows.append((us, label, short(cfg) + ("2" if cfg.get("SM_PROGRAMS") else ""), differ))
        best_space = min(r for r in rows if r[1] == "space")
        gb = moved(li) / 1e3
        say(f"{q} {name:22s} x{count}  {moved(li) / 1e6:6.1f} MB  space best {best_space[0]:6.1f} us "
            f"({best_space[2]}, {gb / best_space[0]:5.0f} GB/s)")
        for us, label, cfg, differ in sorted(rows)[:8]:
            say(f"    {us:6.1f} us {gb / us:5.0f} GB/s  {label:5s} {cfg:28s} codes differing {differ:.2%}")


def main() -> None:
    qs = [a for a in sys.argv[1:] if a in ("int8", "fp8")] or ["fp8", "int8"]
    say(f"{torch.cuda.get_device_name()}  torch {torch.__version__}; device-to-device copy {copy_rate():.0f} GB/s")
    tasks = [(li, q, c) for q in qs for li in ROWS for c in space(q) + grid(q)]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=14, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, tasks, chunksize=4) if e]
    say(f"compiled {len(tasks)} variants in {time.time() - t0:.0f} s; {len(errors)} do not run")
    for q in qs:
        measure(q)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "qconv_residual.txt").write_text("\n".join(store.LINES) + "\n")


if __name__ == "__main__":
    main()
