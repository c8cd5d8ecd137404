"""The plan: the engine's program as plain data (JSON in the engine file).

Every tensor the engine touches is a numbered slot. A Step reads slots, runs one
tactic, and writes slots. `free_after[i]` lists the activation slots whose last reader
is step i, so the executor drops them there and their memory is reused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Dim = int | str


@dataclass(frozen=True, slots=True)
class Binding:
    """An engine input or output as the user sees it."""
    name: str
    dtype: str                 # declared type at the boundary (the model's)
    shape: tuple[Dim, ...]     # symbolic dims as strings
    slot: int                  # slot holding the tensor inside the engine
    kind: str = "tensor"       # "tensor" | "sequence" (list of tensors) | "optional" (value or None)


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    dtype: str | None          # compute type inside the engine
    shape: tuple[Dim, ...] | None
    kind: str                  # "input" | "const" | "activation"
    const_key: str | None = None
    host: bool = False         # a constant kept in host memory (read by host steps / shape inputs)


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the auto-tuner chose a step's tactic (absent when it did not time the step)."""
    ms: float | None           # median time of the chosen (tactic, config) at the opt shapes
    runner_up: str | None = None  # the second fastest valid tactic, and its config and time
    runner_up_config: dict[str, Any] = field(default_factory=dict)
    runner_up_ms: float | None = None
    candidates: int = 0        # (tactic, config) pairs considered
    cached: bool = False       # the times came from the timing cache


@dataclass(frozen=True, slots=True)
class Step:
    name: str                  # node name, for inspect and per-layer errors
    op: str                    # qualified op ("Conv", "kiln::FusedConv")
    tactic: str                # stable tactic id ("Conv.reference")
    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    fused: tuple[str, ...] = ()  # source ONNX nodes folded into this step
    host: bool = False         # runs on the host on host tensors (shape arithmetic)
    h2d: tuple[int, ...] = ()  # input positions holding host values to copy to the device first
    captures: int = 0          # trailing inputs that are outer values the step's bodies read
    config: dict[str, Any] = field(default_factory=dict)  # the tactic's tuned config (see Tactic.configs)
    tuning: Tuning | None = None  # the tuner's record (None: not timed, or an engine from before tuning)


@dataclass(frozen=True, slots=True)
class SubPlan:
    """A subgraph (If/Loop/Scan/SequenceMap body) compiled to its own plan. Its inputs are
    the body's formal inputs followed by the outer values it captures."""
    plan: "Plan"
    constants: dict[str, Any]  # const_key -> tensor


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Activation memory at the profile's opt shapes."""
    peak_bytes: int            # arena size of the liveness-based plan
    total_bytes: int           # sum of all activations, as if none were reused
    offsets: tuple[tuple[int, int, int], ...] = ()  # (slot, offset, size)


@dataclass(frozen=True, slots=True)
class Plan:
    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]
    slots: tuple[Slot, ...]
    steps: tuple[Step, ...]
    free_after: tuple[tuple[int, ...], ...]
    memory: MemoryReport
