"""Reference implementations of kiln's own fused ops (domain "kiln").

Each fused op is defined as the composition of the ONNX reference ops it replaces, so
that a fusion pass is correct exactly when the fused node computes the same thing as
the nodes it swallowed. The epilogue activations are one table, `ACTIVATIONS`, shared
by FusedConv and FusedMatMul and meant to be read by codegen as well.

Pointwise program format (the `program` attribute of kiln::Pointwise), JSON data:
  program = [[op_type, [arg, ...], attrs], ...]   evaluated in order; instruction k
            defines "t<k>". An arg is
              "i<n>"                         the node's n-th input,
              "t<k>"                         the result of instruction k (k < current),
              None                           an omitted optional input (e.g. Clip's min),
              {"const": v, "dtype": "float32"} an inlined rank-0 scalar.
  outputs = ["t<k>", ...]                    the node's outputs (default: the last one).
Design choice: captured tensors are node inputs; only one-element constants whose
broadcast cannot change a shape are inlined, as rank-0 scalars, so a program never
holds more than a few numbers and codegen can bake them into the kernel source.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from kiln.ir.dtypes import from_name
from kiln.kernels.reference.registry import lookup, reference_op

Tensor = torch.Tensor
ActivationFn = Callable[[Tensor, Sequence[float]], Tensor]


def _param(params: Sequence[float], i: int, default: float) -> float:
    return float(params[i]) if len(params) > i else default


def _clip(x: Tensor, p: Sequence[float]) -> Tensor:
    lo, hi = _param(p, 0, -math.inf), _param(p, 1, math.inf)
    return torch.minimum(torch.maximum(x, x.new_tensor(lo)), x.new_tensor(hi))


# name -> f(x, params). Parameters, in order: LeakyRelu [alpha], Clip [min, max],
# HardSigmoid [alpha, beta], Gelu [1 for the tanh approximation else 0]. The formulas
# follow the ONNX spec as the element-wise reference ops write them.
ACTIVATIONS: dict[str, ActivationFn] = {
    "": lambda x, p: x,
    "Relu": lambda x, p: torch.clamp_min(x, 0),
    "LeakyRelu": lambda x, p: torch.where(x >= 0, x, x * _param(p, 0, 0.01)),
    "Clip": _clip,
    "Sigmoid": lambda x, p: torch.sigmoid(x),
    "HardSigmoid": lambda x, p: torch.clamp(_param(p, 0, 0.2) * x + _param(p, 1, 0.5), 0, 1),
    "HardSwish": lambda x, p: x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0, 1),
    "Tanh": lambda x, p: torch.tanh(x),
    "Gelu": lambda x, p: F.gelu(x, approximate="tanh" if _param(p, 0, 0.0) else "none"),
    "Silu": lambda x, p: x * torch.sigmoid(x),
}


def apply_activation(x: Tensor, activation: str, params: Sequence[float]) -> Tensor:
    try:
        fn = ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown fused activation {activation!r}; known: {sorted(ACTIVATIONS)}") from None
    return fn(x, list(params))


@reference_op("FusedConv", domain="kiln")
def fused_conv(x: Tensor, w: Tensor, b: Tensor | None = None, residual: Tensor | None = None, *,
               auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None, group: int = 1,
               kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
               strides: Sequence[int] | None = None, activation: str = "",
               activation_params: Sequence[float] = ()) -> Tensor:
    """Y = act(Conv(X, W) + B + residual), B per output channel, residual of Y's shape."""
    conv = lookup("Conv")
    assert conv is not None
    y = conv.fn(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group,
                kernel_shape=kernel_shape, pads=pads, strides=strides)
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation, activation_params)


@reference_op("FusedMatMul", domain="kiln")
def fused_matmul(a: Tensor, b: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, *,
                 trans_b: int = 0, alpha: float = 1.0, activation: str = "",
                 activation_params: Sequence[float] = ()) -> Tensor:
    """Y = act(alpha * A @ B' + bias + residual), B' = B^T (last two axes) if trans_b."""
    y = torch.matmul(a, b.transpose(-1, -2) if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation, activation_params)


def _resolve(arg: Any, inputs: Sequence[Tensor | None], temps: list[Tensor], device: torch.device) -> Tensor | None:
    if arg is None:
        return None
    if isinstance(arg, dict):
        # torch.full launches a fill kernel: no host-to-device copy, so CUDA graphs can capture it.
        return torch.full((), arg["const"], dtype=from_name(arg["dtype"]).torch, device=device)
    kind, index = arg[0], int(arg[1:])
    if kind == "i":
        return inputs[index]
    if kind == "t" and index < len(temps):
        return temps[index]
    raise ValueError(f"Pointwise argument {arg!r} does not name an input or an earlier instruction")


@reference_op("Pointwise", domain="kiln")
def pointwise(*inputs: Tensor | None, program: list, outputs: Sequence[str] | None = None,
              n_outputs: int = 1) -> Tensor | tuple[Tensor, ...]:
    """Y = the element-wise `program` over the inputs (format in this module's docstring)."""
    device = next((t.device for t in inputs if t is not None), torch.device("cpu"))
    temps: list[Tensor] = []
    for op_type, args, attrs in program:
        op = lookup(op_type)
        if op is None:
            raise ValueError(f"Pointwise instruction {op_type!r} has no reference op")
        values = [_resolve(a, inputs, temps, device) for a in args]
        while values and values[-1] is None:
            values.pop()
        result = op.fn(*values, **attrs)
        temps.append(result[0] if isinstance(result, tuple) else result)
    refs = list(outputs) if outputs else [f"t{len(temps) - 1}"]
    if len(refs) != n_outputs:
        raise ValueError(f"Pointwise names {len(refs)} outputs but n_outputs is {n_outputs}")
    results = tuple(_resolve(r, inputs, temps, device) for r in refs)
    return results[0] if n_outputs == 1 else results


# kiln::Attention's input positions, as attention() takes them.
ATTENTION_INPUTS = ("q", "k", "v", "mask", "out_scale", "out_zp", "q_scale", "k_scale", "v_scale")
# The positions of the scales of 8-bit Q, K and V codes (precision/quantize_attention_inputs.py).
ATTENTION_CODE_SCALES = tuple(ATTENTION_INPUTS.index(n) for n in ("q_scale", "k_scale", "v_scale"))


@reference_op("Attention", domain="kiln")
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, out_scale: Tensor | None = None,
              out_zp: Tensor | None = None, q_scale: Tensor | None = None, k_scale: Tensor | None = None,
              v_scale: Tensor | None = None, *, scale: float = 0.0, is_causal: int = 0, out_dtype: int = 0) -> Tensor:
    """Y = softmax(Q @ K^T * scale + mask) @ V over [B, H, S, D]; computed in fp32.

    scale 0 means 1/sqrt(D). A boolean mask keeps True positions; a float mask is added.
    is_causal keeps key j for query i when j <= i (top-left aligned, as torch does).
    With out_scale Y is requantized from the float32 result, as kiln::QMatMul's output
    (kernels/reference/quantized.py: requantize; out_dtype / out_zp give the type): the
    QuantizeLinear after attention, folded in (precision/quantize_attention_output.py).
    out_scale (and out_zp) hold one element, or H*D for a 4-D Y [B, H, S, D]: element h*D + d
    for head h, dim d, the channel of the [B, S, H*D] tensor a transformer makes of Y
    (SmoothQuant's per-channel activation scales).
    With q_scale, k_scale and v_scale (one element each: precision/quantize_attention_inputs.py) Q, K
    and V are 8-bit codes (float8, or int8 with zero point 0), dequantized exactly first (code *
    scale in float32, as DequantizeLinear); a float Y then takes the scales' type (DequantizeLinear's
    output type).
    """
    float_type = q.dtype
    if q_scale is not None or k_scale is not None or v_scale is not None:
        if q_scale is None or k_scale is None or v_scale is None or \
                any(t.numel() != 1 for t in (q_scale, k_scale, v_scale)):
            raise ValueError("kiln::Attention dequantizes Q, K and V together: q_scale, k_scale and v_scale, "
                             "one element each")
        float_type = q_scale.dtype
        q, k, v = (x.float() * sc.float().reshape(()) for x, sc in ((q, q_scale), (k, k_scale), (v, v_scale)))
    d = q.shape[-1]
    s = scale if scale != 0.0 else 1.0 / math.sqrt(d)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * s  # [B, H, S, Skv]
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    y = torch.matmul(probs, v.float())
    if out_scale is None:
        return y.to(float_type)
    from kiln.kernels.reference.quantized import requantize  # quantized.py imports this module
    channels = y.shape[1] * y.shape[3] if y.dim() == 4 else 1
    if out_scale.numel() not in (1, channels) or (out_zp is not None and out_zp.numel() != out_scale.numel()):
        raise ValueError(f"kiln::Attention requantizes per tensor or per head channel: out_scale (and out_zp) "
                         f"take 1 or H*D = {channels} elements; got {out_scale.numel()}")
    if out_scale.numel() == 1:
        return requantize(y.to(torch.float64), out_scale, out_zp, out_dtype)
    b, h, s, d = y.shape   # per channel of [B, S, H*D]
    flat = requantize(y.transpose(1, 2).reshape(b, s, h * d).to(torch.float64), out_scale, out_zp, out_dtype, [-1])
    return flat.reshape(b, s, h, d).transpose(1, 2)


@reference_op("AddLayerNorm", domain="kiln")
def add_layer_norm(x: Tensor, residual: Tensor, scale: Tensor, b: Tensor | None = None, *, axis: int = -1,
                   epsilon: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(Y, Sum): Sum = X + Residual in X's type (the Add it replaced), Y = LayerNormalization(Sum).

    Statistics in float32 (stash_type 1), as the LayerNormalization it replaced
    (passes/fuse_add_layernorm.py); Sum is the second output, used when the sum has
    readers besides the normalisation (pre-norm transformers' residual stream).
    """
    s = x + residual
    return lookup("LayerNormalization").fn(s, scale, b, axis=axis, epsilon=epsilon)[0], s
