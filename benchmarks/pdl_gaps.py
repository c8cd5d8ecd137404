"""GPU: what programmatic dependent launch (PDL) saves between the kernels of a CUDA graph.

    PYTHONPATH=$PWD/src python3 benchmarks/pdl_gaps.py [--kernels 60]

A chain of dependent Triton kernels (each adds 1 to an int32 buffer and writes the next buffer, as
an engine's steps read the step before), captured in one CUDA graph and replayed: plain launches;
launched with PDL and a griddepcontrol.wait before the first load (the kernel may be scheduled
before its predecessor ends, and waits there for its memory); and the same with
griddepcontrol.launch_dependents at the top as well (the successor's programs may be scheduled
as soon as every program of this one started). Sizes from a launch-bound 1 MB to a
bandwidth-bound 32 MB per buffer. Each chain's result is checked (x + number of kernels, exact)
before it is timed: a missing wait would show as a wrong count. Median of 20 replays.
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _step(X, Y, n, BLOCK: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if EARLY:
        gdc_launch_dependents()
    if PDL:
        gdc_wait()
    tl.store(Y + offs, tl.load(X + offs, mask=mask) + 1, mask=mask)


def chain(bufs: tuple[torch.Tensor, torch.Tensor], kernels: int, pdl: bool, early: bool) -> None:
    n = bufs[0].numel()
    grid = (triton.cdiv(n, 4096),)
    for i in range(kernels):
        _step[grid](bufs[i % 2], bufs[(i + 1) % 2], n, BLOCK=4096, PDL=pdl, EARLY=early, num_warps=8,
                    launch_pdl=pdl)


def timed(bufs, kernels: int, pdl: bool, early: bool) -> tuple[float, bool]:
    x0 = torch.arange(bufs[0].numel(), device="cuda", dtype=torch.int32)
    chain(bufs, kernels, pdl, early)                      # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(bufs, kernels, pdl, early)
    bufs[0].copy_(x0)
    graph.replay()
    torch.cuda.synchronize()
    ok = torch.equal(bufs[kernels % 2], x0 + kernels)
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2], ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", type=int, default=60)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"{args.kernels} dependent kernels in one CUDA graph, us per kernel")
    for mb in (1, 4, 16, 32):
        bufs = tuple(torch.zeros(mb << 18, device="cuda", dtype=torch.int32) for _ in range(2))
        row = []
        for label, pdl, early in (("plain", False, False), ("PDL wait", True, False), ("PDL wait+trigger", True, True)):
            us, ok = timed(bufs, args.kernels, pdl, early)
            row.append(f"{label} {us / args.kernels:6.2f}{'' if ok else ' WRONG'}")
        print(f"  {mb:3d} MB buffers: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
