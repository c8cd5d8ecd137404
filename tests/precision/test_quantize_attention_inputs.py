"""quantize_attention_inputs: attention's Q, K and V as float8 codes (BuildConfig.quantize_attention).

The reference attention on codes against the float attention of their dequantized values; the pass
on a small exported BERT (its merged Q/K/V projection: one QuantizeLinear on the projection's output,
the Split, Reshape and Transpose moving float8 values, the attention holding the scales; folded into
the projection by fold_requantize); whole engines against fp32 and the build report; the cases left
alone; the option's validation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kiln.calibration import collect_ranges
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.errors import KilnError
from kiln.ir import dtypes, verify
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.fused import attention
from kiln.kernels.reference.interpret import run_graph
from kiln.precision.fold_requantize import fold_requantize
from kiln.passes.match import const_array
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.int8 import quantize_layers
from kiln.precision.quantize_attention_inputs import (CODE_SCALES, AttentionNotQuantizedWarning,
                                                      quantize_attention_inputs)

from tiny_bert import TINY_BERT  # noqa: E402  (conftest.py puts this folder on the path)

TINY = TINY_BERT    # conftest.py's `bert` fixture exports a BERT of these sizes
CODE_TYPES = {"fp8": "float8_e4m3fn", "int8": "int8"}
F32 = dtypes.FLOAT32


def _quantized(bert, precision: str = "fp8"):  # noqa: ANN001, ANN202
    """The optimised graph quantized to `precision` (its matmuls), and its calibration ranges."""
    path, feeds, profile = bert
    graph = builder.optimized_graph(path, BuildConfig(device="cpu", profiles=(profile,)), lambda _m: None).graph
    ranges = collect_ranges(graph, feeds, "minmax")
    (quantize_fp8 if precision == "fp8" else quantize_layers)(graph, ranges)
    return graph, ranges


def test_reference_dequantizes_the_codes_first() -> None:
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(2, 3, 8, 16, generator=g) * 2 for _ in range(3)]
    scales = [torch.tensor(v, dtype=torch.float16) for v in (0.01, 0.02, 0.005)]
    codes = [(t / s.float()).clamp(-448, 448).to(torch.float8_e4m3fn) for t, s in zip(x, scales)]  # saturated
    mask = torch.randn(2, 1, 1, 8, generator=g)
    got = attention(*codes, mask, None, None, *scales)
    want = attention(*(c.float() * s.float() for c, s in zip(codes, scales)), mask)
    assert got.dtype == torch.float16                      # a float Y in the scales' type
    torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="q_scale, k_scale and v_scale"):
        attention(*codes, mask, None, None, scales[0], scales[1])
    with pytest.raises(ValueError, match="one element each"):
        attention(*codes, mask, None, None, torch.ones(2), *scales[1:])


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_pass_quantizes_the_merged_projection_once(bert, precision: str) -> None:  # noqa: ANN001
    """One QuantizeLinear on the merged projection's output: fp8 one scale for Q, K and V; int8 per
    channel, one block of columns (and one scale) for each of Q, K and V."""
    graph, ranges = _quantized(bert, precision)
    code = CODE_TYPES[precision]
    feeds = bert[1]
    reference = [run_graph(graph, f)[graph.outputs[0].name] for f in feeds]
    atts = [n for n in graph.nodes if n.qualified_op == "kiln::Attention"]
    assert len(atts) == TINY["num_hidden_layers"]

    assert quantize_attention_inputs(graph, ranges, precision=precision) == len(atts)
    verify(graph)
    width = TINY["hidden_size"]
    for a in atts:
        assert all(a.input(i).dtype.name == code for i in range(3))
        node = a.input(0).producer()
        while node.op != "Split":                          # Transpose, Reshape: 8-bit values now
            assert node.op in ("Transpose", "Reshape") and node.outputs[0].dtype.name == code
            node = node.input(0).producer()
        q = node.input(0).producer()
        assert q.op == "QuantizeLinear" and q.input(0).producer().qualified_op == "kiln::QMatMul"
        scales = [const_array(a.input(i)) for i in CODE_SCALES]
        if precision == "fp8":                             # one projection: one scale for Q, K and V
            assert len({id(a.input(i)) for i in CODE_SCALES}) == 1 and q.input(1) is a.input(CODE_SCALES[0])
        else:                                              # Q's, K's, V's columns, each its own scale
            blocks = const_array(q.input(1)).reshape(3, width)
            assert all(np.all(blocks[i] == scales[i]) for i in range(3)) and len({float(x) for x in scales}) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # every attention has 8-bit inputs already: nothing to warn about
        assert quantize_attention_inputs(graph, ranges, precision=precision) == 0, "a second run finds nothing left"
    for want, feed in zip(reference, feeds):
        got = run_graph(graph, feed)[graph.outputs[0].name]
        cos = torch.nn.functional.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0)
        assert float(cos) > 0.999
    before = graph.op_counts()["QuantizeLinear"]
    fold_requantize(graph)                                 # the projection writes the codes itself
    assert graph.op_counts().get("QuantizeLinear", 0) < before
    for a in atts:
        split = a.input(0).producer().input(0).producer().input(0).producer()
        assert split.op == "Split" and split.input(0).producer().qualified_op == "kiln::QMatMul"
        assert split.input(0).dtype.name == code


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_engine_matches_fp32_and_reports_the_count(bert, precision: str) -> None:  # noqa: ANN001
    path, feeds, profile = bert
    fp32 = builder.build(path, BuildConfig(device="cpu", profiles=(profile,)))
    config = BuildConfig(device="cpu", precision=precision, profiles=(profile,), quantize_attention=True)
    q = builder.build(path, config, calibration=feeds)
    assert q.header["build"][precision]["attention_inputs_quantized"] == TINY["num_hidden_layers"]
    assert q.header["build_config"]["quantize_attention"] is True
    steps = [s for s in q.plan.steps if s.op == "kiln::Attention"]
    assert steps and all(q.plan.slots[s.inputs[i]].dtype == CODE_TYPES[precision] for s in steps for i in range(3))
    for feed in feeds:
        want, got = (np.asarray(e(**feed)["last_hidden_state"], np.float64).ravel() for e in (fp32, q))
        assert want @ got / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99


def test_left_alone_without_a_range_or_when_pinned(bert) -> None:  # noqa: ANN001
    graph, ranges = _quantized(bert)
    atts = [n for n in graph.nodes if n.qualified_op == "kiln::Attention"]
    graph.outputs.append(atts[0].input(1))                 # K a graph output: it must stay float
    split = atts[1].input(0).producer().input(0).producer().input(0).producer()
    no_range = {k: v for k, v in ranges.items() if k != split.input(0).name}
    with pytest.warns(AttentionNotQuantizedWarning, match="of 0 of 2 attention.*keep float inputs"):
        assert quantize_attention_inputs(graph, no_range) == 0
    assert all(a.input(i).dtype.name == "float32" for a in atts for i in range(3))
    assert all(a.input(i) is None for a in atts for i in CODE_SCALES)


def test_option_is_for_8_bit_builds_and_kept_in_the_engine() -> None:
    with pytest.raises(KilnError, match="quantize_attention gives attention 8-bit Q, K and V"):
        BuildConfig(precision="fp16", quantize_attention=True)
    config = BuildConfig(precision="fp8", quantize_attention=True)
    assert BuildConfig.from_json(config.to_json()).quantize_attention
    assert "quantize_attention" not in BuildConfig(precision="fp8").to_json()


def test_a_layer_precision_rule_keeps_an_attention_float(bert) -> None:  # noqa: ANN001
    """--layer-precision on the attention's source nodes keeps its Q, K and V float, silently; the
    other attention still takes codes."""
    path, feeds, profile = bert
    config = BuildConfig(device="cpu", precision="fp8", profiles=(profile,), quantize_attention=True,
                         layer_precision=(("/bert/encoder/layer.0/attention/self/Softmax", "fp32"),))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionNotQuantizedWarning)
        q = builder.build(path, config, calibration=feeds)
    assert q.header["build"]["fp8"]["attention_inputs_quantized"] == TINY["num_hidden_layers"] - 1
    steps = [s for s in q.plan.steps if s.op == "kiln::Attention"]
    assert sorted(q.plan.slots[s.inputs[0]].dtype for s in steps) == ["float32", "float8_e4m3fn"]


def test_accuracy_budget_ranks_the_attentions_too(bert) -> None:  # noqa: ANN001
    """With --quantize-attention the budget search's candidates are the quantized matmuls and the
    attentions (keeping one wider leaves its Q, K and V float); the plan it returns meets the budget."""
    from kiln.compiler.accuracy_budget import search
    path, feeds, profile = bert
    config = BuildConfig(device="cpu", precision="fp8", profiles=(profile,), quantize_attention=True, tune=False)
    plain = search(path, config, ("cosine", -1.0), calibration=feeds)
    target = min(1.0, plain.reduced + (1.0 - plain.reduced) * 0.9)   # most of the way to exact
    result = search(path, config, ("cosine", target), calibration=feeds)
    assert result.candidates == plain_quantized(path, profile, feeds) + TINY["num_hidden_layers"]
    assert result.kept and result.achieved >= target


def plain_quantized(path: str, profile, feeds) -> int:  # noqa: ANN001
    """How many matmuls an fp8 build of the tiny BERT quantizes."""
    engine = builder.build(path, BuildConfig(device="cpu", precision="fp8", profiles=(profile,), tune=False),
                           calibration=feeds)
    return len(engine.header["build"]["fp8"]["quantized"])


def _separate_projections() -> tuple[Graph, dict[str, torch.Tensor]]:
    """x_i [2, 8, 32] -> MatMul(W_i) -> Reshape [2, 8, 2, 16] -> Transpose -> q, k, v of one
    attention: three projections, no Split (a model whose projections did not merge)."""
    g = Graph("g", 17)
    rng = np.random.default_rng(4)
    feed, shape4 = {}, g.constant(np.array([2, 8, 2, 16], np.int64), "shape4")
    qkv = []
    for i, name in enumerate("qkv"):
        x = Value(f"x_{name}", F32, (2, 8, 32))
        g.inputs.append(x)
        feed[x.name] = torch.from_numpy(rng.standard_normal((2, 8, 32)).astype(np.float32) * (1 + 2 * i))
        w = g.constant(rng.standard_normal((32, 32)).astype(np.float32) / 6, f"w_{name}")
        m, r, t = (g.value(f"{name}_{s}", F32, sh) for s, sh in
                   (("mm", (2, 8, 32)), ("r", (2, 8, 2, 16)), ("t", (2, 2, 8, 16))))
        g.add_node(Node("MatMul", [x, w], [m], name=f"mm_{name}"))
        g.add_node(Node("Reshape", [m, shape4], [r], name=f"reshape_{name}"))
        g.add_node(Node("Transpose", [r], [t], {"perm": [0, 2, 1, 3]}, name=f"transpose_{name}"))
        qkv.append(t)
    y = g.value("y", F32, (2, 2, 8, 16))
    g.add_node(Node("Attention", qkv, [y], {"scale": 0.25}, name="attention", domain="kiln"))
    g.outputs.append(y)
    return g, feed


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_separate_projections_each_get_their_own_scale(precision: str) -> None:
    g, feed = _separate_projections()
    ranges = collect_ranges(g, [feed], "minmax")
    want = run_graph(g, feed)["y"]
    assert quantize_attention_inputs(g, ranges, precision=precision) == 1
    verify(g)
    attention = next(n for n in g.nodes if n.qualified_op == "kiln::Attention")
    quantizers = [n for n in g.nodes if n.op == "QuantizeLinear"]
    assert len(quantizers) == 3 and all(q.input(0).producer().op == "MatMul" for q in quantizers)
    assert [attention.input(i) for i in CODE_SCALES] == [q.input(1) for q in quantizers]   # q, k, v in order
    assert len({float(const_array(attention.input(i))) for i in CODE_SCALES}) == 3
    assert all(attention.input(i).dtype.name == CODE_TYPES[precision] for i in range(3))
    got = run_graph(g, feed)["y"]
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0)
    assert float(cos) > 0.99           # 8-bit Q, K, V of random data (float8 0.998); a wrong scale is far off
