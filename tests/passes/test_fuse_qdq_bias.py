"""fuse_qdq_bias: ONNX Runtime's MatMul -> Q -> DQ -> Add(bias) -> [act] -> [Q] as one kiln::QMatMul
whose mid quantization rounds the product to its own codes before the bias, against the unfused
chain of reference ops; what it leaves alone; the tuner's allowance for the mid rounding."""
from __future__ import annotations

import numpy as np
import torch

from graphs import Builder, check_pass, ops
from kiln.compiler.tolerance import mid_step, mismatch, quantized_steps
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.fuse_qdq_bias import fuse_qdq_bias

MID = QMATMUL_INPUTS.index("mid_scale")


def _chain(b: Builder, act: str | None, requantize: bool, bias: bool = True, codes: str = "uint8"):
    """QMatMul writing codes (0.5, zp 131) -> DQ -> Add(bias) -> [act] -> [Q (0.25, zp 7)]."""
    a = b.input("a", (2, 5, 16), "int8", data=b.rng.integers(-128, 128, (2, 5, 16)).astype(np.int8))
    w = b.const(b.rng.integers(-127, 128, (16, 8)), "w_q", dtype="int8")
    s, zp = b.const(0.5), b.const(131 if codes == "uint8" else -3, dtype=codes)
    q = b.op("QMatMul", a, w, b.const(2.0 ** -6), None, b.const(2.0 ** -7), None, None, None, s, zp, domain="kiln",
             trans_b=0, activation="", activation_params=[], out_dtype=0)
    y = b.op("DequantizeLinear", q, s, zp)
    if bias:
        y = b.op("Add", y, b.const(b.rng.integers(-20, 20, 8).astype(np.float32) * 0.5, "bias"))
    if act:
        y = b.op(act, y)
    if requantize:
        y = b.op("QuantizeLinear", y, b.const(0.25), b.const(7, dtype="uint8"))
    return y


def test_bias_activation_and_requantization_fold_into_the_layer():
    b = Builder()
    g = b.output(_chain(b, "Relu", True))
    assert check_pass(fuse_qdq_bias, b, rtol=0, atol=0)     # exact operands: the same codes
    assert ops(g) == {"kiln::QMatMul": 1}
    layer = g.nodes[0]
    assert layer.input(MID) is not None and layer.input(6) is not None and layer.attrs["activation"] == "Relu"
    assert layer.outputs[0].dtype.name == "uint8" and float(np.asarray(layer.input(8).const)) == 0.25


def test_float_output_and_int8_codes():
    b = Builder()
    g = b.output(_chain(b, "Gelu", False, codes="int8"))
    assert check_pass(fuse_qdq_bias, b, rtol=1e-6, atol=1e-6)
    assert ops(g) == {"kiln::QMatMul": 1} and g.nodes[0].outputs[0].dtype.name == "float32"


def test_what_it_leaves_alone():
    b = Builder()                              # no bias Add after the codes
    g = b.output(_chain(b, "Relu", True, bias=False))
    assert not fuse_qdq_bias(g)
    assert ops(g)["kiln::QMatMul"] == 1 and "DequantizeLinear" in ops(g)


def test_tuner_allows_the_mid_rounding_steps():
    args = [None] * len(QMATMUL_INPUTS)
    args[MID], args[8] = torch.tensor(0.5), torch.tensor(0.25)
    assert quantized_steps("kiln::QMatMul", args) == 3 and mid_step("kiln::QMatMul", args) == 0.0
    args[8] = None                              # float output: one mid step beyond the float tolerance
    assert mid_step("kiln::QMatMul", args) == 0.5
    ref = torch.linspace(-4, 4, 4000)
    moved = ref.clone()
    moved[:3] += 0.5
    assert mismatch(moved, ref, "kiln::QMatMul", mid=0.5) is None
    assert mismatch(moved, ref, "kiln::QMatMul") is not None
    moved[:40] += 0.5                           # too many elements, too far
    assert mismatch(moved, ref, "kiln::QMatMul", mid=0.5) is not None
