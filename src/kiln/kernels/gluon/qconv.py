"""The host side of the warp-specialized Gluon conv (kernels/gluon/qconv_kernel.py, whose
docstring says how it works): which convs it takes, the TMA descriptors and views it reads and
writes, the launch, and a compile for sm_90 without a GPU (tests and benchmarks/gluon_conv1x1.py).
A 1x1 stride-1 conv without padding runs as a GEMM over rows of pixels (the view [1, 1, N*H*W, C]);
any other stride-1 conv as the WINDOW walk over [N, H, W, C] with the packed weight."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kiln.ir import dtypes
from kiln.kernels.gluon.qconv_kernel import CONFIGS, EIGHT_BIT, conv_kernel
from kiln.kernels.memo import all_zero
from kiln.kernels.triton.pdl import launch_options
from kiln.kernels.triton.qconv_plan import ConvGeometry, conv_geometry, packed_weight
from kiln.kernels.triton.qconv_window import window_box
from kiln.kernels.triton.qgemm_tma import persistent_programs

Tensor = torch.Tensor
__all__ = ["CONFIGS", "applies", "compile_for", "geometry", "qconv"]


def descriptors(x4: Tensor, w2: Tensor, r4: Tensor, y4: Tensor, box: tuple[int, int, int], bn: int,
                bk: int) -> tuple:
    """TMA descriptors of X [N, H, W, C] (boxes BI x BH x BW x bk), the packed W [OC, K] (BN x bk),
    R and Y [N, OH, OW, OC] (BI x BH x BW x BN)."""
    bits = EIGHT_BIT[x4.dtype]
    la = gl.NVMMASharedLayout.get_default_for([*box, bk], bits)
    lw = gl.NVMMASharedLayout.get_default_for([bn, bk], bits)
    ly = gl.NVMMASharedLayout.get_default_for([*box, bn], bits)
    return (TensorDescriptor.from_tensor(x4, [*box, bk], la), TensorDescriptor.from_tensor(w2, [bn, bk], lw),
            TensorDescriptor.from_tensor(r4, [*box, bn], ly), TensorDescriptor.from_tensor(y4, [*box, bn], ly))


def tma_view(x: Tensor) -> Tensor:
    """X [N, C, H, W] as the [N, H, W, C] view its TMA descriptor reads: X itself where its
    channels are dense and its other strides whole 16 bytes (a channels-last tensor; the folded
    stem's view of overlapping pixels, qconv_s2d.py), else a channels-last copy."""
    v = x.permute(0, 2, 3, 1)
    if v.stride(3) == 1 and all(s * x.element_size() % 16 == 0 for s in v.stride()[:3]) and x.data_ptr() % 16 == 0:
        return v
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


GEOMETRY = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")   # conv_geometry's attributes


def geometry(x_shape: Sequence[int | str], w_shape: Sequence[int], attrs: dict) -> ConvGeometry | None:
    """The conv's geometry where the kernel takes it, else None: group 1, stride 1, no dilation, C
    a multiple of 32 (an 8-bit MMA's K; BK divides C, so a K step stays within one tap) or, for a
    pointwise window (1x1, no padding: a GEMM over rows of pixels), of 16 (TMA rows of whole 16
    bytes), C at least 32, OC a multiple of 16. A symbolic H or W counts as any size."""
    if len(x_shape) != 4 or len(w_shape) != 4 or int(attrs.get("group", 1)) != 1:
        return None
    oc, c = w_shape[0], w_shape[1]
    if not (isinstance(c, int) and isinstance(oc, int)) or c % 16 or oc % 16 or c < 32:
        return None
    hw = [d if isinstance(d, int) else 1 for d in x_shape[2:]]
    try:
        geo = conv_geometry([1, c, *hw], w_shape, **{k: attrs[k] for k in GEOMETRY if k in attrs})
    except (ValueError, TypeError):
        return None
    if geo.pointwise(*hw):
        return geo
    ok = (geo.sh, geo.sw, geo.dh, geo.dw) == (1, 1, 1, 1) and c % 32 == 0 and geo.oh > 0 and geo.ow > 0
    return geo if ok else None


def applies(x_shape: Sequence[int | str], w_shape: Sequence[int], attrs: dict) -> bool:
    return geometry(x_shape, w_shape, attrs) is not None


def qconv(x: Tensor, w: Tensor, x_scale: Tensor, x_zp: Tensor | None, w_scale: Tensor,
          w_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
          out_scale: Tensor | None = None, out_zp: Tensor | None = None, residual_scale: Tensor | None = None,
          residual_zp: Tensor | None = None, x_quant_scale: Tensor | None = None, mid_scale: Tensor | None = None,
          mid_zp: Tensor | None = None, *, activation: str = "", out_dtype: int = 0,
          config: dict[str, Any] | None = None, **conv_attrs: Any) -> Tensor:
    """kiln::QConv's contract for what `applies` takes, X and W int8 or float8_e4m3fn alike, Y
    requantized to X's type (channels-last), an optional residual of X's type with its scale,
    activation "" or "Relu", zero points 0 (module docstring)."""
    cfg = dict(config or CONFIGS[0])
    geo = geometry(x.shape, w.shape, conv_attrs) if x.dtype in EIGHT_BIT and w.dtype == x.dtype else None
    if geo is None:
        raise ValueError(f"gluon qconv: 8-bit X and W alike, a stride-1 conv; got X {x.dtype} {tuple(x.shape)}, "
                         f"W {w.dtype} {tuple(w.shape)}, {conv_attrs}")
    if out_scale is None or x_quant_scale is not None or mid_scale is not None or activation not in ("", "Relu"):
        raise ValueError("gluon qconv: a requantized output, no input quantization, no mid quantization, Relu or none")
    out_type = dtypes.from_onnx(out_dtype).torch if out_dtype else (out_zp.dtype if out_zp is not None else None)
    if out_type != x.dtype or (residual is not None and (residual.dtype != x.dtype or residual_scale is None)):
        raise ValueError(f"gluon qconv: Y and the residual of X's type {x.dtype} (the residual with its scale)")
    for name, zp in (("x_zp", x_zp), ("w_zp", w_zp), ("out_zp", out_zp), ("residual_zp", residual_zp)):
        if zp is not None and not all_zero(zp):
            raise ValueError(f"gluon qconv: {name} must be 0 (symmetric quantization)")
    n, c, h, wd = x.shape
    oc = w.shape[0]
    oh, ow = geo.oh, geo.ow
    if residual is not None and tuple(residual.shape) != (n, oc, oh, ow):
        raise ValueError(f"gluon qconv: a residual of Y's shape {(n, oc, oh, ow)}; got {tuple(residual.shape)}")
    cl = torch.channels_last                        # .contiguous() returns the tensor itself where it already is
    y = torch.empty((n, oc, oh, ow), dtype=x.dtype, device=x.device, memory_format=cl)
    x4 = tma_view(x)
    y4 = y.permute(0, 2, 3, 1)
    r4 = residual.contiguous(memory_format=cl).permute(0, 2, 3, 1) if residual is not None else y4
    pointwise = geo.pointwise(h, wd)
    if pointwise:   # a GEMM over rows of pixels: the view [1, 1, N*H*W, C], boxes of BM rows
        x4, y4, r4 = (t.reshape(1, 1, -1, t.shape[-1]) for t in (x4, y4, r4))
        box = (1, 1, int(cfg["BM"]))
        bk = min(128, c)
    else:
        box = window_box(n, oh, ow, int(cfg["BM"]))
        bk = next(b for b in (128, 64, 32) if c % b == 0)
    w2 = packed_weight(w)                           # [OC, KH*KW*C]: a view of a channels-last W, else made once
    geo_n, geo_h, geo_w = x4.shape[0], y4.shape[1], y4.shape[2]
    ksteps = geo.kh * geo.kw * triton.cdiv(c, bk)
    tiles = (triton.cdiv(geo_n, box[0]) * triton.cdiv(geo_h, box[1]) * triton.cdiv(geo_w, box[2]) *
             triton.cdiv(oc, cfg["BN"]))
    programs = persistent_programs(tiles, x.device, cfg)
    has_res = residual is not None
    conv_kernel[(programs,)](
        *descriptors(x4, w2, r4, y4, box, int(cfg["BN"]), bk), geo_n, geo_h, geo_w, oc, c, geo.kw,
        0 if pointwise else geo.ph, 0 if pointwise else geo.pw, ksteps, programs,
        x_scale, w_scale, x_scale if bias is None else bias, residual_scale if has_res else x_scale, out_scale,
        STAGES=int(cfg["STAGES"]), R_BUFS=int(cfg["R_BUFS"]) if has_res else 1, Y_BUFS=int(cfg["Y_BUFS"]),
        INT=x.dtype == torch.int8,
        HAS_RES=has_res, WS_PER_CHANNEL=w_scale.numel() > 1, HAS_BIAS=bias is not None,
        BIAS_PER_CHANNEL=bias is not None and bias.numel() > 1, RELU=activation == "Relu",
        num_warps=int(cfg.get("num_warps", 4)), **launch_options(x),
        **({"maxnreg": int(cfg["maxnreg"])} if cfg.get("maxnreg") else {}))
    return y


def compile_for(arch: int, dtype: torch.dtype, cfg: dict, k: int, has_res: bool, relu: bool = True,
                kernel: int = 1, pdl: bool = False) -> Any:
    """conv_kernel compiled for sm_`arch` without a GPU (Triton's CompiledKernel: .asm holds each
    stage), with per-channel scales and a bias: kernel 1, a [3136, k] x [4k, k] GEMM (a 1x1 conv's
    flat rows); kernel 3, a 3x3 conv over [64, 14, 14, k] to k channels (boxes window_box's)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    if kernel == 1:
        x4, y4 = torch.zeros(1, 1, 3136, k, dtype=dtype), torch.zeros(1, 1, 3136, 4 * k, dtype=dtype)
        w2, box, bk = torch.zeros(4 * k, k, dtype=dtype), (1, 1, int(cfg["BM"])), min(128, k)
    else:
        x4, y4 = torch.zeros(64, 14, 14, k, dtype=dtype), torch.zeros(64, 14, 14, k, dtype=dtype)
        w2, box = torch.zeros(k, kernel * kernel * k, dtype=dtype), window_box(64, 14, 14, int(cfg["BM"]))
        bk = next(b for b in (128, 64, 32) if k % b == 0)
    descs = descriptors(x4, w2, y4, y4, box, int(cfg["BN"]), bk)
    sig = {**{nm: mangle_type(d) for nm, d in zip(("a_desc", "w_desc", "r_desc", "y_desc"), descs)},
           **{nm: "i32" for nm in ("NI", "OH", "OW", "OC", "C", "KW", "PH", "PW", "KSTEPS", "programs")},
           "XS": "*fp16", "WS": "*fp32", "BIAS": "*fp32", "RS": "*fp32", "OS": "*fp32"}
    consts = {"STAGES": cfg["STAGES"], "R_BUFS": cfg["R_BUFS"], "Y_BUFS": cfg["Y_BUFS"], "INT": dtype == torch.int8,
              "HAS_RES": has_res, "WS_PER_CHANNEL": True, "HAS_BIAS": True, "BIAS_PER_CHANNEL": True, "RELU": relu,
              "num_warps": int(cfg.get("num_warps", 4)), "PDL": pdl}
    sig.update({name: "constexpr" for name in consts})
    options = {"num_warps": consts["num_warps"], **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}),
               **({"launch_pdl": True} if pdl else {})}
    return triton.compile(GluonASTSource(conv_kernel, sig, consts), target=GPUTarget("cuda", arch, 32),
                          options=options)
