"""GPU: the two stores of the Triton kiln::QConv on ResNet-50's 1x1 stride-1 layers: the
epilogue's tile written through pointers in the MMA layout, or as one TMA box (config Y_TMA,
where the output is the flat [N*H*W, OC] matrix: the PIXELS pointer walk and the WINDOW walk).

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_qconv_store.py [int8|fp8 ...]

Every 1x1 stride-1 convolution of ResNet-50 (v1.5) at batch 64, with how often each occurs and
whether it adds the block's residual (the expand convs do; an 8-bit residual with its scale, as the
quantized engines read it), channels-last, bias + Relu, requantized output. Per layer: the fastest
config of the space without TMA boxes for Y, then every config of the space with and without
Y_TMA (the residual is read through pointers either way), each pair checked
bit for bit against each other (the same arithmetic, another store), timed with
kernels_qconv.bench (CUDA graphs of 5 calls, median of 20). Totals weighted by the layer counts:
the space's best today against the best with Y_TMA added. Kernels compile first in 14 worker
processes. Writes its report to $OUT/qconv_store.txt too when $OUT is set.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernels_qconv import bench  # noqa: E402

ONNX_FP8 = 17
# name, count in ResNet-50, N, C, H, W, OC, residual
LAYERS = [
    ("s1 1x1 64->64", 1, 64, 64, 56, 56, 64, False), ("s1 1x1 64->256 ds", 1, 64, 64, 56, 56, 256, False),
    ("s1 1x1 64->256 +res", 3, 64, 64, 56, 56, 256, True), ("s1 1x1 256->64", 2, 64, 256, 56, 56, 64, False),
    ("s2 1x1 256->128", 1, 64, 256, 56, 56, 128, False), ("s2 1x1 128->512 +res", 4, 64, 128, 28, 28, 512, True),
    ("s2 1x1 512->128", 3, 64, 512, 28, 28, 128, False), ("s3 1x1 512->256", 1, 64, 512, 28, 28, 256, False),
    ("s3 1x1 256->1024 +res", 6, 64, 256, 14, 14, 1024, True), ("s3 1x1 1024->256", 5, 64, 1024, 14, 14, 256, False),
    ("s4 1x1 1024->512", 1, 64, 1024, 14, 14, 512, False), ("s4 1x1 512->2048 +res", 3, 64, 512, 7, 7, 2048, True),
    ("s4 1x1 2048->512", 2, 64, 2048, 7, 7, 512, False),
]
LINES: list[str] = []


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def spaces(q: str) -> tuple[list[dict], list[dict]]:
    """(the space without Y_TMA, the configs to time with and without it: all of them)."""
    from kiln.kernels.triton import qconv as tq
    sp = [{k: v for k, v in c.items() if k != "Y_TMA"} for c in (tq.FP8_CONFIGS if q == "fp8" else tq.INT8_CONFIGS)]
    return sp, sp


def make(li: int, q: str) -> tuple[tuple, dict]:
    _, _, n, c, h, w, oc, has_res = LAYERS[li]
    g = torch.Generator(device="cuda").manual_seed(li)
    cl = torch.channels_last
    if q == "fp8":
        def eight(shape):
            return (torch.randn(shape, generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        xs, ws, os_, rs, extra = 0.001, torch.rand(oc, generator=g, device="cuda") * 2e-4 + 5e-5, 0.01, 0.01, \
            {"out_dtype": ONNX_FP8}
        zp = None
    else:
        def eight(shape):
            return torch.randint(-127, 128, shape, generator=g, device="cuda", dtype=torch.int8)
        xs, ws, os_, rs, extra = 0.01, torch.rand(oc, generator=g, device="cuda") * 0.002 + 0.0005, 0.05, 0.05, {}
        zp = torch.tensor(0, dtype=torch.int8, device="cuda")
    x = eight((n, c, h, w)).contiguous(memory_format=cl)
    wq = eight((oc, c, 1, 1)).contiguous(memory_format=cl)
    res = eight((n, oc, h, w)).contiguous(memory_format=cl) if has_res else None
    bias = torch.randn(oc, generator=g, device="cuda")
    attrs = {"kernel_shape": [1, 1], "activation": "Relu", **extra}
    return (x, wq, torch.tensor(xs, dtype=torch.float16, device="cuda"), None, ws, None, bias, res,
            torch.tensor(os_, device="cuda"), zp, torch.tensor(rs, device="cuda") if has_res else None,
            zp if has_res else None), attrs


_MADE: dict = {}


def _run(li: int, q: str, cfg: dict) -> torch.Tensor:
    from kiln.kernels.triton import qconv as tq
    if (li, q) not in _MADE:
        _MADE.clear()
        _MADE[(li, q)] = make(li, q)
    args, attrs = _MADE[(li, q)]
    return tq.qconv(*args, **attrs, config=cfg)


def warm(task: tuple) -> str:
    """Worker: compile and run one (layer, precision, config); "" or the error."""
    li, q, cfg = task
    try:
        _run(li, q, cfg)
        torch.cuda.synchronize()
        return ""
    except Exception as exc:  # noqa: BLE001 - reported; the config is skipped when timed
        return f"{LAYERS[li][0]} {q} {short(cfg)}: {type(exc).__name__} {str(exc)[:300]}"


def short(c: dict) -> str:
    return (f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}w{c['num_warps']}s{c['num_stages']}"
            + (f"a{c['FP8_ACC']}" if "FP8_ACC" in c else "") + ("T" if c.get("TMA") else "")
            + ("P" if c.get("PERSISTENT") else "") + ("Y" if c.get("Y_TMA") else ""))


def timed(li: int, q: str, cfg: dict) -> float:
    try:
        _run(li, q, cfg)
        return bench(lambda: _run(li, q, cfg)) * 1e3
    except Exception:  # noqa: BLE001 - reported by the compile step
        return float("inf")


def measure(q: str) -> tuple[float, float]:
    """Per layer of LAYERS for precision q: report lines; returns the count-weighted totals (us) of
    the space's best without and with Y_TMA."""
    space, window = spaces(q)
    total_now = total_new = 0.0
    for li, (name, count, *_rest) in enumerate(LAYERS):
        pairs = []
        for cfg in window:
            try:
                plain = _run(li, q, cfg).view(torch.uint8)
                same = torch.equal(plain, _run(li, q, {**cfg, "Y_TMA": 1}).view(torch.uint8))
            except Exception:  # noqa: BLE001
                same = False
                say(f"  {name} {short(cfg)}: " + traceback.format_exc().strip().splitlines()[-1])
            pairs.append((timed(li, q, cfg), timed(li, q, {**cfg, "Y_TMA": 1}), short(cfg), same))
        now = min((p[0], p[2]) for p in pairs)
        best_y = min((p[1], p[2] + "Y") for p in pairs)
        new = min(now, best_y)
        total_now += count * now[0]
        total_new += count * new[0]
        say(f"{q} {name:22s} x{count}  space best {now[0]:7.1f} us ({now[1]})  with Y_TMA {new[0]:7.1f} us ({new[1]}) "
            f"{now[0] / new[0]:.2f}x")
        for plain, boxed, label, same in pairs:
            say(f"    {label:26s} pointers {plain:7.1f}  TMA {boxed:7.1f}  ({plain / boxed:.2f}x)"
                f"{'' if same else '  OUTPUTS DIFFER'}")
    say(f"{q} total (weighted by counts): space best {total_now:.1f} us, with Y_TMA {total_new:.1f} us "
        f"({total_now / total_new:.3f}x)")
    return total_now, total_new


def main() -> None:
    qs = [a for a in sys.argv[1:] if a in ("int8", "fp8")] or ["int8", "fp8"]
    say(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    tasks = []
    for q in qs:
        space, window = spaces(q)
        tasks += [(li, q, c) for li in range(len(LAYERS)) for c in space + [{**w, "Y_TMA": 1} for w in window]]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=14, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, tasks, chunksize=4) if e]
    say(f"compiled {len(tasks)} variants in {time.time() - t0:.0f} s; {len(errors)} errors")
    for e in errors[:12]:
        say(f"  ERROR {e}")
    for q in qs:
        measure(q)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "qconv_store.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
