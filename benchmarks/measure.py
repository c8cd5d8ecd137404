"""Measuring: median times (CUDA events on a GPU), the correctness check, FLOPs and matmul peak."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Minimum cosine similarity to the fp32 PyTorch reference, per precision.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class Timing:
    median_ms: float
    iterations: int


def time_ms(fn: Callable[[], Any], device: str, iters: int = 100, warmup: int = 10,
            max_seconds: float = 3.0, min_iters: int = 10,
            before_each: Callable[[], Any] | None = None) -> Timing:
    """Median of up to `iters` calls (at least `min_iters`, then stop after `max_seconds`).

    On CUDA each call is bracketed by CUDA events and synchronised; on the CPU it is timed
    with perf_counter. `before_each` runs, untimed, before every call (e.g. an L2 flush).
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
    """Median CUDA-event time of exactly `iters` calls (the kernel micro-benchmarks' timer)."""
    return time_ms(fn, "cuda", iters=iters, warmup=warmup, max_seconds=math.inf, min_iters=iters,
                   before_each=before_each).median_ms


@dataclass(frozen=True, slots=True)
class Check:
    cosine: float        # smallest per-sample cosine similarity to the reference
    max_abs_err: float
    max_abs_ref: float   # scale of the reference, to read max_abs_err against
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"cosine": self.cosine, "max_abs_err": self.max_abs_err, "max_abs_ref": self.max_abs_ref,
                "ok": self.ok}


def check(got: torch.Tensor, want: torch.Tensor, precision: str) -> Check:
    """Compare an output with the fp32 reference: per-sample cosine (rows of dim 0) and max |error|."""
    if tuple(got.shape) != tuple(want.shape):
        return Check(math.nan, math.inf, math.nan, False)
    g = got.detach().double().reshape(got.shape[0], -1).cpu()
    w = want.detach().double().reshape(want.shape[0], -1).cpu()
    cos = torch.nn.functional.cosine_similarity(g, w, dim=1, eps=1e-30).min().item()
    err = (g - w).abs().max().item()
    ok = math.isfinite(cos) and math.isfinite(err) and cos >= MIN_COSINE[precision]
    return Check(cos, err, w.abs().max().item(), ok)


def count_flops(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass (matmuls, convolutions, attention), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*args)
    return int(counter.get_total_flops())


def matmul_tflops(precision: str, device: str, n: int = 8192, iters: int = 20) -> float:
    """The rate of one n x n x n matmul in `precision` on `device`: the suite's 'peak'."""
    dtype = DTYPES[precision]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    t = time_ms(lambda: torch.mm(a, b), device, iters=iters, warmup=3, max_seconds=5.0, min_iters=3)
    return 2.0 * n ** 3 / (t.median_ms * 1e-3) / 1e12


def cast_inputs(inputs: dict[str, torch.Tensor], precision: str, device: str) -> dict[str, torch.Tensor]:
    """Inputs for a PyTorch module in `precision`: float tensors cast, integer ones kept."""
    dtype = DTYPES[precision]
    return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}
