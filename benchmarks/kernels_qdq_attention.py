"""kiln::QDQAttention's Triton kernel on ONNX Runtime's quantized BERT-base attention: where its time goes.

    PYTHONPATH=$PWD/src python3 benchmarks/kernels_qdq_attention.py [--iters 50] [--batch 32]

The chain is the one kiln builds from `quantize_static`'s QDQ BERT-base (QInt8 activations, fp16
float layers; PROGRAMS below, as extracted from that engine's first attention): Q, K and V codes
dequantized, the scores quantized, scaled by 1/8, quantized again, the padding mask added,
quantized a third time, softmax, the probabilities quantized, P V, the output requantized. Each
variant is the kernel with one part of that work taken out, so the difference in time is that
part's cost: the programs (the score chain but the mask add; the probability's Q/DQ), the
softmax's correctly rounded exp and division (as torch's kernel computes them) against tl.exp and
one multiply by the reciprocal (what the quick configs, EXACT 0, now compute: the softmax edits
change the exact configs only). Every variant's codes are compared with the reference chain's
(the tuner's rule for the op); a variant that drops a program computes another function, so its
check says by how much. torch's SDPA (fp16, the dequantized inputs) and kiln's float attention
kernel time the same shapes without any quantization, as the floor.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import cuda_median_ms  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels.reference import lookup  # noqa: E402
from kiln.kernels.triton import qdq_attention as qa  # noqa: E402
from kiln.tactics.attention import sdpa_attention  # noqa: E402

REF = lookup("kiln::QDQAttention").fn


def _dq(scale: float, zp: int) -> list:
    return [["DequantizeLinear", ["i0", {"const": scale, "dtype": "float16"}, {"const": zp, "dtype": "int8"}], {}]]


def _qdq(x: str, t: int, scale: float, zp: int) -> list:
    s, z = {"const": scale, "dtype": "float16"}, {"const": zp, "dtype": "int8"}
    return [["QuantizeLinear", [x, s, z], {"output_dtype": 3}], ["DequantizeLinear", [f"t{t}", s, z], {}]]


# ONNX Runtime's QDQ BERT-base (benchmarks/qdq_ort.py --model bert_base --activations QInt8), layer 0,
# as kiln's fp16 engine holds it (the Add's output scale saturates float16: the mask's -inf codes).
PROGRAMS = {
    "q_program": _dq(0.020979750901460648, 0), "k_program": _dq(0.01995469070971012, -5),
    "v_program": _dq(0.019250240176916122, -3),
    "score_program": _qdq("i0", 0, 0.08776749670505524, 3) + [["Mul", ["t1", {"const": 0.125, "dtype": "float16"}],
                                                                 {}]]
    + _qdq("t2", 3, 0.010970937088131905, 3) + [["Add", ["t4", "i1"], {}]] + _qdq("t5", 6, 65504.0, 127),
    "prob_program": _qdq("i0", 0, 0.003921568859368563, -128),
}
OUT_SCALE, OUT_ZP = 0.0193, 2
MASK_ONLY = [["Add", ["i0", "i1"], {}]]
# Source edits (old, new) on the generated kernel: the softmax's exact parts replaced.
FAST_EXP = ("exp_f32(", "tl.exp(")
FAST_DIV = ("return divide(e, total, tl.math.div_rn(tl.full(total.shape, 1.0, tl.float32), total))",
            "return e * (1.0 / total)")


def variant(programs: dict, edits: tuple) -> dict:
    """The programs with the source edits applied to the generated kernel (qa.generate patched)."""
    return {"programs": programs, "edits": edits}


VARIANTS = {
    "as built": variant(PROGRAMS, ()),
    "softmax: tl.exp": variant(PROGRAMS, (FAST_EXP,)),
    "softmax: tl.exp, reciprocal": variant(PROGRAMS, (FAST_EXP, FAST_DIV)),
    "no probability Q/DQ": variant({**PROGRAMS, "prob_program": None}, ()),
    "score chain: mask add only": variant({**PROGRAMS, "score_program": MASK_ONLY}, ()),
    "no chain (DQ, mask add, softmax)": variant({**PROGRAMS, "score_program": MASK_ONLY, "prob_program": None}, ()),
    "no chain, fast softmax": variant({**PROGRAMS, "score_program": MASK_ONLY, "prob_program": None},
                                      (FAST_EXP, FAST_DIV)),
}


def _patched_generate(edits: tuple):
    original = qa.generate

    def generate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        source, consts, fp = original(*args, **kwargs)
        for old, new in edits:   # (the quick configs' kernel already has them: it stays as it is)
            source = source.replace(old, new)
        return source, consts, fp
    return generate


def _resources(kernel) -> str:  # noqa: ANN001 - a Triton JITFunction
    """Registers and spills of the kernel's compiled variants, where this Triton exposes them."""
    try:
        found = []
        for caches in kernel.device_caches.values():
            for compiled in caches[0].values():
                found.append(f"{compiled.n_regs} regs, {compiled.n_spills} spills")
        return "; ".join(found)
    except Exception:  # noqa: BLE001 - diagnostic only
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    b, h, s, d = args.batch, 12, 128, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randint(-60, 60, (b, h, s, d), device="cuda", generator=g, dtype=torch.int8) for _ in range(3))
    mask = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float16)
    mask[::3, ..., s * 3 // 4:] = -float("inf")
    out_scale = torch.tensor(OUT_SCALE, device="cuda", dtype=torch.float16)
    out_zp = torch.tensor(OUT_ZP, device="cuda", dtype=torch.int8)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; [{b}, {h}, {s}, {d}]; us per call "
          f"(median of {args.iters})")
    qf, kf, vf = (t.to(torch.float16) * 0.02 for t in (q, k, v))
    sdpa = cuda_median_ms(lambda: sdpa_attention(qf, kf, vf, mask), args.iters) * 1000
    print(f"  SDPA fp16 (no quantization)                 {sdpa:8.1f}")
    try:
        from kiln.kernels.triton import attention as ta
        best = min(cuda_median_ms(lambda c=c: ta.attention(qf, kf, vf, mask, config=dict(c)), args.iters)
                   for c in ta.CONFIGS) * 1000
        print(f"  kiln fp16 attention kernel, best config      {best:8.1f}")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"  kiln fp16 attention kernel FAILED {type(exc).__name__}: {exc}"[:300])
    for name, var in VARIANTS.items():
        programs = var["programs"]
        want = REF(q, k, v, mask, out_scale, out_zp, out_dtype=3, **programs)
        qa.generate, original = _patched_generate(var["edits"]), qa.generate
        qa._GENERATED.clear()
        try:
            rows = []
            for cfg in qa.CONFIGS:
                run = lambda c=cfg: qa.qdq_attention(q, k, v, mask, out_scale, out_zp, out_dtype=3,  # noqa: E731
                                                     config=dict(c), **programs)
                got = run()
                why = mismatch(got, want, "kiln::QDQAttention")
                steps = int((got.to(torch.int32) - want.to(torch.int32)).abs().max())
                us = cuda_median_ms(run, args.iters) * 1000
                kernel = next(iter(qa._GENERATED.values()))[0]
                rows.append((us, cfg, why, steps))
                qa._GENERATED.clear()
            for us, cfg, why, steps in sorted(rows, key=lambda r: r[0]):
                print(f"  {name:36s} {str(cfg):62s} {us:8.1f}  max step {steps}"
                      + ("" if why is None else f"  FAILS THE RULE: {why}"[:200]))
            print(f"  {name:36s} compiled: {_resources(kernel)}")
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"  {name:36s} FAILED {type(exc).__name__}: {exc}"[:300])
        finally:
            qa.generate = original
            qa._GENERATED.clear()


if __name__ == "__main__":
    main()
