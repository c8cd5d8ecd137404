"""GPU: stream-K and split-K (configs STREAM_K, SPLIT_K; kernels/triton/stream_k.py) against the
tuning space's fastest config, per ResNet-50 layer whose tiles fill few waves of the SMs.

    Q=fp8 PYTHONPATH=$PWD/src python3 benchmarks/kernels_stream_k.py     (Q=int8 for int8)

The layers of ResNet-50's stages 3 and 4 at batch 64 (kernels_qconv_walks.LAYERS; LAYERS=all for
every layer), channels-last, bias + Relu, requantized output as the quantized engines run them.
For each: the fastest config of the tactic's space (FP8_CONFIGS / INT8_CONFIGS, every walk) and
the fastest of the stream-K and split-K configs, each checked against the space's first config first ("d":
the largest difference in output codes), and kiln's fp16 engine's conv (cuDNN) as the yardstick.
Timing: kernels_qconv.bench (CUDA graphs of 5 calls, median of 20). The fastest of those then
runs 20 more times: how many runs' bits differ from the first (the pieces are combined in a fixed
order, so none should), and after how many the tile counters were not back at zero. Kernels
compile first in 14 worker processes. Prints microseconds and the totals weighted by the layer counts.
"""
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.kernels_qconv import kiln_fp16_ms  # noqa: E402
from benchmarks.kernels_qconv_walks import LAYERS, Q, fastest, make  # noqa: E402
from benchmarks.kernels_qconv_walks import short as _short  # noqa: E402
from kiln.kernels.triton.stream_k import _COUNTERS as sk_counters  # noqa: E402

CHOSEN = [i for i, layer in enumerate(LAYERS) if os.environ.get("LAYERS") == "all" or layer[0][:2] in ("s3", "s4")]


def stream_k_space() -> list[dict]:
    """The configs timed: stream-K with the space's tile shapes, one or two programs per SM, and
    split-K (SPLIT_K programs per tile)."""
    acc = {"FP8_ACC": 0} if Q == "fp8" else {}
    tile = {"BLOCK_K": 128, "GROUP_M": 8, "TMA": 1, "Y_TMA": 1, **acc}
    sk = {**tile, "STREAM_K": 1}
    return [{"BLOCK_M": 128, "BLOCK_N": 128, **sk, "num_warps": 8, "num_stages": 4},
            {"BLOCK_M": 128, "BLOCK_N": 128, **sk, "num_warps": 4, "num_stages": 3, "SM_PROGRAMS": 2},
            {"BLOCK_M": 128, "BLOCK_N": 64, **sk, "num_warps": 4, "num_stages": 4, "SM_PROGRAMS": 2},
            {"BLOCK_M": 128, "BLOCK_N": 128, **tile, "num_warps": 8, "num_stages": 4, "SPLIT_K": 2},
            {"BLOCK_M": 128, "BLOCK_N": 128, **tile, "num_warps": 4, "num_stages": 4, "SPLIT_K": 2},
            {"BLOCK_M": 128, "BLOCK_N": 128, **tile, "num_warps": 4, "num_stages": 4, "SPLIT_K": 4},
            {"BLOCK_M": 64, "BLOCK_N": 128, **tile, "num_warps": 4, "num_stages": 4, "SPLIT_K": 2},
            {"BLOCK_M": 128, "BLOCK_N": 256, **tile, "num_warps": 8, "num_stages": 3, "SPLIT_K": 2}]


def short(c: dict) -> str:
    """A config's label: tile, warps, stages, fp8 promotion, P persistent, x2 two programs per SM,
    T the WINDOW walk, SK stream-K, kN split-K in N."""
    return (_short(c) + ("x2" if c.get("SM_PROGRAMS") == 2 else "") + ("T" if c.get("TMA") else "")
            + ("SK" if c.get("STREAM_K") else "") + (f"k{c['SPLIT_K']}" if c.get("SPLIT_K") else ""))


def spaces() -> tuple[list[dict], list[dict]]:
    from kiln.kernels.triton import qconv as tq
    return list(tq.FP8_CONFIGS if Q == "fp8" else tq.INT8_CONFIGS), stream_k_space()


_MADE: dict = {}


def warm(task: tuple) -> str:
    """Worker: compile and run one (layer, space, config); "" or the error."""
    li, which, ci = task
    from kiln.kernels.triton import qconv as tq
    if li not in _MADE:
        _MADE.clear()
        _MADE[li] = make(li)
    args, attrs = _MADE[li]
    try:
        tq.qconv(*args, **attrs, config=spaces()[which][ci])
        torch.cuda.synchronize()
        return ""
    except Exception as exc:  # noqa: BLE001 - reported; the config is skipped when timed
        return f"{LAYERS[li][0]} {which} {ci}: {type(exc).__name__} {str(exc)[:300]}"


def main() -> None:
    from kiln.kernels.triton import qconv as tq
    print(torch.cuda.get_device_name(), torch.__version__, Q, flush=True)
    space, sk = spaces()
    tasks = [(li, w, ci) for li in CHOSEN for w, sp in ((0, space), (1, sk)) for ci in range(len(sp))]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=14, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, tasks, chunksize=2) if e]
    print(f"compiled {len(tasks)} in {time.time() - t0:.0f}s; {len(errors)} errors", flush=True)
    for e in errors[:12]:
        print("  ERROR", e)
    total = dict(cudnn=0.0, space=0.0, pieces=0.0, best=0.0)
    for li in CHOSEN:
        name, count, n, c, h, w, oc, k, s, p = LAYERS[li]
        args, attrs = make(li)
        ref = tq.qconv(*args, **attrs, config=space[0]).view(torch.uint8).int()
        rs, rk = fastest(space, args, attrs, ref), fastest(sk, args, attrs, ref)
        # The fastest stream-K config 20 more times: runs whose bits differ from the first, and
        # whether the tile counters are back at zero after each.
        first = tq.qconv(*args, **attrs, config=rk[0][2]).view(torch.uint8).int()
        differ, stale = 0, 0
        for _ in range(20):
            differ += not torch.equal(first, tq.qconv(*args, **attrs, config=rk[0][2]).view(torch.uint8).int())
            stale += any(int(c.abs().sum()) for c in sk_counters.values())
        repeat = f"{differ}/20 differ, counters left {stale}"
        cudnn, _ = kiln_fp16_ms(n, c, h, w, oc, k, s, p)
        print(f"{name:22s} x{count} cudnn16 {cudnn * 1e3:6.1f} us | space {rs[0][0] * 1e3:6.1f} ({short(rs[0][2])}"
              f" d{rs[0][1]}; then " + " ".join(f"{short(t[2])}:{t[0] * 1e3:.1f}" for t in rs[1:3])
              + f") | pieces {rk[0][0] * 1e3:6.1f} ({short(rk[0][2])} "
              f"d{rk[0][1]}; {repeat}) | " + " ".join(f"{short(t[2])}:{t[0] * 1e3:.1f}" for t in rk[1:]),
              flush=True)
        total["cudnn"] += count * cudnn
        total["space"] += count * rs[0][0]
        total["pieces"] += count * rk[0][0]
        total["best"] += count * min(rs[0][0], rk[0][0])
    print({k: round(v * 1e3, 1) for k, v in total.items()}, "us, weighted by the layer counts")


if __name__ == "__main__":
    main()
