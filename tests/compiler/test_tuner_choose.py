"""The tuner's selection for one step (tuner.choose), with fake tactics and a fake timer."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuning_fakes import FakeTimer, failing, fake, relu, wrong_relu  # noqa: E402

from kiln.compiler.timing_cache import TimingCache  # noqa: E402
from kiln.compiler.tuner import Candidate, TuneSettings, choose, expand, warm  # noqa: E402

X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def pick(tactics: list, times: dict[str, float], log: list[str], **kw: object):  # noqa: ANN201
    timer = FakeTimer(times, log)
    return choose(expand(tactics), (X,), {}, timer, 1, **kw), timer


def test_the_fastest_valid_candidate_wins_and_the_runner_up_is_recorded() -> None:
    log: list[str] = []
    tactics = [fake("t.a", "Relu", relu, log), fake("t.b", "Relu", relu, log), fake("t.reference", "Relu", relu, log)]
    choice, timer = pick(tactics, {"t.a": 1.5, "t.b": 1.0, "t.reference": 2.5}, log)
    assert choice.best.candidate.tactic.name == "t.b" and choice.best.ms == 1.0
    assert choice.runner_up.candidate.tactic.name == "t.a" and choice.runner_up.ms == 1.5
    assert torch.equal(choice.outputs[0], torch.relu(X))
    record = choice.record()
    assert (record.ms, record.runner_up, record.runner_up_ms, record.candidates, record.cached) == \
        (1.0, "t.a", 1.5, 3, False)


def test_invalid_and_failing_candidates_are_skipped_and_never_timed() -> None:
    log: list[str] = []
    tactics = [fake("t.wrong", "Relu", wrong_relu, log), fake("t.boom", "Relu", failing, log),
               fake("t.ok", "Relu", relu, log), fake("t.reference", "Relu", relu, log)]
    choice, timer = pick(tactics, {"t.wrong": 0.1, "t.boom": 0.1, "t.ok": 1.0, "t.reference": 1.2}, log)
    assert choice.best.candidate.tactic.name == "t.ok"
    status = {t.candidate.tactic.name: t.status for t in choice.trials}
    assert status == {"t.wrong": "invalid", "t.boom": "error", "t.ok": "ok", "t.reference": "ok"}
    assert "RuntimeError" in next(t.detail for t in choice.trials if t.status == "error")
    assert timer.calls_for("t.wrong") == 0 and timer.calls_for("t.boom") == 0


def test_early_stop_drops_a_candidate_after_its_probe_runs() -> None:
    log: list[str] = []
    tactics = [fake("t.fast", "Relu", relu, log), fake("t.slow", "Relu", relu, log),
               fake("t.reference", "Relu", relu, log)]
    settings = TuneSettings(repeats=10, probe=3, drop_ratio=2.0)
    choice, timer = pick(tactics, {"t.fast": 1.0, "t.slow": 2.5, "t.reference": 1.9}, log, settings=settings)
    assert timer.calls == [("t.fast", 3), ("t.fast", 7), ("t.slow", 3), ("t.reference", 3), ("t.reference", 7)]
    slow = next(t for t in choice.trials if t.candidate.tactic.name == "t.slow")
    assert slow.status == "dropped" and slow.ms == 2.5
    assert choice.best.candidate.tactic.name == "t.fast" and choice.runner_up.candidate.tactic.name == "t.reference"


def test_every_config_is_a_candidate_and_the_kernel_gets_it() -> None:
    log: list[str] = []
    tiled = fake("t.tiled", "Relu", relu, log, configs=({"BLOCK": 32}, {"BLOCK": 64}))
    times = {"t.tiled[('BLOCK', 32)]": 2.0, "t.tiled[('BLOCK', 64)]": 1.0, "t.reference": 3.0}
    choice, _ = pick([tiled, fake("t.reference", "Relu", relu, log)], times, log)
    assert choice.best.candidate.config == {"BLOCK": 64}
    assert choice.runner_up.candidate.config == {"BLOCK": 32}
    assert choice.record().runner_up_config == {"BLOCK": 32}


def test_ties_go_to_the_earlier_candidate() -> None:
    log: list[str] = []
    tactics = [fake("t.first", "Relu", relu, log), fake("t.second", "Relu", relu, log),
               fake("t.reference", "Relu", relu, log)]
    choice, _ = pick(tactics, {"t.first": 1.0, "t.second": 1.0, "t.reference": 1.0}, log)
    assert choice.best.candidate.tactic.name == "t.first"


def test_a_warm_cache_times_nothing_and_runs_only_the_winner() -> None:
    log: list[str] = []
    tactics = [fake("t.a", "Relu", relu, log), fake("t.b", "Relu", relu, log), fake("t.reference", "Relu", relu, log)]
    times = {"t.a": 1.5, "t.b": 1.0, "t.reference": 2.5}
    cache = TimingCache(None, {"device": "test"})
    cold, cold_timer = pick(tactics, times, log, cache=cache, signature="sig")
    log.clear()
    warm, warm_timer = pick(tactics, times, log, cache=cache, signature="sig")
    assert cold_timer.calls and not warm_timer.calls and warm.timer_calls == 0
    assert log == ["t.b"]  # the winner runs once for its outputs; the oracle is not needed
    assert warm.cached and warm.best.candidate.tactic.name == "t.b" and warm.best.ms == 1.0
    assert warm.runner_up.ms == 1.5 and torch.equal(warm.outputs[0], cold.outputs[0])
    # A different op signature misses.
    _, other_timer = pick(tactics, times, log, cache=cache, signature="other")
    assert other_timer.calls


def test_a_failing_oracle_is_raised() -> None:
    log: list[str] = []
    tactics = [fake("t.a", "Relu", relu, log), fake("t.reference", "Relu", failing, log)]
    with pytest.raises(RuntimeError, match="always fails"):
        pick(tactics, {"t.a": 1.0}, log)


def test_candidates_run_with_a_config_keyword_only_when_they_have_one() -> None:
    seen: list[dict] = []

    def kernel(x: torch.Tensor, **attrs: object) -> torch.Tensor:
        seen.append(dict(attrs))
        return x

    plain = fake("t.plain", "Relu", relu, [])
    object.__setattr__(plain, "kernel", kernel)
    Candidate(plain, {}).run((X,), {"alpha": 1.0})
    Candidate(plain, {"BLOCK": 8}).run((X,), {"alpha": 1.0})
    assert seen == [{"alpha": 1.0}, {"alpha": 1.0, "config": {"BLOCK": 8}}]


def test_warm_runs_each_candidate_once_in_threads_and_drops_errors() -> None:
    import threading
    seen: list[tuple[str, int, bool]] = []

    def probe(name: str, fails: bool = False):  # noqa: ANN202
        def fn(x: torch.Tensor) -> torch.Tensor:
            seen.append((name, threading.get_ident(), torch.is_inference_mode_enabled()))
            if fails:
                raise RuntimeError("compile failed")
            return x + 1
        return fn

    log: list[str] = []
    cands = expand([fake("t.a", "Relu", probe("t.a"), log), fake("t.b", "Relu", probe("t.b", fails=True), log),
                    fake("t.c", "Relu", probe("t.c"), log), fake("t.d", "Relu", probe("t.d"), log)])
    assert warm(cands, (X,), {}, threads=3) == 3                        # t.b's error dropped
    assert sorted(n for n, _, _ in seen) == ["t.a", "t.b", "t.c", "t.d"]   # each once
    assert all(mode for _, _, mode in seen)                              # in inference mode, as tuning runs
    me = threading.get_ident()
    assert seen[0][:2] == ("t.a", me) and all(tid != me for _, tid, _ in seen[1:])   # the rest in the pool
    assert warm([], (X,), {}, threads=3) == 0


def test_choose_does_not_warm_off_the_gpu() -> None:
    # CPU inputs: every candidate runs once for its check and then only under the timer.
    log: list[str] = []
    tactics = [fake("t.a", "Relu", relu, log), fake("t.b", "Relu", relu, log), fake("t.reference", "Relu", relu, log)]
    pick(tactics, {"t.a": 1.0, "t.b": 2.0, "t.reference": 3.0}, log, settings=TuneSettings(warm_threads=4))
    assert log[:3] == ["t.reference", "t.a", "t.a"]
