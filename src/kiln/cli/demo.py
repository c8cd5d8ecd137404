"""`kiln demo`: the main job on the embedded default model, all-MiniLM-L6-v2.

Exports the model to ONNX (first run only, cached), builds an engine for this machine,
embeds real sentences with it, checks the embeddings against PyTorch running the same
model, and times the engine against PyTorch eager on the same inputs and device.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import click

from kiln.cli.output import emit_json, fmt_bytes, key_values, stderr, stdout, table


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@click.command()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="auto: fp16 on a GPU, fp32 on a CPU.")
@click.option("--iterations", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per side.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def demo(device: str, precision: str, iterations: int, as_json: bool) -> None:
    """Build and run an engine for all-MiniLM-L6-v2 (real weights), check it and time it against PyTorch."""
    import numpy as np
    import torch

    import kiln
    from kiln.compiler.builder import resolve_device
    from kiln.models import minilm

    device = resolve_device(device)
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    err = stderr()
    with err.status("exporting all-MiniLM-L6-v2 to ONNX (first run only)..."):
        path = minilm.default_model_path()
    sentences = list(minilm.SAMPLE_SENTENCES)
    feeds = minilm.tokenize(sentences)
    batch, seq = feeds["input_ids"].shape
    ranges = {n: ((1, 1), (batch, seq), (max(32, batch), 128)) for n in minilm.INPUT_NAMES}
    config = kiln.BuildConfig(precision=precision, device=device, profiles=(kiln.Profile.from_ranges(ranges),))
    with err.status("building the engine...") as status:
        t0 = time.perf_counter()
        engine = kiln.build(path, config, progress=lambda msg: status.update(f"building the engine: {msg}"))
        build_s = time.perf_counter() - t0

    dev = torch.device(device)
    inputs = {k: torch.from_numpy(v).to(dev) for k, v in feeds.items()}
    got = engine.run_tensors(inputs)[minilm.OUTPUT_NAME].float().cpu().numpy()
    reference = minilm.reference_embeddings(sentences)
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    module = minilm.embedding_module().to(dev, torch_dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    args = tuple(inputs[n] for n in minilm.INPUT_NAMES)
    with torch.inference_mode():
        eager_ms = _median_ms(lambda: module(*args), sync, 3, iterations)
        kiln_ms = _median_ms(lambda: engine.run_tensors(inputs, validate=False), sync, 3, iterations)

    sims = got @ got.T
    np.fill_diagonal(sims, -1)
    pairs = [(sentences[i], sentences[int(sims[i].argmax())], float(sims[i].max())) for i in (0, 3, 4, 9)]
    report = {
        "model": "all-MiniLM-L6-v2", "onnx": str(path), "device": engine.header["device"].get("name"),
        "precision": precision, "batch": int(batch), "sequence": int(seq), "build_seconds": round(build_s, 2),
        "source_nodes": engine.header["build"]["source_nodes"], "engine_layers": len(engine.plan.steps),
        "cosine_vs_pytorch": {"min": float(cosine.min()), "mean": float(cosine.mean())},
        "latency_ms": {"kiln": kiln_ms, "pytorch_eager": eager_ms}, "speedup_vs_eager": eager_ms / kiln_ms,
        "peak_activation_bytes": engine.plan.memory.peak_bytes,
        "nearest_neighbours": [{"sentence": a, "nearest": b, "cosine": s} for a, b, s in pairs],
    }
    if as_json:
        emit_json(report)
        return
    out = stdout()
    out.print(key_values("kiln demo: all-MiniLM-L6-v2 sentence embeddings", [
        ("device", f"{device} ({report['device']})"), ("precision", precision),
        ("engine", f"{report['source_nodes']} ONNX nodes -> {report['engine_layers']} layers, "
                   f"built in {build_s:.1f} s, peak activations {fmt_bytes(engine.plan.memory.peak_bytes)}"),
        ("inputs", f"{batch} sentences, {seq} tokens"),
        ("accuracy", f"cosine to PyTorch fp32: min {cosine.min():.6f}, mean {cosine.mean():.6f}"),
        ("latency", f"kiln {kiln_ms:.2f} ms vs PyTorch eager ({precision}) {eager_ms:.2f} ms: "
                    f"{eager_ms / kiln_ms:.2f}x (median of {iterations})"),
    ]))
    out.print(table("nearest neighbour by the engine's embeddings", ["sentence", "nearest", "cosine"],
                    [(a, b, f"{s:.3f}") for a, b, s in pairs], right=["cosine"]))
