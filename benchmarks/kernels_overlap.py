"""Whether a persistent 8-bit GEMM's epilogue overlaps its MMAs: one program per SM or two
(config SM_PROGRAMS), on BERT-base b32's layer shapes, with the epilogue the engine runs and
without its activation.

    PYTHONPATH=src python3 benchmarks/kernels_overlap.py [--quick]

A program's epilogue (scales, bias, exact Gelu, the fp8/int8 conversion) is ALU work its own
warps do after their MMAs; with one program per SM the tensor cores wait meanwhile. Two
programs per SM, where registers and shared memory allow, let the warp schedulers run one's
epilogue beside the other's MMAs. Per layer: each persistent tiling with SM_PROGRAMS 1 and 2,
the engine's epilogue, the same without the activation (what the Gelu costs) and, for fp8, with
the Gelu in its tanh form on the hardware tanh (FAST_GELU), each checked against the float64
reference first (the tuner's rule), with the compiled kernel's registers, spills and shared memory; the peer is torch._scaled_mm (cuBLASLt) with a float output. Median
us of 10 calls in a CUDA graph (kernels_qgemm.bench). Writes $OUT/overlap.txt when $OUT is set.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels_gemm_store import LINES, error, peers, q_case, say  # noqa: E402
from benchmarks.kernels_qgemm import bench  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import qgemm, qgemm_space, qgemm_tma  # noqa: E402

FP8 = torch.float8_e4m3fn
LAYERS = [("bert ffn1", 4096, 3072, 768, "gelu8"), ("bert ffn2", 4096, 768, 3072, "res"),
          ("bert qkv", 4096, 2304, 768, "bias")]
# The persistent tilings of the spaces (those meant for one program per SM and for two).
TILES = [*qgemm_space.PERSISTENT_TILES, *qgemm_space.SHARED_SM_TILES]


def compiled_kernels() -> set:
    """Every compiled variant of the persistent kernel so far (Triton's per-device caches)."""
    found = set()
    for entry in getattr(qgemm_tma.qgemm_tma_kernel, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(cache, dict):
            found.update(cache.values())
    return found


def resources(kernels: set) -> str:
    parts = []
    for k in kernels:
        shared = getattr(getattr(k, "metadata", None), "shared", None)
        parts.append(f"{getattr(k, 'n_regs', '?')} regs, {getattr(k, 'n_spills', '?')} spills, {shared} B shared")
    return "; ".join(parts) or "(cached)"


def reference(args: list, attrs: dict) -> torch.Tensor:
    cpu = lambda t: t.cpu() if isinstance(t, torch.Tensor) else t   # noqa: E731
    return lookup("kiln::QMatMul").fn(*[cpu(t) for t in args], **{k: cpu(v) for k, v in attrs.items()})


def run(label: str, args: list, attrs: dict, ref: torch.Tensor, cfg: dict) -> None:
    before = compiled_kernels()
    try:
        got = qgemm.qmatmul(*args, **attrs, config=dict(cfg))
        why = mismatch(got.cpu(), ref, "kiln::QMatMul")
        us = bench(lambda: qgemm.qmatmul(*args, **attrs, config=dict(cfg))) * 1e3
        say(f"  {label:34s} {qgemm_space.describe(cfg):52s} {us:7.1f} us  {'OK' if why is None else 'MISMATCH ' + why}"
            f"  [{resources(compiled_kernels() - before)}]")
    except Exception:  # noqa: BLE001 - one failure is reported, the rest still run
        say(f"  {label:34s} {qgemm_space.describe(cfg):52s} {error()}")


def main() -> None:
    quick = "--quick" in sys.argv   # BERT's FFN1 in fp8 alone
    say(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  SMs {qgemm_tma.sm_count(torch.device('cuda'))}")
    for name, m, n, k, kind in LAYERS[:1] if quick else LAYERS:
        for dtype in (FP8,) if quick else (FP8, torch.int8):
            if dtype == torch.int8 and kind != "gelu8":
                continue
            tag = "fp8" if dtype == FP8 else "int8"
            args, attrs = q_case(m, n, k, dtype, kind)
            plain = {key: v for key, v in attrs.items() if key not in ("activation", "activation_params")}
            ref, ref_plain = reference(args, attrs), reference(args, plain) if kind == "gelu8" else None
            for tile in TILES:
                for programs in (1, 2):
                    cfg = {**tile, "PERSISTENT": 1, "SM_PROGRAMS": programs, **({"FP8_ACC": 0} if dtype == FP8 else {})}
                    run(f"{name} {tag} {kind}", args, attrs, ref, cfg)
                    if ref_plain is not None:
                        run(f"{name} {tag} no activation", args, plain, ref_plain, cfg)
                    if kind == "gelu8" and dtype == FP8:   # the tanh form, hardware tanh (FAST_GELU)
                        run(f"{name} {tag} {kind} fast", args, attrs, ref, {**cfg, "FAST_GELU": 1})
        peers(f"{name} peer", m, n, k, FP8)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "overlap.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
