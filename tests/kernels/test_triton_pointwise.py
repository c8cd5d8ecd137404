"""The generated kiln::Pointwise Triton kernel against the reference op.

CPU tests run the kernels in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU) on tiny shapes; `gpu` tests run the same checks on CUDA over the
tactic's whole domain (dtypes, broadcast patterns, every tuning config, odd sizes).
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from kiln.kernels import triton as kiln_triton

pytestmark = [pytest.mark.skipif(not kiln_triton.available(), reason="Triton is not installed"),
              pytest.mark.usefixtures("kernel_device"),
              # the interpreter's numpy warns on the inf/NaN cases the tests make on purpose
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

if kiln_triton.available():
    from kiln.kernels.triton import pointwise as pw
    from kiln.kernels.triton.pointwise_ops import RULES
from kiln.kernels.reference.fused import pointwise as reference
from kiln.passes.fuse_pointwise import ELEMENTWISE, QUANTIZE
from kiln.tactics.registry import TacticQuery, candidates

C = lambda v, dtype="float32": {"const": v, "dtype": dtype}  # noqa: E731

# y = Gelu(x + bias) + residual: the transformer MLP epilogue.
GELU_BIAS_RESIDUAL = [["Add", ["i0", "i1"], {}], ["Gelu", ["t0"], {}], ["Add", ["t1", "i2"], {}]]


def _tol(dtypes: set[torch.dtype]) -> dict[str, float]:
    """fp32 tolerance, or 1e-2 where the reference rounds to a 16-bit float along the way
    (it computes each op in its operands' dtype; the kernel holds floats in fp32)."""
    if torch.bfloat16 in dtypes:  # 8 mantissa bits: one ulp at |x| in [2, 4) is 0.016
        return {"rtol": 2e-2, "atol": 4e-2}
    if torch.float16 in dtypes:
        return {"rtol": 1e-2, "atol": 1e-2}
    return {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _check(program: list, *inputs: torch.Tensor, outputs: list[str] | None = None, n_outputs: int = 1,
           config: dict | None = None) -> None:
    got = pw.pointwise(*inputs, program=program, outputs=outputs, n_outputs=n_outputs, config=config)
    want = reference(*inputs, program=program, outputs=outputs, n_outputs=n_outputs)
    got, want = (got, want) if n_outputs > 1 else ((got,), (want,))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        if w.dtype.is_floating_point:
            tol = _tol({w.dtype} | {t.dtype for t in inputs})
            torch.testing.assert_close(g.float(), w.float(), equal_nan=True, **tol)
        else:
            assert torch.equal(g, w), (g, w)


def test_gelu_bias_residual_is_one_kernel_with_one_load_per_input_and_one_store() -> None:
    src = pw.generate_source(GELU_BIAS_RESIDUAL, ["float16"] * 3, [(8, 16), (16,), (8, 16)])
    assert src.count("@triton.jit") == 1
    assert len(re.findall(r"tl\.load\(in(\d)", src)) == 3
    assert sorted(re.findall(r"tl\.load\(in(\d)", src)) == ["0", "1", "2"]
    assert src.count("tl.store(") == 1
    assert "erf_f32(" in src                      # the Gelu is inside, not a separate kernel
    assert "x0 = tl.load(in0 + offs" in src      # dense operands use the flat index
    assert "i1 = offs % n1" in src               # the bias walks the inner dim only
    assert ".to(tl.float16)" in src              # fp32 math, fp16 store


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gelu_bias_residual_matches_reference(dtype: torch.dtype) -> None:
    x, r = torch.randn(5, 33, dtype=dtype), torch.randn(5, 33, dtype=dtype)
    _check(GELU_BIAS_RESIDUAL, x, torch.randn(33, dtype=dtype), r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_broadcast_patterns(dtype: torch.dtype) -> None:
    add_mul = [["Add", ["i0", "i1"], {}], ["Mul", ["t0", C(0.125)], {}]]
    _check(add_mul, torch.randn(3, 7, dtype=dtype), torch.randn((), dtype=dtype))         # rank-0 input
    _check(add_mul, torch.randn(3, 7, dtype=dtype), torch.randn(3, 1, dtype=dtype))       # column
    _check(add_mul, torch.randn(1, 7, dtype=dtype), torch.randn(3, 1, dtype=dtype))       # outer product
    _check(add_mul, torch.randn(7, 3, dtype=dtype).t(), torch.randn(7, dtype=dtype))      # transposed input
    mask = [["Where", ["i1", "i0", C(-math.inf)], {}], ["Mul", ["t0", C(0.5)], {}]]
    _check(mask, torch.randn(2, 3, 4, 5, dtype=dtype), torch.rand(2, 1, 1, 5) > 0.4)      # [B,1,1,S] mask
    add_mask = [["Mul", ["i0", C(0.5)], {}], ["Add", ["t0", "i1"], {}]]
    _check(add_mask, torch.randn(2, 3, 4, 5, dtype=dtype), torch.randn(2, 1, 4, 1, dtype=dtype))


def test_channels_last_stays_channels_last_and_merges_to_one_dim() -> None:
    x = torch.randn(2, 6, 3, 5).to(memory_format=torch.channels_last)
    bias = torch.randn(1, 6, 1, 1)
    prog = [["Add", ["i0", "i1"], {}], ["Relu", ["t0"], {}]]
    got = pw.pointwise(x, bias, program=prog)
    assert got.is_contiguous(memory_format=torch.channels_last)
    _check(prog, x, bias)
    src = pw.generate_source(prog, ["float32"] * 2, [x.shape, bias.shape], input_strides=[x.stride(), bias.stride()])
    assert "rank 2; operands: ['dense', 'strided', 'dense']" in src   # [N*H*W, C], bias along C


def test_multi_output_and_output_narrower_than_the_space() -> None:
    # Greater reads an input: the reference rounds computed fp16 values before comparing, so
    # a bool of a computed value may rightly differ at the threshold.
    prog = [["Add", ["i0", "i1"], {}], ["Sigmoid", ["t0"], {}], ["Neg", ["i1"], {}], ["Greater", ["i0", C(0.5)], {}]]
    x, b = torch.randn(4, 6), torch.randn(6)
    _check(prog, x, b, outputs=["t1", "t0", "t2", "t3"], n_outputs=4)
    _check(prog, x.half(), b.half(), outputs=["t3", "t1"], n_outputs=2)
    # An output narrower than the space is stored once per element: by the lanes at index 0
    # of the dims it is broadcast over.
    src = pw.generate_source(prog, ["float32"] * 2, [(4, 6), (6,)], outputs=["t1", "t2"], n_outputs=2)
    assert "tl.store(out1 + i1, t2, mask=mask & (i0 == 0))" in src
    neg_add = [["Neg", ["i1"], {}], ["Add", ["i0", "t0"], {}]]
    _check(neg_add, x, torch.randn(()), outputs=["t0", "t1"], n_outputs=2)     # a rank-0 output
    _check(neg_add, torch.randn(()), torch.randn(()))                         # all rank 0


# (program, input makers): every rule at least once, in float32, on odd sizes.
def _pos(*s: int) -> torch.Tensor:
    return torch.rand(*s) + 0.1


def _any(*s: int) -> torch.Tensor:
    return torch.randn(*s) * 2


def _codes(*s: int) -> torch.Tensor:
    return torch.randint(0, 256, s, dtype=torch.uint8)


_UNARY_FLOAT = ["Neg", "Abs", "Sign", "Identity", "Reciprocal", "Exp", "Erf", "Floor", "Ceil", "Tanh", "Sigmoid",
                "Relu", "LeakyRelu", "ThresholdedRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
                "Softplus", "Softsign", "Mish", "Shrink", "Gelu"]
OP_CASES = (
    [([[op, ["i0"], {}]], [_any]) for op in _UNARY_FLOAT]
    + [([["Sqrt", ["i0"], {}]], [_pos]), ([["Log", ["i0"], {}]], [_pos]),
       ([["Gelu", ["i0"], {"approximate": "tanh"}]], [_any]),
       ([["LeakyRelu", ["i0"], {"alpha": 0.2}]], [_any]),
       ([["Pow", ["i0", "i1"], {}]], [_pos, _any]),
       ([["Pow", ["i0", C(3.0)], {}]], [_any]),
       ([["Pow", ["i0", C(2, "int64")], {}]], [_any]),
       ([["Clip", ["i0", C(-0.5), C(0.5)], {}]], [_any]),
       ([["Clip", ["i0", None, C(0.5)], {}]], [_any]),
       ([["Max", ["i0", "i1", C(0.0)], {}]], [_any, _any]),
       ([["Min", ["i0", "i1"], {}]], [_any, _any]),
       ([["Sum", ["i0", "i1", "i0"], {}]], [_any, _any]),
       ([["Mean", ["i0", "i1"], {}]], [_any, _any]),
       ([["Sub", ["i0", "i1"], {}], ["Div", ["t0", "i1"], {}]], [_any, _pos]),
       ([["PRelu", ["i0", "i1"], {}]], [_any, _any]),
       ([["Equal", ["i0", "i0"], {}], ["Less", ["i0", "i1"], {}], ["LessOrEqual", ["i0", "i1"], {}],
         ["GreaterOrEqual", ["i0", "i1"], {}], ["Xor", ["t1", "t2"], {}], ["Greater", ["i1", "i0"], {}],
         ["Or", ["t0", "t3"], {}],
         ["And", ["t6", "t4"], {}], ["Not", ["t7"], {}], ["And", ["t8", "t5"], {}]], [_any, _any]),
       ([["Div", ["i0", C(0.0)], {}], ["IsInf", ["t0"], {}], ["IsNaN", ["t0"], {}], ["Or", ["t1", "t2"], {}]],
        [_any]),
       ([["Cast", ["i0"], {"to": 10}], ["Cast", ["t0"], {"to": 6}], ["Cast", ["t1"], {"to": 9}],
         ["Where", ["t2", "t0", "i0"], {}]], [_any]),
       ([["Cast", ["i0"], {"to": 7}], ["Add", ["t0", C(3, "int64")], {}], ["Mul", ["t1", "t1"], {}],
         ["Cast", ["t2"], {"to": 1}]], [_any]),
       ([["CastLike", ["i0", "i1"], {}], ["Add", ["t0", C(1.5)], {}]], [_any, lambda *s: _any(*s).half()]),
       ([["DequantizeLinear", ["i0", C(0.05), C(128, "uint8")], {}], ["Add", ["t0", "i1"], {}],
         ["QuantizeLinear", ["t1", C(0.07), C(3, "int8")], {}]], [_codes, _any])]
)


def test_every_rule_has_a_case() -> None:
    covered = {ins[0] for prog, _ in OP_CASES for ins in prog}
    assert covered == set(RULES)
    assert set(RULES) <= ELEMENTWISE | QUANTIZE   # the generator writes only what fuse_pointwise groups


@pytest.mark.parametrize("case", range(len(OP_CASES)))
def test_op_matches_reference(case: int) -> None:
    program, makers = OP_CASES[case]
    torch.manual_seed(case)
    _check(program, *[m(3, 13) for m in makers])


def test_integer_and_bool_inputs() -> None:
    prog = [["Add", ["i0", "i1"], {}], ["Greater", ["t0", C(2, "int64")], {}], ["Where", ["t1", "i2", C(0.0)], {}]]
    a, b = torch.randint(-5, 5, (4, 9)), torch.randint(-5, 5, (9,), dtype=torch.int32)
    _check(prog, a, b, torch.randn(4, 9))
    _check([["Not", ["i0"], {}], ["And", ["t0", "i1"], {}]], torch.rand(2, 5) > 0.5, torch.rand(5) > 0.5)


def test_constants_round_to_the_operands_type_and_non_finite_constants() -> None:
    # fp16 x * fp32 scalar: torch computes in fp16, so the constant is rounded to fp16 first.
    src, consts = pw.generate([["Mul", ["i0", C(0.1)], {}], ["Max", ["t0", C(-math.inf)], {}]], ["float16"], [(4,)])
    assert "t0 = x0 * k0" in src and "k1" in src
    assert consts == {"k0": float(torch.tensor(0.1).half()), "k1": -math.inf}
    _check([["Mul", ["i0", C(0.1)], {}], ["Max", ["t0", C(-math.inf)], {}]], torch.randn(4, 5).half())
    x = torch.tensor([0.0, -1.0, float("nan"), float("inf"), 2.0])
    _check([["Relu", ["i0"], {}], ["Tanh", ["t0"], {}]], x)


def test_runtime_fallback_past_max_rank() -> None:
    # 7 dims that cannot merge (every other one broadcasts): the reference op runs instead.
    x, b = torch.randn(*([2] * 7)), torch.randn(2, 1, 2, 1, 2, 1, 2)
    _check([["Add", ["i0", "i1"], {}], ["Relu", ["t0"], {}]], x, b)


def test_supports() -> None:
    prog = GELU_BIAS_RESIDUAL
    q = lambda device, dtypes, shapes=(), p=prog: TacticQuery("kiln::Pointwise", device, dtypes,  # noqa: E731
                                                             {"program": p, "n_outputs": 1}, shapes)
    names = lambda query: [t.name for t in candidates(query)]  # noqa: E731
    assert "kiln::Pointwise.triton" in names(q("cuda", ("float16",) * 3))
    assert "kiln::Pointwise.triton" in names(q("cuda", ("bfloat16",) * 3, ((2, "S", 8), (8,), (2, "S", 8))))
    assert "kiln::Pointwise.triton" not in names(q("cpu", ("float16",) * 3))
    assert "kiln::Pointwise.triton" not in names(q("cuda", ("float64",) * 3))
    assert "kiln::Pointwise.triton" not in names(q("cuda", ("float32",) * 3, ((1,) * 7, (1,), (1,))))
    rounding = [["Add", ["i0", "i1"], {}], ["Round", ["t0"], {}]]
    assert "kiln::Pointwise.triton" not in names(q("cuda", ("float32",) * 2, p=rounding))
    int_div = [["Add", ["i0", "i1"], {}], ["Div", ["t0", "i1"], {}]]
    assert "kiln::Pointwise.triton" not in names(q("cuda", ("int64",) * 2, p=int_div))
    assert not pw.supports_program([["Gelu", ["i0"], {"approximate": "erf"}], ["Neg", ["t0"], {}]], ["float32"])


# ---------------------------------------------------------------------------- GPU

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("config", pw.CONFIGS if kiln_triton.available() else [])
def test_gpu_gelu_bias_residual_every_config(dtype: torch.dtype, config: dict) -> None:
    for m, n in [(1, 1), (7, 33), (129, 1000), (256, 4096)]:
        x, b, r = (torch.randn(m, n, dtype=dtype, device="cuda"), torch.randn(n, dtype=dtype, device="cuda"),
                   torch.randn(m, n, dtype=dtype, device="cuda"))
        _check(GELU_BIAS_RESIDUAL, x, b, r, config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_broadcast_patterns_and_multi_output(dtype: torch.dtype) -> None:
    dev = "cuda"
    add_mul = [["Add", ["i0", "i1"], {}], ["Mul", ["t0", C(0.125)], {}]]
    _check(add_mul, torch.randn(37, 71, dtype=dtype, device=dev), torch.randn((), dtype=dtype, device=dev))
    _check(add_mul, torch.randn(37, 71, dtype=dtype, device=dev), torch.randn(37, 1, dtype=dtype, device=dev))
    _check(add_mul, torch.randn(1, 71, dtype=dtype, device=dev), torch.randn(37, 1, dtype=dtype, device=dev))
    _check(add_mul, torch.randn(71, 37, dtype=dtype, device=dev).t(), torch.randn(71, dtype=dtype, device=dev))
    mask = [["Where", ["i1", "i0", C(-math.inf)], {}], ["Mul", ["t0", C(0.5)], {}]]
    _check(mask, torch.randn(2, 12, 65, 65, dtype=dtype, device=dev), torch.rand(2, 1, 1, 65, device=dev) > 0.4)
    x = torch.randn(4, 96, 17, 17, dtype=dtype, device=dev).to(memory_format=torch.channels_last)
    _check(add_mul, x, torch.randn(1, 96, 1, 1, dtype=dtype, device=dev))
    prog = [["Add", ["i0", "i1"], {}], ["Sigmoid", ["t0"], {}], ["Neg", ["i1"], {}], ["Greater", ["i0", C(0.5)], {}]]
    _check(prog, torch.randn(33, 250, dtype=dtype, device=dev), torch.randn(250, dtype=dtype, device=dev),
           outputs=["t1", "t0", "t2", "t3"], n_outputs=4)


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(OP_CASES)))
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_op_matches_reference(case: int, dtype: torch.dtype) -> None:
    program, makers = OP_CASES[case]
    torch.manual_seed(case)
    inputs = [m(31, 257).cuda() for m in makers]
    inputs = [t.to(dtype) if t.dtype == torch.float32 else t for t in inputs]
    _check(program, *inputs)


@pytest.mark.gpu
def test_gpu_tactic_is_chosen_and_int64_indexing() -> None:
    query = TacticQuery("kiln::Pointwise", "cuda", ("float16",) * 3, {"program": GELU_BIAS_RESIDUAL, "n_outputs": 1})
    tactic = candidates(query)[0]
    assert tactic.name == "kiln::Pointwise.triton"
    x = torch.randn(2 ** 16 + 1, 2 ** 15 + 3, dtype=torch.float16, device="cuda")   # > 2**31 elements
    b = torch.randn(2 ** 15 + 3, dtype=torch.float16, device="cuda")
    got = tactic.kernel(x, b, x, program=GELU_BIAS_RESIDUAL, n_outputs=1)
    for rows in (slice(0, 3), slice(-3, None)):
        want = reference(x[rows], b, x[rows], program=GELU_BIAS_RESIDUAL)
        torch.testing.assert_close(got[rows].float(), want.float(), rtol=1e-2, atol=1e-2)


def test_layers_that_differ_only_in_constants_share_one_kernel() -> None:
    """A model repeats a program per layer with other constants (an explicitly quantized model's
    scales and zero points): the constants are kernel parameters, so the source, and the compiled
    kernel, is the same; each launch passes its own values."""
    def scaled(s: float, shift: int) -> list:
        return [["Mul", ["i0", C(s)], {}], ["Add", ["t0", C(shift, "int64")], {}], ["Relu", ["t1"], {}]]
    a, consts_a = pw.generate(scaled(0.5, 3), ["float32"], [(64,)])
    b, consts_b = pw.generate(scaled(0.25, -7), ["float32"], [(64,)])
    assert a == b and consts_a != consts_b
    assert consts_b == {"k0": 0.25, "k1": -7.0}           # the int constant added to a float: a float
    x = torch.randn(3, 50)
    _check(scaled(0.5, 3), x)
    _check(scaled(0.25, -7), x)
    assert pw._launch([x], scaled(0.5, 3), None, 1).kernel is pw._launch([x], scaled(0.25, -7), None, 1).kernel
    ints, consts = pw.generate([["Add", ["i0", C(-5, "int64")], {}]], ["int32"], [(8,)])
    assert consts == {"k0": -5} and "t0 = x0 + k0" in ints
