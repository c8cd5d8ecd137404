"""Whole models through kiln, checked against ONNX Runtime (and PyTorch for MiniLM).

Each model is built once (one dynamic profile) and run at two batch sizes inside the
profile; the engines are shared by every test in this file, and the save/load round
trip runs all of them in one fresh process, to keep the file near a minute on 2 cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import pytest

import kiln
from kiln.models import SAMPLE_SENTENCES, reference_embeddings, tokenize

# builders.py sits beside this file; importable under any --import-mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from builders import BUILDERS  # noqa: E402

SMALL_MODELS = tuple(BUILDERS)
ALL_MODELS = (*SMALL_MODELS, "minilm")
SMALL_BATCHES = (2, 7)                     # inside the profile's 1..8, neither at opt
MINILM_BATCHES = (3, 16)                   # the first 3 sample sentences, then all 16
MINILM_MAX_SEQUENCE = 128


@dataclass(frozen=True, slots=True)
class Case:
    """One built engine, the ONNX file it came from and the inputs to run it on."""
    onnx_path: Path
    engine: Any                               # kiln.Engine
    feeds: tuple[dict[str, np.ndarray], ...]  # one dict per batch size


def _build(onnx_path: Path, ranges: dict, device: str) -> Any:
    config = kiln.BuildConfig(device=device, precision="fp32", profiles=(kiln.Profile.from_ranges(ranges),))
    return kiln.build(str(onnx_path), config)


def _small_case(name: str, model_dir: Path, device: str) -> Case:
    model = BUILDERS[name](model_dir)
    engine = _build(model.path, model.profile_ranges(1, 4, 8), device)
    feeds = tuple(model.random_inputs(batch, seed=batch) for batch in SMALL_BATCHES)
    return Case(model.path, engine, feeds)


def _minilm_case(minilm_path: Path, device: str) -> Case:
    ranges = {name: ((1, 1), (8, 32), (MINILM_BATCHES[-1], MINILM_MAX_SEQUENCE))
              for name in ("input_ids", "attention_mask", "token_type_ids")}
    engine = _build(minilm_path, ranges, device)
    feeds = tuple(tokenize(SAMPLE_SENTENCES[:batch], max_length=MINILM_MAX_SEQUENCE) for batch in MINILM_BATCHES)
    return Case(minilm_path, engine, feeds)


class Cases:
    """Builds each model's engine on first request; a failed build fails only its tests."""

    def __init__(self, factories: dict[str, Callable[[], Case]]) -> None:
        self._factories = factories
        self._built: dict[str, Case] = {}

    def __getitem__(self, name: str) -> Case:
        if name not in self._built:
            self._built[name] = self._factories[name]()
        return self._built[name]


@pytest.fixture(scope="module")
def cases(request: pytest.FixtureRequest, model_dir: Path, device: str) -> Cases:
    factories: dict[str, Callable[[], Case]] = {
        name: (lambda name=name: _small_case(name, model_dir, device)) for name in SMALL_MODELS}
    # Resolved lazily: `-k small_cnn` should not pay for exporting MiniLM.
    factories["minilm"] = lambda: _minilm_case(request.getfixturevalue("minilm_path"), device)
    return Cases(factories)


def _onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_model_matches_onnxruntime(cases: Cases, name: str) -> None:
    case = cases[name]
    for feeds in case.feeds:
        expected = _onnxruntime(case.onnx_path, feeds)
        got = case.engine(**feeds)
        assert sorted(got) == sorted(expected)
        for out_name, want in expected.items():
            assert got[out_name].shape == want.shape and got[out_name].dtype == want.dtype, out_name
            np.testing.assert_allclose(got[out_name], want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} output {out_name!r} at batch {want.shape[0]}")


def test_vit_patch_conv_runs_as_one_gemm(cases: Cases) -> None:
    # passes/patches_to_matmul.py: the patchify conv is a GEMM over patches (bias fused), no conv left.
    steps = cases["tiny_vit"].engine.plan.steps
    assert not [s for s in steps if "Conv" in s.op]
    patch = [s.op for s in steps if s.fused == ("/patch_embed/Conv",) * len(s.fused) and s.fused]
    assert patch == ["Reshape", "Transpose", "Reshape", "kiln::FusedMatMul", "Transpose"]     # bias in the GEMM


def test_minilm_matches_onnxruntime_and_pytorch(cases: Cases) -> None:
    case = cases["minilm"]
    for feeds in case.feeds:
        batch = feeds["input_ids"].shape[0]
        got = case.engine(**feeds)["sentence_embedding"]
        assert got.shape == (batch, 384) and got.dtype == np.float32
        by_onnxruntime = _onnxruntime(case.onnx_path, feeds)["sentence_embedding"]
        by_pytorch = reference_embeddings(SAMPLE_SENTENCES[:batch])
        for oracle, want in (("onnxruntime", by_onnxruntime), ("sentence-transformers", by_pytorch)):
            cosine = _cosine(got, want)
            assert cosine.min() >= 0.9999, (f"batch {batch}: sentence {int(cosine.argmin())} has cosine "
                                             f"{cosine.min():.6f} against {oracle}")


_LOAD_AND_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    import kiln

    folder = sys.argv[1]
    for name in sys.argv[2:]:
        engine = kiln.load(f"{folder}/{name}.kiln")
        with np.load(f"{folder}/{name}.inputs.npz") as saved:
            n_runs = len({key.split("/")[0] for key in saved.files})
            outputs = {}
            for run in range(n_runs):
                feeds = {key.split("/", 1)[1]: saved[key] for key in saved.files if key.startswith(f"{run}/")}
                for out_name, value in engine(**feeds).items():
                    outputs[f"{run}/{out_name}"] = value
        np.savez(f"{folder}/{name}.outputs.npz", **outputs)
""")


def test_engines_round_trip_through_a_file(cases: Cases, tmp_path: Path, device: str) -> None:
    """Saved engines, loaded in a fresh process, give bit-identical outputs on the CPU. On a GPU
    the plan is the same but cuDNN picks its convolution algorithm per process (benchmark mode,
    see tactics/conv.py), so the outputs agree to fp32 rounding rather than bit for bit."""
    expected: dict[str, dict[str, np.ndarray]] = {}
    for name in ALL_MODELS:
        case = cases[name]
        case.engine.save(tmp_path / f"{name}.kiln")
        np.savez(tmp_path / f"{name}.inputs.npz",
                 **{f"{run}/{k}": v for run, feeds in enumerate(case.feeds) for k, v in feeds.items()})
        expected[name] = {f"{run}/{k}": v for run, feeds in enumerate(case.feeds)
                          for k, v in case.engine(**feeds).items()}

    # The child must import this same kiln, wherever the parent found it.
    src = str(Path(kiln.__path__[0]).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path), *ALL_MODELS],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"loading engines in a fresh process failed:\n{result.stderr}"

    mismatches = []
    for name in ALL_MODELS:
        with np.load(tmp_path / f"{name}.outputs.npz") as loaded:
            assert sorted(loaded.files) == sorted(expected[name]), name
            mismatches += [f"{name} {key}" for key in loaded.files
                           if not (np.array_equal(loaded[key], expected[name][key]) if device == "cpu" else
                                   np.allclose(loaded[key], expected[name][key], rtol=1e-5, atol=1e-6))]
    assert not mismatches, f"outputs of reloaded engines differ from the originals: {mismatches}"


def test_one_engine_with_two_profiles(model_dir: Path, device: str) -> None:
    """Two optimization profiles (batch 1..2 and 6..8) in one engine: shapes inside either run
    and match onnxruntime; a shape between them is refused with the profiles named."""
    model = BUILDERS["small_cnn"](model_dir)
    profiles = tuple(kiln.Profile.from_ranges(model.profile_ranges(lo, opt, hi))
                     for lo, opt, hi in ((1, 2, 2), (6, 8, 8)))
    engine = kiln.build(str(model.path), kiln.BuildConfig(device=device, precision="fp32", profiles=profiles))
    assert len(engine.profiles) == 2
    for batch in (1, 2, 6, 8):
        feeds = model.random_inputs(batch, seed=batch)
        expected = _onnxruntime(model.path, feeds)
        got = engine(**feeds)
        for out_name, want in expected.items():
            np.testing.assert_allclose(got[out_name], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(kiln.KilnError, match="outside the profile"):
        engine(**model.random_inputs(4, seed=4))
