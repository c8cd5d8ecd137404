"""The calibrated half of an int8/fp8 build: activation ranges (the calibration cache, else a
calibration run of the optimised fp32 graph), SmoothQuant's per-channel factors and GPTQ's Gram
matrices when asked for, the quantized layers (precision/int8.py, precision/fp8.py), and the
folds of the QuantizeLinears between them (module docstring of compiler/builder.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from kiln.config import BuildConfig
from kiln.errors import BuildError
from kiln.ir.graph import Graph
from kiln.precision.fold_requantize import fold_requantize
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.gptq import GPTQRounding
from kiln.precision.int8 import quantize_layers
from kiln.precision.layer_rules import match_layer_rules
from kiln.precision.quantize_attention_inputs import quantize_attention_inputs
from kiln.precision.quantize_attention_output import quantize_attention_output
from kiln.precision.quantize_before_pool import quantize_before_pool
from kiln.precision.quantize_residuals import quantize_residuals
from kiln.precision.smooth_quant import SmoothReport, smoothing_inputs

Progress = Callable[[str], None]

# Calibrated precisions -> the rewrite that quantizes their layers (its report: header["build"][precision]).
QUANTIZERS = {"int8": quantize_layers, "fp8": quantize_fp8}


def calibrate_and_quantize(graph: Graph, source: bytes, config: BuildConfig,
                           calibration: Iterable[Mapping[str, Any]] | None, say: Progress) -> dict[str, Any]:
    """Quantize the optimised fp32 `graph` in place for config.precision (int8 or fp8); the report
    the engine header keeps under build[precision]."""
    keep = match_layer_rules(graph, config.layer_precision)
    smoothed = None
    grams, conv_grams = gram_requests(graph) if config.weight_rounding == "gptq" else (None, None)
    if config.smooth_quant is None and grams is None:
        ranges, calibrated = activation_ranges(graph, source, config, calibration, say)
    else:  # SmoothQuant's per-channel maxima, GPTQ's Gram matrices: more than ranges from the data
        from kiln.precision.smooth_quant import smooth
        samples = {} if config.smooth_quant == "auto" else None
        channels = smoothing_inputs(graph) if config.smooth_quant is not None else ()
        ranges, channel_max, calibrated = calibration_statistics(graph, source, config, calibration, say,
                                                                 channels=channels, samples=samples, grams=grams,
                                                                 conv_grams=conv_grams)
        if config.smooth_quant is not None:  # folded into the norms and weights before quantizing
            smoothed = smooth(graph, ranges, channel_max, config.smooth_quant, keep, samples=samples,
                              precision=config.precision)
            ranges = smoothed.ranges
    rounding = None
    if grams is not None:
        found = {name: g for name, g in grams.items() if g is not None}
        rounding = GPTQRounding(smoothed_grams(found, smoothed) if smoothed is not None else found,
                                {name: g for name, g in (conv_grams or {}).items() if g is not None})
        say("rounding the weights (GPTQ)")
    report = QUANTIZERS[config.precision](graph, ranges, keep_float=keep,
                                          per_tensor_weights=config.weight_scales == "tensor", rounding=rounding)
    quantized = {"calibration": calibrated, "weight_scales": config.weight_scales,
                 "weight_rounding": config.weight_rounding, **report.to_json()}
    if rounding is not None:
        quantized["gptq"] = rounding.to_json()
    if smoothed is not None:
        from kiln.precision.smooth_quant import fold_channel_scales
        quantized["smooth_quant"] = smoothed.to_json()
        fold_channel_scales(graph, smoothed)
    if config.quantize_attention:
        quantized["attention_inputs_quantized"] = quantize_attention_inputs(graph, ranges, keep_float=keep,
                                                                             precision=config.precision)
    before = graph.op_counts().get("QuantizeLinear", 0)
    quantize_before_pool(graph)
    quantized["residuals_quantized"] = quantize_residuals(graph, ranges, config.precision)
    fold_requantize(graph)
    quantized["attention_requantized"] = quantize_attention_output(graph)
    quantized["requantize_folded"] = before - graph.op_counts().get("QuantizeLinear", 0)
    return quantized


def gram_requests(graph: Graph) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor | None]]:
    """The Gram matrices GPTQ asks calibration for (names -> None, filled by it): each activation a
    matmul reads, each convolution's input patches."""
    return (dict.fromkeys(smoothing_inputs(graph)),
            dict.fromkeys(n.name for n in graph.nodes if n.qualified_op in ("Conv", "kiln::FusedConv")))


def smoothed_grams(grams: Mapping[str, torch.Tensor], report: SmoothReport) -> dict[str, torch.Tensor]:
    """The Gram matrices of the activations as SmoothQuant left them: x / s has Gram D^-1 H D^-1
    (D = diag(s)), under the name its quantized readers now read."""
    out = dict(grams)
    for a in report.smoothed:
        if a.activation in grams and a.factors is not None:
            inv = torch.from_numpy(1.0 / np.asarray(a.factors, np.float64)).to(grams[a.activation].device)
            g = grams[a.activation].to(torch.float64) * inv[:, None] * inv[None, :]
            out[a.read_as or a.activation] = g
    return out


@dataclass(frozen=True, slots=True)
class CalibrationRecord:
    """Where the ranges came from, for the engine header and `kiln calibrate`'s report."""
    method: str
    source: str  # "cache" (read from calib_cache) | "calibrated"
    batches: int  # batches calibrated on (0 when read from the cache)
    cache: str | None  # the cache file read or written

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "source": self.source, "batches": self.batches, "cache": self.cache}


def activation_ranges(graph: Graph, source: bytes, config: BuildConfig,
                      calibration: Iterable[Mapping[str, Any]] | None = None, say: Progress | None = None,
                      on_batch: Callable[[int], None] | None = None,
                      reuse_cache: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """amax per activation of the optimised `graph`: from config.calib_cache when it was made for
    these ONNX bytes and this method, else calibrated on the batches (then cached when a cache
    path is set). Returns the ranges and a record of where they came from."""
    ranges, _, record = calibration_statistics(graph, source, config, calibration, say, on_batch, reuse_cache)
    return ranges, record


def calibration_statistics(graph: Graph, source: bytes, config: BuildConfig,
                           calibration: Iterable[Mapping[str, Any]] | None = None, say: Progress | None = None,
                           on_batch: Callable[[int], None] | None = None, reuse_cache: bool = True,
                           channels: Iterable[str] = (), samples: dict[str, Any] | None = None,
                           grams: dict[str, torch.Tensor | None] | None = None,
                           conv_grams: dict[str, torch.Tensor | None] | None = None
                           ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """activation_ranges, plus the per-channel maxima of the activations named in `channels`
    (SmoothQuant's statistics); a cache without all of those maxima is a miss. With `samples`
    (a dict to fill: rows of those activations, for SmoothQuant's alpha search), the data is
    always run: the cache holds no rows. `grams` / `conv_grams` (names -> None, filled in place:
    GPTQ's Gram matrices, calibration/collect.py) come from the Gram file beside the cache
    (calibration/gram_cache.py) when it matches the cached ranges, else from a calibration run,
    which writes them there too."""
    from kiln.calibration import (calibration_batches, collect_ranges, collect_statistics, load_cache,
                                  load_channel_max, model_hash, save_cache)
    from kiln.calibration.gram_cache import load_grams, save_grams

    say = say or (lambda _msg: None)
    channels = list(channels)
    digest = model_hash(source)
    params = {"percentile": config.calib_percentile} if config.calib_method == "percentile" else {}
    if reuse_cache and config.calib_cache and samples is None:
        cached = load_cache(config.calib_cache, digest, config.calib_method, params)
        cached_channels = load_channel_max(config.calib_cache, digest, config.calib_method, params) \
            if cached is not None and channels else {}
        cached_grams = load_grams(config.calib_cache, graph_hash=digest, method=config.calib_method, params=params,
                                  ranges=cached) if cached is not None and grams is not None else None
        # an activation that is not floating point has a range neither in the cache nor in a calibration run
        if cached is not None and all(n in cached_channels for n in channels if n in cached) \
                and (grams is None or cached_grams is not None):
            say("calibration ranges from the cache")
            if cached_grams is not None:
                _fill(grams, cached_grams[0])
                _fill(conv_grams, cached_grams[1])
            return cached, cached_channels, CalibrationRecord(config.calib_method, "cache", 0,
                                                              config.calib_cache).to_json()
    data = calibration if calibration is not None else config.calib_data
    if data is None and grams is not None:
        raise BuildError(f"GPTQ weight rounding (weight_rounding \"gptq\") weighs each {config.precision} weight's "
                         "rounding errors by its layer's calibration inputs, and no calibration data was given "
                         "nor a calibration cache that holds them (one written by a GPTQ build keeps them beside "
                         "it, CACHE.gram.npz); pass --calib-data PATH (or build(..., calibration=...)), or round "
                         "to nearest (drop --weight-rounding gptq).")
    if data is None:
        cache_note = (f"the calibration cache {config.calib_cache!r} is absent or was made for another model or "
                      "method, and " if config.calib_cache else "")
        raise BuildError(f"an {config.precision} build needs activation ranges, but {cache_note}no calibration data "
                         "was given; "
                         "pass representative inputs with --calib-data PATH (an .npz keyed by input name, axis 0 "
                         "the samples, or a folder of .npz/.npy batches), BuildConfig(calib_data=...) or "
                         "build(..., calibration=[{input: array}, ...]), or a cache written by `kiln calibrate` "
                         "with --calib-cache.")
    batch, drop_last = calibration_batch_size(graph, config.calib_batch_size)
    batches = calibration_batches(data, graph.inputs, batch, drop_last)
    count = [0]

    def seen(n: int) -> None:
        count[0] = n
        if on_batch is not None:
            on_batch(n)
    say("calibrating")
    if channels or grams is not None:
        ranges, channel_max = collect_statistics(graph, batches, config.calib_method, config.calib_percentile,
                                                 progress=seen, channels=channels, samples=samples, grams=grams,
                                                 conv_grams=conv_grams)
    else:
        ranges, channel_max = collect_ranges(graph, batches, config.calib_method, config.calib_percentile,
                                             progress=seen), {}
    if config.calib_cache:
        save_cache(config.calib_cache, ranges, graph_hash=digest, method=config.calib_method, params=params,
                   channel_max=channel_max)
        if grams is not None:
            save_grams(config.calib_cache, {n: g for n, g in grams.items() if g is not None},
                       {n: g for n, g in (conv_grams or {}).items() if g is not None},
                       graph_hash=digest, method=config.calib_method, params=params, ranges=ranges)
    return ranges, channel_max, CalibrationRecord(config.calib_method, "calibrated", count[0],
                                                  config.calib_cache).to_json()


def _fill(wanted: dict[str, torch.Tensor | None] | None, found: Mapping[str, torch.Tensor]) -> None:
    """Fill the requested Gram matrices (`wanted`'s keys) that `found` holds."""
    for name in wanted or {}:
        if name in found:
            wanted[name] = found[name]


def calibration_batch_size(graph: Graph, wanted: int) -> tuple[int, bool]:
    """Samples per .npz batch: the batch dim the model (or its static profile) fixes when every
    input fixes the same one, cutting only whole batches; else `wanted`."""
    fixed = {v.shape[0] if v.shape and isinstance(v.shape[0], int) else None for v in graph.inputs}
    if len(fixed) == 1 and None not in fixed and next(iter(fixed)) > 0:
        return next(iter(fixed)), True
    return wanted, False
