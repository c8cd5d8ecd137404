"""kiln::NormQuantize's Triton kernel at BERT-base b32 ([4096, 768]): every config, exact and quick.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_norm_quantize.py [--iters 100]

Rows: the fp16 engine's residual add + LayerNorm (kiln's AddLayerNorm kernel, the floor); kiln's
own int8 and fp8 engines' NormQuantize (fp16 X and residual, the sum stored for the next
residual, codes out); ONNX Runtime's QDQ BERT's (X and residual as int8 codes of its quantized
residual add, x_program, codes out). Each config is checked against the reference op with the
tuner's rule first, then timed with CUDA events (median of --iters, the GPU held busy before each
call so that the launch is not timed). EXACT 0 configs quantize by the reciprocal of the scale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import cuda_median_ms  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import norm  # noqa: E402

OP = "kiln::NormQuantize"
C = lambda v, dtype: {"const": v, "dtype": dtype}  # noqa: E731
# ONNX Runtime's residual add as its QDQ BERT writes it (scales of the size it calibrates)
RESIDUAL_ADD = [["DequantizeLinear", ["i0", C(0.0275, "float16"), C(-1, "int8")], {}],
                ["DequantizeLinear", ["i1", C(0.0004, "float16"), C(9, "int8")], {}],
                ["Add", ["t1", "t0"], {}],
                ["QuantizeLinear", ["t2", C(0.0276, "float16"), C(2, "int8")], {"output_dtype": TensorProto.INT8}],
                ["DequantizeLinear", ["t3", C(0.0276, "float16"), C(2, "int8")], {}]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rows", type=int, default=4096)
    args = ap.parse_args()
    rows, cols, dev = args.rows, 768, "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x, r = (torch.randn(rows, cols, device=dev, generator=g).half() for _ in range(2))
    a, b = (torch.randint(-128, 128, (rows, cols), device=dev, generator=g, dtype=torch.int8) for _ in range(2))
    w, bias = torch.randn(cols, device=dev, generator=g).half(), torch.randn(cols, device=dev, generator=g).half()
    ys, yzp = torch.tensor(0.021, device=dev, dtype=torch.float16), torch.tensor(-4, device=dev, dtype=torch.int8)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; [{rows}, {cols}]; us per call "
          f"(median of {args.iters})")
    floor = min(cuda_median_ms(lambda c=c: norm.add_layer_norm(x, r, w, bias, epsilon=1e-12, config=dict(c)),
                               args.iters) for c in norm.CONFIGS) * 1000
    print(f"  fp16 AddLayerNorm, best config: {floor:.1f}")
    cases = {
        "int8 NormQuantize (fp16 in, sum out)": ((x, r, w, bias, ys, yzp), dict(output_dtype=TensorProto.INT8,
                                                                               sum_output=1)),
        "fp8 NormQuantize (fp16 in, sum out)": ((x, r, w, bias, ys), dict(output_dtype=TensorProto.FLOAT8E4M3FN,
                                                                          sum_output=1)),
        "ONNX Runtime's (int8 codes in, x_program)": ((a, b, w, bias, ys, yzp), dict(output_dtype=TensorProto.INT8,
                                                                                     x_program=RESIDUAL_ADD)),
    }
    for name, (inputs, attrs) in cases.items():
        want = lookup(OP).fn(*inputs, epsilon=1e-12, **attrs)
        rows_out = []
        for cfg in norm.QUANT_CONFIGS:
            run = lambda c=cfg: norm.norm_quantize(*inputs, epsilon=1e-12, config=dict(c), **attrs)  # noqa: E731
            why = mismatch(run(), want, OP)
            rows_out.append((cuda_median_ms(run, args.iters) * 1000, cfg, why))
        for us, cfg, why in sorted(rows_out, key=lambda t: t[0])[:6]:
            print(f"  {name:44s} {str(cfg):48s} {us:6.1f}" + ("" if why is None else f"  FAILS: {why}"[:160]))
        for exact in (1, 0):
            best = min((t for t in rows_out if t[1].get("EXACT", 1) == exact and t[2] is None),
                       key=lambda t: t[0], default=None)
            print(f"  {name:44s} best {'exact' if exact else 'quick'}: "
                  + ("none passes" if best is None else f"{best[0]:.1f} {best[1]}"))


if __name__ == "__main__":
    main()
