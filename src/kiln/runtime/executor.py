"""Runs a plan: a flat loop over steps, reading and writing numbered slots.

Kernels and decoded attributes are resolved once at construction, so a run is only the
loop. Activations are dropped after their last reader (the plan's free lists), which
hands their memory back to torch's caching allocator for the next ones to reuse.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from kiln.engine.plan import Plan
from kiln.errors import KilnError
from kiln.tactics import get_tactic


class StepError(KilnError):
    """A kernel failed while running one step of the plan."""


class Executor:
    def __init__(self, plan: Plan, constants: dict[int, torch.Tensor]) -> None:
        self.plan = plan
        self.constants = constants
        self._kernels: list[Callable[..., Any]] = [get_tactic(s.tactic).kernel for s in plan.steps]

    def run(self, feeds: dict[int, torch.Tensor], record_sizes: dict[int, int] | None = None,
            h2d_memo: dict[tuple[int, int], torch.Tensor] | None = None,
            device: torch.device | None = None) -> list[torch.Tensor | None]:
        """Execute with input slots bound in `feeds`; returns the slot table after the run.

        Host values a device step reads as data are copied to `device` first. With
        `h2d_memo`, each copy is made once per (step, input) and reused: valid because host
        values depend only on input shapes, and required while a CUDA graph is captured.
        """
        env: list[torch.Tensor | None] = [None] * len(self.plan.slots)
        for slot, t in self.constants.items():
            env[slot] = t
        for slot, t in feeds.items():
            env[slot] = t
        for k, (step, kernel, free) in enumerate(zip(self.plan.steps, self._kernels, self.plan.free_after)):
            args = [env[i] if i is not None else None for i in step.inputs]
            for pos in step.h2d:
                if args[pos] is not None and device is not None:
                    if h2d_memo is None:
                        args[pos] = args[pos].to(device)
                    else:
                        if (k, pos) not in h2d_memo:
                            h2d_memo[(k, pos)] = args[pos].to(device)
                        args[pos] = h2d_memo[(k, pos)]
            while args and args[-1] is None:
                args.pop()
            try:
                result = kernel(*args, **step.attrs)
            except KilnError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with the step named
                shapes = ", ".join("None" if a is None else f"{tuple(a.shape)}:{str(a.dtype).removeprefix('torch.')}"
                                   for a in args)
                raise StepError(f"layer {step.name!r} ({step.op}, tactic {step.tactic}) failed on inputs "
                                f"[{shapes}]: {type(exc).__name__}: {exc}. The inputs may be outside what the "
                                "model accepts; check them, or report the model if they are valid.") from exc
            if isinstance(result, torch.Tensor):
                result = (result,)
            for slot, t in zip(step.outputs, result):
                env[slot] = t
                if record_sizes is not None:
                    record_sizes[slot] = t.numel() * t.element_size()
            for slot in free:
                env[slot] = None
        return env
