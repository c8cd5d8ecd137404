"""The engine's activation arena on the GPU: one memory pool per engine, reserved at the planned peak.

Design note. The liveness plan (memory.py) says how many bytes of activations one run
needs at a given set of input shapes. On a GPU an engine owns one torch.cuda.MemPool for
the activations of its CUDA graphs. Before a new input shape is captured, the sizes of
its warm-up run are planned by liveness, and the capture's first act is to take that
peak from the pool as one block and free it at once, so that the capture's tensors are
carved out of that block (sized by the plan) rather than out of segments the allocator
sizes one tensor at a time. Every captured shape shares the pool (an engine replays
one graph at a time on one stream and copies each replay's outputs out before the next,
so one shape's intermediates may reuse another's). The pool is the engine's alone: no
other engine's or user's tensor lands in it (runs without a CUDA graph allocate as torch
does), and dropping the engine releases it.

The caching allocator places tensors inside the pool (best fit, splitting the block),
not at the plan's offsets; tensors up to 1 MiB come from its small-block segments beside
the block, and it rounds a block under 10 MiB up to 20 MiB. What kernels allocate for
themselves during the capture (a library's workspace, a temporary inside a torch op) is
not in the plan and comes from the pool too, beside the block when the block is full.
So the pool can hold more than the plan: `reserved_bytes` is what it holds (on an H200,
a chain of fp32 cuBLAS GEMMs with a 16 MiB plan held the 16 MiB block and one 20 MiB
segment for such a temporary; ResNet-50 at batch 64 in fp16, a 220.5 MiB plan and 322
MiB held). Shapes captured largest first share one block; each larger shape captured
later adds a block of its own peak. The allocator keeps free blocks per stream, hence
one capture stream per arena, so that every shape's capture can reuse what earlier
captures freed.
"""
from __future__ import annotations

import torch


class Arena:
    def __init__(self, device: torch.device) -> None:
        # "cuda" without an index means the current device, as it does for tensors
        self.device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        # torch.cuda.MemPool where this torch has one; otherwise a graph pool id, which the graphs
        # keep alive as long as one of them lives.
        pool_type = getattr(torch.cuda, "MemPool", None)
        self.pool = pool_type() if pool_type is not None else None
        self.handle: tuple[int, int] = self.pool.id if self.pool is not None else torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)
        self.planned_bytes = 0  # the largest liveness peak reserved for so far

    def segments(self) -> list[dict]:
        """The allocator's segments of this pool (torch.cuda.memory_snapshot's entries)."""
        if self.pool is not None and hasattr(self.pool, "snapshot"):
            return self.pool.snapshot()
        return [seg for seg in torch.cuda.memory_snapshot()
                if tuple(seg.get("segment_pool_id", ())) == tuple(self.handle)]

    @property
    def reserved_bytes(self) -> int:
        """Device memory the pool holds now (its segments, in use or free)."""
        return sum(seg["total_size"] for seg in self.segments())

    @property
    def free_bytes(self) -> int:
        """The part of the pool no tensor holds now (captured graphs' outputs stay held)."""
        return sum(seg["total_size"] - seg["allocated_size"] for seg in self.segments())

    def reserve(self, planned: int) -> None:
        """Called first thing inside a capture into this arena (on its stream): make sure
        `planned` bytes of the pool are free. When fewer are, take one block of `planned`
        bytes and free it at once: the capture's tensors are then carved out of it (a whole
        block, not the difference: the free pieces beside earlier graphs' outputs may be
        too small for the larger tensors of a larger shape)."""
        self.planned_bytes = max(self.planned_bytes, planned)
        if self.free_bytes >= planned:
            return
        block = torch.empty(planned, dtype=torch.uint8, device=self.device)
        del block  # back to the pool's free list: the allocations after it split it
