"""The suite's command line (benchmarks/suite.py): options, their checks and their defaults.

Beyond the flags, two small grammars:
  --models NAME[:B1+B2...],...   a model with its own batches (else --batches'), e.g.
                                 resnet50:64,bert_base:32 runs ResNet-50 at 64 only, BERT at 32;
  --peers NAME|PRESET,...        peers.PEERS and the presets of peers.PRESETS, e.g. "all" or
                                 "default,max-autotune".
int8/fp8 rows are related to kiln fp16 and the fp16 peers of the same run, so asking for
either adds fp16 (first) when it is missing; float precisions run before calibrated ones.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import builds, measure, models, peers as peer_mod

REPO = Path(__file__).resolve().parents[1]
CALIB_METHODS = ("minmax", "entropy", "percentile")  # kiln.config.CALIB_METHODS, minmax first: the default


def parse_batches(text: str, sep: str, what: str) -> list[int]:
    try:
        batches = sorted({int(b) for b in text.split(sep) if b.strip()})
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a list of whole numbers; give e.g. 1{sep}32") from None
    if not batches or batches[0] < 1:
        raise ValueError(f"{what} {text!r} needs at least one batch size >= 1")
    return batches


def parse_models(text: str, default_batches: list[int]) -> dict[str, list[int]]:
    """"resnet50:64,bert_base" -> {"resnet50": [64], "bert_base": default_batches}."""
    out: dict[str, list[int]] = {}
    for item in (m.strip() for m in text.split(",")):
        if item:
            name, _, own = item.partition(":")
            out[name] = parse_batches(own, "+", f"batches of {name}") if own else list(default_batches)
    return out


def order_precisions(names: list[str]) -> tuple[list[str], str | None]:
    """Float precisions first, then int8/fp8; fp16 added when a calibrated one needs it. Returns a note
    when fp16 was added."""
    floats = [p for p in names if p not in measure.QUANTIZED]
    quant = [p for p in names if p in measure.QUANTIZED]
    note = None
    if quant and "fp16" not in floats:
        floats.insert(0, "fp16")
        note = f"fp16 added: the {'/'.join(quant)} rows are related to kiln fp16 and the fp16 peers"
    return floats + quant, note


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(models.MODELS),
                    help="comma-separated, each NAME or NAME:B1+B2 with its own batches [%(default)s]")
    ap.add_argument("--batches", default="1,32,64", help="comma-separated [%(default)s]")
    ap.add_argument("--precisions", default="fp16,bf16,fp32",
                    help=f"comma-separated, from {','.join(measure.PRECISIONS)} [%(default)s]")
    ap.add_argument("--peers", default="default",
                    help=f"peers {','.join(peer_mod.PEERS)} or presets "
                         + "; ".join(f"{k}={'+'.join(v)}" for k, v in peer_mod.PRESETS.items())
                         + " [%(default)s]; max-autotune compiles for minutes per model")
    ap.add_argument("--iters", type=int, default=100, help="timed runs per contender (median)")
    ap.add_argument("--max-seconds", type=float, default=2.0, help="stop timing one contender after this (>= 10 runs)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds: start no new work after this, and no peer whose expected compile does not fit "
                         "in what is left; what was skipped is listed as such")
    ap.add_argument("--out", default=None, help="JSON results file (rewritten after every row)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables on stdout at the end")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench", help="where ONNX exports are kept")
    ap.add_argument("--timing-cache", default=None,
                    help="one kiln timing cache file for every build (kept); default: a fresh file per model and "
                         "precision, so the first build is cold")
    ap.add_argument("--warm-build", choices=builds.WARM_MODES, default="new-process",
                    help="rebuild each engine from the cold build's timing cache: in a fresh process (as a later "
                         "`kiln build` would), in this one, or not [%(default)s]")
    ap.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax", help="int8/fp8 ranges [%(default)s]")
    ap.add_argument("--smooth-quant", type=lambda v: v if v == "auto" else float(v), default=None,
                    metavar="ALPHA|auto",
                    help="build int8/fp8 engines with SmoothQuant alpha ALPHA (kiln build --smooth-quant) [off]")
    ap.add_argument("--weight-scales", choices=("channel", "tensor"), default="channel",
                    help="int8/fp8 weight scales per output channel or per tensor (kiln build --weight-scales) "
                         "[%(default)s]")
    ap.add_argument("--quantize-attention", action="store_true",
                    help="build int8/fp8 engines with 8-bit Q, K and V (kiln build --quantize-attention) [off]")
    ap.add_argument("--quant-float", choices=("fp16", "bf16", "fp32"), default="fp16",
                    help="what int8/fp8 engines run their non-quantized layers in (kiln build --int8 --fp16) "
                         "[%(default)s]")
    ap.add_argument("--accuracy-budget", default=None, metavar="METRIC=VALUE",
                    help="build int8/fp8 engines with kiln build --accuracy-budget (e.g. cosine=0.999; the search "
                         "measures on the calibration batches) [off]")
    ap.add_argument("--calib-samples", type=int, default=64, help="int8/fp8 calibration samples [%(default)s]")
    ap.add_argument("--calib-batch", type=int, default=8,
                    help="samples per calibration batch (a model built for one batch size uses that) [%(default)s]")
    ap.add_argument("--accuracy-samples", type=int, default=64,
                    help="evaluation samples each engine's accuracy is measured on (rounded up to whole batches "
                         "of the largest batch) [%(default)s]")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-n", type=int, default=8192, help="matmul size for the peak rate")
    return ap


def parse(argv: list[str], registry: dict[str, Any] | None = None, doc: str | None = None) -> argparse.Namespace:
    """The command line; `registry` (name -> BenchModel maker) replaces models.MODELS, for tests."""
    ap = parser(doc)
    args = ap.parse_args(argv)
    args.argv = argv
    args.registry = dict(models.MODELS if registry is None else registry)
    args.flops_on_cpu = False
    try:
        args.batches = parse_batches(args.batches, ",", "--batches")
        args.model_batches = parse_models(args.models, args.batches)
        args.peers = peer_mod.parse_peers(args.peers)
    except ValueError as exc:
        ap.error(str(exc))
    args.models = list(args.model_batches)
    names = list(dict.fromkeys(p.strip() for p in args.precisions.split(",") if p.strip()))
    bad = [m for m in args.models if m not in args.registry] + [p for p in names if p not in measure.PRECISIONS]
    if bad:
        ap.error(f"unknown model or precision {bad[0]!r}; models: {', '.join(args.registry)}; "
                 f"precisions: {', '.join(measure.PRECISIONS)}")
    args.precisions, args.precision_note = order_precisions(names)
    if args.accuracy_budget is not None:
        from kiln.compiler.accuracy_budget import parse_budget
        from kiln.errors import KilnError
        try:
            args.accuracy_budget = parse_budget(args.accuracy_budget)
        except KilnError as exc:
            ap.error(str(exc))
    for flag in ("calib_samples", "calib_batch", "accuracy_samples"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args
