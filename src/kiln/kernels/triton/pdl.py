"""Programmatic dependent launch (PDL, compute capability 9.0 and later) for kiln's Triton kernels.

A kernel launched with PDL may start while the kernel before it in the stream is still running:
once every program of that kernel has signalled (griddepcontrol.launch_dependents), the next
kernel's programs are placed on whatever SM room is left and wait there (griddepcontrol.wait)
until the previous kernel has finished and its writes are visible. The launch latency and the
next kernel's placement overlap the previous kernel's last wave instead of following it; CUDA
graphs keep the dependency as a programmatic edge.

Every kiln Triton kernel starts with wait_for_inputs(PDL): the wait comes before its first
memory access of any kind, so reading what the previous kernel writes and overwriting what it
reads (the activation arena reuses memory) are both ordered after it, as without PDL; then it
signals its own dependents. A kernel that is not PDL-launched (cuDNN, cuBLAS, torch) simply runs
after its predecessor. Launchers pass `**options(device)`: PDL=True with launch_pdl where the
GPU, the Triton build and the process allow it, PDL=False elsewhere (the CPU interpreter, older
GPUs, KILN_PDL=0).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl


@functools.lru_cache(maxsize=None)
def _supported(index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("KILN_PDL", "1") == "0":
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return "launch_pdl" in fields and torch.cuda.get_device_capability(index) >= (9, 0)


def options(device: torch.device) -> dict[str, Any]:
    """The launch keywords for a kernel on `device`: {"PDL": True, "launch_pdl": True} where PDL
    applies, else {"PDL": False}."""
    if device.type != "cuda":
        return {"PDL": False}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"PDL": True, "launch_pdl": True} if _supported(index) else {"PDL": False}


def refresh() -> None:
    """Re-read KILN_PDL (and the environment) for later launches; benchmarks toggle it."""
    _supported.cache_clear()


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """A kernel's first statement: with PDL, wait until the previous kernel in the stream has
    finished (its writes visible), then let the next one launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
