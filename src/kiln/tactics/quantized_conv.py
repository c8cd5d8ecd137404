"""Tactics for kiln::QConv: the Triton implicit-GEMM convolution on int8 / float8 tensor cores
(kernels/triton/qconv.py). One tactic per input type, because each has its own tuning space
(fp8 also tunes how its accumulator is promoted), and per graph layout:
- `.triton_nhwc` / `.triton_nhwc_fp8` when the graph runs channels-last (layout "nhwc", see
  passes/choose_layout.py and tactics/conv.py): X is read in place (the first conv of a
  region converts it once) and Y is channels-last, so the region stays channels-last.
- `.triton_nchw` / `.triton_nchw_fp8` otherwise: the same kernel converts X to channels-last
  on every call and writes Y as contiguous NCHW, so that the graph's NCHW tensors stay NCHW;
  the conversion is in the tuner's timing, against the reference.

What `supports` accepts, and why:
- device cuda with a GPU that has the MMAs: int8 needs compute capability 8.0 (Ampere's
  int8 mma; Triton's int8 dot), float8_e4m3fn 8.9 (Ada/Hopper fp8 mma; also for a float8
  output, whose conversion Triton emits from sm_89 on).
- X and W both int8, or both float8_e4m3fn; or X uint8 and W int8 (ONNX Runtime's default QDQ
  models: asymmetric uint8 activations, symmetric int8 weights): the kernel shifts X by 128 and
  subtracts its zero point, and the framing copy of a C not a multiple of 4 (a uint8 stem, folded
  or not) frames X with its zero point.
  X may be float where the attribute x_dtype names W's type, or uint8 under an int8 W (the layer
  quantizes X itself, precision/fuse_input_quantize.py, with x_quant_scale where given, a
  one-element float): the S2D configs in their framing copy, the others with the QuantizeLinear
  kernel first.
- zero points absent or of the input's type. X's may have any value (the kernel subtracts it);
  W's must be 0, which a query cannot see (it is a constant): the kernel checks it once and raises
  on a non-zero one, so the tuner drops the tactic for that node and keeps the reference.
- x_scale float16/bfloat16/float32 (the float output's type); w_scale per tensor or per
  output channel; bias with 1 or OC elements; a residual of at most Y's rank, float, or
  int8/uint8/float8_e4m3fn with a one-element residual_scale (and zero point of its type).
- the output: float, or requantized to int8, uint8 or float8_e4m3fn; mid_scale (one float) and
  mid_zp (one int8/uint8 value) where given (the epilogue quantizes the conv's value before the
  residual).
- a 2-D conv (4-D X and W), group 1 (grouped and depthwise convs stay on the reference),
  any static C (W's dim 1): the kernel walks every C with K steps of at least 32, which
  8-bit tensor-core dots need on the GPU (kernels/triton/qconv.py: C a multiple of 32 tap
  by tap, other C kernel row by kernel row, or with a dilation along W tap by tap over
  channels padded to the step). No config or walk takes a 16-deep step.
- the activation is one the Triton epilogue has (gemm.py's, the fused.ACTIVATIONS names).
`.triton_nhwc_s2d` / `.triton_nhwc_fp8_s2d`: the same kernel on a conv folded space to depth
(kernels/triton/qconv_s2d.py; ResNet's stem), for the strided convs over few channels that
`folds` accepts, with their own tuning spaces.
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.kernels.reference.fused import ACTIVATIONS
from kiln.kernels.reference.quantized import QCONV_INPUTS
from kiln.kernels.triton import available as triton_available
from kiln.tactics.quantized import device_capability  # one query for both quantized tactic files
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

REQUANT_TYPES = ("int8", "uint8", "float8_e4m3fn")
# Input or output type -> the compute capability the kernel needs for it (MMA, conversion).
MIN_CAPABILITY = {"int8": (8, 0), "float8_e4m3fn": (8, 9)}

# Input positions (reference.quantized.QCONV_INPUTS).
X, W, X_SCALE, X_ZP, W_SCALE, W_ZP, BIAS, RESIDUAL, OUT_SCALE, OUT_ZP, RES_SCALE, RES_ZP, X_QUANT_SCALE, \
    MID_SCALE, MID_ZP = range(len(QCONV_INPUTS))


def _at(seq: tuple, i: int):  # noqa: ANN202 - a dtype name or a shape
    return seq[i] if i < len(seq) else None


def _output_type(query: TacticQuery) -> str | None:
    """The output's type name by the reference's rule (kernels/reference/quantized.py)."""
    dts = query.input_dtypes
    if _at(dts, OUT_SCALE) is None:
        return _at(dts, X_SCALE)
    code = int(query.attrs.get("out_dtype", 0) or 0)
    if code:
        try:
            return dtypes.from_onnx(code).name
        except TypeError:
            return None
    return _at(dts, OUT_ZP) or "uint8"


def _x_type(query: TacticQuery, input_type: str) -> str | None:
    """X's 8-bit type as the kernel reads it: the input type, uint8 under an int8 W (module
    docstring), or (attribute x_dtype naming the input type, or uint8 under int8) that type for a
    float X, which the launcher quantizes; None where the tactic cannot take X."""
    x, code = _at(query.input_dtypes, X), int(query.attrs.get("x_dtype", 0) or 0)
    reads = lambda t: t == input_type or (t, input_type) == ("uint8", "int8")  # noqa: E731
    if not code:
        return x if reads(x) and _at(query.input_dtypes, X_QUANT_SCALE) is None else None
    if _at(query.input_dtypes, X_QUANT_SCALE) not in (None, *dtypes.FLOAT_NAMES):
        return None
    try:
        name = dtypes.from_onnx(code).name
    except TypeError:
        return None
    return name if x in dtypes.FLOAT_NAMES and reads(name) else None


def _types_ok(query: TacticQuery, input_type: str) -> bool:
    dts = query.input_dtypes
    x_type = _x_type(query, input_type)
    if x_type is None or _at(dts, W) != input_type:
        return False
    if _at(dts, X_ZP) not in (None, x_type) or _at(dts, W_ZP) not in (None, input_type):
        return False
    if _at(dts, X_SCALE) not in dtypes.FLOAT_NAMES or _at(dts, W_SCALE) not in dtypes.FLOAT_NAMES:
        return False
    if any(_at(dts, i) not in (None, *dtypes.FLOAT_NAMES) for i in (BIAS, OUT_SCALE, RES_SCALE, MID_SCALE)):
        return False
    if _at(dts, MID_ZP) not in (None, "int8", "uint8") or (_at(dts, MID_ZP) and not _at(dts, MID_SCALE)):
        return False
    if not _residual_ok(dts):
        return False
    out = _output_type(query)
    return out in (REQUANT_TYPES if _at(dts, OUT_SCALE) is not None else dtypes.FLOAT_NAMES)


def _residual_ok(dts: tuple) -> bool:
    """A float residual, or an 8-bit one with residual_scale (and a zero point of its type)."""
    res = _at(dts, RESIDUAL)
    if _at(dts, RES_SCALE) is None:
        return res in (None, *dtypes.FLOAT_NAMES) and _at(dts, RES_ZP) is None
    return res in REQUANT_TYPES and _at(dts, RES_ZP) in (None, res)


def _shapes_ok(query: TacticQuery) -> bool:
    """2-D conv, group 1, channels the kernel can walk (`_channels_ok`), parameters that fit [OC]."""
    shapes = query.input_shapes
    xs, ws = _at(shapes, X), _at(shapes, W)
    if xs is None or ws is None or len(xs) != 4 or len(ws) != 4:
        return False
    c, oc = ws[1], ws[0]
    if int(query.attrs.get("group", 1)) != 1 or not _channels_ok(c):
        return False
    if isinstance(xs[1], int) and xs[1] != c:        # a symbolic C in X is W's
        return False
    for i in (X_SCALE, OUT_SCALE, OUT_ZP, X_ZP, RES_SCALE, RES_ZP, X_QUANT_SCALE, MID_SCALE, MID_ZP):
        s = _at(shapes, i)
        if s is not None and not _one_element(s):
            return False
    for i in (W_SCALE, BIAS, W_ZP):
        s = _at(shapes, i)
        if s is not None and not (_one_element(s) or (len(s) == 1 and s[0] == oc)):
            return False
    r = _at(shapes, RESIDUAL)
    return _at(query.input_dtypes, RESIDUAL) is None or (r is not None and len(r) <= 4)


def _channels_ok(c: int | str) -> bool:
    """C (W's dim 1) known: the kernel packs W for its K walk, which takes any C (module docstring)."""
    return isinstance(c, int) and c > 0


def _one_element(shape: tuple) -> bool:
    return all(d == 1 for d in shape)


def _supports(query: TacticQuery, input_type: str, nhwc: bool) -> bool:
    if query.device != "cuda" or (query.layout == "nhwc") != nhwc:
        return False
    if not _types_ok(query, input_type) or not _shapes_ok(query):
        return False
    if query.attrs.get("activation", "") not in ACTIVATIONS:
        return False
    cap = device_capability()
    need = max(MIN_CAPABILITY[input_type], MIN_CAPABILITY.get(_output_type(query) or "", (0, 0)),
               MIN_CAPABILITY.get(_at(query.input_dtypes, RESIDUAL) or "", (0, 0)))
    return cap is not None and cap >= need


def supports_int8(query: TacticQuery) -> bool:
    return _supports(query, "int8", nhwc=True)


def supports_fp8(query: TacticQuery) -> bool:
    return _supports(query, "float8_e4m3fn", nhwc=True)


def supports_int8_nchw(query: TacticQuery) -> bool:
    return _supports(query, "int8", nhwc=False)


def supports_fp8_nchw(query: TacticQuery) -> bool:
    return _supports(query, "float8_e4m3fn", nhwc=False)


def folds(query: TacticQuery) -> bool:
    """Whether the node's conv folds space to depth (kernels/triton/qconv_s2d.py, config S2D):
    equal strides >= 2, no dilation, few channels (W's dim 1 known; kernels/conv_fold.py)."""
    from kiln.kernels.conv_fold import conv_folds

    return conv_folds(_at(query.input_shapes, W), query.attrs)


if triton_available():
    from kiln.kernels.triton import qconv as _triton_qconv
    from kiln.kernels.triton.qconv_plan import FP8_S2D_CONFIGS, INT8_S2D_CONFIGS

    def qconv_nchw(*inputs, **attrs):  # noqa: ANN002, ANN003, ANN201 - the reference's convention
        """kiln::QConv with a contiguous NCHW output (graphs that run NCHW)."""
        return _triton_qconv.qconv(*inputs, **attrs, channels_last_out=False)

    _INT8, _FP8 = _triton_qconv.INT8_CONFIGS, _triton_qconv.FP8_CONFIGS
    for _name, _kernel, _supports_fn, _configs in (
            ("kiln::QConv.triton_nhwc", _triton_qconv.qconv, supports_int8, _INT8),
            ("kiln::QConv.triton_nhwc_fp8", _triton_qconv.qconv, supports_fp8, _FP8),
            ("kiln::QConv.triton_nchw", qconv_nchw, supports_int8_nchw, _INT8),
            ("kiln::QConv.triton_nchw_fp8", qconv_nchw, supports_fp8_nchw, _FP8)):
        register_tactic(Tactic(_name, "kiln::QConv", 9, ("cuda",), _kernel, _supports_fn, configs=_configs))
    # Strided convs over few channels (the stem), folded space to depth first: their own tactics,
    # so that no other layer times these configs.
    for _name, _supports_fn, _configs in (
            ("kiln::QConv.triton_nhwc_s2d", supports_int8, INT8_S2D_CONFIGS),
            ("kiln::QConv.triton_nhwc_fp8_s2d", supports_fp8, FP8_S2D_CONFIGS)):
        register_tactic(Tactic(_name, "kiln::QConv", 4, ("cuda",), _triton_qconv.qconv,
                               lambda q, ok=_supports_fn: ok(q) and folds(q), configs=_configs))
