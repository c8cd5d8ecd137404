"""Programmatic dependent launch (PDL) for kiln's Triton kernels, on compute capability 9.0 and up.

An engine is a chain of kernels, each reading what the one before wrote. Launched plainly, a
kernel starts only after its predecessor has finished and the launch has gone through the
front end; launched with PDL (the launch attribute programmaticStreamSerialization, kept as a
programmatic edge when a CUDA graph captures the stream), it may be scheduled while its
predecessor still runs, and waits at `griddepcontrol.wait` until that predecessor has completed
and its memory is visible. On an H200 this saved 0.3-0.6 us per kernel in a CUDA graph of 60
dependent kernels (benchmarks/pdl_gaps.py, 2026-11-29: 1 MB buffers 1.42 -> 1.15 us a kernel,
4 MB 2.38 -> 1.82, 32 MB 16.14 -> 15.47); triggering the successor early
(`griddepcontrol.launch_dependents` at the top) was slower below 32 MB, so no kernel does. Whole
engines, loaded alternately with PDL off and on in one process (benchmarks/pdl_engine.py, same
day): ResNet-50 b64 fp8 1.2077 -> 1.1954 ms (1.010x), its fp16 engine (mostly cuDNN) 1.002x, BERT-base
b32 fp8 and fp16 within their load-to-load spread (0.998x, 0.990x); outputs equal bit for bit.

The rule every kernel here keeps: `wait_for_inputs(PDL)` is its first statement, before any
load or store, so nothing it reads can still be in flight in the kernel before and nothing it
writes can still be read there (a buffer the memory plan reuses). The wait returns at once when
the predecessor was launched plainly (torch, cuBLAS, cuDNN) or has already finished, so a
launch with PDL is correct whatever precedes it.

`launch_options(t)` gives the launch's keywords: PDL on (the constexpr and Triton's launch_pdl
option) for a CUDA tensor on a device of capability >= 9.0 with a Triton that has grid
dependency control, nothing otherwise (the CPU, the interpreter, older GPUs: the kernel compiles
without the wait). `ENABLED` switches it off for the process (benchmarks compare both ways;
the environment variable KILN_PDL=0 does the same from the start).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_wait
    AVAILABLE = True
except ImportError:   # Triton before grid dependency control: launch_options never turns PDL on
    AVAILABLE = False

    @triton.jit
    def gdc_wait():
        pass

ENABLED = os.environ.get("KILN_PDL", "1") != "0"


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """First statement of every kernel: with PDL, wait until the kernel before has completed and
    its writes are visible (module docstring)."""
    if PDL:
        gdc_wait()


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def launch_options(t: torch.Tensor) -> dict[str, Any]:
    """The keywords for a launch on t's device: {"PDL": True, "launch_pdl": True} where PDL
    applies, else none (the kernel's PDL constexpr stays False)."""
    if not (ENABLED and AVAILABLE and t.is_cuda) or os.environ.get("TRITON_INTERPRET") == "1":
        return {}
    if not _capable(t.device.index if t.device.index is not None else torch.cuda.current_device()):
        return {}
    return {"PDL": True, "launch_pdl": True}
