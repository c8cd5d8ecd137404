"""Stream-K: a persistent GEMM's K iterations shared evenly among its programs.

A layer with few output tiles for the GPU's SMs (ResNet-50's 7x7 stage at batch 64: 100 tiles of
128x128 for 132 SMs; its 14x14 3x3 convs: 196, one and a half waves) leaves SMs idle for part of
the run however the tiles are dealt. Stream-K deals the K iterations instead: with I = tiles x
K_STEPS iterations over P programs, program p takes iterations [p*I // P, (p+1)*I // P) of the
tiles laid end to end, so every program does the same work within one iteration. A program's
share starts and ends inside tiles: there it computes a partial sum over a part of the tile's K.

The pieces of a split tile are combined without waiting on each other. Every piece stores its
partial accumulator into its own slot of a workspace (two slots per program: the piece that
starts its share and the piece that ends it), then counts itself in at the tile's counter (an
atomic add, ordered after the stores of all the program's threads by a barrier and its release
semantics); the piece that counts last adds all the slots of the tile, in the order of the programs
(the same order whichever piece arrives last: the result does not depend on timing), runs the
epilogue, and sets the counter back to 0 for the next launch. No program waits for another, so
no launch order or residency is assumed. The counters are one int32 per tile, zero between
launches (each launch leaves them as it found them); launches on one stream run one after another,
so one array per device and stream serves every layer (stream_k_counters).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

MAX_TILES = 1 << 14                 # counters per device and stream: tiles a stream-K launch may have
_COUNTERS: dict[tuple[int, int], Tensor] = {}


@triton.jit
def share_start(p, programs, iters):
    """The first iteration of program p's share (program `programs` gives the end, iters)."""
    return p * iters // programs


@triton.jit
def owner(it, programs, iters):
    """The program whose share holds iteration `it`: the largest p with p*iters // programs <= it."""
    return ((it + 1) * programs + iters - 1) // iters - 1


@triton.jit
def slot_of(p, tile, K_STEPS, programs, iters, SLOTS: tl.constexpr):
    """Program p's slot for its piece of `tile`: with SLOTS = 2, the second one where p's share
    started in an earlier tile (the piece that ends the share); SLOTS = 1 (split-K): one piece."""
    if SLOTS == 2:
        return p * 2 + (share_start(p, programs, iters) // K_STEPS != tile).to(tl.int32)
    else:
        return p


@triton.jit
def combine(acc, tile, K_STEPS, programs, iters, pid, PART, COUNT, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, MAX_PIECES: tl.constexpr, SLOTS: tl.constexpr):
    """This program's partial `acc` of `tile` into its slot; (whether this piece counted in last,
    the tile's full sum where it did, else `acc`). PART: SLOTS [BLOCK_M, BLOCK_N] slots per program,
    acc's type; COUNT: the tile counters (module docstring); MAX_PIECES: at least the pieces of any
    tile (max_pieces), so the sum is unrolled: a loop nested in the K loop would keep Triton from
    pipelining it."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    first = owner(tile * K_STEPS, programs, iters)
    last = owner(tile * K_STEPS + K_STEPS - 1, programs, iters)
    # The piece that ends a share is slot 1 unless the share also starts in this tile (slot 0).
    mine = slot_of(pid, tile, K_STEPS, programs, iters, SLOTS)
    tl.store(PART + mine * (BLOCK_M * BLOCK_N) + offs, acc, cache_modifier=".cg")
    arrived = tl.atomic_add(COUNT + tile, 1, sem="acq_rel")
    done = arrived == last - first
    total = acc
    if done:
        total = tl.zeros_like(acc)
        for i in tl.static_range(MAX_PIECES):
            p = tl.minimum(first + i, last)                 # past the last piece: read and dropped
            piece = tl.load(PART + slot_of(p, tile, K_STEPS, programs, iters, SLOTS) * (BLOCK_M * BLOCK_N) + offs,
                            cache_modifier=".cg")
            total += tl.where(first + i <= last, piece, tl.zeros_like(piece))
        tl.atomic_xchg(COUNT + tile, 0)                 # as the next launch expects it
    return done, total


def max_pieces(tiles: int, k_steps: int, programs: int) -> int:
    """The most pieces any tile is split into: every share holds at least iters // programs steps."""
    least = tiles * k_steps // programs
    return 1 if k_steps == 1 else -(-(k_steps - 1) // least) + 1


def stream_k_counters(device: torch.device) -> Tensor:
    """The tile counters of stream-K launches on `device`'s current stream: MAX_TILES int32 zeros,
    made once per device and stream and kept (a CUDA graph that captured them replays with them)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.index or 0 if device.type == "cuda" else -1, stream)
    counters = _COUNTERS.get(key)
    if counters is None:
        counters = _COUNTERS[key] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return counters


def stream_k_workspace(programs: int, slots: int, block_m: int, block_n: int, integer: bool,
                       device: torch.device) -> Tensor:
    """`slots` partial-accumulator slots per program (combine), int32 (int8 operands) or float32."""
    return torch.empty(programs * slots * block_m * block_n, dtype=torch.int32 if integer else torch.float32,
                       device=device)


def split_k(k_steps: int, wanted: int) -> int:
    """The pieces per tile of a split-K launch: the largest count <= wanted that divides the tile's
    K steps, so that every program's share is one piece of one tile."""
    return max(s for s in range(1, max(1, wanted) + 1) if k_steps % s == 0)


def stream_k_programs(tiles: int, k_steps: int, slots: int) -> int:
    """The programs of a stream-K launch: `slots` (SMs times the programs each runs at once), at
    most one per K iteration."""
    return max(1, min(slots, tiles * k_steps))
