"""Real-weight accuracy (benchmarks/accuracy_real.py) with attention's Q, K and V rounded to float8 e4m3.

    PYTHONPATH=src python benchmarks/fp8_attention_accuracy.py fp8qkv|exact [accuracy_real.py's options]

`fp8qkv`: each kiln::Attention (kernels/reference/fused.py: attention) a quantized engine runs first rounds q,
k and v, each alone, to float8_e4m3fn with s = amax(|x|) / 448 of that tensor in that call: dynamic, per
batch, an optimistic stand-in for a calibrated static scale (amax 0: unchanged); then attends as before. The
fp32 reference and builds keep exact attention. `exact`: unchanged (accuracy_real.py's baseline). Executors
capture `{op}.reference` tactic kernels (tactics/registry.py), so the tactic table is patched too.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy_real  # noqa: E402
from kiln.kernels.reference import REFERENCE_OPS, fused  # noqa: E402
from kiln.tactics import registry  # noqa: E402

OP, exact_attention = "kiln::Attention", fused.attention
ACTIVE = [False]                     # True while a quantized engine runs (accuracy_real.run_batches)
QUANTIZED_ENGINES: list[Any] = []    # held, so no later engine reuses an id
CALLS = {"rounded": 0, "exact": 0}


def fp8_round(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float8_e4m3fn with the per-tensor scale amax(|x|) / 448, back in x's dtype."""
    s = x.detach().abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
    return x if s == 0 else ((x.float() / s).to(torch.float8_e4m3fn).float() * s).to(x.dtype)


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    CALLS["rounded" if ACTIVE[0] else "exact"] += 1
    if ACTIVE[0]:
        q, k, v = fp8_round(q), fp8_round(k), fp8_round(v)
    return exact_attention(q, k, v, *args, **kwargs)


def install() -> None:
    """fp8_attention everywhere the reference is reached; on only while a quantized engine runs."""
    fused.attention = fp8_attention
    REFERENCE_OPS[OP] = dataclasses.replace(REFERENCE_OPS[OP], fn=fp8_attention)
    registry._ensure_loaded()
    registry.TACTICS[f"{OP}.reference"] = dataclasses.replace(registry.TACTICS[f"{OP}.reference"], kernel=fp8_attention)
    build, run = accuracy_real.build_engine, accuracy_real.run_batches

    def build_engine(model: Any, precision: str, *args: Any, **kwargs: Any) -> Any:
        ACTIVE[0] = False   # calibration and the build's own runs: exact
        engine = build(model, precision, *args, **kwargs)
        QUANTIZED_ENGINES.extend([engine] if precision in accuracy_real.PRECISIONS else [])
        return engine

    def run_batches(engine: Any, *args: Any, **kwargs: Any) -> Any:
        ACTIVE[0] = any(engine is e for e in QUANTIZED_ENGINES)
        return run(engine, *args, **kwargs)

    accuracy_real.build_engine, accuracy_real.run_batches = build_engine, run_batches


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in ("fp8qkv", "exact"):
        sys.exit("usage: fp8_attention_accuracy.py fp8qkv|exact [accuracy_real.py's options]")
    if mode == "fp8qkv":
        install()
    accuracy_real.main(sys.argv[2:])
    if mode == "fp8qkv":  # the evidence that the patch ran
        print(f"[fp8_attention] {OP} calls: {CALLS['rounded']} with fp8 Q/K/V (quantized engines), "
              f"{CALLS['exact']} exact (fp32 reference, calibration)", file=sys.stderr)


if __name__ == "__main__":
    main()
