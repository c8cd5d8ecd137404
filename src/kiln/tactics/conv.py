"""Tactics for Conv / kiln::FusedConv: cuDNN in channels-last (NHWC) layout.

Why channels-last. cuDNN's tensor-core convolutions want NHWC; given NCHW they either
run slower kernels or transpose around the call. torch's channels_last is a memory
format (strides), not a shape: the tensors keep their logical [N, C, H, W] shape, so a
channels-last output is a drop-in for the reference's, and the element-wise, pooling and
normalisation ops downstream keep the format (torch propagates it). The input is converted
once, at the first conv of a region (a no-op afterwards); weights are converted once and
memoised per weight tensor (`_channels_last_weight`).

Whether a graph should run channels-last at all is a graph-level decision (the
`choose_layout` pass): one conv among matmuls would pay two conversions for nothing.
`supports` accepts a node only when the query's layout is "nhwc".

cudnn.benchmark (a process-wide flag) is set only around our own conv calls and restored
after: with it cuDNN times its algorithms once per shape (cached by cuDNN/torch per
shape and dtype) and keeps the fastest, the right trade for an engine that runs one
shape many times. The first call at a new shape pays the search; the CUDA-graph runner's
warm-up run does it before capture. Nothing else in the process sees the flag change.
TF32 follows the process's setting (torch.backends.cudnn.allow_tf32), as the reference
Conv does on CUDA; whether fp32 may run as TF32 is a precision decision, not ours.

The tuning space: how the epilogue runs. "torch" is conv2d (bias inside the call) then
residual add and activation in place on the fresh output; "cudnn" uses cuDNN's fused
conv+bias(+residual)+ReLU (torch.cudnn_convolution_relu / _add_relu) when the activation
is Relu (otherwise it runs as "torch"). Plain Conv has nothing to tune.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.kernels.memo import derived, derived_table
from kiln.kernels.reference import lookup
from kiln.kernels.reference.common import resolve_pads, spatial_attrs, to_torch_pad
from kiln.kernels.reference.fused import ACTIVATIONS, apply_activation
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Tensor = torch.Tensor

CONFIGS: tuple[dict[str, Any], ...] = ({"epilogue": "torch"}, {"epilogue": "cudnn"})

# weight tensor -> its channels-last copy (kernels/memo.py)
_WEIGHTS = derived_table()


def _channels_last_weight(w: Tensor) -> Tensor:
    """`w` [M, C/g, kh, kw] in channels_last memory format, converted once per tensor."""
    if w.is_contiguous(memory_format=torch.channels_last):
        return w
    return derived(_WEIGHTS, w, "channels_last", lambda t: t.contiguous(memory_format=torch.channels_last))


def cached_weights() -> int:
    """How many channels-last weight copies are alive (for tests and memory reports)."""
    return len(_WEIGHTS)


class _Benchmark:
    """Sets torch.backends.cudnn.benchmark for the duration of a call, then restores it. Calls that
    overlap (the tuner's warm threads run candidates side by side) share one setting: the first
    to enter saves the process's value, the last to leave puts it back."""
    __slots__ = ()
    _lock = threading.Lock()
    _inside = 0
    _saved = False

    def __enter__(self) -> None:
        cls = type(self)
        with cls._lock:
            if cls._inside == 0:
                cls._saved = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = True
            cls._inside += 1

    def __exit__(self, *exc: object) -> None:
        cls = type(self)
        with cls._lock:
            cls._inside -= 1
            if cls._inside == 0:
                torch.backends.cudnn.benchmark = cls._saved


def _fused_cudnn(x: Tensor, w: Tensor, b: Tensor | None, residual: Tensor | None, s: list[int],
                 padding: list[int], d: list[int], group: int) -> Tensor:
    """relu(conv(x, w) + b + residual) in one cuDNN call (cudnnConvolutionBiasActivationForward)."""
    if residual is None:
        return torch.cudnn_convolution_relu(x, w, b, s, padding, d, group)
    return torch.cudnn_convolution_add_relu(x, w, residual.contiguous(memory_format=torch.channels_last),
                                            1.0, b, s, padding, d, group)


def conv_nhwc(x: Tensor, w: Tensor, b: Tensor | None = None, residual: Tensor | None = None, *,
              auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None, group: int = 1,
              kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
              strides: Sequence[int] | None = None, activation: str = "",
              activation_params: Sequence[float] = (), config: dict[str, Any] | None = None) -> Tensor:
    """Y = act(Conv(X, W) + B + residual) for X [N, C, H, W], computed and returned channels-last.

    Same contract as the reference kiln::FusedConv (Conv is the case with no residual and
    no activation). Inputs that are not 4-D go to the reference op unchanged."""
    if x.dim() != 4:
        return lookup("kiln::FusedConv").fn(x, w, b, residual, auto_pad=auto_pad, dilations=dilations, group=group,
                                            kernel_shape=kernel_shape, pads=pads, strides=strides,
                                            activation=activation, activation_params=activation_params)
    k, s, d = spatial_attrs(2, kernel_shape or w.shape[2:], strides, dilations)
    p = resolve_pads(auto_pad, x.shape[2:], k, s, d, pads)
    x = x.contiguous(memory_format=torch.channels_last)  # no-op when it already is
    if p[0] == p[2] and p[1] == p[3]:
        padding = [p[0], p[1]]
    else:
        # Asymmetric ONNX pads: pad explicitly (constant_pad_nd keeps channels-last), then pad 0.
        x, padding = F.pad(x, to_torch_pad(p)), [0, 0]
    w = _channels_last_weight(w)
    epilogue = (config or CONFIGS[0]).get("epilogue", "torch")
    with _Benchmark():
        if epilogue == "cudnn" and activation == "Relu" and x.is_cuda:
            return _fused_cudnn(x, w, b, residual, s, padding, d, group)
        y = F.conv2d(x, w, b, stride=s, padding=padding, dilation=d, groups=group)
    if residual is not None:
        y.add_(residual)  # y is fresh: in place keeps one pass over it and its memory format
    if activation == "Relu":
        return y.clamp_min_(0)
    return apply_activation(y, activation, activation_params) if activation else y


def conv_nhwc_plain(x: Tensor, w: Tensor, b: Tensor | None = None, *, auto_pad: str = "NOTSET",
                    dilations: Sequence[int] | None = None, group: int = 1,
                    kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                    strides: Sequence[int] | None = None, config: dict[str, Any] | None = None) -> Tensor:
    """ONNX Conv (no epilogue beyond the bias) through `conv_nhwc`."""
    return conv_nhwc(x, w, b, None, auto_pad=auto_pad, dilations=dilations, group=group,
                     kernel_shape=kernel_shape, pads=pads, strides=strides, config=config)


def _is_2d(query: TacticQuery) -> bool:
    """True when the node is known to be a 2-D convolution (from shapes, else attributes)."""
    shapes = [s for s in query.input_shapes[:2] if s is not None]
    if shapes:
        return all(len(s) == 4 for s in shapes)
    a = query.attrs
    lengths = [len(a[key]) for key in ("kernel_shape", "strides", "dilations") if a.get(key)]
    if a.get("pads"):
        lengths.append(len(a["pads"]) // 2)
    return bool(lengths) and all(n == 2 for n in lengths)


def supports_nhwc(query: TacticQuery) -> bool:
    if query.device != "cuda" or query.layout != "nhwc":
        return False
    dts = query.input_dtypes
    if len(dts) < 2 or dts[0] not in FLOAT_NAMES or any(d is not None and d != dts[0] for d in dts):
        return False
    if query.attrs.get("activation", "") not in ACTIVATIONS:
        return False
    return _is_2d(query)


register_tactic(Tactic("kiln::FusedConv.cudnn_nhwc", "kiln::FusedConv", 1, ("cuda",), conv_nhwc, supports_nhwc,
                       configs=CONFIGS))
register_tactic(Tactic("Conv.cudnn_nhwc", "Conv", 1, ("cuda",), conv_nhwc_plain, supports_nhwc))
