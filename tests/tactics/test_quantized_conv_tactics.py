"""The kiln::QConv tactics (tactics/quantized_conv.py): what `supports` accepts and rejects, and
the tactics' kernels against the reference kiln::QConv (interpreted on CPU, compiled on the GPU)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference.quantized import qconv as reference_qconv
from kiln.kernels.triton import available
from kiln.tactics import TacticQuery, candidates, get_tactic
from kiln.tactics import quantized_conv as qc

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

INT8, FP8 = "kiln::QConv.triton_nhwc", "kiln::QConv.triton_nhwc_fp8"
INT8_NCHW, FP8_NCHW = "kiln::QConv.triton_nchw", "kiln::QConv.triton_nchw_fp8"
HOPPER = (9, 0)
X_SHAPE, W_SHAPE = (64, 64, 56, 56), (64, 64, 3, 3)
ATTRS = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "activation": "Relu"}


def _query(q="int8", device="cuda", layout="nhwc", x_shape=X_SHAPE, w_shape=W_SHAPE, scale="float32",
           out=None, residual=False, **attrs):
    """A QConv node: x, w, x_scale, x_zp, w_scale, w_zp, bias, residual[, out_scale, out_zp]."""
    oc = w_shape[0]
    dts = [q, q, scale, q, "float32", None, "float32", scale if residual else None]
    shapes = [x_shape, w_shape, (), (), (oc,), None, (oc,), (64, oc, 56, 56) if residual else None]
    if out is not None:
        dts += ["float32", out]
        shapes += [(), ()]
    return TacticQuery("kiln::QConv", device, tuple(dts), {**ATTRS, **attrs}, tuple(shapes), layout)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a GPU of compute capability (9, 0) is present; the test may change it."""
    cap = {"value": HOPPER}
    monkeypatch.setattr(qc, "device_capability", lambda: cap["value"])
    return cap


def test_accepts_int8_and_fp8_convs(gpu):
    assert qc.supports_int8(_query())
    assert qc.supports_int8(_query(out="int8", residual=True))             # requantized, residual
    assert qc.supports_int8(_query(out="uint8", scale="float16"))
    assert qc.supports_int8(_query(out="int8", out_dtype=17))              # out_dtype wins: float8 output
    assert qc.supports_int8(_query(w_shape=(256, 64, 1, 1), kernel_shape=[1, 1], pads=[0, 0, 0, 0]))
    assert qc.supports_int8(_query(x_shape=("N", 64, 56, 56), activation="Silu"))   # symbolic batch
    assert qc.supports_int8(_query(x_shape=("N", "C", 56, 56)))            # C is W's
    # Small C (ResNet's stem) walks kernel rows; C % 32 != 0 with a dilation along W walks taps
    # over padded channels: every C runs with K steps of at least 32.
    assert qc.supports_int8(_query(x_shape=(64, 3, 224, 224), w_shape=(64, 3, 7, 7), kernel_shape=[7, 7],
                                   pads=[3] * 4, strides=[2, 2]))
    assert qc.supports_int8(_query(x_shape=(64, 40, 56, 56), w_shape=(64, 40, 3, 3), dilations=[2, 1]))
    assert qc.supports_int8(_query(x_shape=(64, 48, 56, 56), w_shape=(64, 48, 3, 3), dilations=[2, 2]))
    assert qc.supports_int8(_query(x_shape=(64, 40, 56, 56), w_shape=(64, 40, 3, 3), dilations=[2, 2]))
    assert qc.supports_fp8(_query("float8_e4m3fn"))
    assert qc.supports_fp8(_query("float8_e4m3fn", out="float8_e4m3fn", scale="bfloat16"))
    assert not qc.supports_fp8(_query()) and not qc.supports_int8(_query("float8_e4m3fn"))


def test_rejects_what_the_kernel_cannot_run(gpu):
    assert not qc.supports_int8(_query(device="cpu"))
    assert not qc.supports_int8(_query("uint8"))                           # a uint8 W
    assert not qc.supports_int8(_query(x_shape=(64, 32, 56, 56)))          # X and W disagree on C
    assert not qc.supports_int8(_query(w_shape=(64, 32, 3, 3), group=2))
    assert not qc.supports_int8(_query(x_shape=(64, 64, 56), w_shape=(64, 64, 3), kernel_shape=[3]))   # 1-D
    assert not qc.supports_int8(_query(x_shape=None))                     # unknown rank
    assert not qc.supports_int8(_query(activation="Softmax"))
    assert not qc.supports_int8(_query(scale="float64"))                  # float64 output
    assert not qc.supports_int8(_query(out="int16"))                      # requantized type
    assert not qc.supports_int8(_query(out="int8", out_dtype=5))          # out_dtype INT16
    mixed = _query()
    mixed = TacticQuery(mixed.op, mixed.device, ("int8", "float8_e4m3fn") + mixed.input_dtypes[2:], mixed.attrs,
                        mixed.input_shapes, mixed.layout)
    assert not qc.supports_int8(mixed) and not qc.supports_fp8(mixed)
    bad_scale = _query()
    bad_scale = TacticQuery(bad_scale.op, "cuda", bad_scale.input_dtypes, bad_scale.attrs,
                            bad_scale.input_shapes[:4] + ((32,),) + bad_scale.input_shapes[5:], "nhwc")
    assert not qc.supports_int8(bad_scale)                                # w_scale of neither 1 nor OC


def _with_residual(query: TacticQuery, residual: str, res_scale: str | None = "float32",
                   res_zp: str | None = None) -> TacticQuery:
    """`query` (requantized) with a residual of type `residual` and residual_scale/zp (inputs 10, 11)."""
    dts = list(query.input_dtypes[:7]) + [residual, "float32", "int8", res_scale, res_zp]
    shapes = list(query.input_shapes[:7]) + [(64, 64, 56, 56), (), (), (), ()]
    return TacticQuery(query.op, query.device, tuple(dts), query.attrs, tuple(shapes), query.layout)


def test_mid_quantization(gpu):
    """mid_scale (one float) and mid_zp (one int8/uint8 value; inputs 13, 14): the residual block of
    an explicitly quantized model in one layer (passes/fuse_qdq_residual.py)."""
    def mid(scale="float32", zp="uint8", shape=()):
        q = _with_residual(_query(), "uint8", res_zp="uint8")
        return TacticQuery(q.op, q.device, q.input_dtypes + (None, scale, zp), q.attrs,
                           q.input_shapes + (None, shape, shape), q.layout)
    assert qc.supports_int8(mid()) and qc.supports_int8(mid(zp="int8")) and qc.supports_int8(mid(zp=None))
    assert not qc.supports_int8(mid(zp="float8_e4m3fn"))
    assert not qc.supports_int8(mid(scale="int8")) and not qc.supports_int8(mid(scale=None))
    assert not qc.supports_int8(mid(shape=(64,)))                          # per tensor only


def test_8bit_residual(gpu):
    """A residual read in 8 bits needs its residual_scale; a float one takes none."""
    assert qc.supports_int8(_with_residual(_query(), "int8"))
    assert qc.supports_int8(_with_residual(_query(), "uint8", res_zp="uint8"))
    assert qc.supports_fp8(_with_residual(_query("float8_e4m3fn"), "float8_e4m3fn"))
    assert qc.supports_int8(_with_residual(_query(), "float16", res_scale=None))
    assert not qc.supports_int8(_with_residual(_query(), "int8", res_scale=None))        # raw codes: no scale
    assert not qc.supports_int8(_with_residual(_query(), "float16"))                     # a float one scaled
    assert not qc.supports_int8(_with_residual(_query(), "int8", res_zp="uint8"))        # zp of another type
    gpu["value"] = (8, 6)                                                                # no float8 before 8.9
    assert not qc.supports_int8(_with_residual(_query(), "float8_e4m3fn"))
    assert qc.supports_int8(_with_residual(_query(), "int8"))


def test_one_tactic_per_layout(gpu):
    nchw = _query(layout="nchw")
    assert not qc.supports_int8(nchw) and qc.supports_int8_nchw(nchw)
    assert not qc.supports_int8_nchw(_query()) and not qc.supports_fp8_nchw(_query("float8_e4m3fn"))
    assert qc.supports_fp8_nchw(_query("float8_e4m3fn", layout="nchw"))


def test_needs_a_gpu_with_the_mma(gpu):
    gpu["value"] = (8, 6)                                                  # Ampere: int8 yes, fp8 no
    assert qc.supports_int8(_query()) and not qc.supports_fp8(_query("float8_e4m3fn"))
    assert qc.supports_int8(_query(out="int8")) and not qc.supports_int8(_query(out="float8_e4m3fn"))
    gpu["value"] = (7, 5)
    assert not qc.supports_int8(_query())
    gpu["value"] = None                                                    # no GPU visible
    assert not qc.supports_int8(_query()) and not qc.supports_fp8(_query("float8_e4m3fn"))


def test_capability_without_cuda_is_none():
    if not torch.cuda.is_available():
        assert qc.device_capability() is None
    else:
        assert qc.device_capability() == tuple(torch.cuda.get_device_capability())


def test_registered_before_the_reference(gpu):
    fallback = "kiln::QConv.dequant_cudnn"   # tactics/quantized_fallback.py: after the 8-bit kernels
    found = [t.name for t in candidates(_query())]
    assert found == [INT8, fallback, "kiln::QConv.reference"]
    found = [t.name for t in candidates(_query("float8_e4m3fn", out="float8_e4m3fn"))]
    assert found == [FP8, fallback, "kiln::QConv.reference"]
    assert [t.name for t in candidates(_query(layout="nchw"))] == [INT8_NCHW, fallback, "kiln::QConv.reference"]
    assert [t.name for t in candidates(_query(device="cpu"))] == ["kiln::QConv.reference"]
    assert get_tactic(INT8).configs and get_tactic(FP8).configs[0]["FP8_ACC"] > 0
    # The tuner tries every config: each must compile on the GPU (8-bit dots take K in 32s).
    for name in (INT8, FP8, INT8_NCHW, FP8_NCHW):
        assert all(c["BLOCK_K"] >= 32 for c in get_tactic(name).configs), name


# --- the kernels behind the tactics ----------------------------------------------------------------

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TINY = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "num_stages": 2, "FP8_ACC": 32}


def _operands(q, seed=0):
    """A ResNet bottleneck's 3x3 conv in miniature, channels-last, per-channel power-of-two scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, (2, 32, 6, 6), generator=g).to(q).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-4, 5, (32, 32, 3, 3), generator=g).to(q)
    w_scale = 2.0 ** -torch.randint(2, 6, (32,), generator=g).float()
    bias = torch.randint(-8, 9, (32,), generator=g).float() / 4
    residual = torch.randint(-8, 9, (2, 32, 6, 6), generator=g).float() / 4
    return x, w, torch.tensor(2.0 ** -4), None, w_scale, None, bias, residual


@pytest.mark.parametrize("name,q", [(INT8, torch.int8), (FP8, torch.float8_e4m3fn), (INT8_NCHW, torch.int8),
                                    (FP8_NCHW, torch.float8_e4m3fn)], ids=["int8", "fp8", "int8-nchw", "fp8-nchw"])
def test_tactic_kernel_matches_the_reference(name, q):
    if DEV == "cuda" and q == torch.float8_e4m3fn and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    ops = _operands(q)
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "activation": "Relu"}
    out = (torch.tensor(0.125), torch.tensor(0, dtype=torch.int8))
    want = reference_qconv(*ops, *out, **attrs)
    dev = [None if t is None else t.to(DEV) for t in (*ops, *out)]
    got = get_tactic(name).kernel(*dev, **attrs, config=TINY)
    nhwc = name in (INT8, FP8)
    assert got.dtype == torch.int8 and got.is_contiguous(memory_format=torch.channels_last if nhwc else
                                                        torch.contiguous_format)
    assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
@pytest.mark.parametrize("name,q", [(INT8, torch.int8), (FP8, torch.float8_e4m3fn)], ids=["int8", "fp8"])
def test_gpu_every_config_of_the_tactic(name, q):
    """What the tuner does per config: run on CUDA, compare with the reference (exact here)."""
    if q == torch.float8_e4m3fn and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    ops = _operands(q, seed=1)
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "activation": "Relu"}
    want = reference_qconv(*ops, **attrs)                                   # float32 output
    tactic = get_tactic(name)
    assert tactic.supports(TacticQuery("kiln::QConv", "cuda", tuple(None if t is None else str(t.dtype)[6:]
                                                                      for t in ops), attrs,
                                       tuple(None if t is None else tuple(t.shape) for t in ops), "nhwc"))
    for config in tactic.configs:
        got = tactic.kernel(*[None if t is None else t.cuda() for t in ops], **attrs, config=config)
        assert torch.equal(got.cpu(), want), config


def test_float_input_with_x_dtype(gpu):
    """X float with x_dtype naming W's type: the layer quantizes X itself (the launcher)."""
    def query(q, x_type, x_quant_scale=None, **attrs):
        base = _query(q, **attrs)
        dts, shapes = (x_type,) + base.input_dtypes[1:3] + (None,) + base.input_dtypes[4:], base.input_shapes
        if x_quant_scale is not None:                           # input 12, after absent ones
            dts += (None,) * (12 - len(dts)) + (x_quant_scale[0],)
            shapes += (None,) * (12 - len(shapes)) + (x_quant_scale[1],)
        return TacticQuery(base.op, base.device, dts, base.attrs, shapes, base.layout)
    assert qc.supports_int8(query("int8", "float32", x_dtype=3))
    assert qc.supports_fp8(query("float8_e4m3fn", "float16", x_dtype=17))
    assert not qc.supports_int8(query("int8", "float32"))                  # float X without x_dtype
    assert not qc.supports_int8(query("int8", "float32", x_dtype=17))      # quantized to another type
    assert not qc.supports_fp8(query("float8_e4m3fn", "int8", x_dtype=17))  # x_dtype on an 8-bit X
    assert not qc.supports_int8(query("int8", "float32", x_dtype=999))     # not a type
    # x_quant_scale: a one-element float, only with x_dtype
    assert qc.supports_int8(query("int8", "float32", x_dtype=3, x_quant_scale=("float32", (1,))))
    assert not qc.supports_int8(query("int8", "float32", x_dtype=3, x_quant_scale=("int8", (1,))))
    assert not qc.supports_int8(query("int8", "float32", x_dtype=3, x_quant_scale=("float32", (4,))))
    assert not qc.supports_int8(query("int8", "int8", x_quant_scale=("float32", (1,))))


def test_uint8_activations_with_int8_weights(gpu):
    """ONNX Runtime's default QDQ conv: uint8 X (zero point uint8 or absent), int8 W; any C (the
    framing copy holds the zero point), the folded (S2D) walk too."""
    def query(x_zp="uint8", w_zp=None, **kw):
        base = _query(**kw)
        dts = ("uint8",) + base.input_dtypes[1:3] + (x_zp, base.input_dtypes[4], w_zp) + base.input_dtypes[6:]
        return TacticQuery(base.op, base.device, dts, base.attrs, base.input_shapes, base.layout)
    assert qc.supports_int8(query()) and qc.supports_int8(query(x_zp=None))
    assert qc.supports_int8(query(out="uint8")) and qc.supports_int8_nchw(query(layout="nchw"))
    assert not qc.supports_fp8(query())
    assert not qc.supports_int8(query(x_zp="int8"))                        # zero point of another type
    assert not qc.supports_int8(query(w_zp="uint8"))
    stem = dict(x_shape=(64, 3, 224, 224), w_shape=(64, 3, 7, 7), kernel_shape=[7, 7], pads=[3, 3, 3, 3],
                strides=[2, 2])
    assert qc.supports_int8(query(**stem)) and qc.folds(query(**stem))     # C = 3: framed with the zero point
    names = [t.name for t in candidates(query(**stem))]
    assert INT8 in names and INT8 + "_s2d" in names


@pytest.mark.parametrize("activation_type", ["QUInt8", "QInt8"])
def test_onnxruntime_qdq_conv_takes_the_triton_tactic(gpu, tmp_path, activation_type):
    """A conv quantized by onnxruntime.quantization.quantize_static (QDQ, asymmetric uint8 or int8
    activations with zero points, int8 weights): the fused kiln::QConv is one the Triton int8
    tactic runs, where it used to stay on the reference."""
    onnx = pytest.importorskip("onnx")
    quant = pytest.importorskip("onnxruntime.quantization")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from kiln.onnx.importer import import_model
    from kiln.passes.pipeline import optimize

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": rng.standard_normal((2, 8, 6, 6)).astype(np.float32)} for _ in range(3)])

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.feeds, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                          weight_type=quant.QuantType.QInt8, activation_type=getattr(quant.QuantType, activation_type))
    g = import_model(onnx.load(dst))
    optimize(g)
    conv = next(n for n in g.nodes if n.qualified_op == "kiln::QConv")
    dts = tuple(None if v is None or v.dtype is None else v.dtype.name for v in conv.inputs)
    assert dts[0] == dts[3] == activation_type[1:].lower() and dts[1] == "int8"
    shapes = tuple(None if v is None or v.shape is None else tuple(v.shape) for v in conv.inputs)
    query = TacticQuery("kiln::QConv", "cuda", dts, conv.attrs, shapes, "nhwc")
    assert qc.supports_int8(query) and INT8 in [t.name for t in candidates(query)]
