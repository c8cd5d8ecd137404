"""GPU: the Gluon conv (kernels/gluon/qconv.py) on the same shapes and configs with int8 and float8
operands, and with int8 weights small enough (|w| <= 3) for the accumulator-by-bits epilogue.

    PYTHONPATH=$PWD/src python3 benchmarks/gluon_int8_fp8.py          # H100/H200

Stage 2's 3x3 conv (128 -> 128 over 28x28), stage 3's long-K 1x1 reduce conv (1024 -> 256 over
14x14) and stage 1's 3x3 conv (64 -> 64 over 56x56), batch 64, bias and Relu, requantized; random
operands (codes within +-60 for X). Per config: us per call, the median of CUDA-graph replays
(kernels_qconv.bench). Outputs are not compared here (the GPU tests do that); the question is
whether the operand type alone moves the time. H200, 2026-11-29 (b4515d3): within 0.1-0.6 us of
each other on the configs the tuner picks (BENCHMARKS.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernels_qconv import bench  # noqa: E402
from kiln.kernels.gluon.qconv import CONFIGS, qconv  # noqa: E402

CASES = [("s2 3x3 128->128 28x28", (64, 128, 28, 28), 128, 3, 1),
         ("s3 1x1 1024->256 14x14", (64, 1024, 14, 14), 256, 1, 0),
         ("s1 3x3 64->64 56x56", (64, 64, 56, 56), 64, 3, 1)]


def operands(x_shape: tuple[int, ...], oc: int, k: int, kind: str) -> tuple:
    dt = torch.float8_e4m3fn if kind == "fp8" else torch.int8
    x = torch.randint(-60, 61, x_shape, device="cuda").float()
    wmax = 3 if "small" in kind else 127
    w = torch.randint(-wmax, wmax + 1, (oc, x_shape[1], k, k), device="cuda").float()
    if dt == torch.float8_e4m3fn:
        x, w = x / 8, w / 8
    x = x.to(dt).contiguous(memory_format=torch.channels_last)
    w = w.to(dt).contiguous(memory_format=torch.channels_last)
    return (x, w, torch.tensor(0.02, device="cuda"), None, torch.rand(oc, device="cuda") * 0.01 + 0.001, None,
            torch.randn(oc, device="cuda"), None, torch.tensor(0.5, device="cuda"))


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for name, x_shape, oc, k, pad in CASES:
        for kind in ("int8", "int8 small w", "fp8"):
            ops = operands(x_shape, oc, k, kind)
            code = TensorProto.FLOAT8E4M3FN if kind == "fp8" else TensorProto.INT8
            attrs = dict(activation="Relu", out_dtype=code, kernel_shape=[k, k], pads=[pad] * 4)
            cells = []
            for cfg in CONFIGS:
                tag = f"{cfg['BM']}x{cfg['BN']}s{cfg['STAGES']}p{cfg['SM_PROGRAMS']}w{cfg.get('num_warps', 4)}"
                try:
                    cells.append(f"{tag} {bench(lambda cfg=cfg: qconv(*ops, **attrs, config=cfg)) * 1e3:6.1f}")
                except Exception as exc:  # noqa: BLE001 - a config that does not launch here: say so, go on
                    cells.append(f"{tag} FAILED {type(exc).__name__}")
            print(f"{name:24s} {kind:13s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
