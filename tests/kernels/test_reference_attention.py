"""Attention-family reference ops (Attention, RotaryEmbedding, LinearAttention,
CausalConvWithState, ai.onnx.preview FlexAttention) against onnx's ReferenceEvaluator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx_oracle import Case, Rand, check_case

from kiln.kernels.reference.registry import lookup
from kiln.onnx.importer import import_model

R = Rand(seed=7)
F16 = (1e-3, 1e-3)

# Causal + a bool mask whose last query row is all False: that row must give zeros.
_BOOL_MASK = R.b(3, 5)
_BOOL_MASK[-1] = False
_CAUSAL_PAST = {"is_causal": 1, "qk_matmul_output_mode": 2}

CASES = [
    Case("Attention", (R.f(2, 3, 4, 8), R.f(2, 3, 6, 8), R.f(2, 3, 6, 5)), opset=23, name="4d"),
    Case("Attention", (R.f(2, 4, 12), R.f(2, 5, 4), R.f(2, 5, 10)),
         {"q_num_heads": 6, "kv_num_heads": 2, "is_causal": 1}, opset=23, name="3d_gqa_causal"),
    Case("Attention", (R.f(1, 2, 3, 4), R.f(1, 2, 2, 4), R.f(1, 2, 2, 4), _BOOL_MASK,
                       R.f(1, 2, 3, 4), R.f(1, 2, 3, 4)),
         _CAUSAL_PAST, outputs=4, opset=23, name="past_bool_mask_causal_bias_out"),
    Case("Attention", (R.f(1, 2, 3, 4), R.f(1, 2, 3, 4), R.f(1, 2, 3, 4), _BOOL_MASK[:, :3]),
         {"qk_matmul_output_mode": 3}, outputs=4, opset=23, name="masked_row_softmax_out"),
    Case("Attention", (R.f(1, 2, 3, 4), R.f(1, 2, 5, 4), R.f(1, 2, 5, 4), R.f(3, 5)),
         {"softcap": 2.0, "qk_matmul_output_mode": 1, "scale": 0.3}, outputs=4, opset=23,
         name="softcap_scaled"),
    Case("Attention", (R.f(2, 2, 3, 8, dtype=np.float16), R.f(2, 1, 4, 8, dtype=np.float16),
                       R.f(2, 1, 4, 8, dtype=np.float16)), opset=23, tol=F16, name="fp16_mqa"),
    Case("Attention", (R.f(2, 2, 3, 8, dtype=np.float16), R.f(2, 2, 4, 8, dtype=np.float16),
                       R.f(2, 2, 4, 8, dtype=np.float16)),
         {"softmax_precision": TensorProto.FLOAT}, opset=23, tol=F16, name="fp16_softmax_fp32"),
    Case("Attention", (R.f(2, 2, 3, 4), R.f(2, 2, 6, 4), R.f(2, 2, 6, 4), None, None, None,
                       np.array([4, 6], dtype=np.int64)),
         {"is_causal": 1}, opset=24, name="nonpad_kv_causal"),
    Case("RotaryEmbedding", (R.f(2, 3, 4, 8), R.f(10, 4), R.f(10, 4), R.i(2, 4, lo=0, hi=10, dtype=np.int64)),
         opset=23, name="4d_position_ids"),
    Case("RotaryEmbedding", (R.f(2, 4, 24), R.f(2, 4, 2), R.f(2, 4, 2)),
         {"num_heads": 3, "interleaved": 1, "rotary_embedding_dim": 4}, opset=23, name="3d_interleaved_partial"),
    Case("LinearAttention", (R.f(2, 5, 8 * 4, lo=-1, hi=1), R.f(2, 5, 4 * 4, lo=-1, hi=1),
                             R.f(2, 5, 4 * 3, lo=-1, hi=1), R.f(2, 4, 4, 3, lo=-1, hi=1),
                             R.f(2, 5, 4, lo=-1, hi=0), R.f(2, 5, 4, lo=0, hi=1)),
         {"q_num_heads": 8, "kv_num_heads": 4}, outputs=2, opset=27, name="gated_delta_gqa_past"),
    Case("LinearAttention", (R.f(1, 3, 8), R.f(1, 3, 8), R.f(1, 3, 6)),
         {"q_num_heads": 2, "kv_num_heads": 2, "update_rule": "linear", "scale": 0.5},
         outputs=2, opset=27, name="linear"),
    Case("CausalConvWithState", (R.f(2, 3, 5), R.f(3, 1, 4), R.f(3), R.f(2, 3, 3)),
         {"activation": "silu"}, outputs=2, opset=27, name="silu_bias_past"),
    Case("CausalConvWithState", (R.f(1, 2, 4), R.f(2, 1, 1)), outputs=2, opset=27, name="kernel_one"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


def test_fully_masked_row_is_zero() -> None:
    q, k, v = (torch.ones(1, 1, 2, 4) for _ in range(3))
    mask = torch.tensor([[True, True], [False, False]])
    y, _, _, probs = lookup("Attention").fn(q, k, v, mask, qk_matmul_output_mode=3)
    assert torch.equal(y[0, 0, 1], torch.zeros(4)) and torch.equal(probs[0, 0, 1], torch.zeros(2))
    assert torch.allclose(y[0, 0, 0], torch.ones(4))


def _flex_model(q_shape: list[int], kv_shape: list[int], with_mod: bool) -> helper.ModelProto:
    attrs = {}
    if with_mod:  # score_mod: scores * 0.5 + 1 (a body with its own constants)
        body = helper.make_graph(
            [helper.make_node("Mul", ["s", "half"], ["t"]), helper.make_node("Add", ["t", "one"], ["out"])],
            "score_mod", [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", "H", "L", "S"])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "H", "L", "S"])],
            [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
        attrs["score_mod"] = body
    node = helper.make_node("FlexAttention", ["Q", "K", "V"], ["Y"], domain="ai.onnx.preview", **attrs)
    graph = helper.make_graph(
        [node], "flex",
        [helper.make_tensor_value_info("Q", TensorProto.FLOAT, q_shape),
         helper.make_tensor_value_info("K", TensorProto.FLOAT, kv_shape),
         helper.make_tensor_value_info("V", TensorProto.FLOAT, kv_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, q_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26),
                                                   helper.make_opsetid("ai.onnx.preview", 1)])


@pytest.mark.parametrize("with_mod", [False, True], ids=["plain", "score_mod"])
def test_flex_attention_gqa(with_mod: bool) -> None:
    q, k, v = R.f(1, 4, 3, 8), R.f(1, 2, 5, 8), R.f(1, 2, 5, 8)
    model = _flex_model(list(q.shape), list(k.shape), with_mod)
    expected = ReferenceEvaluator(model).run(None, {"Q": q, "K": k, "V": v})[0]
    node = import_model(model).nodes[0]
    assert node.qualified_op == "ai.onnx.preview::FlexAttention"
    got = lookup(node.qualified_op).fn(*(torch.from_numpy(a) for a in (q, k, v)), **node.attrs)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_flex_attention_callable_prob_mod() -> None:
    q, k, v = (torch.from_numpy(R.f(1, 1, 2, 4)) for _ in range(3))
    plain = lookup("ai.onnx.preview::FlexAttention").fn(q, k, v)
    doubled = lookup("ai.onnx.preview::FlexAttention").fn(q, k, v, prob_mod=lambda p: [p * 2])
    assert torch.allclose(doubled, plain * 2, rtol=1e-6, atol=1e-7)
