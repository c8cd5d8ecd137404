"""CPU smoke tests of benchmarks/suite.py's pieces on tiny models (the suite itself runs on a GPU)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import measure, models, peers, report, suite  # noqa: E402

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 2000, "max_position_embeddings": 64}


class TinyConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny_conv(seed: int = 0) -> models.BenchModel:
    torch.manual_seed(seed)
    module = TinyConv()
    models.calibrate_batchnorm(module, torch.randn(4, 3, 8, 8))
    return models.BenchModel("tiny_conv", module, module, ("pixel_values",), "logits", (3, 8, 8), "image", "tests")


def tiny_bert(seed: int = 0) -> models.BenchModel:
    return models.bert(seed, name="tiny_bert", seq=16, **TINY_BERT)


REGISTRY = {"tiny_conv": tiny_conv, "tiny_bert": tiny_bert}


# -- the correctness check -----------------------------------------------------------------------
def test_check_passes_close_outputs_and_fails_wrong_ones() -> None:
    want = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    good = measure.check(want + 1e-4 * torch.randn(4, 10), want, "fp16")
    assert good.ok and good.cosine > 0.9999 and 0 < good.max_abs_err < 1e-3
    assert not measure.check(torch.randn(4, 10), want, "fp16").ok
    one_bad_row = want.clone()
    one_bad_row[2] = -one_bad_row[2]  # the worst sample decides, not the average
    assert measure.check(one_bad_row, want, "fp16").cosine == pytest.approx(-1.0)
    nan = want.clone()
    nan[0, 0] = math.nan
    assert not measure.check(nan, want, "bf16").ok
    assert not measure.check(want[:, :5], want, "fp32").ok  # wrong shape
    # fp32 has a tighter bar than fp16
    near = want + 1e-2 * want.abs().mean() * torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    c = measure.check(near, want, "fp16").cosine
    assert measure.MIN_COSINE["fp16"] <= c < measure.MIN_COSINE["fp32"]
    assert measure.check(near, want, "fp16").ok and not measure.check(near, want, "fp32").ok


def test_time_ms_and_flops_and_casts() -> None:
    t = measure.time_ms(lambda: torch.ones(8).sum(), "cpu", iters=7, warmup=1)
    assert t.iterations == 7 and t.median_ms > 0
    lin = torch.nn.Linear(16, 8)
    assert measure.count_flops(lin, (torch.randn(4, 16),)) == 2 * 4 * 16 * 8
    cast = measure.cast_inputs({"x": torch.randn(2), "ids": torch.ones(2, dtype=torch.int64)}, "bf16", "cpu")
    assert cast["x"].dtype == torch.bfloat16 and cast["ids"].dtype == torch.int64


def test_math_flags_turn_tf32_on_for_tf32_only_and_restore() -> None:
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = tuple(f.allow_tf32 for f in flags)
    try:
        for start in (False, True):
            for f in flags:
                f.allow_tf32 = start
            for precision, inside in (("tf32", True), ("fp32", False), ("fp16", False)):
                with measure.math_flags(precision):
                    assert all(f.allow_tf32 is inside for f in flags)
                assert all(f.allow_tf32 is start for f in flags)
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v
    assert measure.DTYPES["tf32"] == torch.float32 and measure.MIN_COSINE["tf32"] == measure.MIN_COSINE["fp16"]


# -- models, inputs, export ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_model() -> models.BenchModel:
    return tiny_bert()


def test_token_inputs_have_padding_and_are_seeded(bert_model: models.BenchModel) -> None:
    m = bert_model
    a, b = models.make_inputs(m, 5), models.make_inputs(m, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(a) == ["input_ids", "attention_mask", "token_type_ids"]
    assert a["input_ids"].shape == (5, 16) and a["input_ids"].dtype == torch.int64
    assert a["attention_mask"].sum(1).min() < 16 and bool((a["attention_mask"][:, 0] == 1).all())
    assert int(a["input_ids"].max()) < TINY_BERT["vocab_size"]


def test_bert_peer_and_export_modules_share_weights(bert_model: models.BenchModel) -> None:
    m = bert_model
    assert m.module is not m.export_module
    x = tuple(models.make_inputs(m, 3).values())
    with torch.inference_mode():
        torch.testing.assert_close(m.module(*x), m.export_module(*x), rtol=1e-4, atol=1e-4)


def test_export_is_cached_and_has_a_dynamic_batch(tmp_path: Path) -> None:
    import onnx

    m = tiny_conv()
    path = models.export_onnx(m, tmp_path)
    mtime = path.stat().st_mtime_ns
    assert models.export_onnx(m, tmp_path) == path and path.stat().st_mtime_ns == mtime
    g = onnx.load(str(path)).graph
    assert [i.name for i in g.input] == ["pixel_values"] and [o.name for o in g.output] == ["logits"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert models.profile_ranges(m, [32, 1, 8]) == {"pixel_values": ((1, 3, 8, 8), (32, 3, 8, 8), (32, 3, 8, 8))}


def test_registry_names_the_four_models() -> None:
    assert list(models.MODELS) == ["resnet50", "vit_b16", "bert_base", "minilm"]
    assert peers.DEFAULT_PEERS == ("eager", "compile", "reduce-overhead")
    with pytest.raises(ValueError, match="unknown peer"):
        peers.parse_peers("eager,fastest")


# -- the whole suite on a tiny model, CPU, eager peer only ----------------------------------------
def test_suite_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = suite.parse(["--models", "tiny_conv", "--batches", "2,1", "--precisions", "fp32",
                        "--peers", "eager", "--device", "cpu", "--iters", "3", "--max-seconds", "0.5",
                        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--warm-build", "in-process",
                        "--accuracy-samples", "2"], REGISTRY)
    args.flops_on_cpu = True
    results = suite.run(args)
    suite.save(results, args)
    saved = json.loads(out.read_text())
    assert [m["name"] for m in saved["models"]] == ["tiny_conv"]
    for m in saved["models"]:
        assert "error" not in m, m.get("error")
        b = m["builds"]["fp32"]
        assert b["build_s"] > 0 and sum(b["tactic_kinds"].values()) >= 2
        assert b["warm_build_s"] > 0 and b["same_kernels"] and b["warm"]["mode"] == "in-process"
        assert b["accuracy"]["samples"] == 2 and b["accuracy"]["cosine_min"] > 0.99999 and b["accuracy"]["ok"]
        assert [(r["precision"], r["batch"]) for r in m["rows"]] == [("fp32", 1), ("fp32", 2)]
        for r in m["rows"]:
            assert r["status"] == "ok" and r["check"]["cosine"] > 0.99999
            assert r["kiln"]["ms"] > 0 and r["kiln"]["items_per_s"] > 0 and r["flops"] > 0
            assert r["peers"]["eager"]["ms"] > 0 and r["best_peer"] == "eager"
            assert r["kiln_vs_best"] == pytest.approx(r["peers"]["eager"]["ms"] / r["kiln"]["ms"])
    text = report.markdown(results)
    assert text.count("### ") == 1 and "| fp32 | 2 | ok |" in text and "random initialisation" in text
    assert "eager ms" in text and "kiln vs best" in text


def test_tf32_rows_on_cpu(tmp_path: Path) -> None:
    args = suite.parse(["--models", "tiny_conv", "--batches", "1", "--precisions", "tf32", "--peers", "eager",
                        "--device", "cpu", "--iters", "3", "--max-seconds", "0.5", "--cache-dir", str(tmp_path),
                        "--warm-build", "off", "--accuracy-samples", "2"], REGISTRY)
    args.flops_on_cpu = True
    results = suite.run(args)
    (m,) = results["models"]
    assert m["builds"]["tf32"]["accuracy"]["ok"]
    (row,) = m["rows"]
    assert (row["precision"], row["status"]) == ("tf32", "ok") and row["peers"]["eager"]["ms"] > 0
    assert "| tf32 | 1 | ok |" in report.markdown(results)


def test_failed_check_is_reported_not_timed(tmp_path: Path) -> None:
    class Wrong:  # an "engine" whose output is wrong
        def run_tensors(self, feeds: dict, validate: bool = True) -> dict:
            return {"logits": torch.randn(2, 10)}

    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--batches", "2", "--precisions", "fp32", "--peers", "eager",
                        "--device", "cpu", "--iters", "3"], REGISTRY)
    ctx = {"budget": suite.Budget(None), "peak": {}, "reference": suite.reference(m, args), "first_call": {}}
    row = suite.bench_row(m, Wrong(), m.module, "fp32", 2, args, ctx)
    assert row["status"] == "FAILED" and row["kiln"] is None and "kiln_vs_best" not in row
    assert row["peers"]["eager"]["ms"] > 0  # the peers still give their baseline
    assert "| FAILED |" in report.model_table({"name": "tiny_conv", "source": "tests", "export_s": 0.0,
                                               "builds": {"fp32": {"build_s": 1.0}}, "rows": [row]}, ["eager"])


def test_time_budget_skips_the_rest(tmp_path: Path) -> None:
    args = suite.parse(["--models", "tiny_conv,tiny_bert", "--batches", "1", "--precisions", "fp32",
                        "--peers", "eager", "--device", "cpu", "--time-budget", "0",
                        "--cache-dir", str(tmp_path)], REGISTRY)
    results = suite.run(args)
    assert [m["error"] for m in results["models"]] == ["skipped (time budget)"] * 2
    assert "skipped (time budget)" in report.markdown(results)


def test_an_engine_that_raises_is_reported(tmp_path: Path) -> None:
    class Broken:
        def run_tensors(self, feeds: dict, validate: bool = True) -> dict:
            raise RuntimeError("kernel exploded")

    m = tiny_conv()
    args = suite.parse(["--models", "tiny_conv", "--batches", "1", "--precisions", "fp32", "--peers", "eager",
                        "--device", "cpu", "--iters", "3"], REGISTRY)
    ctx = {"budget": suite.Budget(None), "peak": {}, "reference": suite.reference(m, args), "first_call": {}}
    row = suite.bench_row(m, Broken(), m.module, "fp32", 1, args, ctx)
    assert row["status"] == "RUN FAILED" and "kernel exploded" in row["error"] and row["kiln"] is None
    assert row["peers"]["eager"]["ms"] > 0


def test_a_float_engine_as_accurate_as_pytorch_in_its_precision_passes() -> None:
    # bf16 through a deep random network can miss the absolute bar by its type alone: an engine
    # within PEER_ERROR_FACTOR times PyTorch's own bf16 error passes, one well past it does not.
    want = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    torch_bf16 = measure.check(want + 0.1 * noise, want, "bf16")
    kiln_close = measure.check(want + 0.12 * noise, want, "bf16")
    kiln_far = measure.check(want + 0.5 * noise, want, "bf16")
    assert not torch_bf16.ok and not kiln_close.ok and not kiln_far.ok
    assert measure.within_own_precision(kiln_close, torch_bf16).ok
    assert not measure.within_own_precision(kiln_far, torch_bf16).ok
    nan = want.clone()
    nan[0, 0] = math.nan
    assert not measure.within_own_precision(measure.check(nan, want, "bf16"), torch_bf16).ok
