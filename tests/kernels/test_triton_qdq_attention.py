"""kiln::QDQAttention's Triton kernel (kernels/triton/qdq_attention.py) against its reference
(kernels/reference/qdq_attention.py): ONNX Runtime's fully quantized attention chain in one kernel.
Interpreted on CPU at small odd sizes (keys and head dims not powers of two, a broadcast mask),
compiled with `pytest --device cuda`. Agreement is the tuner's rule for quantized attention
(compiler/tolerance.py); most codes must be equal outright."""
from __future__ import annotations

import os

import pytest
import torch

from kiln.compiler.tolerance import mismatch
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference import lookup

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton is not installed")
if kiln_triton.available():
    from kiln.kernels.triton import qdq_attention as qa

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
REF = lookup("kiln::QDQAttention").fn
OP = "kiln::QDQAttention"
C = lambda v, dtype="float16": {"const": v, "dtype": dtype}  # noqa: E731


def dq(scale, zp, code="int8"):
    return [["DequantizeLinear", ["i0", C(scale), C(zp, code)], {}]]


def qdq(ref, scale, zp, code="int8"):
    return [["QuantizeLinear", [ref, C(scale), C(zp, code)], {"output_dtype": 3 if code == "int8" else 2}],
            ["DequantizeLinear", ["t?", C(scale), C(zp, code)], {}]]


def chain(*parts):
    """Concatenated instructions, each part's "t?" reading the previous result."""
    prog = []
    for part in parts:
        for op, args, attrs in part:
            args = [f"t{len(prog) - 1}" if a == "t?" else a for a in args]
            prog.append([op, args, attrs])
    return prog


# ONNX Runtime's score chain: Q/DQ the scores, scale by 1/sqrt(D), Q/DQ, add the mask, Q/DQ.
SCORE = chain(qdq("i0", 0.031, -7), [["Mul", ["t?", C(0.2041)], {}]], qdq("t?", 0.0125, 3),
              [["Add", ["t?", "i1"], {}]], qdq("t?", 0.0392, 100))
PROB = chain(qdq("i0", 1 / 255, -128))
PROGRAMS = dict(q_program=dq(0.0107, 0), k_program=dq(0.0111, 1), v_program=dq(0.0109, 4),
                score_program=SCORE, prob_program=PROB)


def _codes(shape, seed, dtype=torch.int8):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def _inputs(b=2, h=3, lq=20, lk=20, d=24, seed=0):
    """Q, K, V codes as the transposed views ONNX Runtime's graph reads ([B, S, H, D] storage), and an
    additive padding mask [B, 1, 1, Lk] (the last keys of the last sequence masked)."""
    q = _codes((b, lq, h, d), seed).transpose(1, 2)
    k = _codes((b, lk, h, d), seed + 1).transpose(1, 2)
    v = _codes((b, lk, h, d), seed + 2).transpose(1, 2)
    mask = torch.zeros(b, 1, 1, lk, dtype=torch.float16)
    mask[-1, ..., lk - 5:] = -10.0
    return q, k, v, mask


def _both(q, k, v, mask, out=True, config=None, **programs):
    out_q = dict(out_scale=torch.tensor(0.0087, dtype=torch.float16), out_zp=torch.tensor(-3, dtype=torch.int8),
                 out_dtype=3) if out else {}
    progs = {**PROGRAMS, **programs}
    want = REF(q, k, v, mask, **out_q, **progs)
    dev = {k_: t.to(DEV) if isinstance(t, torch.Tensor) else t for k_, t in out_q.items()}
    got = qa.qdq_attention(*(t.to(DEV) if t is not None else None for t in (q, k, v, mask)), **dev, **progs,
                           config=config).cpu()
    return got, want


EXACT = [c for c in qa.CONFIGS if c.get("EXACT", 1)] if kiln_triton.available() else []
QUICK = [c for c in qa.CONFIGS if not c.get("EXACT", 1)] if kiln_triton.available() else []


@pytest.mark.parametrize("config", EXACT, ids=str)
def test_codes_are_the_references(config):
    got, want = _both(*_inputs(), config=config)
    assert got.dtype == torch.int8 and got.shape == want.shape == (2, 3, 20, 24)
    assert mismatch(got, want, OP) is None
    assert (got == want).float().mean() > 0.97 and len(torch.unique(want)) > 30


BOTH = [None, QUICK[0]] if kiln_triton.available() else []   # the exact default and a quick config


@pytest.mark.parametrize("config", BOTH, ids=str)
def test_float_output_and_no_probability_program(config):
    got, want = _both(*_inputs(lq=9, lk=33, d=16, seed=3), out=False, prob_program=None, config=config)
    assert got.dtype == torch.float16 and mismatch(got, want, OP) is None


@pytest.mark.parametrize("config", BOTH, ids=str)
def test_without_a_mask_or_score_program(config):
    q, k, v, _ = _inputs(lq=17, lk=17, d=40, seed=5)
    got, want = _both(q, k, v, None, score_program=None, config=config)
    assert mismatch(got, want, OP) is None


@pytest.mark.parametrize("config", BOTH, ids=str)
def test_uint8_codes(config):
    q, k, v, mask = (_codes(s, i, torch.uint8) if i < 3 else None for i, s in
                     enumerate([(1, 2, 12, 16)] * 3 + [None]))
    programs = dict(q_program=dq(0.0107, 128, "uint8"), k_program=dq(0.0111, 120, "uint8"),
                    v_program=dq(0.0109, 131, "uint8"), score_program=None)
    got, want = _both(q, k, v, None, **programs, config=config)
    assert mismatch(got, want, OP) is None


def _f32_programs():
    f32 = lambda v: C(v, "float32")  # noqa: E731
    dq32 = lambda s, z: [["DequantizeLinear", ["i0", f32(s), C(z, "int8")], {}]]  # noqa: E731
    qdq32 = lambda ref, s, z: [["QuantizeLinear", [ref, f32(s), C(z, "int8")], {"output_dtype": 3}],  # noqa: E731
                               ["DequantizeLinear", ["t?", f32(s), C(z, "int8")], {}]]
    return dict(q_program=dq32(0.0107, 0), k_program=dq32(0.0111, 1), v_program=dq32(0.0109, 4),
                score_program=chain(qdq32("i0", 0.031, -7), [["Mul", ["t?", f32(0.2041)], {}]],
                                    qdq32("t?", 0.0125, 3), [["Add", ["t?", "i1"], {}]], qdq32("t?", 0.0392, 100)),
                prob_program=chain(qdq32("i0", 1 / 255, -128)))


@pytest.mark.parametrize("config", BOTH, ids=str)
def test_a_float32_chain(config):
    """Scales in float32 (the chain's float type float32: no 16-bit rounding, the products in
    float32 on tensor cores, tf32x3): within the rule, the quick config too."""
    q, k, v, mask = _inputs(lq=16, lk=16, d=16, seed=9)
    got, want = _both(q, k, v, mask.float(), **_f32_programs(), config=config)
    assert mismatch(got, want, OP) is None and (got == want).float().mean() > 0.97


def test_float32_products_take_tensor_cores():
    """Every product of a float32 chain is a tf32x3 dot (IEEE float32 operands would run on the
    CUDA cores); a 16-bit chain's are plain 16-bit dots."""
    q, k, v, mask = _inputs()
    f32, _, fp = qa.generate(_f32_programs(), q, k, v, mask.float(), True)
    f16, _, _ = qa.generate(PROGRAMS, q, k, v, mask, True)
    dots = f32.count("tl.dot(")
    assert fp == torch.float32 and dots == 5 and f32.count('input_precision="tf32x3"') == dots
    assert "input_precision" not in f16 and f16.count("tl.dot(") == dots


def test_layered_tactic_gives_the_references_codes_at_any_length():
    """The chain as the unfused layers' kernels (generated Pointwise kernels, the products by torch,
    torch's softmax, QuantizeLinear's Triton kernel): the reference's values exactly, past the
    one-kernel tactic's MAX_KEYS too."""
    from kiln.tactics.qdq_attention import layered_qdq_attention
    q, k, v, mask = _inputs(b=1, h=2, lq=5, lk=qa.MAX_KEYS + 8, d=16, seed=7)
    out_q = dict(out_scale=torch.tensor(0.0087, dtype=torch.float16), out_zp=torch.tensor(-3, dtype=torch.int8),
                 out_dtype=3)
    want = REF(q, k, v, mask, **out_q, **PROGRAMS)
    dev = [t.to(DEV) for t in (q, k, v, mask)]
    got = layered_qdq_attention(*dev, **{n: t.to(DEV) if isinstance(t, torch.Tensor) else t
                                         for n, t in out_q.items()}, **PROGRAMS).cpu()
    assert torch.equal(got, want) and len(torch.unique(want)) > 30


@pytest.mark.parametrize("config", QUICK[:2], ids=str)
def test_quick_arithmetic_is_within_the_rule(config):
    """EXACT 0 (QuantizeLinear by the reciprocal of the scale) at BERT's 128 keys and 64 dims:
    every code within the tuner's rule, one step off at most, almost all equal."""
    got, want = _both(*_inputs(b=1, h=2, lq=64, lk=128, d=64, seed=3), config=config)
    assert mismatch(got, want, OP) is None
    assert (got.int() - want.int()).abs().max() <= 1 and (got == want).float().mean() > 0.97


@pytest.mark.parametrize("config", [EXACT[1], QUICK[0]] if kiln_triton.available() else [], ids=str)
def test_a_mask_per_query_and_padded_tiles(config):
    """A causal mask [1, 1, Lq, Lk] (a row per query, read as a tile, not one broadcast row) at
    sizes with padding lanes in every dimension, and at full tiles with a bool mask whose masked
    scores are one constant (a value many elements hold: it must be rounded as the reference
    rounds it, or they all move at once)."""
    share = 0.97
    q, k, v, _ = _inputs(b=1, h=2, lq=19, lk=23, d=24, seed=13)
    causal = torch.triu(torch.full((19, 23), -10.0, dtype=torch.float16), diagonal=1)[None, None]
    got, want = _both(q, k, v, causal, config=config)
    assert mismatch(got, want, OP) is None and (got == want).float().mean() > share
    q, k, v, _ = _inputs(b=1, h=1, lq=64, lk=64, d=32, seed=14)
    keep = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.2
    where = [["Where", ["i1", "t?", C(-3.0)], {}]]
    score = chain(qdq("i0", 0.031, -7), where, qdq("t?", 0.0392, 100))
    got, want = _both(q, k, v, keep, config=config, score_program=score)
    assert mismatch(got, want, OP) is None and (got == want).float().mean() > share


# A QOperator model's mask: QLinearAdd's 8-bit codes, dequantized inside the score program.
CODE_MASK_SCORE = [["QuantizeLinear", ["i0", C(0.031), C(-7, "int8")], {"output_dtype": 3}],
                   ["DequantizeLinear", ["t0", C(0.031), C(-7, "int8")], {}],
                   ["DequantizeLinear", ["i1", C(0.05), C(-2, "int8")], {}],
                   ["Add", ["t1", "t2"], {}],
                   ["QuantizeLinear", ["t3", C(0.0392), C(100, "int8")], {"output_dtype": 3}],
                   ["DequantizeLinear", ["t4", C(0.0392), C(100, "int8")], {}]]


@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("config", [EXACT[0], QUICK[1]] if kiln_triton.available() else [], ids=str)
def test_a_mask_of_8_bit_codes(config, per_query):
    """The mask as int8 codes (ONNX Runtime's QOperator attention adds it with QLinearAdd), one row
    broadcast over the queries or one per query ([B, H, Lq, Lk]), dequantized by the score program."""
    q, k, v, _ = _inputs(b=2, h=2, lq=16, lk=21, d=16, seed=31)
    mask = torch.full((2, 2 if per_query else 1, 16 if per_query else 1, 21), -2, dtype=torch.int8)
    mask[-1, ..., 16:] = -128                     # (-128 + 2) * 0.05 = -6.3 on the last keys
    got, want = _both(q, k, v, mask, config=config, score_program=CODE_MASK_SCORE)
    assert mismatch(got, want, OP) is None and (got == want).float().mean() > 0.97


@pytest.mark.parametrize("keys", [51, 102, 128])
@pytest.mark.parametrize("config", [EXACT[1], QUICK[0]] if kiln_triton.available() else [], ids=str)
def test_saturated_scores_give_equal_probabilities_on_a_tie(config, keys):
    """Every score past the first Q/DQ's range: each row's scores are one code, p = 1 / keys for all;
    with the probabilities' scale 1 / 255, 102 keys put every p of the row on a rounding boundary at
    once (255 / 102 = 2.5), 51 on a code (5). The codes are the reference's, not a step off together."""
    q, k, v, _ = _inputs(b=1, h=2, lq=16, lk=keys, d=32, seed=21)
    q, k = torch.full_like(q, 100), torch.full_like(k, 90)
    score = chain(qdq("i0", 0.001, 0), [["Mul", ["t?", C(0.125)], {}]], qdq("t?", 0.0125, 3),
                  [["Add", ["t?", "i1"], {}]], qdq("t?", 0.0392, 100))
    got, want = _both(q, k, v, torch.zeros(1, 1, 1, keys, dtype=torch.float16), config=config, score_program=score)
    assert torch.equal(got, want)


def test_quick_programs_multiply_by_the_reciprocal():
    """The quick kernel's score and probability programs quantize by quantize_value (the scale's
    reciprocal, no correctly rounded division) and keep every 16-bit rounding, and its softmax
    takes tl.exp and the row's reciprocal sum; the exact kernel's divide (quantize_code), torch's
    expf and a correctly rounded division per probability."""
    q, k, v, mask = _inputs()
    quick, _, _ = qa.generate(PROGRAMS, q, k, v, mask, True, exact=False)
    exact, _, _ = qa.generate(PROGRAMS, q, k, v, mask, True)
    body = lambda src: src[src.index("def score_program"):src.index("def kiln_qdq_attention")]  # noqa: E731
    assert "quantize_value(" in body(quick) and "quantize_code" not in body(quick)
    # every DQ, Mul and Add result rounded to float16: three DQ, the Mul, the Add, the probabilities' DQ
    assert body(quick).count("in_precision(") == 6
    assert "quantize_code(" in body(exact) and "quantize_value" not in body(exact)
    kernel = lambda src: src[src.index("def kiln_qdq_attention"):]  # noqa: E731
    assert "softmax_ratio_quick(" in kernel(quick) and "exp_f32(" not in kernel(quick)
    assert "softmax_ratio(" in kernel(exact) and "exp_f32(" in kernel(exact) and "tl.exp(" not in kernel(exact)


@pytest.mark.parametrize("config", [EXACT[0], QUICK[1]] if kiln_triton.available() else [], ids=str)
def test_keys_past_one_tile_are_walked_twice(config):
    """Past MAX_KEYS the kernel walks the keys in blocks: the row's maximum and sum first (online),
    then the probabilities and P V; a ragged last block, the padding mask on the last keys."""
    got, want = _both(*_inputs(b=1, h=2, lq=6, lk=qa.MAX_KEYS + 37, d=16, seed=11), config=config)
    assert mismatch(got, want, OP) is None
    assert (got == want).float().mean() > 0.97


def test_tactics_the_tuner_is_offered():
    """A BERT-shaped layer gets the kernel, the layered floor and the reference; a head past
    MAX_HEAD_DIM or a float8 output leaves the kernel out (the layered tactic still runs it)."""
    from kiln.tactics.registry import TacticQuery, candidates

    def names(head: int = 64, out_dtype: int = 3, keys: int = 128, mask: str = "float16",
              mask_shape: tuple | None = None, **programs) -> list[str]:
        shape = (32, 12, keys, head)
        query = TacticQuery(OP, "cuda", ("int8", "int8", "int8", mask, "float16", "int8"),
                            {**PROGRAMS, "out_dtype": out_dtype, **programs},
                            (shape, shape, shape, mask_shape or (32, 1, 1, keys), (), ()))
        return [t.name for t in candidates(query)]
    assert names() == [f"{OP}.layered", f"{OP}.triton", f"{OP}.reference"]
    # a QOperator model's mask: int8 codes, one row per query, a symbolic head dim
    assert names(mask="int8", mask_shape=(32, "unk", 128, 128), score_program=CODE_MASK_SCORE) == names()
    assert names(keys=512) == names()                                   # past one tile: two walks
    assert f"{OP}.triton" not in names(head=256) and f"{OP}.layered" in names(head=256)
    assert f"{OP}.triton" not in names(out_dtype=17)                     # float8_e4m3fn
