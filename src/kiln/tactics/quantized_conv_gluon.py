"""The warp-specialized Gluon kernel for kiln::QConv's stride-1 convolutions
(kernels/gluon/qconv.py), as tactic `kiln::QConv.gluon`, beside the Triton ones
(quantized_conv.py), which the tuner times it against.

Registered unless KILN_GLUON=0 (kernels/gluon); untuned builds take the Triton tactic, registered
first. What `supports` accepts: a channels-last graph on a GPU of compute
capability 9.x (Hopper's TMA and warp-group MMA, which later GPUs do not have), X and W both int8
or both float8_e4m3fn (no input quantization, no mid quantization), Y requantized to that type, an
optional residual of that type with its scale, zero points of that type or absent (the kernel
checks they are 0), x_scale and out_scale of one element, w_scale and bias of 1 or OC, activation
Relu or none, and the geometry qconv.applies takes (stride 1, no dilation, group 1, OC a
multiple of 16, C >= 32 and a multiple of 32, or of 16 for a 1x1 conv without padding).
`kiln::QConv.gluon_s2d` (kernels/gluon/qconv_s2d.py): the stem's strided conv over few channels,
folded space to depth, its float input quantized in the framing copy (`supports_s2d`).
"""
from __future__ import annotations

from kiln.kernels import gluon
from kiln.tactics import quantized_conv as qc
from kiln.tactics.quantized import device_capability
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

EIGHT_BIT = ("int8", "float8_e4m3fn")


def _kernel_takes(query: TacticQuery, t: str | None) -> bool:
    """What both tactics ask of the layer around the conv: a channels-last graph on the GPU, 8-bit
    operands of type t (quantized_conv's type and shape rules), Y requantized to t with no mid
    quantization, a residual of t or none, Relu or no activation."""
    if query.device != "cuda" or query.layout != "nhwc":
        return False
    dts, at = query.input_dtypes, qc._at
    if t not in EIGHT_BIT or not qc._types_ok(query, t) or not qc._shapes_ok(query):
        return False
    if at(dts, qc.MID_SCALE) is not None or at(dts, qc.OUT_SCALE) is None or qc._output_type(query) != t:
        return False
    return at(dts, qc.RESIDUAL) in (None, t) and query.attrs.get("activation", "") in ("", "Relu")


def _on_hopper() -> bool:
    cap = device_capability()
    return cap is not None and cap[0] == 9          # Hopper's wgmma: sm_90 only (Blackwell has tcgen05 instead)


def supports(query: TacticQuery) -> bool:
    dts, at = query.input_dtypes, qc._at
    if not _kernel_takes(query, at(dts, qc.X)) or query.attrs.get("x_dtype") or at(dts, qc.X_QUANT_SCALE) is not None:
        return False
    from kiln.kernels.gluon.qconv import applies
    return applies(at(query.input_shapes, qc.X) or (), at(query.input_shapes, qc.W) or (), query.attrs) and _on_hopper()


def supports_s2d(query: TacticQuery) -> bool:
    """`kiln::QConv.gluon_s2d`: a conv that folds space to depth (kernels/conv_fold.folds: the
    stem), X of W's 8-bit type or float with x_dtype naming it (quantized in the framing copy),
    otherwise what `supports` asks of the folded conv (OC a multiple of 16)."""
    t = qc._at(query.input_dtypes, qc.W)
    if not _kernel_takes(query, t) or not qc.folds(query) or qc._x_type(query, t) != t:
        return False
    oc = (qc._at(query.input_shapes, qc.W) or (0,))[0]
    return isinstance(oc, int) and oc % 16 == 0 and _on_hopper()


if gluon.enabled():
    from kiln.kernels.gluon.qconv import CONFIGS, qconv
    from kiln.kernels.gluon.qconv_s2d import S2D_CONFIGS, qconv_s2d

    register_tactic(Tactic("kiln::QConv.gluon", "kiln::QConv", 3, ("cuda",), qconv, supports,
                           configs=CONFIGS))
    register_tactic(Tactic("kiln::QConv.gluon_s2d", "kiln::QConv", 2, ("cuda",), qconv_s2d, supports_s2d,
                           configs=S2D_CONFIGS))
