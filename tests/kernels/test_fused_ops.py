"""Each kiln fused op against the composition of ONNX reference ops it replaces."""
from __future__ import annotations

import math

import pytest
import torch

from kiln.kernels.reference.fused import ACTIVATIONS
from kiln.kernels.reference.registry import lookup

ONNX_ACT = {  # fused activation -> (ONNX op, attrs, constant inputs) for the same params
    "": None, "Relu": ("Relu", {}, []), "LeakyRelu": ("LeakyRelu", {"alpha": 0.1}, []),
    "Clip": ("Clip", {}, [-0.5, 0.5]), "Sigmoid": ("Sigmoid", {}, []),
    "HardSigmoid": ("HardSigmoid", {"alpha": 0.3, "beta": 0.6}, []), "HardSwish": ("HardSwish", {}, []),
    "Tanh": ("Tanh", {}, []), "Gelu": ("Gelu", {"approximate": "tanh"}, []), "Silu": None,
}
PARAMS = {"LeakyRelu": [0.1], "Clip": [-0.5, 0.5], "HardSigmoid": [0.3, 0.6], "Gelu": [1.0]}


def ref(op: str, *inputs, **attrs):
    return lookup(op).fn(*inputs, **attrs)


def unfused_activation(name: str, y: torch.Tensor) -> torch.Tensor:
    if name == "":
        return y
    if name == "Silu":
        return ref("Mul", y, ref("Sigmoid", y))
    op, attrs, consts = ONNX_ACT[name]
    return ref(op, y, *[torch.tensor(c) for c in consts], **attrs)


def test_activation_table_is_covered():
    assert set(ACTIVATIONS) == set(ONNX_ACT)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_fused_conv(act):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 4, 7, 7, generator=g), torch.randn(6, 2, 3, 3, generator=g)
    b, r = torch.randn(6, generator=g), torch.randn(2, 6, 4, 3, generator=g)
    attrs = dict(group=2, strides=[2, 2], pads=[1, 0, 1, 0])
    got = ref("kiln::FusedConv", x, w, b, r, activation=act, activation_params=PARAMS.get(act, []), **attrs)
    want = unfused_activation(act, ref("Add", ref("Conv", x, w, b, **attrs), r))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("act", ["", "Relu", "Gelu", "Silu"])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_fused_matmul(act, trans_b):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, 8, generator=g), torch.randn(8, 6, generator=g)
    bias, r = torch.randn(6, generator=g), torch.randn(3, 5, 6, generator=g)
    got = ref("kiln::FusedMatMul", a, b.T.contiguous() if trans_b else b, bias, r, trans_b=trans_b,
              alpha=0.5, activation=act, activation_params=PARAMS.get(act, []))
    y = ref("Mul", ref("MatMul", a, b), torch.tensor(0.5))
    want = unfused_activation(act, ref("Add", ref("Add", y, bias), r))
    torch.testing.assert_close(got, want)
    # Gemm (transA=0) is the 2-D case with bias = beta * C.
    got = ref("kiln::FusedMatMul", a[0], b, 2.0 * bias, trans_b=0, alpha=0.5)
    torch.testing.assert_close(got, ref("Gemm", a[0], b, bias, alpha=0.5, beta=2.0))


def test_pointwise_program():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 5, generator=g), torch.randn(5, generator=g)
    program = [
        ["Mul", ["i0", "i1"], {}],
        ["Add", ["t0", {"const": 1.5, "dtype": "float32"}], {}],
        ["Clip", ["t1", None, {"const": 2.0, "dtype": "float32"}], {}],
        ["Cast", ["t2"], {"to": 10}],
        ["Where", [{"const": True, "dtype": "bool"}, "t0", "i0"], {}],
    ]
    got = ref("kiln::Pointwise", x, y, program=program, outputs=["t3", "t4"], n_outputs=2)
    t2 = ref("Clip", ref("Add", ref("Mul", x, y), torch.tensor(1.5)), None, torch.tensor(2.0))
    torch.testing.assert_close(got[0], t2.half())
    torch.testing.assert_close(got[1], x * y)
    assert ref("kiln::Pointwise", x, program=[["Neg", ["i0"], {}], ["Exp", ["t0"], {}]]).shape == (4, 5)
    with pytest.raises(ValueError):
        ref("kiln::Pointwise", x, program=[["Neg", ["t0"], {}]])


def _attention_unfused(q, k, v, mask, scale):
    s = ref("Mul", ref("MatMul", q, ref("Transpose", k, perm=[0, 1, 3, 2])), torch.tensor(scale))
    if mask is not None:
        s = ref("Add", s, mask)
    return ref("MatMul", ref("Softmax", s, axis=-1), v)


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_matches_composition(with_mask):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, s, 8, generator=g) for s in (5, 7, 7))
    mask = torch.randn(2, 1, 1, 7, generator=g) if with_mask else None
    torch.testing.assert_close(ref("kiln::Attention", q, k, v, mask),
                               _attention_unfused(q, k, v, mask, 1 / math.sqrt(8)))
    torch.testing.assert_close(ref("kiln::Attention", q, k, v, mask, scale=0.3),
                               _attention_unfused(q, k, v, mask, 0.3))


def test_attention_boolean_mask_and_causal():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    additive = torch.zeros(6, 6).masked_fill(~keep, -math.inf)
    want = ref("kiln::Attention", q, k, v, additive)
    torch.testing.assert_close(ref("kiln::Attention", q, k, v, keep), want)
    torch.testing.assert_close(ref("kiln::Attention", q, k, v, is_causal=1), want)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(want, sdpa)
