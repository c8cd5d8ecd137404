"""Quantized islands keep float32 in 16-bit engines: ONNX Runtime's QDQ BERT built --fp16 computes
its residual adds with their norms (float math between Q/DQ pairs, codes in and out) in float32,
as the model states; its attention (float MatMuls: tensor cores in 16 bits),
the float layers around them and a calibrated engine's float chains that reach memory stay
16-bit."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.precision.quantized_islands import quantized_islands

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))

F32 = dtypes.FLOAT32


def _chain(ops: list[str], *, out_float: bool = False) -> tuple[Graph, list[Node]]:
    """codes -> DequantizeLinear -> ops... -> QuantizeLinear -> codes (or the last float out); a
    MatMul's second operand is the dequantized input (the islands read the structure only)."""
    g = Graph("g", 17)
    x = Value("x", dtypes.BY_NAME["int8"], (4, 8))
    g.inputs.append(x)
    s, zp = g.constant(np.array(0.1, np.float32), "s"), g.constant(np.array(0, np.int8), "zp")
    v = g.value("xf", F32, (4, 8))
    nodes = [g.add_node(Node("DequantizeLinear", [x, s, zp], [v], name="dq"))]
    for i, op in enumerate(ops):
        y = g.value(f"y{i}", F32, (4, 8))
        nodes.append(g.add_node(Node(op, [v, nodes[0].outputs[0]] if op == "MatMul" else [v], [y], name=f"{op}{i}")))
        v = y
    if out_float:
        g.outputs.append(v)
    else:
        q = g.value("q", dtypes.BY_NAME["int8"], (4, 8))
        nodes.append(g.add_node(Node("QuantizeLinear", [v, s, zp], [q], name="q")))
        g.outputs.append(q)
    return g, nodes


def test_a_chain_from_codes_to_codes_is_an_island():
    g, nodes = _chain(["LayerNormalization"])
    assert quantized_islands(g) == {id(n) for n in nodes}


def test_a_chain_that_reaches_an_output_or_another_op_is_not():
    g, _ = _chain(["LayerNormalization"], out_float=True)     # its float reaches the graph output
    assert quantized_islands(g) == set()
    g, _ = _chain(["LayerNormalization", "GlobalAveragePool"])  # a layer whose float tensors reach memory
    assert quantized_islands(g) == set()
    g, _ = _chain(["Softmax", "MatMul"])                      # float products: tensor cores in 16 bits
    assert quantized_islands(g) == set()


def test_onnxruntime_qdq_bert_fp16_keeps_its_islands_float32(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from test_ort_qdq_transformer import TINY, _ort_qdq_bert

    import kiln
    from benchmarks import models
    from kiln.config import BuildConfig, Profile

    bert, path = _ort_qdq_bert(tmp_path)
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(str(path), BuildConfig(device="cpu", precision="fp16", profiles=profile))
    steps, slots = engine.plan.steps, engine.plan.slots

    def scalar_types(step) -> set[str]:   # noqa: ANN001
        programs = [v for k, v in step.attrs.items() if k.endswith("program") and isinstance(v, list)]
        return {a["dtype"] for p in programs for instr in p for a in instr[1] if isinstance(a, dict) and "dtype" in a
                and a["dtype"].startswith(("float", "bfloat"))}

    attention = [s for s in steps if s.op == "kiln::QDQAttention"]
    norms = [s for s in steps if s.op == "kiln::NormQuantize" and s.attrs.get("x_program")]
    assert len(attention) == 2 and len(norms) == 3
    for s in norms:
        assert scalar_types(s) == {"float32"}, (s.name, scalar_types(s))
    assert all(scalar_types(s) == {"float16"} for s in attention)
    assert all(slots[i].dtype == "float32" for s in norms for i in s.inputs[2:5] if i is not None)  # gamma, beta
    # the last LayerNorm's output is the model's: 16-bit, as the engine precision says
    last = [s for s in steps if s.op == "LayerNormalization"]
    assert len(last) == 1 and slots[last[0].outputs[0]].dtype == "float16"
    layers = engine.header["build"]["precision"]["layers"]
    assert any("between dequantization and quantization" in d["reason"] for d in layers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    want = session.run(None, feeds)[0].reshape(-1, TINY["hidden_size"])
    got = np.asarray(engine(**feeds)[bert.output_name]).astype(np.float32).reshape(-1, TINY["hidden_size"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999, cos
