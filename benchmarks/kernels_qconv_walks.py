"""GPU: the Triton kiln::QConv's pointer walks against its TMA WINDOW walk, per ResNet-50 layer.

    Q=fp8 PYTHONPATH=$PWD/src python3 benchmarks/kernels_qconv_walks.py     (Q=int8 for int8; ONLY=3x3: those layers;
                                                                          BK=256: also every config with BLOCK_K 256)

Every distinct convolution of ResNet-50 (v1.5) at batch 64 but the stem (22 shapes, with how
often each occurs), channels-last, bias + Relu, requantized output (float8 e4m3 or int8) as
the quantized engines run them. For each: the fastest config of the tuning space without TMA
(the pointer walks, qconv.py), the fastest with TMA=1 (the WINDOW walk, qconv_window.py; the
space's TMA configs plus the non-persistent twins of its persistent ones, three more tiles and four
of IMAGES boxes, marked I),
kiln's fp16 engine (cuDNN channels-last, tactics/conv.py, the faster of its two epilogue
configs), and for 1x1 stride-1 layers cuBLASLt's fp8 GEMM (torch._scaled_mm, bf16 out with
bias, the better of fast and exact accumulation) as a yardstick. Timing: kernels_qconv.bench
(CUDA graphs of 5 calls, median of 20). "d": the largest difference in output codes against the
space's first config (the exact promoting one for fp8), so a config with broken output shows. Prints
microseconds, TOPS and the totals weighted by the layer counts. Kernels compile first in
14 worker processes (Triton's disk cache), as in kernels_qconv.py.
"""
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.kernels_qconv import bench, kiln_fp16_ms  # noqa: E402

ONNX_FP8 = 17
# name, count in ResNet-50, N, C, H, W, OC, kernel, stride, pad
LAYERS = [
    ("s1 1x1 64->64", 1, 64, 64, 56, 56, 64, 1, 1, 0), ("s1 3x3 64", 3, 64, 64, 56, 56, 64, 3, 1, 1),
    ("s1 1x1 64->256", 4, 64, 64, 56, 56, 256, 1, 1, 0), ("s1 1x1 256->64", 2, 64, 256, 56, 56, 64, 1, 1, 0),
    ("s2 1x1 256->128", 1, 64, 256, 56, 56, 128, 1, 1, 0), ("s2 3x3 128 /2", 1, 64, 128, 56, 56, 128, 3, 2, 1),
    ("s2 1x1 128->512", 4, 64, 128, 28, 28, 512, 1, 1, 0), ("s2 ds 256->512 /2", 1, 64, 256, 56, 56, 512, 1, 2, 0),
    ("s2 1x1 512->128", 3, 64, 512, 28, 28, 128, 1, 1, 0), ("s2 3x3 128", 3, 64, 128, 28, 28, 128, 3, 1, 1),
    ("s3 1x1 512->256", 1, 64, 512, 28, 28, 256, 1, 1, 0), ("s3 3x3 256 /2", 1, 64, 256, 28, 28, 256, 3, 2, 1),
    ("s3 1x1 256->1024", 6, 64, 256, 14, 14, 1024, 1, 1, 0), ("s3 ds 512->1024 /2", 1, 64, 512, 28, 28, 1024, 1, 2, 0),
    ("s3 1x1 1024->256", 5, 64, 1024, 14, 14, 256, 1, 1, 0), ("s3 3x3 256", 5, 64, 256, 14, 14, 256, 3, 1, 1),
    ("s4 1x1 1024->512", 1, 64, 1024, 14, 14, 512, 1, 1, 0), ("s4 3x3 512 /2", 1, 64, 512, 14, 14, 512, 3, 2, 1),
    ("s4 1x1 512->2048", 3, 64, 512, 7, 7, 2048, 1, 1, 0), ("s4 ds 1024->2048 /2", 1, 64, 1024, 14, 14, 2048, 1, 2, 0),
    ("s4 1x1 2048->512", 2, 64, 2048, 7, 7, 512, 1, 1, 0), ("s4 3x3 512", 2, 64, 512, 7, 7, 512, 3, 1, 1),
]
Q = os.environ.get("Q", "fp8")
ONLY = os.environ.get("ONLY", "")   # a substring of the layer names to keep (e.g. "3x3"); all when empty
# BK=256: every config also with that BLOCK_K (stages cut to fit 200 KiB of operands). Triton keeps no
# int32-accumulating wgmma in flight across K steps (it waits for each), so a longer K step halves
# how often int8's tensor cores stall; marked kN.
BK = int(os.environ.get("BK", "0"))
TILE = {"BLOCK_K": 128, "GROUP_M": 8}
EXTRA = [{"BLOCK_M": 64, "BLOCK_N": 64, **TILE, "num_warps": 4, "num_stages": 6},
         {"BLOCK_M": 256, "BLOCK_N": 64, **TILE, "num_warps": 8, "num_stages": 4},
         {"BLOCK_M": 128, "BLOCK_N": 256, **TILE, "num_warps": 8, "num_stages": 4}]
# IMAGES boxes (qconv_window.py: BLOCK_M images at one pixel, the MMA reading them from shared
# memory): not in the tuning spaces until they win a layer here. BLOCK_M 64 = the batch.
IMAGES = [{"BLOCK_M": 64, "BLOCK_N": 128, **TILE, "num_warps": 4, "num_stages": 4, "IMAGES": 1},
          {"BLOCK_M": 64, "BLOCK_N": 256, **TILE, "num_warps": 4, "num_stages": 4, "IMAGES": 1},
          {"BLOCK_M": 64, "BLOCK_N": 128, **TILE, "num_warps": 4, "num_stages": 4, "IMAGES": 1, "SM_PROGRAMS": 2},
          {"BLOCK_M": 128, "BLOCK_N": 128, **TILE, "num_warps": 8, "num_stages": 4, "IMAGES": 1}]


def space() -> tuple[list[dict], list[dict]]:
    """(the pointer walks' configs, the WINDOW walk's configs)."""
    from kiln.kernels.triton import qconv as tq
    sp = list(tq.FP8_CONFIGS if Q == "fp8" else tq.INT8_CONFIGS)
    pointer = [c for c in sp if not c.get("TMA")]
    window = [c for c in sp if c.get("TMA")]
    twins = [{**c, "PERSISTENT": 0} for c in window if c.get("PERSISTENT") and c.get("FP8_ACC", 0) == 0]
    more = [{**c, "TMA": 1, "PERSISTENT": 1, **({"FP8_ACC": 0} if Q == "fp8" else {})} for c in EXTRA + IMAGES]
    window = window + twins + more
    if BK:
        pointer, window = pointer + _with_block_k(pointer), window + _with_block_k(window)
    return pointer, window


def _with_block_k(configs: list[dict]) -> list[dict]:
    """The configs with BLOCK_K = BK, num_stages cut so that the operand stages fit 200 KiB."""
    out = []
    for c in configs:
        stages = min(c["num_stages"], 200 * 1024 // ((c["BLOCK_M"] + c["BLOCK_N"]) * BK))
        if stages >= 2 and c["BLOCK_K"] != BK:
            out.append({**c, "BLOCK_K": BK, "num_stages": stages})
    return out


def make(li: int) -> tuple[tuple, dict]:
    _, _, n, c, h, w, oc, k, s, p = LAYERS[li]
    g = torch.Generator(device="cuda").manual_seed(li)
    if Q == "fp8":
        x = (torch.randn((n, c, h, w), generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        wq = (torch.randn((oc, c, k, k), generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        xs, ws, os_, extra = 0.001, torch.rand(oc, generator=g, device="cuda") * 2e-4 + 5e-5, 0.01, {"out_dtype": ONNX_FP8}
    else:
        x = torch.randint(-127, 128, (n, c, h, w), generator=g, device="cuda", dtype=torch.int8)
        wq = torch.randint(-127, 128, (oc, c, k, k), generator=g, device="cuda", dtype=torch.int8)
        xs, ws, os_, extra = 0.01, torch.rand(oc, generator=g, device="cuda") * 0.002 + 0.0005, 0.05, {}
    x = x.contiguous(memory_format=torch.channels_last)
    wq = wq.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(oc, generator=g, device="cuda")
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "activation": "Relu", **extra}
    return (x, wq, torch.tensor(xs, dtype=torch.float16, device="cuda"), None, ws, None, bias, None,
            torch.tensor(os_, device="cuda"), None), attrs


_MADE: dict = {}


def warm(task: tuple) -> str:
    """Worker: compile and run one (layer, walk, config); "" or the error."""
    li, which, ci = task
    from kiln.kernels.triton import qconv as tq
    if li not in _MADE:
        _MADE.clear()
        _MADE[li] = make(li)
    args, attrs = _MADE[li]
    try:
        tq.qconv(*args, **attrs, config=space()[which][ci])
        torch.cuda.synchronize()
        return ""
    except Exception as exc:  # noqa: BLE001 - reported; the config is skipped when timed
        return f"{LAYERS[li][0]} {which} {ci}: {type(exc).__name__} {str(exc)[:300]}"


def tops(li: int, ms: float) -> float:
    _, _, n, c, h, w, oc, k, s, p = LAYERS[li]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 2 * n * oh * ow * oc * c * k * k / (ms * 1e-3) / 1e12


def short(c: dict) -> str:
    return (f"{c['BLOCK_M']}x{c['BLOCK_N']}w{c['num_warps']}s{c['num_stages']}"
            + (f"a{c['FP8_ACC']}" if "FP8_ACC" in c else "") + ("P" if c.get("PERSISTENT") else "")
            + ("I" if c.get("IMAGES") else "") + (f"k{c['BLOCK_K']}" if c["BLOCK_K"] != 128 else ""))


def fastest(configs: list[dict], args: tuple, attrs: dict, ref: torch.Tensor) -> list[tuple[float, int, dict]]:
    from kiln.kernels.triton import qconv as tq
    out = []
    for cfg in configs:
        try:
            got = tq.qconv(*args, **attrs, config=cfg).view(torch.uint8).int()
            out.append((bench(lambda cfg=cfg: tq.qconv(*args, **attrs, config=cfg)), int((got - ref).abs().max()), cfg))
        except Exception:  # noqa: BLE001 - reported by the compile step
            out.append((float("inf"), -1, cfg))
    return sorted(out, key=lambda t: t[0])


def main() -> None:
    from kiln.kernels.triton import qconv as tq
    print(torch.cuda.get_device_name(), torch.__version__, Q, flush=True)
    pointer, window = space()
    chosen = [li for li, layer in enumerate(LAYERS) if ONLY in layer[0]]
    tasks = [(li, w, ci) for li in chosen for w, sp in ((0, pointer), (1, window)) for ci in range(len(sp))]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=14, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, tasks, chunksize=2) if e]
    print(f"compiled {len(tasks)} in {time.time() - t0:.0f}s; {len(errors)} errors", flush=True)
    for e in errors[:12]:
        print("  ERROR", e)
    total = dict(cudnn=0.0, pointer=0.0, window=0.0, best=0.0)
    for li in chosen:
        name, count, n, c, h, w, oc, k, s, p = LAYERS[li]
        args, attrs = make(li)
        ref = tq.qconv(*args, **attrs, config=pointer[0]).view(torch.uint8).int()
        rp, rw = fastest(pointer, args, attrs, ref), fastest(window, args, attrs, ref)
        images = next(t for t in rw if t[2].get("IMAGES"))   # the fastest IMAGES config (space() always has them)
        cudnn, (_, _, b16) = kiln_fp16_ms(n, c, h, w, oc, k, s, p)
        mm = float("nan")
        if k == 1 and s == 1 and Q == "fp8":
            a2, b2 = args[0].permute(0, 2, 3, 1).reshape(-1, c), args[1].reshape(oc, c).t()
            one = torch.ones((), device="cuda")
            mm = min(bench(lambda fa=fa: torch._scaled_mm(a2, b2, one, one, bias=b16.bfloat16(), out_dtype=torch.bfloat16,
                                                         use_fast_accum=fa)) for fa in (True, False))
        print(f"{name:22s} x{count} cudnn16 {cudnn * 1e3:6.1f} us | pointer {rp[0][0] * 1e3:6.1f} ({tops(li, rp[0][0]):4.0f} T "
              f"{short(rp[0][2])} d{rp[0][1]}) | window {rw[0][0] * 1e3:6.1f} ({tops(li, rw[0][0]):4.0f} T {short(rw[0][2])} "
              f"d{rw[0][1]}) | images {images[0] * 1e3:6.1f} ({short(images[2])} d{images[1]}) | "
              f"scaled_mm {mm * 1e3:6.1f} | " + " ".join(f"{short(t[2])}:{t[0] * 1e3:.1f}" for t in rw[1:5]),
              flush=True)
        total["cudnn"] += count * cudnn
        total["pointer"] += count * rp[0][0]
        total["window"] += count * rw[0][0]
        total["best"] += count * min(rp[0][0], rw[0][0])
    print({k: round(v * 1e3, 1) for k, v in total.items()}, "us, weighted by the layer counts")


if __name__ == "__main__":
    main()
