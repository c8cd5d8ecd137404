"""The int8/fp8 columns: a calibrated kiln engine's speed beside kiln fp16's and the best
torch.compile fp16 peer's, with its accuracy beside its speed.

A quantized row (model, int8|fp8, batch) holds:
  kiln          its time on the first `batch` evaluation samples (same shapes as the fp16 row's
                inputs, so the same work; these dense engines' speed does not depend on values);
  accuracy      the engine's accuracy over the whole evaluation set (benchmarks/evaluation.py);
  check         the timed batch's own comparison with the fp32 reference;
  baseline      from the fp16 row of the same model and batch, measured in the same run:
                kiln fp16's time and the fastest torch.compile fp16 peer (eager excluded;
                max-autotune included when it ran);
  vs_kiln_fp16 = kiln fp16 ms / this ms, vs_best_compile_fp16 = that peer's ms / this ms
                (above 1: the quantized engine is faster).
No PyTorch peer runs in int8/fp8: the question is what calibration buys over fp16.
Correctness first, without hiding speed: an engine below the sanity bar
(measure.MIN_COSINE) is timed all the same and its status is LOW ACCURACY.
"""
from __future__ import annotations

import argparse
import traceback
from typing import Any, Callable

import torch

from benchmarks import measure, peers
from benchmarks.evaluation import Accuracy, EvalSet
from benchmarks.models import BenchModel

LOW = "LOW ACCURACY"


def baseline(fp16_row: dict[str, Any] | None) -> dict[str, Any]:
    """kiln fp16's time and the best torch.compile fp16 peer of the matching fp16 row."""
    if fp16_row is None:
        return {"missing": "no fp16 row for this batch"}
    best = peers.best_compiled(fp16_row["peers"])
    return {"kiln_fp16_ms": (fp16_row.get("kiln") or {}).get("ms"), "kiln_fp16_status": fp16_row.get("status"),
            "best_compile": best, "best_compile_ms": fp16_row["peers"][best]["ms"] if best else None}


def relate(row: dict[str, Any], fp16_row: dict[str, Any] | None) -> None:
    """Fill row["baseline"] and the two ratios (None where either side has no time)."""
    base = row["baseline"] = baseline(fp16_row)
    ms = (row.get("kiln") or {}).get("ms")
    for key, other in (("vs_kiln_fp16", base.get("kiln_fp16_ms")),
                       ("vs_best_compile_fp16", base.get("best_compile_ms"))):
        row[key] = other / ms if ms and other else None


def quant_row(model: BenchModel, engine: Any, precision: str, batch: int, data: EvalSet,
              acc: Accuracy | None, fp16_row: dict[str, Any] | None, args: argparse.Namespace,
              log: Callable[[str], None]) -> dict[str, Any]:
    """One (int8|fp8, batch) row (module docstring)."""
    row: dict[str, Any] = {"precision": precision, "batch": batch, "peers": {}, "kiln": None,
                           "accuracy": acc.to_json() if acc else None}
    if engine is None:
        row["status"] = "BUILD FAILED"
    else:
        feeds = {k: v.to(args.device) for k, v in data.head(batch).items()}
        try:
            with torch.inference_mode():
                chk = measure.check(engine.run_tensors(feeds)[model.output_name].float(), data.want[:batch],
                                    precision)
                t = measure.time_ms(lambda: engine.run_tensors(feeds, validate=False), args.device,
                                    iters=args.iters, max_seconds=args.max_seconds)
            row["check"] = chk.to_json()
            row["kiln"] = {**measure.throughput(t.median_ms, t.iterations, batch), "check": chk.to_json()}
            row["status"] = measure.ran_as(engine, "ok" if chk.ok and (acc is None or acc.ok) else LOW)
        except Exception as exc:  # noqa: BLE001 - an engine that fails to run is a finding, not a crash
            row["status"], row["error"] = "RUN FAILED", f"{type(exc).__name__}: {exc}"[:500]
            log(f"{model.name} {precision} b{batch}: kiln run FAILED\n{traceback.format_exc()}")
    relate(row, fp16_row)
    return row
