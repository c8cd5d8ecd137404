"""precision/erasing_scales.py: a model whose own QuantizeLinear erases a tensor (a scale past every
finite float16 value, as ONNX Runtime writes for an attention's scores plus a -3.4e38 mask) builds
with one warning naming the nodes to leave out of quantization; ordinary scales warn nothing; and
ONNX Runtime, told to leave those nodes out, writes a model without such pairs."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.config import BuildConfig
from kiln.precision.erasing_scales import ErasedTensorWarning, erasing_quantizers, nodes_to_exclude


def _model(scale: float) -> onnx.ModelProto:
    """scores + mask -> Q/DQ (this scale) -> Softmax."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(127, np.int8), "z")]
    nodes = [helper.make_node("Add", ["scores", "mask"], ["masked"], name="add_mask"),
             helper.make_node("QuantizeLinear", ["masked", "s", "z"], ["codes"], name="quantize"),
             helper.make_node("DequantizeLinear", ["codes", "s", "z"], ["back"], name="dequantize"),
             helper.make_node("Softmax", ["back"], ["p"], axis=-1, name="softmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 4]),
                                            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_an_erasing_scale_warns_with_the_nodes_to_exclude():
    with pytest.warns(ErasedTensorWarning, match=r"nodes_to_exclude=\['add_mask', 'softmax'\]"):
        engine = kiln.build(_model(1.3344405750530544e36), BuildConfig(device="cpu"))
    # the model as stated: every score rounds to the zero point, the masked key keeps -3.4e38
    scores = np.array([[1.0, 3.0, -2.0, 0.5], [0.0, 9.0, 1.0, 2.0]], np.float32)
    mask = np.array([[0, 0, 0, -3.4e38], [0, 0, 0, 0]], np.float32)
    p = np.asarray(engine(scores=scores, mask=mask)["p"])
    np.testing.assert_allclose(p, [[1 / 3, 1 / 3, 1 / 3, 0], [0.25] * 4], rtol=1e-6)


def test_the_cli_prints_the_warning(tmp_path):
    from click.testing import CliRunner

    from kiln.cli.main import main

    onnx.save(_model(1.3344405750530544e36), tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.kiln")])
    assert result.exit_code == 0, result.output
    assert "warning: 1 QuantizeLinear node(s) of the model have scales above 131008" in result.stderr
    assert "nodes_to_exclude=['add_mask', 'softmax']" in result.stderr and "Traceback" not in result.output


def test_check_reports_the_erasing_nodes(tmp_path):
    import json

    from click.testing import CliRunner

    from kiln.cli.main import main

    onnx.save(_model(1.3344405750530544e36), tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["check", str(tmp_path / "m.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["erasing_quantizers"] == [{"node": "quantize", "scale": pytest.approx(1.3344405750530544e36)}]
    assert report["nodes_to_exclude"] == ["add_mask", "softmax"] and len(report["warnings"]) == 1
    text = CliRunner().invoke(main, ["check", str(tmp_path / "m.onnx")])
    assert text.exit_code == 0 and "warning: 1 QuantizeLinear node(s)" in text.stderr
    onnx.save(_model(0.05), tmp_path / "ok.onnx")
    clean = json.loads(CliRunner().invoke(main, ["check", str(tmp_path / "ok.onnx"), "--json"]).stdout)
    assert clean["erasing_quantizers"] == [] and clean["warnings"] == []


def test_ordinary_scales_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ErasedTensorWarning)
        kiln.build(_model(0.05), BuildConfig(device="cpu"))


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_onnxruntime_told_to_leave_the_nodes_out_writes_no_erasing_pair(tmp_path, fmt):
    """ONNX Runtime's BERT (a -3.4e38 mask), QDQ or QOperator: the mask and each attention's
    scores-plus-mask quantized at scale ~1.3e36; with the warning's nodes_to_exclude (the float
    model's names) the same quantizer writes none."""
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("transformers")
    from benchmarks import models
    from benchmarks.qdq_ort import ort_qdq
    from kiln.onnx.importer import import_model
    from kiln.onnx.load import load_model
    from tests.passes.test_ort_qdq_transformer import _export_tiny_bert

    bert, src = _export_tiny_bert(tmp_path)
    feeds = [{n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=s).items()} for s in range(2)]
    found = erasing_quantizers(import_model(load_model(str(ort_qdq(src, feeds, "QInt8", tmp_path, fmt)))))
    assert len(found) == 3 and all(scale > 1e35 for _, scale in found)      # the mask and two layers' Adds
    names = nodes_to_exclude(found)
    assert sum("Softmax" in n for n in names) == 2 and sum(n.endswith("/Add") for n in names) == 2
    again = ort_qdq(src, feeds, "QInt8", tmp_path / "excluded", fmt, exclude=names)
    assert erasing_quantizers(import_model(load_model(str(again)))) == []
