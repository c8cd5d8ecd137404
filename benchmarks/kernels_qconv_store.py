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
processes. Writes its report to $OUT/qconv_y_tma.txt (qconv_<switch>.txt) too when $OUT is set.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_qconv_store.py --toggle KEY [int8|fp8 ...]

times another config switch the same way, each config of the space as it is (Y_TMA where it has
it) against the same config with KEY = 1; a switch named R_* only on the layers that add a
residual. (At 99b5abb, R_EARLY: the residual tile loaded before the K loop; no gain, removed.)
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


def spaces(q: str, toggle: str = "Y_TMA") -> list[dict]:
    """The configs to time with and without `toggle`: every config of the space (without Y_TMA
    when that is the switch)."""
    from kiln.kernels.triton import qconv as tq
    space = tq.FP8_CONFIGS if q == "fp8" else tq.INT8_CONFIGS
    return [{k: v for k, v in c.items() if k != toggle} for c in space]


def layers(toggle: str) -> list[int]:
    """LAYERS' indices the switch is timed on: a residual switch (R_*) only where one is added."""
    return [i for i, layer in enumerate(LAYERS) if not toggle.startswith("R_") or layer[-1]]


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


def measure(q: str, toggle: str) -> tuple[float, float]:
    """Per layer of LAYERS for precision q: report lines; returns the count-weighted totals (us) of
    the space's best without and with `toggle`."""
    configs = spaces(q, toggle)
    total_now = total_new = 0.0
    for li in layers(toggle):
        name, count = LAYERS[li][:2]
        pairs = []
        for cfg in configs:
            try:
                plain = _run(li, q, cfg).view(torch.uint8)
                same = torch.equal(plain, _run(li, q, {**cfg, toggle: 1}).view(torch.uint8))
            except Exception:  # noqa: BLE001
                same = False
                say(f"  {name} {short(cfg)}: " + traceback.format_exc().strip().splitlines()[-1])
            pairs.append((timed(li, q, cfg), timed(li, q, {**cfg, toggle: 1}), short(cfg), same))
        now = min((p[0], p[2]) for p in pairs)
        best_y = min((p[1], f"{p[2]} {toggle}") for p in pairs)
        new = min(now, best_y)
        total_now += count * now[0]
        total_new += count * new[0]
        say(f"{q} {name:22s} x{count}  space best {now[0]:7.1f} us ({now[1]})  with {toggle} {new[0]:7.1f} us "
            f"({new[1]}) {now[0] / new[0]:.2f}x")
        for plain, boxed, label, same in pairs:
            say(f"    {label:26s} off {plain:7.1f}  on {boxed:7.1f}  ({plain / boxed:.2f}x)"
                f"{'' if same else '  OUTPUTS DIFFER'}")
    say(f"{q} total (weighted by counts): space best {total_now:.1f} us, with {toggle} {total_new:.1f} us "
        f"({total_now / total_new:.3f}x)")
    return total_now, total_new


def main() -> None:
    args = sys.argv[1:]
    toggle = args[args.index("--toggle") + 1] if "--toggle" in args else "Y_TMA"
    qs = [a for a in args if a in ("int8", "fp8")] or ["int8", "fp8"]
    say(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  switch {toggle}")
    tasks = []
    for q in qs:
        configs = spaces(q, toggle)
        tasks += [(li, q, c) for li in layers(toggle) for c in configs + [{**c, toggle: 1} for c in configs]]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=14, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, tasks, chunksize=4) if e]
    say(f"compiled {len(tasks)} variants in {time.time() - t0:.0f} s; {len(errors)} errors")
    for e in errors[:12]:
        say(f"  ERROR {e}")
    for q in qs:
        measure(q, toggle)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"qconv_{toggle.lower()}.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
