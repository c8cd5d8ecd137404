"""Real-weight accuracy (benchmarks/accuracy_real.py) with every Gelu computed as FAST_GELU computes it on
the GPU, in kiln's CPU reference kernels.

    PYTHONPATH=src python benchmarks/fast_gelu_accuracy.py fast|tanh|exact [accuracy_real.py's options]

FAST_GELU (kernels/triton/activation.py, the fp8 GEMM space) evaluates a Gelu whose output becomes
float8 codes in its tanh form, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), on the hardware
tanh (tanh.approx.f32, relative error up to about 2^-11). The tuner checks each layer's codes
against the exact Gelu; this checks what the whole model's outputs lose. `fast`: the tanh form with
tanh's value moved by 2^-11 of itself, up or down by the sign of sin(1e4 x) (tanh.approx's bound, in
no particular direction); `tanh`: the tanh form, exact tanh; `exact`: unchanged (the baseline, the
same command as accuracy_real.py). Every Gelu of the CPU reference changes, not only those of
float8-coded outputs (in an all-fp8 MiniLM that is every FFN expansion anyway).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy_real  # noqa: E402
from kiln.kernels.reference import fused  # noqa: E402

TANH_ERROR = 2.0 ** -11


def tanh_gelu(x: torch.Tensor, perturbed: bool) -> torch.Tensor:
    t = torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    if perturbed:
        t = t * (1 + torch.sign(torch.sin(x * 1e4)) * TANH_ERROR)
    return 0.5 * x * (1 + t)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in ("fast", "tanh", "exact"):
        sys.exit("usage: fast_gelu_accuracy.py fast|tanh|exact [accuracy_real.py's options]")
    if mode != "exact":
        fused.ACTIVATIONS["Gelu"] = lambda x, p: tanh_gelu(x, mode == "fast")
    accuracy_real.main(sys.argv[2:])


if __name__ == "__main__":
    main()
