"""The PyTorch peers kiln is measured against: eager and three torch.compile modes.

Each compiled peer is made fresh for one batch size (dynamic=False, after
torch._dynamo.reset()), so it is specialised to that shape as kiln's CUDA graph is,
and never falls back to eager by hitting dynamo's recompile limit. Its compile time
is the wall time of its first call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch._dynamo

PEERS = ("eager", "compile", "reduce-overhead", "max-autotune")
DEFAULT_PEERS = ("eager", "compile", "reduce-overhead")  # max-autotune: opt-in (ResNet-50 takes ~5 min)
_MODES = {"compile": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    fn: Callable[[], torch.Tensor]  # one forward pass on the bound inputs
    first_call_s: float             # compile time for torch.compile peers; 0 for eager


def parse_peers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}")
    return names


def make_peer(name: str, module: torch.nn.Module, args: tuple[torch.Tensor, ...], device: str) -> Peer:
    """`module` (already in the peer's precision and on `device`) as peer `name`, called once."""
    if name == "eager":
        fn: Callable[..., Any] = module
    else:
        torch._dynamo.reset()
        fn = torch.compile(module, mode=_MODES[name], dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first = time.perf_counter() - t0 if name != "eager" else 0.0

    def call() -> torch.Tensor:
        return fn(*args)
    return Peer(name, call, first)


def output(peer: Peer) -> torch.Tensor:
    """One output of the peer, cloned (reduce-overhead reuses its output buffers across calls)."""
    with torch.inference_mode():
        return peer.fn().detach().float().clone()
