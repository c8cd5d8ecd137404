"""An engine's accuracy against the fp32 PyTorch model over a set of evaluation samples.

Each engine of a model runs the same `EvalSet` (benchmarks/samples.py, split "evaluation":
never the calibration samples), in chunks of the profile's largest batch, and is compared
with the fp32 module's outputs on it:
  cosine min / mean   per-sample cosine similarity of the flattened outputs (rows of dim 0);
  max abs error       with the reference's own largest |value| beside it for scale;
  top-1 agreement     image classifiers only: the share of samples whose argmax matches the
                      reference's, with how many distinct classes the reference picked (a
                      random-init net may put every image in one class, which makes the
                      agreement easy: the count says so).
On synthetic inputs (and random weights for all but MiniLM) these are sanity figures: they
catch a broken kernel or a bad range, not the accuracy loss on real data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from benchmarks import measure, samples
from benchmarks.models import BenchModel

Run = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # feeds on the device -> the output


@dataclass(frozen=True, slots=True)
class EvalSet:
    inputs: dict[str, torch.Tensor]  # on the CPU, n samples each
    want: torch.Tensor               # the fp32 module's output, float32 on the CPU
    chunk: int                       # samples per run: the engine profile's largest batch
    data: str                        # what the samples are (samples.describe)

    @property
    def samples(self) -> int:
        return int(self.want.shape[0])

    def head(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` samples' inputs (the feeds the quantized rows time)."""
        return {k: v[:n] for k, v in self.inputs.items()}


@dataclass(frozen=True, slots=True)
class Accuracy:
    samples: int
    cosine_min: float
    cosine_mean: float
    max_abs_err: float
    max_abs_ref: float
    top1_agreement: float | None  # image classifiers only
    distinct_top1: int | None     # how many classes the reference's argmax took
    min_cosine: float             # the bar cosine_min is held to (measure.MIN_COSINE)
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                "max_abs_err": self.max_abs_err, "max_abs_ref": self.max_abs_ref,
                "top1_agreement": self.top1_agreement, "distinct_top1": self.distinct_top1,
                "min_cosine": self.min_cosine, "ok": self.ok}


def eval_set(model: BenchModel, samples_wanted: int, chunk: int, seed: int, device: str) -> EvalSet:
    """`samples_wanted` rounded up to whole chunks of evaluation samples, with the fp32 outputs."""
    n = max(-(-samples_wanted // chunk), 1) * chunk
    inputs = samples.make(model, n, seed, "evaluation")
    module = model.module.to(device)
    try:
        want = run_chunks(lambda feeds: module(*(feeds[k] for k in model.input_names)), inputs, chunk, device)
    finally:
        model.module.to("cpu")
    return EvalSet(inputs, want, chunk, samples.describe(model))


def run_chunks(run: Run, inputs: dict[str, torch.Tensor], chunk: int, device: str) -> torch.Tensor:
    """`run` over `inputs` `chunk` samples at a time; the outputs concatenated, float32 on the CPU."""
    n = next(iter(inputs.values())).shape[0]
    outs = []
    with torch.inference_mode():
        for i in range(0, n, chunk):
            out = run({k: v[i:i + chunk].to(device) for k, v in inputs.items()})
            outs.append(out.detach().float().cpu().clone())  # clone: an engine may reuse its output buffer
    return torch.cat(outs)


def compare(got: torch.Tensor, want: torch.Tensor, precision: str, classifier: bool) -> Accuracy:
    """`got` against the reference `want` (same shape, dim 0 the samples), held to MIN_COSINE[precision]."""
    chk = measure.check(got, want, precision)
    top1 = distinct = None
    if classifier and got.shape == want.shape:
        g, w = got.reshape(got.shape[0], -1).argmax(1), want.reshape(want.shape[0], -1).argmax(1)
        top1, distinct = (g == w).double().mean().item(), int(w.unique().numel())
    return Accuracy(int(want.shape[0]), chk.cosine, chk.cosine_mean, chk.max_abs_err, chk.max_abs_ref, top1,
                    distinct, measure.MIN_COSINE[precision], chk.ok)


def evaluate(engine: Any, model: BenchModel, data: EvalSet, precision: str, device: str) -> Accuracy:
    """The engine's accuracy over `data` (module docstring)."""
    got = run_chunks(lambda feeds: engine.run_tensors(feeds)[model.output_name], data.inputs, data.chunk, device)
    return compare(got, data.want, precision, classifier=model.kind == "image")
