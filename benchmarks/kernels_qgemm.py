"""GPU check of the quantized GEMM tactics and the Triton QuantizeLinear (task H1).

Run from the repo root:  PYTHONPATH=$PWD/src python3 benchmarks/kernels_qgemm.py [--all | --epilogue]
Writes its report to $OUT/qgemm_check.txt too when $OUT is set. About 40-60 s (Triton compiles).

1. Correctness on CUDA against the float64 reference (kiln::QMatMul / QuantizeLinear), with the
   tuner's rule (compiler/tolerance.py, op kiln::QMatMul): BERT-base GEMMs (M=4096; K=768,
   N=768/3072; K=3072, N=768) and a ResNet-like 1x1 conv as a GEMM (M=64*56*56, K=64, N=256),
   int8 and fp8, float16 output with bias + residual + Gelu and int8 requantized output.
2. Timing (CUDA events, warm-up, median of 20): the Triton GEMM (every config, or a short list),
   the scaled_mm tactic, against torch fp16 addmm (cuBLAS, what kiln's fp16 build runs), torch._int_mm
   (int32 out, no epilogue) and raw torch._scaled_mm (tensorwise/rowwise). TOPS = 2*M*N*K / time.
3. QuantizeLinear on a channels_last ResNet activation: bit-exactness and GB/s against torch ops.
--epilogue times only BERT's FFN1 GEMM under every config with each epilogue the engines use
(bias or bias + GELU, float16 or requantized output): what a heavy epilogue costs per tiling.
Every case runs in its own try block, so one failure is reported and the rest still run.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
import traceback

import torch
import triton
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference import lookup
from kiln.kernels.triton import qgemm, qgemm_space, quantize
from kiln.tactics import quantized as qt

REF = lookup("kiln::QMatMul").fn
REF_Q = lookup("QuantizeLinear").fn
OP = "kiln::QMatMul"
SHAPES = [("bert qkv/out", 4096, 768, 768), ("bert ffn1", 4096, 3072, 768), ("bert ffn2", 4096, 768, 3072),
          ("resnet 1x1", 64 * 56 * 56, 256, 64)]
SHORT = {False: (0, 1, 2, 3, 7, 8), True: (0, 2, 3, 5, 6, 7)}   # indices into qgemm.INT8_/FP8_CONFIGS
                                                                # timed without --all (key: fp8)
LINES: list[str] = []
BENCH_EAGER: list[int] = []       # one entry per timed call that could not be captured in a CUDA graph
SUMMARY: dict[str, dict[str, float]] = {}
T0 = time.time()


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def bench(fn, reps: int = 20, warmup: int = 3, inner: int = 10) -> float:
    """Median ms per call: `inner` calls captured in a CUDA graph (as kiln's runtime runs engines,
    so Python launch overhead does not hide a 10 us kernel), replayed `reps` times between CUDA
    events, after `warmup` eager calls (which compile Triton kernels). Falls back to eager calls
    if the capture fails (launch overhead then included; counted and reported at the end)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    run, per = fn, 1
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        run, per = graph.replay, inner
        run()
    except Exception:  # noqa: BLE001 - an uncapturable call is timed eagerly
        torch.cuda.synchronize()
        BENCH_EAGER.append(1)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / per)
    return statistics.median(times)


def tops(m: int, n: int, k: int, ms: float) -> str:
    return f"{2 * m * n * k / ms / 1e9:7.1f}"


def operands(m: int, n: int, k: int, dtype: torch.dtype, seed: int = 0):
    """A, K-major W [N, K], a_scale fp16, b_scale [N], bias fp16, residual fp16 (like int8.py/fp8.py make)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (m, k), device="cuda", generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (n, k), device="cuda", generator=g, dtype=torch.int8)
        a_scale, spread = torch.tensor(1 / 64, dtype=torch.float16, device="cuda"), 74.0
    else:
        a = (torch.randn(m, k, device="cuda", generator=g) * 60).to(dtype)
        w = (torch.randn(n, k, device="cuda", generator=g) * 60).to(dtype)
        a_scale, spread = torch.tensor(1 / 60, dtype=torch.float16, device="cuda"), 60.0
    b_scale = (torch.rand(n, device="cuda", generator=g) + 0.5) / (k ** 0.5 * spread)
    bias = torch.randn(n, device="cuda", generator=g).half()
    residual = torch.randn(m, n, device="cuda", generator=g).half()
    return a, w, a_scale, b_scale, bias, residual


def check(label: str, got: torch.Tensor, args: list, **attrs) -> None:
    want = REF(*args, **attrs)
    why = mismatch(got, want, OP)
    if got.dtype.is_floating_point and got.dtype.itemsize > 1:
        err = f"max|err| {float((got.float() - want.float()).abs().max()):.3g}"
    else:
        diff = (got.view(torch.uint8).int() != want.view(torch.uint8).int()).sum()
        err = f"{int(diff)} elements one step off"
    say(f"    {label:44s} {'OK' if why is None else 'MISMATCH: ' + why}  ({err})")


def correctness(name: str, m: int, n: int, k: int, dtype: torch.dtype, cfg: dict) -> None:
    a, w, a_scale, b_scale, bias, residual = operands(m, n, k, dtype)
    args = [a, w, a_scale, None, b_scale, None, bias, residual]
    gelu = dict(trans_b=1, activation="Gelu", activation_params=[0.0])
    req = dict(trans_b=1, out_scale=torch.tensor(0.05, device="cuda"), out_dtype=TensorProto.INT8)
    check("triton fp16 out, bias+residual+Gelu", qgemm.qmatmul(*args, **gelu, config=cfg), args, **gelu)
    check("triton int8 out (requantized)", qgemm.qmatmul(*args, **req, config=cfg), args, **req)
    if dtype == torch.int8:
        zp_args = [a, w, a_scale, torch.tensor(3, dtype=torch.int8, device="cuda"), b_scale,
                   torch.full((n,), -2, dtype=torch.int8, device="cuda"), bias, None]
        check("triton fp16 out, zero points", qgemm.qmatmul(*zp_args, trans_b=1, config=cfg), zp_args, trans_b=1)
    else:
        f8 = dict(trans_b=1, out_scale=torch.tensor(0.05, device="cuda"), out_dtype=TensorProto.FLOAT8E4M3FN)
        check("triton fp8 out (requantized)", qgemm.qmatmul(*args, **f8, config=cfg), args, **f8)
        check("scaled_mm tactic fp16 out, Gelu", qt.scaled_mm_qmatmul(*args, **gelu), args, **gelu)
        fast = {"fast_accum": 1}
        check("scaled_mm fast-accum fp16 out, Gelu", qt.scaled_mm_qmatmul(*args, **gelu, config=fast), args, **gelu)
        check("scaled_mm tactic int8 out", qt.scaled_mm_qmatmul(*args, **req), args, **req)


def timing(name: str, m: int, n: int, k: int, dtype: torch.dtype, all_configs: bool) -> dict:
    """Times of the Triton configs; returns the best config."""
    a, w, a_scale, b_scale, bias, _ = operands(m, n, k, dtype)
    fp8 = dtype == torch.float8_e4m3fn
    space = qgemm_space.FP8_CONFIGS if fp8 else qgemm_space.INT8_CONFIGS
    picks = range(len(space)) if all_configs else SHORT[fp8]
    best = (float("inf"), None)
    for i in picks:
        cfg = dict(space[i])
        if cfg["BLOCK_K"] > k:
            continue
        try:
            ms = bench(lambda: qgemm.qmatmul(a, w, a_scale, None, b_scale, None, bias, trans_b=1, config=cfg))
        except Exception as exc:  # noqa: BLE001 - report and go on
            say(f"    config {i} {cfg}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
            continue
        say(f"    triton cfg {i} {qgemm_space.describe(cfg)}: {ms:8.4f} ms  {tops(m, n, k, ms)} TOPS")
        best = min(best, (ms, i), key=lambda t: t[0])
    if best[1] is None:
        return dict(space[0])
    cfg = dict(space[best[1]])
    req = dict(out_scale=torch.tensor(0.05, device="cuda"), out_dtype=TensorProto.INT8)
    ms_req = bench(lambda: qgemm.qmatmul(a, w, a_scale, None, b_scale, None, bias, trans_b=1, config=cfg, **req))
    say(f"  * triton {str(dtype)[6:]:13s} best cfg {best[1]}: fp16 out+bias {best[0]:8.4f} ms "
        f"{tops(m, n, k, best[0])} TOPS; int8 out {ms_req:8.4f} ms {tops(m, n, k, ms_req)} TOPS")
    SUMMARY[name][f"triton {str(dtype)[6:]}"] = best[0]
    SUMMARY[name][f"triton {str(dtype)[6:]} int8-out"] = ms_req
    return cfg


def baselines(name: str, m: int, n: int, k: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    a16 = torch.randn(m, k, device="cuda", generator=g).half()
    w16 = torch.randn(k, n, device="cuda", generator=g).half()
    b16 = torch.randn(n, device="cuda", generator=g).half()
    ms16 = bench(lambda: torch.addmm(b16, a16, w16))
    SUMMARY[name]["fp16 cuBLAS"] = ms16
    say(f"  * torch fp16 addmm (cuBLAS)           {ms16:8.4f} ms {tops(m, n, k, ms16)} TFLOPS   <- kiln fp16")
    a8 = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8)
    w8 = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8).t()   # column-major [K, N]
    try:
        ms = bench(lambda: torch._int_mm(a8, w8))
        SUMMARY[name]["_int_mm"] = ms
        say(f"  * torch._int_mm (int32 out, no epi.)  {ms:8.4f} ms {tops(m, n, k, ms)} TOPS   "
            f"x{ms16 / ms:4.2f} vs fp16")
    except Exception as exc:  # noqa: BLE001
        say(f"  * torch._int_mm: FAILED {type(exc).__name__}: {str(exc)[:160]}")
    if torch.cuda.get_device_capability() < (8, 9):
        return
    af = a16.to(torch.float8_e4m3fn)
    wf = torch.randn(n, k, device="cuda", generator=g).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")
    for label, sa, sb in (("tensorwise", one, one),
                          ("rowwise", torch.ones(m, 1, device="cuda"), torch.ones(1, n, device="cuda"))):
        try:
            ms = bench(lambda: torch._scaled_mm(af, wf, sa, sb, bias=b16, out_dtype=torch.float16))
            say(f"  * torch._scaled_mm {label:10s} fp16+bias {ms:8.4f} ms {tops(m, n, k, ms)} TOPS   "
                f"x{ms16 / ms:4.2f} vs fp16")
        except Exception as exc:  # noqa: BLE001
            say(f"  * torch._scaled_mm {label}: FAILED {type(exc).__name__}: {str(exc)[:160]}")


def tactic_timing(name: str, m: int, n: int, k: int, dtype: torch.dtype, cfg: dict) -> None:
    """The tactics as the executor calls them (K-major weight memo included), fp16 out + bias."""
    a, w, a_scale, b_scale, bias, _ = operands(m, n, k, dtype)
    w_kn = w.t().contiguous()      # a MatMul weight [K, N]: the tactic transposes it once
    ms = bench(lambda: qt.triton_qmatmul(a, w_kn, a_scale, None, b_scale, None, bias, config=cfg))
    say(f"  * tactic kiln::QMatMul.triton ({str(dtype)[6:]}, [K,N] weight) {ms:8.4f} ms {tops(m, n, k, ms)} TOPS")
    if dtype != torch.int8:
        for cfg_mm in qt.SCALED_MM_CONFIGS:
            ms = bench(lambda: qt.scaled_mm_qmatmul(a, w_kn, a_scale, None, b_scale, None, bias, config=cfg_mm))
            SUMMARY[name]["scaled_mm tactic" + (" fast" if cfg_mm["fast_accum"] else "")] = ms
            say(f"  * tactic kiln::QMatMul.scaled_mm (rowwise, fp16+bias) {cfg_mm}  {ms:8.4f} ms "
                f"{tops(m, n, k, ms)} TOPS")


def quantize_check() -> None:
    say("QuantizeLinear.triton, x fp16 [64, 256, 56, 56] channels_last")
    x = (torch.randn(64, 256, 56, 56, device="cuda") * 8).half().contiguous(memory_format=torch.channels_last)
    s = torch.tensor(0.05, dtype=torch.float16, device="cuda")
    outs = [(TensorProto.INT8, torch.tensor(0, dtype=torch.int8, device="cuda"))]
    if torch.cuda.get_device_capability() >= (8, 9):
        outs.append((TensorProto.FLOAT8E4M3FN, None))
    nbytes = x.numel() * 3
    for out, zp in outs:
        want = REF_Q(x, s, zp, output_dtype=out)
        for i, cfg in enumerate(quantize.CONFIGS):
            got = quantize.quantize_linear(x, s, zp, output_dtype=out, config=dict(cfg))
            same = torch.equal(got.view(torch.uint8), want.view(torch.uint8))
            ms = bench(lambda: quantize.quantize_linear(x, s, zp, output_dtype=out, config=dict(cfg)))
            say(f"    out {out:2d} cfg {i} {cfg}: {'bit-exact' if same else 'DIFFERS'}, channels_last "
                f"{got.is_contiguous(memory_format=torch.channels_last)}, {ms:.4f} ms {nbytes / ms / 1e6:7.1f} GB/s")
    ms = bench(lambda: torch.clamp(torch.round(x / s), -128, 127).to(torch.int8))
    say(f"    torch ops round/clamp/cast (3 kernels): {ms:.4f} ms {nbytes / ms / 1e6:7.1f} GB/s (effective)")
    ms = bench(lambda: x.clone())
    say(f"    x.clone() (memory bound reference): {ms:.4f} ms {x.numel() * 4 / ms / 1e6:7.1f} GB/s")


def epilogues() -> None:
    """BERT-base FFN1 (M=4096, N=3072, K=768) under every config of each tuning space, with each
    epilogue the engines use: bias only or bias + exact GELU, float16 out or requantized
    (int8 out for int8, float8 out for fp8). us per call."""
    m, n, k = 4096, 3072, 768
    gelu = dict(activation="Gelu", activation_params=[0.0])
    for dtype, space in ((torch.int8, qgemm_space.INT8_CONFIGS), (torch.float8_e4m3fn, qgemm_space.FP8_CONFIGS)):
        if dtype == torch.float8_e4m3fn and torch.cuda.get_device_capability() < (8, 9):
            continue
        a, w, a_scale, b_scale, bias, _ = operands(m, n, k, dtype)
        out = TensorProto.FLOAT8E4M3FN if dtype == torch.float8_e4m3fn else TensorProto.INT8
        req = dict(out_scale=torch.tensor(0.05, device="cuda"), out_dtype=out)
        cases = {"bias/f16": {}, "gelu/f16": gelu, "bias/requant": req, "gelu/requant": {**gelu, **req}}
        say(f"\n== epilogues, {str(dtype)[6:]} FFN1 {m}x{n}x{k}: us per call  " + "".join(f"{c:>14s}" for c in cases))
        for i, cfg in enumerate(space):
            cells = []
            for attrs in cases.values():
                try:
                    ms = bench(lambda: qgemm.qmatmul(a, w, a_scale, None, b_scale, None, bias, trans_b=1,
                                                     config=dict(cfg), **attrs))
                    cells.append(f"{ms * 1000:14.1f}")
                except Exception as exc:  # noqa: BLE001 - report and go on
                    cells.append(f"{'FAILED ' + type(exc).__name__:>14s}")
            say(f"  {i:2d} {qgemm_space.describe(cfg):44s}" + "".join(cells))


def main() -> None:
    if "--epilogue" in sys.argv:
        epilogues()
        return
    all_configs = "--all" in sys.argv
    props = torch.cuda.get_device_properties(0)
    say(f"device {props.name} sm_{props.major}{props.minor}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {triton.__version__}")
    dtypes = [torch.int8] + ([torch.float8_e4m3fn] if (props.major, props.minor) >= (8, 9) else [])
    for name, m, n, k in SHAPES:
        say(f"\n== {name}: M={m} N={n} K={k}")
        SUMMARY[name] = {}
        try:
            baselines(name, m, n, k)
        except Exception:  # noqa: BLE001
            say("  baselines FAILED: " + traceback.format_exc(limit=2).replace("\n", " | ")[-400:])
        for dtype in dtypes:
            try:
                cfg = timing(name, m, n, k, dtype, all_configs)
                tactic_timing(name, m, n, k, dtype, cfg)
                say(f"  correctness {str(dtype)[6:]} (cfg {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}):")
                correctness(name, m, n, k, dtype, cfg)
            except Exception:  # noqa: BLE001
                say(f"  {dtype} FAILED: " + traceback.format_exc(limit=3).replace("\n", " | ")[-600:])
            torch.cuda.empty_cache()
        say(f"  [{time.time() - T0:.0f} s]")
    try:
        quantize_check()
    except Exception:  # noqa: BLE001
        say("QuantizeLinear FAILED: " + traceback.format_exc(limit=3).replace("\n", " | ")[-600:])
    summary()
    if BENCH_EAGER:
        say(f"{len(BENCH_EAGER)} timings ran eagerly (CUDA graph capture failed): launch overhead included")
    say(f"\ntotal {time.time() - T0:.0f} s")


def summary() -> None:
    """ms per GEMM and speed-up over kiln's fp16 (cuBLAS addmm), one row per shape."""
    cols = ["fp16 cuBLAS", "triton int8", "triton int8 int8-out", "triton float8_e4m3fn", "scaled_mm tactic",
            "scaled_mm tactic fast", "_int_mm"]
    say("\nsummary: ms (x speed-up vs fp16 cuBLAS)")
    say(f"  {'shape':14s}" + "".join(f"{c:>24s}" for c in cols))
    for name, row in SUMMARY.items():
        base = row.get("fp16 cuBLAS")
        cells = []
        for c in cols:
            ms = row.get(c)
            cells.append("-" if ms is None else f"{ms:.4f}" + ("" if base is None else f" (x{base / ms:.2f})"))
        say(f"  {name:14s}" + "".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    try:
        main()
    finally:
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, "qgemm_check.txt"), "w") as f:
                f.write("\n".join(LINES) + "\n")
