"""The persistent TMA GEMMs' two stores, timed on the engines' layer shapes: the epilogue's tile
written through pointers (the MMA layout: 2 or 4 bytes a thread at a time, masked) or through
one TMA box (config Y_TMA; the residual read the same way).

    PYTHONPATH=src python3 benchmarks/kernels_gemm_store.py [--quick]

Per layer (BERT-base b32 s128 and MiniLM's FFN expansion at b32 / b256: M = batch * 128), every
persistent tiling of the space with and without Y_TMA, and the peer kiln would otherwise run
(torch._scaled_mm for fp8 with a float output, torch.addmm for fp16): the median us of 10 calls
replayed in a CUDA graph (benchmarks/kernels_qgemm.bench). Before timing, each Triton variant's
output is checked: the pointer store against the float64 reference (the tuner's rule for the
op), the TMA store against the pointer store bit for bit (the same arithmetic, another store).
Writes its report to $OUT/gemm_store.txt too when $OUT is set.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels_qgemm import bench, operands  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import gemm, qgemm, qgemm_space  # noqa: E402

FP8 = torch.float8_e4m3fn
LINES: list[str] = []
# (name, M, N, K, epilogue): "bias" fp16 out; "res" bias + residual, fp16 out; "gelu8" bias +
# exact Gelu, requantized (fp8 codes for fp8 operands, int8 for int8).
QLAYERS = [("bert qkv", 4096, 2304, 768, "bias"), ("bert attn-out", 4096, 768, 768, "res"),
           ("bert ffn1", 4096, 3072, 768, "gelu8"), ("bert ffn2", 4096, 768, 3072, "res")]
# fp16 A and B: kiln::MatMulQuantize of MiniLM's kept FFN expansions (bias + Gelu, fp8 codes
# per column, as SmoothQuant's scales are), and BERT's QKV as the fp16 engine's Triton tactic runs it.
HLAYERS = [("minilm ffn1 b32 quant", 4096, 1536, 384, "gelu8"), ("minilm ffn1 b256 quant", 32768, 1536, 384, "gelu8"),
           ("bert qkv fp16", 4096, 2304, 768, "bias")]


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def error() -> str:
    """The current exception's last line, for a report row."""
    return "FAILED: " + traceback.format_exc().strip().splitlines()[-1]


def q_case(m: int, n: int, k: int, dtype: torch.dtype, kind: str):
    """(args, attrs) of one kiln::QMatMul."""
    a, w, a_scale, b_scale, bias, residual = operands(m, n, k, dtype)
    args = [a, w, a_scale, None, b_scale, None, bias, residual if kind == "res" else None]
    attrs: dict = {"trans_b": 1}
    if kind == "gelu8":
        out = TensorProto.FLOAT8E4M3FN if dtype == FP8 else TensorProto.INT8
        attrs.update(activation="Gelu", activation_params=[0.0], out_scale=torch.tensor(0.05, device="cuda"),
                     out_dtype=out)
    return args, attrs


def h_case(m: int, n: int, k: int, kind: str):
    """(args, attrs) of one kiln::MatMulQuantize (gelu8) or FusedMatMul (bias), fp16 operands."""
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(m, k, device="cuda", generator=g).half()
    w = (torch.randn(n, k, device="cuda", generator=g) / k ** 0.5).half()
    bias = torch.randn(n, device="cuda", generator=g).half()
    if kind == "gelu8":
        scale = (torch.rand(n, device="cuda", generator=g) * 0.02 + 0.005).half()
        return [a, w, bias, None, scale, None], dict(trans_b=1, activation="Gelu", activation_params=[0.0],
                                                     output_dtype=TensorProto.FLOAT8E4M3FN)
    return [a, w, bias, None], dict(trans_b=1)


def compare(label: str, fn, args: list, attrs: dict, op: str, configs: list[dict]) -> None:
    cpu = lambda t: t.cpu() if isinstance(t, torch.Tensor) else t   # noqa: E731
    ref = lookup(op).fn(*[cpu(t) for t in args], **{k: cpu(v) for k, v in attrs.items()})
    for cfg in ({k: v for k, v in c.items() if k != "Y_TMA"} for c in configs):   # each tiling, both stores
        name = qgemm_space.describe(cfg)
        try:
            plain = fn(*args, **attrs, config=dict(cfg))
            boxed = fn(*args, **attrs, config={**cfg, "Y_TMA": 1})
            why = mismatch(plain.cpu(), ref, op)
            same = torch.equal(plain.view(torch.uint8), boxed.view(torch.uint8))
            t_plain = bench(lambda: fn(*args, **attrs, config=dict(cfg))) * 1e3
            t_boxed = bench(lambda: fn(*args, **attrs, config={**cfg, "Y_TMA": 1})) * 1e3
            say(f"  {label:24s} {name:34s} pointers {t_plain:7.1f} us  TMA store {t_boxed:7.1f} us "
                f"({t_plain / t_boxed:.2f}x)  {'OK' if why is None else 'MISMATCH ' + why}"
                f"{'' if same else '  TMA STORE DIFFERS'}")
        except Exception:  # noqa: BLE001 - one failure is reported, the rest still run
            say(f"  {label:24s} {name:34s} {error()}")


def peers(label: str, m: int, n: int, k: int, dtype: torch.dtype | None) -> None:
    if dtype == FP8:
        a, w, a_scale, b_scale, bias, _ = operands(m, n, k, FP8)
        one = torch.ones((), device="cuda")
        rows, cols = torch.ones(m, 1, device="cuda"), b_scale.float().reshape(1, n)
        for mode, sa, sb, out in (("tensorwise, fp16 out", one, one, torch.float16),
                                  ("rowwise, bf16 out", rows, cols, torch.bfloat16)):
            fn = lambda: torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, bias=bias.to(out),  # noqa: E731
                                          out_dtype=out, use_fast_accum=True)
            try:
                say(f"  {label:24s} {'_scaled_mm fast-accum ' + mode:34s} {bench(fn) * 1e3:7.1f} us")
            except Exception:  # noqa: BLE001
                say(f"  {label:24s} {'_scaled_mm ' + mode:34s} {error()}")
    elif dtype == torch.float16:
        a = torch.randn(m, k, device="cuda").half()
        w = torch.randn(k, n, device="cuda").half()
        bias = torch.randn(n, device="cuda").half()
        say(f"  {label:24s} {'torch.addmm fp16':34s} {bench(lambda: torch.addmm(bias, a, w)) * 1e3:7.1f} us")


def main() -> None:
    quick = "--quick" in sys.argv
    say(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    persistent8 = [c for c in qgemm_space.FP8_CONFIGS if c.get("PERSISTENT")]
    persistent_i8 = [c for c in qgemm_space.INT8_CONFIGS if c.get("PERSISTENT")]
    persistent16 = [c for c in gemm.CONFIGS if c.get("PERSISTENT")]
    for name, m, n, k, kind in QLAYERS:
        for dtype, space in ((FP8, persistent8), (torch.int8, persistent_i8)):
            if dtype == torch.int8 and (quick or kind == "bias"):
                continue
            label = f"{name} {'fp8' if dtype == FP8 else 'int8'}"
            args, attrs = q_case(m, n, k, dtype, kind)
            compare(label, qgemm.qmatmul, args, attrs, "kiln::QMatMul", space)
        peers(f"{name} peer", m, n, k, FP8)
    for name, m, n, k, kind in HLAYERS:
        args, attrs = h_case(m, n, k, kind)
        if kind == "gelu8":
            compare(name, gemm.matmul_quantize, args, attrs, "kiln::MatMulQuantize", persistent16)
        else:
            compare(name, gemm.fused_matmul, args, attrs, "kiln::FusedMatMul", persistent16)
        peers(f"{name} peer", m, n, k, torch.float16)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gemm_store.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
