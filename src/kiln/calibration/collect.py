"""Collect activation ranges: run a Graph with the reference ops on calibration batches and
feed every floating-point activation to one calibrator per tensor name.

Activations are the floating-point graph inputs (the first quantized op reads them) and
every floating-point node output; constants (weights) are not activations and get
per-channel scales from `weight_scales` instead. The loop mirrors `run_graph` but sees each
intermediate, and frees a tensor once its last reader has run, so memory stays near that
of one forward pass. Subgraph (If/Loop) internals are not visited; their outputs are.

`collect_statistics` also keeps, for the activations named in `channels`, the max |x| of
each channel of the last axis over all batches (a float64 vector): what SmoothQuant
(precision/smooth_quant.py) divides the channels by; with `grams`, the Gram matrix X^T X of
each named activation's rows X [rows, last axis] summed over all batches (float32, on the
activation's device): what GPTQ weight rounding (precision/gptq.py) weighs errors by; with
`conv_grams`, the same of each named 2-D convolution's input patches, per group (patch_gram).
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable, Mapping

import numpy as np
import torch

from kiln.calibration.calibrators import Calibrator, make_calibrator
from kiln.errors import KilnError
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.interpret import as_tensor, evaluate_node
from kiln.precision.gptq import patch_gram


SAMPLE_ROWS = 1024           # rows kept per sampled activation
SAMPLE_ROWS_PER_BATCH = 128  # about this many from each batch, spread over it


def collect_ranges(graph: Graph, batches: Iterable[Mapping[str, np.ndarray | torch.Tensor]],
                   method: str = "entropy", percentile: float = 99.99,
                   progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """amax per floating-point activation name; `progress(n)` is called after each of n batches."""
    return collect_statistics(graph, batches, method, percentile, progress)[0]


def collect_statistics(graph: Graph, batches: Iterable[Mapping[str, np.ndarray | torch.Tensor]],
                       method: str = "entropy", percentile: float = 99.99,
                       progress: Callable[[int], None] | None = None,
                       channels: Collection[str] = (),
                       samples: dict[str, np.ndarray] | None = None,
                       grams: dict[str, torch.Tensor | None] | None = None,
                       conv_grams: dict[str, torch.Tensor | None] | None = None
                       ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(amax per floating-point activation name, max |x| per last-axis channel of each activation
    named in `channels` that the graph computes in floating point). With `samples` (a dict to
    fill), also up to SAMPLE_ROWS rows [rows, C] (float32) of each of those activations, a
    strided pick of about SAMPLE_ROWS_PER_BATCH rows from each batch (SmoothQuant's alpha search).
    `grams`: a dict keyed by the activation names whose X^T X to sum (values None to start), filled
    in place with float32 [C, C] tensors; a name the graph computes in no float tensor stays None.
    `conv_grams`: likewise keyed by Conv / kiln::FusedConv node names, filled with their input
    patches' [group, K, K] (None: not a 2-D convolution with a constant weight)."""
    make_calibrator(method, percentile)  # reject an unknown method before any work
    calibrators: dict[str, Calibrator] = {}
    wanted = set(channels)
    channel_max: dict[str, np.ndarray] = {}
    conv_readers: dict[str, list[Node]] = {}
    for node in graph.nodes if conv_grams else ():
        if node.name in conv_grams and node.input(0) is not None and node.input(1) is not None \
                and node.input(1).is_const and node.input(1).shape:
            conv_readers.setdefault(node.input(0).name, []).append(node)

    def observe(v: Value, t: object) -> None:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            if v.name not in calibrators:
                calibrators[v.name] = make_calibrator(method, percentile)
            calibrators[v.name].observe(t)
            if v.name in wanted and t.dim() >= 1 and t.numel() > 0:
                rows = t.detach().reshape(-1, t.shape[-1])
                m = rows.abs().amax(dim=0).to("cpu", torch.float64).numpy()
                channel_max[v.name] = m if v.name not in channel_max else np.maximum(channel_max[v.name], m)
                if samples is not None and len(samples.get(v.name, ())) < SAMPLE_ROWS:
                    pick = rows[::max(1, rows.shape[0] // SAMPLE_ROWS_PER_BATCH)].to("cpu", torch.float32).numpy()
                    have = samples.get(v.name)
                    both = pick if have is None else np.concatenate([have, pick])
                    samples[v.name] = both[:SAMPLE_ROWS]
            if grams is not None and v.name in grams and t.dim() >= 1 and t.numel() > 0:
                rows = t.detach().reshape(-1, t.shape[-1]).to(torch.float32)
                g = rows.T @ rows
                grams[v.name] = g if grams[v.name] is None else grams[v.name] + g
            for conv in conv_readers.get(v.name, ()):
                g = patch_gram(t, conv.input(1).shape[2:], conv.attrs)
                if g is not None:
                    conv_grams[conv.name] = g if conv_grams[conv.name] is None else conv_grams[conv.name] + g

    last_use = _last_use(graph)
    n = 0
    for feed in batches:
        _run_observed(graph, feed, last_use, observe)
        n += 1
        if progress is not None:
            progress(n)
    if n == 0:
        raise KilnError(f"the calibration data gave no batches for graph {graph.name!r}; pass at least one "
                        "feed dict {input name: array}.")
    return {name: cal.amax() for name, cal in calibrators.items()}, channel_max


def _last_use(graph: Graph) -> dict[int, int]:
    """id(value) -> index of the last node that reads it; graph outputs are never freed."""
    last: dict[int, int] = {}
    for k, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_const:
                last[id(v)] = k
    for v in graph.outputs:
        last[id(v)] = len(graph.nodes)
    return last


def _run_observed(graph: Graph, feeds: Mapping[str, np.ndarray | torch.Tensor], last_use: dict[int, int],
                  observe: Callable[[Value, object], None]) -> None:
    env: dict[int, object] = {}

    def read(v: Value | None) -> object:
        if v is None:
            return None
        if id(v) in env:
            return env[id(v)]
        if v.is_const:
            return as_tensor(v.const)
        raise KilnError(f"value {v.name!r} of graph {graph.name!r} is read before any node computes it; "
                        "the graph is not in topological order: run graph.sort() first.")

    for v in graph.inputs:
        if v.name not in feeds:
            raise KilnError(f"calibration feed lacks input {v.name!r} of graph {graph.name!r}; key the arrays "
                            "by input name.")
        env[id(v)] = as_tensor(feeds[v.name])
        observe(v, env[id(v)])
    for k, node in enumerate(graph.nodes):
        outs = evaluate_node(node, [read(v) for v in node.inputs])  # type: ignore[misc]
        for o, t in zip(node.outputs, outs):
            env[id(o)] = t
            observe(o, t)
        for v in node.inputs:
            if v is not None and last_use.get(id(v)) == k:
                env.pop(id(v), None)
