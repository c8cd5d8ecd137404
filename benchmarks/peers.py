"""The PyTorch peers kiln is measured against: eager and three torch.compile modes.

Each compiled peer is made fresh for one batch size (dynamic=False, after
torch._dynamo.reset()), so it is specialised to that shape as kiln's CUDA graph is,
and never falls back to eager by hitting dynamo's recompile limit. Its compile time
is the wall time of its first call.

Budget: a peer's compile is one indivisible step of minutes (max-autotune: ~5 min for
ResNet-50), so under --time-budget the suite starts a peer only when the time left covers
its expected cost (`expected_seconds`): what that peer's first call took earlier in this
run on the same model, else the prior in FIRST_CALL_PRIOR_S, plus the timing itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch._dynamo

PEERS = ("eager", "compile", "reduce-overhead", "max-autotune")
DEFAULT_PEERS = ("eager", "compile", "reduce-overhead")  # max-autotune: opt-in (ResNet-50 takes ~5 min)
COMPILED = ("compile", "reduce-overhead", "max-autotune")  # the torch.compile modes ("best torch.compile")
# --peers presets; a preset and peer names mix freely ("default,max-autotune" == "all").
PRESETS = {"default": DEFAULT_PEERS, "all": PEERS, "compiled": COMPILED}
_MODES = {"compile": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}
# Seconds one first call (compile) is expected to take before this run has seen one: the H200
# runs of BENCHMARKS.md (compile / reduce-overhead 5-17 s; max-autotune ~290 s for ResNet-50),
# rounded up so a budgeted run rather skips a peer than overruns.
FIRST_CALL_PRIOR_S = {"eager": 0.0, "compile": 20.0, "reduce-overhead": 20.0, "max-autotune": 300.0}


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    fn: Callable[[], torch.Tensor]  # one forward pass on the bound inputs
    first_call_s: float             # compile time for torch.compile peers; 0 for eager


def parse_peers(text: str) -> tuple[str, ...]:
    """Peer names and presets (PRESETS), comma-separated, in order, each peer once."""
    names: list[str] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if item not in PEERS and item not in PRESETS:
            raise ValueError(f"unknown peer {item!r}; choose from {', '.join(PEERS)} or a preset: "
                             + "; ".join(f"{k} = {','.join(v)}" for k, v in PRESETS.items()))
        names += [p for p in PRESETS.get(item, (item,)) if p not in names]
    return tuple(names)


def best_compiled(peers: dict[str, dict[str, Any]]) -> str | None:
    """The fastest timed torch.compile peer of a row's peer entries (eager excluded), or None."""
    timed = {p: e["ms"] for p, e in peers.items() if p in COMPILED and "ms" in e}
    return min(timed, key=timed.get) if timed else None


def expected_seconds(name: str, seen_first_call_s: float | None, timing_s: float) -> float:
    """What making and timing peer `name` should cost: its first call (as seen before on this
    model, else the prior) plus `timing_s` for the warm-up and the timed runs."""
    first = FIRST_CALL_PRIOR_S[name] if seen_first_call_s is None else seen_first_call_s
    return first + timing_s


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
