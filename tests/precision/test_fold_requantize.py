"""fold_requantize: QuantizeLinear folded into the kiln::QMatMul/QConv that feeds it.

The structure after the pass (the QuantizeLinear gone, the layer with out_scale/out_zp and
out_dtype writing its output), the numbers (the intermediate within one quantization step of
the unfolded chain, engines with and without the fold within the bound that step implies,
and the documented rounding difference at a constructed tie), and the cases left alone."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto

from kiln.calibration import collect_ranges
from kiln.compiler import builder, quantize_step
from kiln.config import BuildConfig
from kiln.ir import verify
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantized import qmatmul
from kiln.precision.fold_requantize import OUT_SCALE, fold_requantize
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.int8 import quantize_layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
from graphs import Builder  # noqa: E402 (tests/passes: IR graphs built with sample data)
from test_int8 import BATCH, batches, cnn, mlp  # noqa: E402 (the int8 tests' models and data)

QUANTIZERS = {"int8": quantize_layers, "fp8": quantize_fp8}
QTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
MODELS = {"mlp": (mlp, (BATCH, 16)), "cnn": (cnn, (BATCH, 3, 8, 8))}


def _quantized_graph(model: str, precision: str) -> Graph:
    """The graph the builder quantizes: optimised fp32, calibrated (minmax: quicker than entropy,
    same structure), its layers quantized (no fold yet)."""
    make, shape = MODELS[model]
    graph = builder.optimized_graph(make(), BuildConfig(device="cpu"), lambda _m: None).graph
    QUANTIZERS[precision](graph, collect_ranges(graph, batches(shape), "minmax"))
    return graph


def _foldable(graph: Graph) -> list[Node]:
    """The QuantizeLinear nodes that read a quantized layer's float output."""
    return [n for n in graph.nodes if n.op == "QuantizeLinear" and n.input(0).producer() is not None
            and n.input(0).producer().qualified_op in ("kiln::QMatMul", "kiln::QConv")]


def _ordinal(t: torch.Tensor) -> torch.Tensor:
    """Quantized values as integers one apart per step: int8 as is; float8 e4m3 by its bits
    (magnitude bits are monotone in the value; the sign bit mirrors them)."""
    if t.dtype == torch.int8:
        return t.to(torch.int64)
    bits = t.view(torch.uint8).to(torch.int64)
    return torch.where(bits >= 128, -(bits - 128), bits)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fold_leaves_the_layer_writing_the_quantized_tensor(model: str, precision: str) -> None:
    unfolded, folded = _quantized_graph(model, precision), _quantized_graph(model, precision)
    (q,) = _foldable(folded)
    layer, y, y_q = q.input(0).producer(), q.input(0), q.outputs[0]
    scale, zp = q.input(1), q.input(2)
    n_quantize = folded.op_counts()["QuantizeLinear"]

    assert fold_requantize(folded)
    verify(folded)
    assert folded.op_counts()["QuantizeLinear"] == n_quantize - 1 and q.graph is None
    assert layer.graph is folded and layer.outputs == [y_q] and y_q.producer() is layer and y.producer() is None
    assert layer.input(OUT_SCALE) is scale and layer.input(OUT_SCALE + 1) is zp
    assert layer.attrs["out_dtype"] == y_q.dtype.onnx and y_q.dtype.torch == QTYPES[precision]
    assert zp is None if precision == "fp8" else zp.dtype.name == "int8"
    assert not fold_requantize(folded), "a second run finds nothing left to fold"

    # The quantized intermediate: within one step of the unfolded chain's, element by element.
    for g in (unfolded, folded):
        g.outputs.append(next(v for v in g.values() if v.name == y_q.name))
    for feed in batches(MODELS[model][1]):
        want, got = run_graph(unfolded, feed), run_graph(folded, feed)
        assert got[y_q.name].dtype == want[y_q.name].dtype == QTYPES[precision]
        steps = (_ordinal(got[y_q.name]) - _ordinal(want[y_q.name])).abs()
        assert int(steps.max()) <= 1 and float((steps == 0).double().mean()) >= 0.99


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_engines_with_and_without_the_fold_agree(precision: str, monkeypatch) -> None:  # noqa: ANN001
    """mlp: QMatMul(relu) -> QMatMul; the second layer turns one step s_x of each input element
    into at most s_x * step * max_n sum_k |W_q[k, n] * s_w[n]| at the output."""
    config = BuildConfig(device="cpu", precision=precision, calib_method="minmax")  # as _quantized_graph
    folded = builder.build(mlp(), config, calibration=batches((BATCH, 16)))
    with monkeypatch.context() as m:
        m.setattr(quantize_step, "fold_requantize", lambda _graph: False)
        unfolded = builder.build(mlp(), config, calibration=batches((BATCH, 16)))
    assert [s.op for s in folded.plan.steps] == ["QuantizeLinear", "kiln::QMatMul", "kiln::QMatMul"]
    assert [s.op for s in unfolded.plan.steps].count("QuantizeLinear") == 2
    assert folded.header["build"][precision]["requantize_folded"] == 1
    assert unfolded.header["build"][precision]["requantize_folded"] == 0

    second = _quantized_graph("mlp", precision).nodes[-1]  # the reading QMatMul: (a, b, a_scale, a_zp, b_scale)
    w = second.input(1).const
    w = (w.float() if isinstance(w, torch.Tensor) else torch.from_numpy(w).float()).double()
    gain = float((w.abs() * torch.from_numpy(second.input(4).const).double()).sum(0).max())
    step = {"int8": 1.0, "fp8": 32.0}[precision]  # the widest step of the quantized type (fp8: 256..448)
    bound = float(second.input(2).const) * step * gain
    for feed in batches((BATCH, 16)):
        a, b = np.asarray(folded(**feed)["y"]), np.asarray(unfolded(**feed)["y"])
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=bound)


def test_the_fold_rounds_once_where_the_chain_rounds_twice() -> None:
    """v = 1 * 1 * (1 + 2^-23) * (1 - 2^-24) = 1 + 2^-24 - 2^-47, quantized with scale 2:
    v / 2 lies just above the tie 0.5, so the exact answer is 1. The unfused chain first rounds
    v to float32 (1.0: within half an ulp), then Q rounds 0.5 half to even: 0. One step apart,
    the folded layer on the exact side (kernels/reference/quantized.py, last paragraph)."""
    b = Builder()
    a = b.input("a", (1, 1), "int8", data=np.ones((1, 1), np.int8))
    a_scale = b.const(np.float32(1 + 2.0**-23), "a_scale")
    w_scale = b.const(np.float32(1 - 2.0**-24), "w_scale")
    w = b.const(np.ones((1, 1)), "w", "int8")
    y = b.op("QMatMul", a, w, a_scale, None, w_scale, domain="kiln", out_dtype=0)
    y_q = b.op("QuantizeLinear", y, b.const(2.0, "s"), b.const(0, "zp", "int8"))
    graph = b.output(y_q)
    # The float output is exactly the tie once rounded to float32 ...
    float_y = qmatmul(torch.ones((1, 1), dtype=torch.int8), torch.ones((1, 1), dtype=torch.int8),
                      torch.tensor(a_scale.const), None, torch.tensor(w_scale.const))
    assert float_y.dtype == torch.float32 and float(float_y) == 1.0
    assert int(run_graph(graph, b.feeds)[y_q.name]) == 0  # ... and Q rounds 0.5 to even
    assert fold_requantize(graph)
    verify(graph)
    assert [n.qualified_op for n in graph.nodes] == ["kiln::QMatMul"]
    assert int(run_graph(graph, b.feeds)[y_q.name]) == 1


def _layer_then_quantize(b: Builder, **q_attrs):  # noqa: ANN003, ANN202
    """int8 a -> kiln::QMatMul (float output y) -> QuantizeLinear -> y_q; returns (y, y_q)."""
    rng = np.random.default_rng(1)
    a = b.input("a", (3, 8), "int8", data=rng.integers(-127, 128, (3, 8)).astype(np.int8))
    y = b.op("QMatMul", a, b.const(rng.integers(-127, 128, (8, 4)), "w", "int8"), b.const(0.02, "a_scale"),
             b.const(0, "a_zp", "int8"), b.const(rng.uniform(0.01, 0.02, 4), "w_scale"), domain="kiln",
             activation="Relu", out_dtype=0)
    if q_attrs.get("output_dtype") == TensorProto.FLOAT8E4M3FN:
        return y, b.op("QuantizeLinear", y, b.const(0.01, "s"), **q_attrs)
    scale = b.const(q_attrs.pop("scale", 0.05), "s")
    return y, b.op("QuantizeLinear", y, scale, b.const(np.zeros(scale.shape, np.int8), "zp", "int8"), **q_attrs)


def test_folds_to_float8_when_quantize_saturates() -> None:
    b = Builder()
    _, y_q = _layer_then_quantize(b, output_dtype=TensorProto.FLOAT8E4M3FN, saturate=1)
    graph = b.output(y_q)
    want = run_graph(graph, b.feeds)[y_q.name]
    assert fold_requantize(graph)
    (layer,) = graph.nodes
    assert layer.attrs["out_dtype"] == TensorProto.FLOAT8E4M3FN and layer.input(OUT_SCALE + 1) is None
    got = run_graph(graph, b.feeds)[y_q.name]
    assert int((_ordinal(got) - _ordinal(want)).abs().max()) <= 1


def test_folds_per_channel_of_the_last_axis() -> None:
    """A QuantizeLinear per output column (SmoothQuant's scales of the next layer's input): the
    QMatMul requantizes with out_scale/out_zp of N elements, within one step of the chain."""
    b = Builder()
    y, y_q = _layer_then_quantize(b, scale=np.array([0.02, 0.05, 0.08, 0.11], np.float32), axis=1)
    graph = b.output(y_q)
    want = run_graph(graph, b.feeds)[y_q.name]
    assert fold_requantize(graph)
    (layer,) = graph.nodes
    assert layer.input(OUT_SCALE).shape == (4,) and layer.input(OUT_SCALE + 1).shape == (4,)
    got = run_graph(graph, b.feeds)[y_q.name]
    assert got.dtype == want.dtype and int((_ordinal(got) - _ordinal(want)).abs().max()) <= 1


@pytest.mark.parametrize("case", ["another reader", "graph output", "per channel of another axis",
                                  "float8 without saturation"])
def test_no_fold(case: str) -> None:
    b = Builder()
    if case == "per channel of another axis":   # per row: not what a layer's epilogue requantizes
        y, y_q = _layer_then_quantize(b, scale=np.full(3, 0.05, np.float32), axis=0)
    elif case == "float8 without saturation":
        y, y_q = _layer_then_quantize(b, output_dtype=TensorProto.FLOAT8E4M3FN, saturate=0)
    else:
        y, y_q = _layer_then_quantize(b)
    outputs = [y_q]
    if case == "another reader":
        outputs.append(b.op("Sigmoid", y))
    if case == "graph output":
        outputs.append(y)
    graph = b.output(*outputs)
    before = [(n.qualified_op, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in graph.nodes]
    assert not fold_requantize(graph)
    assert [(n.qualified_op, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in graph.nodes] == before
    assert y.producer().attrs["out_dtype"] == 0


def test_engine_file_keeps_the_requantizing_layer(tmp_path) -> None:  # noqa: ANN001
    from kiln.runtime.engine import load

    engine = builder.build(mlp(), BuildConfig(device="cpu", precision="int8"), calibration=batches((BATCH, 16)))
    engine.save(tmp_path / "mlp.kiln")
    again = load(tmp_path / "mlp.kiln")
    first = next(s for s in again.plan.steps if s.op == "kiln::QMatMul")
    assert again.plan.slots[first.outputs[0]].dtype == "int8"
    feed = batches((BATCH, 16))[0]
    np.testing.assert_array_equal(np.asarray(again(**feed)["y"]), np.asarray(engine(**feed)["y"]))
