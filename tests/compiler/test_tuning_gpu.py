"""The tuner on a real GPU: CUDA-event timings, tuned engines that agree with untuned ones,
and a warm timing cache that times nothing. Skipped without CUDA."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
import cli_models  # noqa: E402

import kiln  # noqa: E402
from kiln.compiler.timer import CudaTimer  # noqa: E402

pytestmark = pytest.mark.gpu


def test_cuda_timer_times_every_run() -> None:
    a = torch.randn(512, 512, device="cuda")
    times = CudaTimer()(lambda: a @ a, 5)
    assert len(times) == 5 and all(t > 0 for t in times)


def test_cuda_timer_first_used_in_inference_mode_times_outside_it() -> None:
    # The tuner first calls the timer in inference mode; the accuracy budget's plan timing calls it after.
    a = torch.randn(256, 256, device="cuda")
    timer = CudaTimer()
    with torch.inference_mode():
        timer(lambda: a @ a, 2)
    assert len(timer(lambda: a @ a, 3)) == 3


def test_cuda_timer_excludes_the_cpu_launch_time() -> None:
    # A candidate that spends 2 ms on the CPU before a tiny kernel: the held GPU does not see it.
    import time
    x = torch.zeros(16, device="cuda")

    def slow_launch() -> None:
        time.sleep(0.002)
        x.add_(1)

    held = CudaTimer(hold_cycles=20_000_000)(slow_launch, 3)   # ~10 ms hold: longer than the 2 ms launch
    unheld = CudaTimer(hold_cycles=0)(slow_launch, 3)
    assert max(held) < 0.5 <= min(unheld), (held, unheld)


def _tuned_and_untuned(m, shapes: dict, precision: str, tmp_path: Path):  # noqa: ANN001, ANN202
    profiles = (kiln.Profile.static(shapes),)
    cache = str(tmp_path / "timing.json")
    tuned = kiln.build(m, kiln.BuildConfig(device="cuda", precision=precision, profiles=profiles, timing_cache=cache))
    plain = kiln.build(m, kiln.BuildConfig(device="cuda", precision=precision, profiles=profiles, tune=False))
    return tuned, plain


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name, shapes", [("conv_relu", {"x": [2, 3, 8, 8]}), ("matmul_add", {"a": [64, 16]})])
def test_a_tuned_engine_agrees_with_an_untuned_one(name: str, shapes: dict, precision: str, tmp_path: Path) -> None:
    m = getattr(cli_models, name)()
    tuned, plain = _tuned_and_untuned(m, shapes, precision, tmp_path)
    summary = tuned.header["build"]["tuning"]
    assert isinstance(summary, dict) and "stopped" not in summary, summary
    for s in tuned.plan.steps:
        if s.tuning is not None:
            assert s.tuning.ms is not None and s.tuning.ms > 0 and s.tuning.candidates > 1
    feeds = {k: np.random.default_rng(0).standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    got, want = tuned(**feeds), plain(**feeds)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol * float(np.abs(want[k]).max()))


def test_a_warm_timing_cache_times_nothing(tmp_path: Path) -> None:
    m = cli_models.matmul_add()
    config = kiln.BuildConfig(device="cuda", precision="fp16", profiles=(kiln.Profile.static({"a": [64, 16]}),),
                              timing_cache=str(tmp_path / "timing.json"))
    cold = kiln.build(m, config)
    warm = kiln.build(m, config)
    c, w = cold.header["build"]["tuning"], warm.header["build"]["tuning"]
    assert w["timer_calls"] == 0 and w["cache_hits"] == w["layers_timed"] == c["layers_timed"]
    assert [s.tactic for s in warm.plan.steps] == [s.tactic for s in cold.plan.steps]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_minilm_tuned(minilm_path: Path, tmp_path: Path, precision: str) -> None:
    """MiniLM tuned vs untuned on the GPU; prints what the tuner did (run with -s to see it)."""
    from kiln.models import SAMPLE_SENTENCES, tokenize

    ranges = {n: ((1, 1), (8, 32), (16, 128)) for n in ("input_ids", "attention_mask", "token_type_ids")}
    profiles = (kiln.Profile.from_ranges(ranges),)
    cache = str(tmp_path / "timing.json")
    t0 = time.perf_counter()
    tuned = kiln.build(str(minilm_path), kiln.BuildConfig(device="cuda", precision=precision, profiles=profiles,
                                                          timing_cache=cache))
    t1 = time.perf_counter()
    kiln.build(str(minilm_path), kiln.BuildConfig(device="cuda", precision=precision, profiles=profiles,
                                                  timing_cache=cache))
    t2 = time.perf_counter()
    plain = kiln.build(str(minilm_path), kiln.BuildConfig(device="cuda", precision=precision, profiles=profiles,
                                                          tune=False))
    t3 = time.perf_counter()
    summary = tuned.header["build"]["tuning"]
    print(f"\nMiniLM {precision}: build cold {t1 - t0:.1f} s, warm cache {t2 - t1:.1f} s, untuned {t3 - t2:.1f} s")
    print(json.dumps(summary, indent=1))
    for s in tuned.plan.steps:
        if s.tuning is not None:
            print(f"  {s.name:40s} {s.tactic} {s.config or ''} {s.tuning.ms:.4f} ms; runner-up {s.tuning.runner_up} "
                  f"{s.tuning.runner_up_config or ''} {s.tuning.runner_up_ms}")
    assert "stopped" not in summary, summary["stopped"]
    feeds = tokenize(SAMPLE_SENTENCES[:8], max_length=32)
    got, want = tuned(**feeds), plain(**feeds)
    for k in want:
        a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert cos.min() > 0.999, (k, cos.min())


def test_accuracy_budget_times_its_plan_on_the_gpu() -> None:
    # A tuned budget build times its plan against the fp16 engine with CUDA events: the timer is
    # first used by the tuner (in inference mode), then by the plan timing outside it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_accuracy_budget import mlp

    engine = kiln.build(mlp(big=True), kiln.BuildConfig(precision="fp16", device="cuda",
                                                        accuracy_budget=("cosine", 0.999)))
    budget = engine.header["build"]["accuracy_budget"]
    assert [k["layer"] for k in budget["kept"]] == ["fc2"]
    speed = budget["speed"]
    assert speed["engine_ms"] > 0 and speed["wider_ms"] > 0 and speed["wider_precision"] == "fp32"


def test_choose_warms_cuda_candidates_in_threads_on_the_callers_stream() -> None:
    """On a CUDA input the candidates first run once each in the warm threads, on the calling
    thread's device and stream, and are then checked and timed on the calling thread."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tuning_fakes import fake

    from kiln.compiler.tuner import TuneSettings, choose, expand

    seen: list[tuple[str, int, int]] = []

    def probe(name: str):  # noqa: ANN202
        def fn(x: torch.Tensor) -> torch.Tensor:
            seen.append((name, threading.get_ident(), torch.cuda.current_stream().cuda_stream))
            return torch.relu(x)
        return fn

    log: list[str] = []
    tactics = [fake(f"t.{n}", "Relu", probe(f"t.{n}"), log) for n in "abc"] + \
        [fake("t.reference", "Relu", probe("t.reference"), log)]
    x = torch.randn(64, 64, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side), torch.inference_mode():
        choice = choose(expand(tactics), (x,), {}, CudaTimer(), 1, TuneSettings(repeats=2, probe=1, warm_threads=3))
    me = threading.get_ident()
    warmed = seen[:3]
    assert warmed[0][:2] == ("t.a", me) and sorted(n for n, _, _ in warmed[1:]) == ["t.b", "t.c"]
    assert all(tid != me for _, tid, _ in warmed[1:])                   # the rest in the pool
    assert all(s == side.cuda_stream for _, _, s in seen)
    assert all(tid == me for _, tid, _ in seen[3:])                      # checks and timings: the calling thread
    assert torch.equal(choice.outputs[0], torch.relu(x))
