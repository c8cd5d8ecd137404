"""GPU check of the Triton INT8 / FP8 implicit-GEMM kiln::QConv (src/kiln/kernels/triton/qconv.py).

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_qconv.py [--quick]

For ResNet-50 conv layers at batch 64, channels-last, int8 and fp8 (fp8 on sm_89+ only):
  1. correctness against the reference kiln::QConv on CUDA (float64): the float32 output
     judged by the tuner's rule (compiler/tolerance.py: mismatch(), and "excess", the worst
     error over the allowed one: <= 1 passes); the requantized output (int8, or fp8 for fp8)
     as the largest difference in quantization steps, the fraction of elements off and the
     tuner's verdict (tolerance.py's one-step rule for quantized ops).
     fp8 is judged per accumulator promotion (config key FP8_ACC: 128, 32, 0 = never), the
     open question on Hopper, whose fp8 MMA accumulates in ~14 bits.
  2. timing (CUDA graphs of 5 calls replayed between CUDA events, after warm-up; the median
     of 20, per call) of every config of the tuning space
     with float16 output (bias + Relu fused), the fastest = what the tuner would pick; that
     config again with the requantized output and with float32 output (what kiln's int8/fp8
     builds make with float_precision fp32, the default; --int8 --fp16 gives the fp16 output). Baseline: kiln's fp16 engine, i.e. cuDNN in
     channels-last (tactics/conv.py, torch.backends.cudnn.benchmark on, best of its two
     epilogue configs), and plain torch F.conv2d + relu_ in fp16 channels-last.
Prints TOPS (2 ops per multiply-add) and speed-ups over kiln fp16, per layer and weighted by
how often each shape occurs in ResNet-50; writes the output to $OUT/qconv_check.txt.
--quick: no tuning, the first config of each space only.
Compilation (~190 kernels) runs first in parallel worker processes, which fill Triton's disk
cache; the timed process then loads them. The input quantization (QuantizeLinear) is not in
the timings: a separate kernel, the same for every config.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
import torch.nn.functional as F

# name, count in ResNet-50 (v1.5: the stride on the 3x3), N, C, H, W, OC, kernel, stride, pad
LAYERS = [
    ("stem 7x7 3->64 /2", 1, 64, 3, 224, 224, 64, 7, 2, 3),
    ("s1 3x3 64", 3, 64, 64, 56, 56, 64, 3, 1, 1),
    ("s1 1x1 64->256", 4, 64, 64, 56, 56, 256, 1, 1, 0),
    ("s1 1x1 256->64", 2, 64, 256, 56, 56, 64, 1, 1, 0),
    ("s2 3x3 128 /2", 1, 64, 128, 56, 56, 128, 3, 2, 1),
    ("s2 1x1 256->512 /2", 1, 64, 256, 56, 56, 512, 1, 2, 0),
    ("s2 3x3 128", 3, 64, 128, 28, 28, 128, 3, 1, 1),
    ("s3 1x1 256->1024", 6, 64, 256, 14, 14, 1024, 1, 1, 0),
    ("s3 1x1 1024->256", 5, 64, 1024, 14, 14, 256, 1, 1, 0),
    ("s4 3x3 512", 2, 64, 512, 7, 7, 512, 3, 1, 1),
]
QUICK = "--quick" in sys.argv
ONNX_FP8 = 17
CHECK_ACC = (128, 32, 0)          # fp8 promotions judged against the float32 tolerance
LINES: list[str] = []
EAGER: list[int] = []             # non-empty once a CUDA graph capture has failed


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def configs(q: str) -> list[dict]:
    from kiln.kernels.triton import qconv as tq
    space = tq.INT8_CONFIGS if q == "int8" else tq.FP8_CONFIGS
    return list(space[:1] if QUICK else space)


def check_configs(q: str) -> list[int]:
    """Indices of the configs whose float32 output is judged: one per fp8 promotion class."""
    if q == "int8":
        return [0]
    found = {}
    for i, c in enumerate(configs(q)):
        found.setdefault(c["FP8_ACC"], i)
    return [found[a] for a in CHECK_ACC if a in found]


def make_args(li: int, q: str, mode: str) -> tuple[tuple, dict]:
    """The layer's inputs; mode "f16" / "f32": float output of that type, "q8": requantized."""
    _, _, n, c, h, w, oc, k, s, p = LAYERS[li]
    g = torch.Generator(device="cuda").manual_seed(li)
    if q == "int8":
        x = torch.randint(-127, 128, (n, c, h, w), generator=g, device="cuda", dtype=torch.int8)
        wq = torch.randint(-127, 128, (oc, c, k, k), generator=g, device="cuda", dtype=torch.int8)
        x_scale, w_scale = 0.01, torch.rand(oc, generator=g, device="cuda") * 0.002 + 0.0005
        out_scale, out = 0.05, {}
    else:
        x = (torch.randn((n, c, h, w), generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        wq = (torch.randn((oc, c, k, k), generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        x_scale, w_scale = 0.001, torch.rand(oc, generator=g, device="cuda") * 2e-4 + 5e-5
        out_scale, out = 0.01, {"out_dtype": ONNX_FP8}
    x = x.contiguous(memory_format=torch.channels_last)
    float_type = torch.float16 if mode == "f16" else torch.float32
    xs = torch.tensor(x_scale, dtype=float_type, device="cuda")
    bias = torch.randn(oc, generator=g, device="cuda")
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "activation": "Relu"}
    if mode != "q8":
        return (x, wq, xs, None, w_scale, None, bias), attrs
    zp = torch.tensor(0, dtype=torch.int8, device="cuda") if q == "int8" else None
    return (x, wq, xs, None, w_scale, None, bias, None, torch.tensor(out_scale, device="cuda"), zp), {**attrs, **out}


# --- parallel compilation --------------------------------------------------------------------------

_CACHE: dict = {}


def _warm(task: tuple) -> str:
    """Worker: compile (and run once) one kernel variant, filling Triton's disk cache; "" or the error."""
    li, q, mode, ci = task
    from kiln.kernels.triton import qconv as tq
    key = (li, q, mode)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = make_args(li, q, mode)
    args, attrs = _CACHE[key]
    try:
        tq.qconv(*args, **attrs, config=configs(q)[ci])
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - reported, and the config is skipped when timed
        return f"{LAYERS[li][0]} {q} {mode} config {ci}: {type(exc).__name__}: {str(exc)[:200]}"
    return ""


def precompile(pool: ProcessPoolExecutor | None, tasks: list[tuple]) -> None:
    t0 = time.perf_counter()
    errors, where = None, "in workers"
    if pool is not None:
        try:
            errors = list(pool.map(_warm, tasks, chunksize=1))
        except Exception as exc:  # noqa: BLE001 - fall back to compiling here
            say(f"parallel compilation failed ({type(exc).__name__}: {exc}); compiling serially")
    if errors is None:
        errors, where = [_warm(t) for t in tasks], "serially"
    say(f"compiled {len(tasks)} kernel variants {where} in {time.perf_counter() - t0:.1f} s")
    for e in filter(None, errors):
        say(f"  FAILED {e}")


# --- measuring ------------------------------------------------------------------------------------

def bench(fn, reps: int = 20, inner: int = 5) -> float:
    """Median milliseconds of one `fn` call: `inner` calls captured in a CUDA graph (as kiln's
    runtime runs them: no launch overhead, which would dominate the 7x7 layers' ~20 us), the
    graph replayed `reps` times between CUDA events after warm-up. Eager if capture fails."""
    for _ in range(3):
        fn()                              # warm-up: compilation, cuDNN's algorithm search, memos
    torch.cuda.synchronize()
    graph = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        graph.replay()
        run, per = graph.replay, inner
    except Exception as exc:  # noqa: BLE001 - time eagerly instead
        if not EAGER:
            say(f"  (CUDA graph capture failed: {type(exc).__name__}: {exc}; timing eagerly from here)")
        EAGER.append(1)
        torch.cuda.synchronize()
        run, per = fn, 1
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        run()
        b.record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(a.elapsed_time(b) for a, b in events) / per


def tops(li: int, ms: float) -> float:
    _, _, n, c, h, w, oc, k, s, p = LAYERS[li]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 2 * n * oh * ow * oc * c * k * k / (ms * 1e-3) / 1e12


def excess(got: torch.Tensor, want: torch.Tensor) -> float:
    """Worst |got - want| over the float32 tolerance allowed there (<= 1: within tolerance)."""
    from kiln.compiler.tolerance import TOLERANCES
    rtol, atol = TOLERANCES[torch.float32]
    g, w = got.double(), want.double()
    allowed = atol * w.abs().max() + rtol * w.abs()
    return float(((g - w).abs() / allowed.clamp_min(1e-300)).max())


def steps(got: torch.Tensor, want: torch.Tensor) -> tuple[int, float]:
    """(largest difference in quantization steps, fraction of elements that differ)."""
    if got.dtype == torch.float8_e4m3fn:
        def order(t):  # e4m3fn bit patterns are sign-magnitude: map them onto a line
            b = t.view(torch.uint8).int()
            return torch.where(b >= 128, -(b - 128), b)
        d = (order(got) - order(want)).abs()
    else:
        d = (got.int() - want.int()).abs()
    return int(d.max()), float((d > 0).float().mean())


def kiln_fp16_ms(n: int, c: int, h: int, w: int, oc: int, k: int, s: int, p: int) -> tuple[float, tuple]:
    """Kiln's fp16 engine on this conv (cuDNN channels-last, the faster of its two epilogue
    configs, bias + Relu) in ms, and its (x, w, bias) operands."""
    from kiln.tactics.conv import CONFIGS, conv_nhwc
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(oc, c, k, k, device="cuda", dtype=torch.float16) * 0.05).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn(oc, device="cuda", dtype=torch.float16)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "activation": "Relu"}
    return min(bench(lambda cfg=cfg: conv_nhwc(x, wt, b, None, **attrs, config=cfg)) for cfg in CONFIGS), (x, wt, b)


def fp16_baselines(li: int) -> tuple[float, float]:
    """(kiln's fp16 engine: the faster cuDNN channels-last epilogue, torch conv2d + relu_) in ms."""
    _, _, n, c, h, w, oc, k, s, p = LAYERS[li]
    kiln, (x, wt, b) = kiln_fp16_ms(n, c, h, w, oc, k, s, p)
    torch.backends.cudnn.benchmark = True
    plain = bench(lambda: F.conv2d(x, wt, b, stride=s, padding=p).relu_())
    return kiln, plain


def check_and_time(q: str, li: int) -> dict:
    from kiln.compiler.tolerance import mismatch
    from kiln.kernels.reference.quantized import qconv as reference
    from kiln.kernels.triton import qconv as tq
    cfgs = configs(q)
    row: dict = {}
    args, attrs = make_args(li, q, "f32")
    ref_args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    want = reference(*ref_args, **attrs)
    row["f32"] = {}
    for ci in check_configs(q):
        try:
            got = tq.qconv(*args, **attrs, config=cfgs[ci])
        except Exception:  # noqa: BLE001 - reported by precompile
            continue
        why = mismatch(got, want)
        row["f32"][cfgs[ci].get("FP8_ACC", "-")] = (why is None, excess(got, want))
    del want
    args, attrs = make_args(li, q, "f16")
    times = []
    for c in cfgs:
        try:
            times.append(bench(lambda c=c: tq.qconv(*args, **attrs, config=c)))
        except Exception:  # noqa: BLE001 - reported by precompile; never the fastest
            torch.cuda.synchronize()
            times.append(float("inf"))
    best = min(range(len(cfgs)), key=times.__getitem__)
    row["f16"], row["best"] = times[best], best
    row["valid_f16"] = min((t for t, c in zip(times, cfgs) if row["f32"].get(c.get("FP8_ACC", "-"), (True,))[0]),
                           default=float("nan"))
    return row


def main() -> None:
    from kiln.kernels.triton import qconv as tq
    t_start = time.perf_counter()
    dev = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    import triton
    say(f"{dev} sm_{cap[0]}{cap[1]}, torch {torch.__version__}, triton {triton.__version__}, "
        f"{'quick' if QUICK else 'tuned'}")
    qs = ["int8"] + (["fp8"] if cap >= (8, 9) else [])
    if "fp8" not in qs:
        say("fp8 skipped: needs compute capability 8.9")
    tasks = [(li, q, "f16", ci) for q in qs for li in range(len(LAYERS)) for ci in range(len(configs(q)))]
    tasks += [(li, q, "f32", ci) for q in qs for li in range(len(LAYERS)) for ci in check_configs(q)]
    workers = min(12, max(1, (os.cpu_count() or 2) - 2))
    pool = None
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    except Exception as exc:  # noqa: BLE001
        say(f"no worker pool ({exc}); compiling serially")
    precompile(pool, tasks)

    rows: dict = {}
    base = {li: fp16_baselines(li) for li in range(len(LAYERS))}
    for q in qs:
        for li in range(len(LAYERS)):
            rows[q, li] = check_and_time(q, li)
    precompile(pool, [(li, q, mode, rows[q, li]["best"]) for q in qs for li in range(len(LAYERS))
                      for mode in ("q8", "f32")])
    if pool is not None:
        pool.shutdown()
    for q in qs:
        for li in range(len(LAYERS)):
            row, cfg = rows[q, li], configs(q)[rows[q, li]["best"]]
            try:
                args, attrs = make_args(li, q, "q8")
                got = tq.qconv(*args, **attrs, config=cfg)
                want = reference_q8(args, attrs)
                row["q8_steps"], row["q8_ok"] = steps(got, want), tuner_accepts(got, want)
                del got, want
                row["q8"] = bench(lambda: tq.qconv(*args, **attrs, config=cfg))
                args, attrs = make_args(li, q, "f32")
                row["f32out"] = bench(lambda: tq.qconv(*args, **attrs, config=cfg))
            except Exception as exc:  # noqa: BLE001 - reported, the table goes on
                say(f"  FAILED {LAYERS[li][0]} {q} requantized/f32 with config {row['best']}: {exc}")
                row.setdefault("q8_steps", (-1, float("nan")))
                row.setdefault("q8_ok", False)
                row.setdefault("q8", float("nan"))
                row.setdefault("f32out", float("nan"))

    say()
    say(f"{'layer':20s} {'x':>2s} {'kiln16':>7s} {'torch16':>7s} | {'q f16out':>8s} {'TOPS':>5s} {'x16':>5s} | "
        f"{'q q8out':>8s} {'TOPS':>5s} {'x16':>5s} | {'f32out':>7s} {'x16':>5s} | {'q8 steps frac ok':>16s} | "
        "f32 check (FP8_ACC: ok, excess) | best")
    for q in qs:
        say(f"--- {q}")
        tot = {"kiln": 0.0, "f16": 0.0, "q8": 0.0, "f32out": 0.0, "valid": 0.0}
        for li, layer in enumerate(LAYERS):
            row, (kiln16, torch16) = rows[q, li], base[li]
            mx, frac = row["q8_steps"]
            verdict = "ok" if row["q8_ok"] else "NO"
            f32 = " ".join(f"{a}:{'ok' if ok else 'NO'},{ex:.2g}" for a, (ok, ex) in row["f32"].items())
            cfg = configs(q)[row["best"]]
            short = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}w{cfg['num_warps']}s{cfg['num_stages']}" + (
                f"a{cfg['FP8_ACC']}" if "FP8_ACC" in cfg else "")
            say(f"{layer[0]:20s} {layer[1]:2d} {kiln16:7.3f} {torch16:7.3f} | {row['f16']:8.3f} "
                f"{tops(li, row['f16']):5.0f} {kiln16 / row['f16']:5.2f} | {row['q8']:8.3f} {tops(li, row['q8']):5.0f} "
                f"{kiln16 / row['q8']:5.2f} | {row['f32out']:7.3f} {kiln16 / row['f32out']:5.2f} | "
                f"{mx:2d} {frac:8.1e} {verdict} | {f32} | {short}")
            n = layer[1]
            tot["kiln"] += n * kiln16
            tot["f16"] += n * row["f16"]
            tot["q8"] += n * row["q8"]
            tot["f32out"] += n * row["f32out"]
            tot["valid"] += n * row["valid_f16"]
        say(f"{q} weighted by ResNet-50 counts: kiln fp16 {tot['kiln']:.2f} ms, {q} f16-out {tot['f16']:.2f} ms "
            f"(x{tot['kiln'] / tot['f16']:.2f}), {q} q8-out {tot['q8']:.2f} ms (x{tot['kiln'] / tot['q8']:.2f}), "
            f"{q} f32-out (float_precision fp32 builds) {tot['f32out']:.2f} ms (x{tot['kiln'] / tot['f32out']:.2f}); "
            f"fastest config passing the float32 tolerance: {tot['valid']:.2f} ms (x{tot['kiln'] / tot['valid']:.2f})")
    say(f"total {time.perf_counter() - t_start:.1f} s")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "qconv_check.txt"), "w") as f:
            f.write("\n".join(LINES) + "\n")


def tuner_accepts(got: torch.Tensor, want: torch.Tensor) -> bool:
    """compiler/tolerance.py's verdict for a kiln::QConv output (its one-step rule, where it has one)."""
    from kiln.compiler.tolerance import mismatch
    try:
        return mismatch(got, want, op="kiln::QConv") is None
    except TypeError:                     # a tolerance.py without the quantized-op rule
        return mismatch(got, want) is None


def reference_q8(args: tuple, attrs: dict) -> torch.Tensor:
    from kiln.kernels.reference.quantized import qconv as reference
    return reference(*[a.contiguous() if isinstance(a, torch.Tensor) else a for a in args], **attrs)


if __name__ == "__main__":
    main()
