"""fuse_norm_quantize: a LayerNorm whose output a QuantizeLinear reads quantizes it itself.

A small post-norm transformer block (LayerNorm -> int8 MatMul, residual Add -> LayerNorm ->
int8 MatMul, the second norm's output also read by a float Add) and a pre-norm one (the
AddLayerNorm's sum carried on): the structure after a build (kiln::NormQuantize steps, Y kept
as an output only where something else reads it, the header's count), and engines with and
without the fusion computing the same values, bit for bit (the fused op is defined as the
two it replaces)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.compiler import builder
from kiln.config import BuildConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_models import checked_model, normal_feeds  # noqa: E402

D = 16
SHAPE = (4, 8, D)


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


def block(pre_norm: bool) -> onnx.ModelProto:
    """post-norm: h = LN1(x); a = h @ W1; y = LN2(a + h) @ W2 + LN2(..)   (LN2's Y read twice)
    pre-norm:  s = x + x @ W0; h = LN1(s); y = h @ W1 + s                 (the sum carried on)"""
    rng = np.random.default_rng(0)
    ln = lambda i, o, n: helper.make_node("LayerNormalization", [i, f"g{n}", f"b{n}"], [o], axis=-1, name=f"ln{n}")
    if pre_norm:
        nodes = [helper.make_node("MatMul", ["x", "w0"], ["p"], name="mm0"),
                 helper.make_node("Add", ["p", "x"], ["s"], name="add"), ln("s", "h", 1),
                 helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
                 helper.make_node("Add", ["a", "s"], ["y"], name="out")]
        inits = [_w(rng, "w0", (D, D)), _w(rng, "w1", (D, D))]
    else:
        nodes = [ln("x", "h", 1), helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
                 helper.make_node("Add", ["a", "h"], ["s"], name="add"), ln("s", "h2", 2),
                 helper.make_node("MatMul", ["h2", "w2"], ["m"], name="mm2"),
                 helper.make_node("Add", ["m", "h2"], ["y"], name="out")]
        inits = [_w(rng, "w1", (D, D)), _w(rng, "w2", (D, D))]
    for n in (1, 2):
        inits += [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(D)).astype(np.float32), f"g{n}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(D)).astype(np.float32), f"b{n}")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))], inits)
    return checked_model(graph)


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    return normal_feeds("x", SHAPE, n, seed)


def build(model: onnx.ModelProto, precision: str, float_precision: str):  # noqa: ANN201
    return builder.build(model, BuildConfig(device="cpu", precision=precision, float_precision=float_precision,
                                            calib_method="minmax"), calibration=feeds(3, 1))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("float_precision", ["fp32", "fp16"])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_norm_quantize_fused_without_changing_a_value(pre_norm, float_precision, precision, monkeypatch):
    model = block(pre_norm)
    fused = build(model, precision, float_precision)
    nq = [s for s in fused.plan.steps if s.op == "kiln::NormQuantize"]
    assert fused.header["build"][precision]["norm_quantize_fused"] == len(nq) == (1 if pre_norm else 2)
    assert not any(s.op in ("LayerNormalization", "kiln::AddLayerNorm") for s in fused.plan.steps)
    if pre_norm:   # Y is read by the matmul alone; the sum is carried on
        (step,) = nq
        assert step.attrs["float_output"] == 0 and step.attrs["sum_output"] == 1 and len(step.outputs) == 2
    else:          # LN1's and LN2's Y are also read by float Adds
        assert all(s.attrs["float_output"] == 1 and s.attrs["sum_output"] == 0 and len(s.outputs) == 2 for s in nq)
    assert [s.name for s in nq] == (["AddLayerNorm"] if pre_norm else ["ln1", "AddLayerNorm"])  # names kept
    monkeypatch.setattr(builder, "fuse_norm_quantize", lambda graph: False)
    plain = build(model, precision, float_precision)
    assert not any(s.op == "kiln::NormQuantize" for s in plain.plan.steps)
    assert plain.header["build"][precision]["norm_quantize_fused"] == 0
    assert len(plain.plan.steps) == len(fused.plan.steps) + len(nq)
    for feed in feeds(2, 7):
        np.testing.assert_array_equal(np.asarray(fused(**feed)["y"]), np.asarray(plain(**feed)["y"]))
