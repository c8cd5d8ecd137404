"""quantize_attention_output: the QuantizeLinear after attention folded into kiln::Attention.

The reference attention's requantized output against QuantizeLinear of its float output; the
pass on a small exported BERT (int8 and fp8: the attention's Transpose/Reshape chain carries
8-bit values, no QuantizeLinear is left after attention); whole engines against fp32; the
cases left alone; the tuner's tolerance rule for a requantized attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.calibration import collect_ranges
from kiln.compiler import builder
from kiln.compiler.tolerance import mismatch
from kiln.config import BuildConfig
from kiln.ir import verify
from kiln.kernels.reference.fused import attention
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantize import quantize_linear
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.int8 import quantize_layers
from kiln.precision.quantize_attention_output import OUT_SCALE, quantize_attention_output

from tiny_bert import TINY_BERT  # noqa: E402  (conftest.py puts this folder on the path)

QUANTIZERS = {"int8": quantize_layers, "fp8": quantize_fp8}
QTYPES = {"int8": "int8", "fp8": "float8_e4m3fn"}
TINY = TINY_BERT    # conftest.py's `bert` fixture exports a BERT of these sizes


def _quantized(bert, precision: str):  # noqa: ANN001, ANN202
    path, feeds, profile = bert
    graph = builder.optimized_graph(path, BuildConfig(device="cpu", profiles=(profile,)), lambda _m: None).graph
    QUANTIZERS[precision](graph, collect_ranges(graph, feeds, "minmax"))
    return graph


@pytest.mark.parametrize("out_dtype, zp", [(3, 0), (2, 128), (17, None)], ids=["int8", "uint8", "fp8"])
def test_reference_requantizes_the_float32_result(out_dtype: int, zp: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 16, generator=g) for _ in range(3))
    mask = torch.randn(2, 1, 1, 8, generator=g)
    scale = torch.tensor(0.01)
    types = {3: torch.int8, 2: torch.uint8, 17: torch.float8_e4m3fn}
    zp_t = None if zp is None else torch.tensor(zp, dtype=types[out_dtype])
    got = attention(q, k, v, mask, scale, zp_t, out_dtype=out_dtype)
    y = attention(q, k, v, mask)
    want = quantize_linear(y, scale, zp_t, output_dtype=out_dtype)
    assert got.dtype == types[out_dtype] and got.shape == y.shape
    # the same but near rounding ties, where the fused op rounds the float32 result once
    assert mismatch(got, want, "kiln::Attention") is None
    with pytest.raises(ValueError, match="per tensor"):
        attention(q, k, v, mask, torch.tensor([0.1, 0.2]), out_dtype=out_dtype)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_fold_moves_the_quantize_into_attention(bert, precision: str) -> None:  # noqa: ANN001
    graph = _quantized(bert, precision)
    atts = [n for n in graph.nodes if n.qualified_op == "kiln::Attention"]
    assert len(atts) == TINY["num_hidden_layers"]
    before = graph.op_counts()["QuantizeLinear"]
    feeds = bert[1]
    reference = [run_graph(graph, f)[graph.outputs[0].name] for f in feeds]

    assert quantize_attention_output(graph) == len(atts)
    verify(graph)
    assert graph.op_counts()["QuantizeLinear"] == before - len(atts)
    for a in atts:
        assert a.input(OUT_SCALE) is not None and a.outputs[0].dtype.name == QTYPES[precision]
        reader = a.outputs[0].consumers()[0]
        while reader.qualified_op != "kiln::QMatMul":      # Transpose, Reshape: 8-bit values now
            assert reader.op in ("Transpose", "Reshape") and reader.outputs[0].dtype.name == QTYPES[precision]
            reader = reader.outputs[0].consumers()[0]
    assert quantize_attention_output(graph) == 0, "a second run finds nothing left"
    for want, feed in zip(reference, feeds):
        got = run_graph(graph, feed)[graph.outputs[0].name]
        cos = torch.nn.functional.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0)
        assert float(cos) > 0.9999


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_engine_matches_fp32_and_reports_the_count(bert, precision: str) -> None:  # noqa: ANN001
    path, feeds, profile = bert
    fp32 = builder.build(path, BuildConfig(device="cpu", profiles=(profile,)))
    q = builder.build(path, BuildConfig(device="cpu", precision=precision, profiles=(profile,)), calibration=feeds)
    assert q.header["build"][precision]["attention_requantized"] == TINY["num_hidden_layers"]
    steps = [s for s in q.plan.steps if s.op == "kiln::Attention"]
    assert all(q.plan.slots[s.outputs[0]].dtype == QTYPES[precision] for s in steps)
    for feed in feeds:
        want, got = (np.asarray(e(**feed)["last_hidden_state"], np.float64).ravel() for e in (fp32, q))
        assert want @ got / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99


def test_left_alone_when_the_output_has_another_reader(bert) -> None:  # noqa: ANN001
    graph = _quantized(bert, "int8")
    att = next(n for n in graph.nodes if n.qualified_op == "kiln::Attention")
    graph.outputs.append(att.outputs[0])            # a graph output: pinned, stays float
    assert quantize_attention_output(graph) == TINY["num_hidden_layers"] - 1
    assert att.input(OUT_SCALE) is None and att.outputs[0].dtype.name == "float32"


def test_tolerance_for_a_requantized_attention() -> None:
    """Per element: one step, or the float16 tolerance in the output's units; more is wrong."""
    want = torch.arange(-100, 100, dtype=torch.int8)
    near = want.clone()
    near[::10] += 1                                   # 10% one step over: a float16 kernel near ties
    assert mismatch(near, want, "kiln::Attention") is None
    assert mismatch(near, want, "kiln::QMatMul") is not None      # exact epilogues: 1 in 1000 only
    far = want.clone()
    far[0] += 5
    assert "steps of torch.int8" in mismatch(far, want, "kiln::Attention")


def test_reference_per_head_channel_scales() -> None:
    """out_scale of H*D elements: element h*D + d requantizes head h, dim d (the channel of the
    [B, S, H*D] tensor the transformer makes of Y)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 8, 4, generator=g) for _ in range(3))
    scale = torch.rand(12, generator=g) * 0.02 + 0.005
    y = attention(q, k, v)
    got = attention(q, k, v, None, scale, None, out_dtype=17)
    flat = quantize_linear(y.transpose(1, 2).reshape(2, 8, 12), scale, None, axis=-1, output_dtype=17)
    assert mismatch(got, flat.reshape(2, 8, 3, 4).transpose(1, 2), "kiln::Attention") is None
    with pytest.raises(ValueError, match="take 1 or H\\*D = 12 elements"):
        attention(q, k, v, None, torch.rand(5), out_dtype=17)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_smooth_quant_per_channel_scales_fold_too(bert, precision: str) -> None:  # noqa: ANN001
    """SmoothQuant quantizes the output projection's input per channel: the attention takes those
    scales per head channel, through the Transpose(0, 2, 1, 3) + Reshape the fold checks."""
    path, feeds, profile = bert
    fp32 = builder.build(path, BuildConfig(device="cpu", profiles=(profile,)))
    config = BuildConfig(device="cpu", precision=precision, profiles=(profile,), smooth_quant=0.9)
    q = builder.build(path, config, calibration=feeds)
    assert q.header["build"][precision]["attention_requantized"] == TINY["num_hidden_layers"]
    steps = [s for s in q.plan.steps if s.op == "kiln::Attention"]
    assert all(tuple(q.plan.slots[s.inputs[OUT_SCALE]].shape) == (TINY["hidden_size"],) for s in steps)
    for feed in feeds:
        want, got = (np.asarray(e(**feed)["last_hidden_state"], np.float64).ravel() for e in (fp32, q))
        assert want @ got / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99
