"""Measuring: median times (CUDA events on a GPU), the correctness check, FLOPs and matmul peak."""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch

# Minimum cosine similarity to the fp32 PyTorch reference, per precision. int8/fp8: a sanity
# bar, not a quality target (synthetic inputs; random weights but for MiniLM). On the CPU, with
# the reference kernels and minmax ranges from 16 samples, the worst of 8 evaluation samples was
# 0.9994 (int8) / 0.997 (fp8) for ResNet-50, 0.9995 / 0.997 for BERT-base and 0.977 / 0.997 for
# MiniLM (its int8 engine is flagged), while a broken kernel lands far below. An engine under the
# bar is still timed and reported, flagged.
MIN_COSINE = {"fp32": 0.99999, "tf32": 0.999, "fp16": 0.999, "bf16": 0.999, "int8": 0.98, "fp8": 0.98}
# A float engine also passes when its error (1 - cosine) is at most this many times PyTorch's own in
# the same precision (eager, same inputs): where the type itself cannot reach the bar (bf16's 8-bit
# significand through ResNet-50's random weights), the bar would fail every faithful engine.
PEER_ERROR_FACTOR = 2.0
# Float precisions: kiln and the PyTorch peers compute in this dtype (tf32: float32 tensors, the
# matmuls and convolutions on TF32 tensor cores; math_flags).
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Calibrated precisions: kiln only, related to kiln fp16 and the best torch.compile fp16 peer.
QUANTIZED = ("int8", "fp8")
PRECISIONS = (*DTYPES, *QUANTIZED)


@dataclass(frozen=True, slots=True)
class Timing:
    median_ms: float
    iterations: int


def time_ms(fn: Callable[[], Any], device: str, iters: int = 100, warmup: int = 10,
            max_seconds: float = 3.0, min_iters: int = 10,
            before_each: Callable[[], Any] | None = None, hold_cycles: int = 0) -> Timing:
    """Median of up to `iters` calls (at least `min_iters`, then stop after `max_seconds`).

    On CUDA each call is bracketed by CUDA events and synchronised; on the CPU it is timed
    with perf_counter. `before_each` runs, untimed, before every call (e.g. an L2 flush).
    `hold_cycles` > 0 holds the GPU busy that long before each start event (the tuner's
    CudaTimer does the same), so that the events bracket the GPU's work and not the Python
    launch; for single kernels only: a whole model's eager launches are part of its time.
    """
    for _ in range(warmup):
        fn()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < min_iters or time.perf_counter() - start < max_seconds):
        if before_each is not None:
            before_each()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if hold_cycles:
                torch.cuda._sleep(hold_cycles)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), len(times))


def cuda_median_ms(fn: Callable[[], Any], iters: int, warmup: int = 10,
                   before_each: Callable[[], Any] | None = None) -> float:
    """Median CUDA-event time of exactly `iters` calls (the kernel micro-benchmarks' timer), the GPU
    held busy before each so that a Triton kernel's Python launch (~20-50 us) is not timed."""
    from kiln.compiler.timer import HOLD_CYCLES

    return time_ms(fn, "cuda", iters=iters, warmup=warmup, max_seconds=math.inf, min_iters=iters,
                   before_each=before_each, hold_cycles=HOLD_CYCLES).median_ms


def ran_as(engine: Any, status: str) -> str:
    """A timed row's status with how the engine ran: an engine whose CUDA graph could not be
    captured ran step by step (the executor's Python loop), which its time then includes."""
    graph = engine.cuda_graph_status
    return status if graph in ("captured", "off") else f"{status} ({graph})"


def throughput(ms: float, iterations: int, batch: int, flops: int | None = None,
               peak: float | None = None) -> dict[str, Any]:
    """A contender's timing entry: its median ms, items per second and, given FLOPs, TFLOP/s and
    the fraction of the measured matmul peak."""
    e: dict[str, Any] = {"ms": ms, "iterations": iterations, "items_per_s": batch / (ms * 1e-3)}
    if flops:
        e["tflops"] = flops / (ms * 1e-3) / 1e12
        e["peak_fraction"] = e["tflops"] / peak if peak else None
    return e


@dataclass(frozen=True, slots=True)
class Check:
    cosine: float        # smallest per-sample cosine similarity to the reference
    cosine_mean: float   # their mean
    max_abs_err: float
    max_abs_ref: float   # scale of the reference, to read max_abs_err against
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"cosine": self.cosine, "cosine_mean": self.cosine_mean, "max_abs_err": self.max_abs_err,
                "max_abs_ref": self.max_abs_ref, "ok": self.ok}


def within_own_precision(kiln: Check, torch_same: Check) -> Check:
    """`kiln` (failed against the bar) passes if its error is within PEER_ERROR_FACTOR times that of
    PyTorch computing in the same precision (`torch_same`), and its outputs are finite."""
    finite = math.isfinite(kiln.cosine) and math.isfinite(kiln.max_abs_err) and math.isfinite(torch_same.cosine)
    ok = kiln.ok or (finite and 1.0 - kiln.cosine <= PEER_ERROR_FACTOR * (1.0 - torch_same.cosine))
    return replace(kiln, ok=ok)


def check(got: torch.Tensor, want: torch.Tensor, precision: str) -> Check:
    """Compare an output with the fp32 reference: per-sample cosine (rows of dim 0) and max |error|."""
    if tuple(got.shape) != tuple(want.shape):
        return Check(math.nan, math.nan, math.inf, math.nan, False)
    g = got.detach().double().reshape(got.shape[0], -1).cpu()
    w = want.detach().double().reshape(want.shape[0], -1).cpu()
    cosines = torch.nn.functional.cosine_similarity(g, w, dim=1, eps=1e-30)
    cos = cosines.min().item()
    err = (g - w).abs().max().item()
    ok = math.isfinite(cos) and math.isfinite(err) and cos >= MIN_COSINE[precision]
    return Check(cos, cosines.mean().item(), err, w.abs().max().item(), ok)


def count_flops(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass (matmuls, convolutions, attention), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*args)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def math_flags(precision: str) -> Iterator[None]:
    """PyTorch's TF32 flags (matmul and cuDNN) on for tf32, off for every other precision (fp32 is
    IEEE fp32 for every contender), restored after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def matmul_tflops(precision: str, device: str, n: int = 8192, iters: int = 20) -> float:
    """The rate of one n x n x n matmul in `precision` on `device`: the suite's 'peak'."""
    dtype = DTYPES[precision]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    with math_flags(precision):
        t = time_ms(lambda: torch.mm(a, b), device, iters=iters, warmup=3, max_seconds=5.0, min_iters=3)
    return 2.0 * n ** 3 / (t.median_ms * 1e-3) / 1e12


def cast_inputs(inputs: dict[str, torch.Tensor], precision: str, device: str) -> dict[str, torch.Tensor]:
    """Inputs for a PyTorch module in `precision`: float tensors cast, integer ones kept."""
    dtype = DTYPES[precision]
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}
