"""Fake tactics and a fake timer, so the tuner's choices are tested on CPU, deterministically.

A fake tactic computes its op through a given function and logs its name (and config)
each time it runs; the fake timer runs the function once and answers the time the test
assigned to whatever ran, so no clock is involved.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from kiln.tactics.registry import TACTICS, Tactic, TacticQuery, _ensure_loaded


UNLOGGED = "<a real tactic>"


class FakeTimer:
    """`timer(fn, repeats)`: runs fn once and returns the assigned time `repeats` times."""

    def __init__(self, times: dict[str, float], log: list[str]) -> None:
        self.times, self.log = times, log
        self.calls: list[tuple[str, int]] = []  # (what ran, repeats) per timer call

    def __call__(self, fn: Callable[[], Any], repeats: int) -> list[float]:
        mark = len(self.log)
        fn()
        name = self.log[-1] if len(self.log) > mark else UNLOGGED  # real tactics (the reference) log nothing
        self.calls.append((name, repeats))
        return [self.times[name]] * repeats

    def calls_for(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


def fake_kernel(name: str, fn: Callable[..., Any], log: list[str]) -> Callable[..., Any]:
    def kernel(*args: Any, config: dict | None = None, **attrs: Any) -> Any:
        log.append(name if config is None else f"{name}{sorted(config.items())}")
        return fn(*args, **attrs)
    return kernel


def cpu_only(query: TacticQuery) -> bool:
    return query.device == "cpu"


@contextlib.contextmanager
def registered(*tactics: Tactic) -> Iterator[None]:
    """Register tactics for the duration of a test (the table is global to the worker)."""
    _ensure_loaded()
    for t in tactics:
        assert t.name not in TACTICS, t.name
        TACTICS[t.name] = t
    try:
        yield
    finally:
        for t in tactics:
            TACTICS.pop(t.name, None)


def fake(name: str, op: str, fn: Callable[..., Any], log: list[str], configs: tuple[dict, ...] = ({},),
         supports: Callable[[TacticQuery], bool] = cpu_only) -> Tactic:
    return Tactic(name, op, 1, ("cpu",), fake_kernel(name, fn, log), supports, configs=configs)


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def wrong_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) + 0.5


def failing(*_: Any, **__: Any) -> Any:
    raise RuntimeError("this kernel always fails")
