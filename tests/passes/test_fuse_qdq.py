from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphs import Builder, ops
from kiln.ir import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantized import qconv, qmatmul
from kiln.passes.fuse_qdq import fuse_qdq
from kiln.passes.quantized_weights import recover_int8

RNG = np.random.default_rng(0)


def _int8(*shape: int, lo: int = -128, hi: int = 128) -> torch.Tensor:
    return torch.from_numpy(RNG.integers(lo, hi, shape).astype(np.int8))


def _f32(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _requant_f64(v: torch.Tensor, scale: float, zp: int, lo: int, hi: int) -> torch.Tensor:
    return (torch.round(v / scale) + zp).clamp(lo, hi)


# ---------------------------------------------------------------- reference ops against float64


@pytest.mark.parametrize("trans_b", [0, 1])
def test_qmatmul_per_channel_requantizes_and_saturates(trans_b):
    a, b = _int8(2, 3, 16), _int8(16, 5)
    a_s, a_zp = _f32(0.02), torch.tensor(3, dtype=torch.int8)
    b_s = torch.from_numpy(RNG.uniform(0.01, 0.05, 5).astype(np.float32))
    b_zp = _int8(5, lo=-4, hi=4)
    bias, res = torch.randn(5), torch.randn(2, 3, 5)
    dq_a = (a.double() - 3) * a_s.double()
    dq_b = (b.double() - b_zp.double()) * b_s.double()
    v = torch.relu(dq_a @ dq_b + bias.double() + res.double())
    bq = b.T.contiguous() if trans_b else b
    # A small output scale makes a good share of the outputs saturate at 255.
    out_s, out_zp = _f32(0.05), torch.tensor(10, dtype=torch.uint8)
    y = qmatmul(a, bq, a_s, a_zp, b_s, b_zp, bias, res, out_s, out_zp, trans_b=trans_b, activation="Relu")
    want = _requant_f64(v, 0.05, 10, 0, 255)
    assert y.dtype == torch.uint8 and torch.equal(y.double(), want)
    assert (want == 255).any() and (want == 10).any()
    yf = qmatmul(a, bq, a_s, a_zp, b_s, b_zp, bias, res, trans_b=trans_b, activation="Relu")
    assert yf.dtype == torch.float32 and torch.equal(yf, v.float())


def test_qmatmul_int8_and_fp8_outputs():
    a, b = _int8(4, 8), _int8(8, 3)
    v = (a.double() * 0.1) @ (b.double() * 0.05)
    y = qmatmul(a, b, _f32(0.1), None, _f32(0.05), None, out_scale=_f32(0.01),
                out_zp=torch.tensor(-5, dtype=torch.int8))
    assert y.dtype == torch.int8 and torch.equal(y.double(), _requant_f64(v, 0.01, -5, -128, 127))
    y8 = qmatmul(a, b, _f32(0.1), None, _f32(0.05), None, out_scale=_f32(0.5),
                 out_dtype=17)  # FLOAT8E4M3FN: saturates at 448
    assert y8.dtype == torch.float8_e4m3fn
    assert torch.equal(y8.float(), (v / 0.5).clamp(-448, 448).float().to(torch.float8_e4m3fn).float())


def test_per_channel_output_scales_requantize_each_channel():
    """out_scale / out_zp per output channel (SmoothQuant's per-channel activation scales): each
    column of QMatMul's Y, each channel of QConv's, requantized with its own; a mismatched zero
    point is refused."""
    a, b = _int8(3, 16), _int8(16, 4)
    out_s, out_zp = _f32(0.02, 0.05, 0.1, 0.4), torch.tensor([0, 1, -2, 3], dtype=torch.int8)
    v = (a.double() * 0.1) @ (b.double() * 0.05)
    y = qmatmul(a, b, _f32(0.1), None, _f32(0.05), None, out_scale=out_s, out_zp=out_zp)
    want = torch.stack([_requant_f64(v[:, j], float(out_s[j]), int(out_zp[j]), -128, 127) for j in range(4)], 1)
    assert y.dtype == torch.int8 and torch.equal(y.double(), want)
    x, w = _int8(1, 3, 5, 5), _int8(4, 3, 1, 1)
    yc = qconv(x, w, _f32(0.5), None, _f32(0.25), None, None, None, out_s, out_zp)
    vc = F.conv2d(x.double() * 0.5, w.double() * 0.25)
    wantc = torch.stack([_requant_f64(vc[:, j], float(out_s[j]), int(out_zp[j]), -128, 127) for j in range(4)], 1)
    assert torch.equal(yc.double(), wantc)
    with pytest.raises(ValueError, match="out_zp must have out_scale's 4 elements"):
        qmatmul(a, b, _f32(0.1), None, _f32(0.05), None, out_scale=out_s, out_zp=torch.tensor(0, dtype=torch.int8))
    with pytest.raises(ValueError, match="out_scale must have one element or 4"):
        qmatmul(a, b, _f32(0.1), None, _f32(0.05), None, out_scale=_f32(0.1, 0.2))


@pytest.mark.parametrize("group,pads,strides,dilations", [(1, [1, 1, 1, 1], [1, 1], [1, 1]),
                                                          (2, [0, 1, 2, 0], [2, 1], [1, 2])])
def test_qconv_per_channel_against_float64(group, pads, strides, dilations):
    x, w = _int8(2, 4, 7, 7), _int8(6, 4 // group, 3, 3)
    x_s, x_zp = _f32(0.03), torch.tensor(-7, dtype=torch.int8)
    w_s = torch.from_numpy(RNG.uniform(0.01, 0.05, 6).astype(np.float32))
    bias = torch.randn(6)
    y = qconv(x, w, x_s, x_zp, w_s, None, bias, None, _f32(0.1), torch.tensor(0, dtype=torch.int8),
              group=group, pads=pads, strides=strides, dilations=dilations, activation="Relu")
    xf = (x.double() + 7) * x_s.double()
    wf = w.double() * w_s.double().reshape(-1, 1, 1, 1)
    xf = F.pad(xf, (pads[1], pads[3], pads[0], pads[2]))  # zeros: the zero point dequantized
    v = torch.relu(F.conv2d(xf, wf, bias.double(), stride=strides, dilation=dilations, groups=group))
    assert y.dtype == torch.int8 and torch.equal(y.double(), _requant_f64(v, 0.1, 0, -128, 127))


def test_qconv_1d_float_output():
    x, w = _int8(1, 3, 9), _int8(2, 3, 2)
    y = qconv(x, w, _f32(0.5), None, _f32(0.25), None, strides=[2])
    want = F.conv1d(x.double() * 0.5, w.double() * 0.25, stride=2)
    assert y.dtype == torch.float32 and torch.equal(y, want.float())


def test_recover_int8_is_exact_or_refuses():
    q = RNG.integers(-127, 128, (6, 4)).astype(np.int8)
    q[0] = 127  # symmetric quantization maps each channel's max |w| to 127
    s = RNG.uniform(0.001, 0.1, 4).astype(np.float32)
    w = (q.astype(np.float64) * s.astype(np.float64)).astype(np.float32)
    rq, rs = recover_int8(w, 1)
    assert np.array_equal((rq.astype(np.float64) * rs.astype(np.float64)).astype(np.float32), w)
    assert recover_int8(RNG.standard_normal((6, 4)).astype(np.float32), 1) is None


def test_recover_int8_takes_a_per_tensor_scale():
    """ONNX Runtime's per_channel=False: one scale for the tensor, so most channels' largest code is
    below 127 and only the tensor-wide scale divides them exactly."""
    q = RNG.integers(-90, 91, (8, 3, 3, 3)).astype(np.int8)
    q[2, 0, 0, 0] = -127
    s = np.float32(0.0173)
    w = (q.astype(np.float64) * np.float64(s)).astype(np.float32)
    rq, rs = recover_int8(w, 0)
    assert np.array_equal((rq.astype(np.float64) * rs.astype(np.float64)[:, None, None, None]).astype(np.float32), w)
    assert np.all(np.abs(rq) <= 127)


# ---------------------------------------------------------------- the pass on hand-written QDQ graphs


def _dq(b: Builder, x, scale, zp, **attrs):
    return b.op("DequantizeLinear", x, scale, zp, **attrs)


def _q(b: Builder, x, scale, zp):
    return b.op("QuantizeLinear", x, scale, zp)


def _check(b: Builder) -> bool:
    """Run fuse_qdq; outputs may move by one quantization step (float64 vs float32 ties)."""
    before = run_graph(b.graph, b.feeds)
    changed = fuse_qdq(b.graph)
    verify(b.graph)
    after = run_graph(b.graph, b.feeds)
    for o in b.graph.outputs:
        assert after[o.name].dtype == before[o.name].dtype
        if before[o.name].is_floating_point():
            torch.testing.assert_close(after[o.name], before[o.name], rtol=1e-5, atol=1e-5)
        else:
            assert (after[o.name].double() - before[o.name].double()).abs().max() <= 1, o.name
    return changed


def _q_input(b: Builder, name: str, shape: tuple):
    return b.input(name, shape, "uint8", data=RNG.integers(0, 256, shape).astype(np.uint8))


def test_matmul_bias_residual_relu_and_requantize_fuse():
    b = Builder()
    x = _q_input(b, "x", (2, 3, 8))
    r = b.input("r", (2, 3, 6))
    xs, xz = b.const(0.05, "xs"), b.const(128, "xz", dtype="uint8")
    w = _dq(b, b.const(RNG.integers(-127, 128, (8, 6)), "wq", dtype="int8"),
            b.const(RNG.uniform(0.01, 0.05, 6), "ws"), b.const(np.zeros(6), "wz", dtype="int8"), axis=1)
    y = b.op("Relu", b.op("Add", b.op("Add", b.op("MatMul", _dq(b, x, xs, xz), w), b.rand(6)), r))
    y = _q(b, y, b.const(0.04, "ys"), b.const(0, "yz", dtype="uint8"))
    g = b.output(y)
    assert _check(b)
    assert ops(g) == {"kiln::QMatMul": 1}
    node = g.nodes[0]
    assert node.input(0) is x and node.input(7) is r and node.outputs[0] is y
    assert node.attrs["activation"] == "Relu" and node.attrs["out_dtype"] == 2  # UINT8


def test_gemm_trans_b_and_conv_per_channel_float_outputs():
    b = Builder()
    a = _q_input(b, "a", (4, 8))
    s, z = b.const(0.1, "s"), b.const(120, "z", dtype="uint8")
    wg = _dq(b, b.const(RNG.integers(-127, 128, (5, 8)), "wg", dtype="int8"),
             b.const(RNG.uniform(0.01, 0.05, 5), "wgs"), None, axis=0)
    y = b.op("Gemm", _dq(b, a, s, z), wg, b.rand(5), transB=1, beta=0.5)
    img = _q_input(b, "img", (1, 3, 6, 6))
    wc = _dq(b, b.const(RNG.integers(-127, 128, (4, 3, 3, 3)), "wc", dtype="int8"),
             b.const(RNG.uniform(0.01, 0.05, 4), "wcs"), None, axis=0)
    c = b.op("Relu", b.op("Conv", _dq(b, img, s, z), wc, b.rand(4), pads=[1, 1, 1, 1], strides=[2, 2]))
    g = b.output(y, c)
    assert _check(b)
    assert ops(g) == {"kiln::QMatMul": 1, "kiln::QConv": 1}
    assert g.nodes[0].attrs["trans_b"] == 1 and g.nodes[1].attrs["strides"] == [2, 2]


def test_folded_float_weight_is_recovered_and_other_weights_left():
    b = Builder()
    x = _q_input(b, "x", (4, 8))
    xs, xz = b.const(0.05, "xs"), b.const(128, "xz", dtype="uint8")
    q = RNG.integers(-127, 128, (8, 6)).astype(np.float64)
    q[0] = 127
    scale = RNG.uniform(0.01, 0.05, 6).astype(np.float32).astype(np.float64)
    grid = b.const(q * scale, "w")  # what fold_constants leaves of DQ(w_q)
    y = b.op("MatMul", _dq(b, x, xs, xz), grid)
    z = b.op("MatMul", _dq(b, x, xs, xz), b.rand(8, 6))  # not on any int8 grid: stays float
    g = b.output(y, z)
    assert _check(b)
    assert ops(g) == {"kiln::QMatMul": 1, "DequantizeLinear": 1, "MatMul": 1}


def test_shape_ops_move_onto_the_integer_tensor():
    b = Builder()
    x = _q_input(b, "x", (2, 3, 4))
    s, z = b.const(0.1, "s"), b.const(7, "z", dtype="uint8")
    t = b.op("Transpose", _dq(b, x, s, z), perm=[0, 2, 1])
    t = _q(b, t, s, b.const(7, "z2", dtype="uint8"))
    y = _dq(b, b.op("Reshape", _dq(b, t, s, z), b.const([2, 12], dtype="int64")), s, z)
    g = b.output(y)
    # y = DQ(Reshape(DQ(t))) reads no Q after the Reshape: only the Transpose moves.
    assert _check(b)
    assert ops(g) == {"Transpose": 1, "DequantizeLinear": 2, "Reshape": 1}
    assert g.nodes[0].op == "Transpose" and g.nodes[0].input(0) is x


def test_simulated_quantization_and_mismatched_params_are_kept():
    b = Builder()
    x = b.input("x", (2, 4))
    s, z = b.const(0.1, "s"), b.const(7, "z", dtype="uint8")
    sim = _dq(b, _q(b, x, s, z), s, z)                                     # DQ(Q(x)): keeps its rounding
    other = _q(b, b.op("Flatten", sim), b.const(0.2, "s2"), z)             # other scale: not redundant
    rs = b.input("rs", (1,))                                               # runtime scale: not fused
    mm = b.op("MatMul", _dq(b, _q(b, x, s, z), rs, z), b.rand(4, 3))
    g = b.output(sim, other, mm)
    before = ops(g)
    assert not _check(b)
    assert ops(g) == before


# ---------------------------------------------------------------- end to end against onnxruntime


def _float_model():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("W", (8, 6)), ("B", (6,)), ("CW", (4, 3, 3, 3)), ("CB", (4,))]]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"]),
             helper.make_node("Conv", ["img", "CW", "CB"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["z"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
              helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 6, 6])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    graph = helper.make_graph(nodes, "float", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the tests allow
    return model


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 8)).astype(np.float32),
            "img": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}


@pytest.mark.parametrize("activation_type, options", [
    ("QUInt8", {}), ("QInt8", {}), ("QUInt8", {"per_channel": False}),
    ("QInt8", {"extra_options": {"ActivationSymmetric": True}}),
    ("QUInt8", {"extra_options": {"QDQKeepRemovableActivations": True}})],
    ids=["uint8", "int8", "per-tensor-weights", "symmetric-int8", "relu-kept"])
def test_onnxruntime_qdq_model_builds_quantized_and_matches(tmp_path, activation_type, options):
    """ONNX Runtime's QDQ variants: every layer quantized, each Relu inside its layer (symmetric
    int8 activations and kept activations put it between Q/DQ pairs: fuse_qdq_activation), the
    rest of the Q/DQ chains in Pointwise kernels, the outputs within one output step of ONNX
    Runtime's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    quant = pytest.importorskip("onnxruntime.quantization")
    import kiln
    from kiln.config import BuildConfig
    from kiln.onnx.importer import import_model
    from kiln.passes.pipeline import optimize

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([_feeds(s) for s in range(4)])

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.feeds, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_model(), src)
    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ,
                          weight_type=quant.QuantType.QInt8,
                          activation_type=getattr(quant.QuantType, activation_type), **{"per_channel": True, **options})
    model = onnx.load(dst)

    graph = import_model(model)
    optimize(graph)
    counts = ops(graph)
    assert counts.get("kiln::QMatMul") == 1 and counts.get("kiln::QConv") == 1
    assert "Relu" not in counts and "Add" not in counts
    assert all(n.attrs["program"][-1][0] in ("QuantizeLinear", "DequantizeLinear") for n in graph.nodes
               if n.qualified_op == "kiln::Pointwise")
    # ONNX Runtime quantizes the MatMul before its bias Add: the layer rounds to those codes itself
    # (mid_scale) and adds the bias after (fuse_qdq_bias).
    qmatmul = next(n for n in graph.nodes if n.op == "QMatMul")
    assert qmatmul.input(10) is not None and qmatmul.input(6) is not None
    for n in graph.nodes:
        if n.op in ("QMatMul", "QConv"):
            w = n.input(1)
            assert w.is_const and w.dtype.name == "int8" and w.producer() is None

    engine = kiln.build(model, BuildConfig(device="cpu"))
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    steps = {o: _output_step(model, o) for o in ("y", "z")}
    for seed in (10, 11):
        feeds = _feeds(seed)
        got = engine(**feeds)
        for name, want in zip(("y", "z"), session.run(["y", "z"], feeds)):
            assert np.abs(np.asarray(got[name]) - want).max() <= steps[name] * 1.001, name


def _output_step(model, name: str) -> float:
    """The scale of the DequantizeLinear that yields graph output `name`."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.output[0] == name)
    assert dq.op_type == "DequantizeLinear"
    return float(inits[dq.input[1]])


@pytest.mark.parametrize("rtype", [torch.int8, torch.uint8, torch.float8_e4m3fn])
def test_qconv_8bit_residual_is_dequantized_first(rtype):
    """residual_scale/residual_zp (inputs 10, 11): the residual R is 8-bit and the layer adds
    (R - residual_zp) * residual_scale, the same as passing that float residual."""
    x, w = _int8(2, 3, 5, 5), _int8(4, 3, 3, 3)
    if rtype == torch.float8_e4m3fn:
        r, zp = (torch.randn(2, 4, 5, 5) * 20).to(rtype), None
    else:
        r = torch.from_numpy(RNG.integers(0 if rtype == torch.uint8 else -128, 128, (2, 4, 5, 5))).to(rtype)
        zp = torch.tensor(3, dtype=rtype)
    rs = _f32(0.125)
    dequantized = ((r.double() - (0 if zp is None else 3)) * 0.125).float()
    args = (x, w, _f32(0.5), None, _f32(0.25), None, _f32(*RNG.standard_normal(4)))
    for out in ((), (_f32(0.3), torch.tensor(0, dtype=torch.int8))):
        want = qconv(*args, dequantized, *(out or (None, None)), pads=[1, 1, 1, 1], activation="Relu")
        got = qconv(*args, r, *(out or (None, None)), rs, zp, pads=[1, 1, 1, 1], activation="Relu")
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_qconv_residual_parameters_are_checked():
    x, w, r = _int8(1, 3, 4, 4), _int8(2, 3, 1, 1), _int8(1, 2, 4, 4)
    args = (x, w, _f32(0.5), None, _f32(0.25), None, None)
    with pytest.raises(TypeError, match="a residual with residual_scale is an 8-bit tensor"):
        qconv(*args, r.float(), None, None, _f32(0.1))
    with pytest.raises(ValueError, match="residual_zp is given without residual_scale"):
        qconv(*args, r, None, None, None, torch.tensor(0, dtype=torch.int8))
    with pytest.raises(ValueError, match="has residual_scale/residual_zp but no residual"):
        qconv(*args, None, None, None, _f32(0.1))
    with pytest.raises(ValueError, match="residual_scale must be per tensor"):
        qconv(*args, r, None, None, _f32(0.1, 0.2))


def test_conv_residual_dequantize_is_read_as_8_bits():
    """Conv(DQ(x), DQ(w)) + DQ(r_q) -> Relu -> Q (a QDQ ResNet block's last conv): the QConv reads
    r_q and dequantizes it itself; the residual's DQ goes."""
    b = Builder()
    x = b.input("x", (1, 4, 6, 6), "int8", data=RNG.integers(-128, 128, (1, 4, 6, 6)).astype(np.int8))
    r = b.input("r", (1, 5, 6, 6), "int8", data=RNG.integers(-128, 128, (1, 5, 6, 6)).astype(np.int8))
    xs, z = b.const(0.05, "xs"), b.const(0, "z", dtype="int8")
    rs, rz = b.const(0.07, "rs"), b.const(-2, "rz", dtype="int8")
    w = _dq(b, b.const(RNG.integers(-127, 128, (5, 4, 3, 3)), "wq", dtype="int8"),
            b.const(RNG.uniform(0.01, 0.05, 5), "ws"), None, axis=0)
    y = b.op("Relu", b.op("Add", b.op("Conv", _dq(b, x, xs, z), w, b.rand(5), pads=[1, 1, 1, 1]), _dq(b, r, rs, rz)))
    g = b.output(_q(b, y, b.const(0.04, "ys"), z))
    assert _check(b)
    assert ops(g) == {"kiln::QConv": 1}
    node = g.nodes[0]
    assert node.input(7) is r and node.input(10) is rs and node.input(11) is rz
    assert node.input(8) is not None and node.attrs["out_dtype"] == 3  # INT8
