"""A model as PyTorch's quantization toolkits for TensorRT export it (NVIDIA's pytorch-quantization
and ModelOpt int8 recipe): explicit Q/DQ from fake quantization, what a user who trained with
quantization brings to kiln.

    model = qat_model(models.resnet50(0).module, calibration_batches)    # fake-quantized in place
    torch.onnx.export(model, ...)                                          # QuantizeLinear/DequantizeLinear

The recipe: every Conv2d and Linear quantizes its input per tensor and its weight per output
channel, both symmetric int8 (zero point 0, scale amax / 127); amax is the largest magnitude seen
on the calibration batches (the toolkits' max calibrator) and per channel of the weight. A
bottleneck block quantizes its shortcut before the residual add (the recipe's residual quantizer,
so that TensorRT can take the add into the conv). BatchNorm stays a layer of its own after the
quantized conv, as the toolkits export it. torch.onnx.export writes each fake quantization as a
QuantizeLinear -> DequantizeLinear pair (opset >= 13; a weight's Q of a constant the exporter
folds or keeps).
"""
from __future__ import annotations

import types
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F


class FakeQuant(nn.Module):
    """Symmetric int8 fake quantization, per tensor (axis None) or per channel of `axis`; amax is
    recorded while `calibrating`, then frozen as the scale buffer."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.calibrating = True
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def observe(self, x: torch.Tensor) -> None:
        if self.axis is None:
            amax = x.detach().abs().max()
        else:
            amax = x.detach().abs().transpose(0, self.axis).reshape(x.shape[self.axis], -1).max(dim=1).values
        self.amax = torch.maximum(self.amax, amax) if self.amax.shape == amax.shape else amax

    def freeze(self) -> None:
        self.calibrating = False
        self.scale = (torch.clamp(self.amax, min=1e-8) / 127.0).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale), 0, -128, 127)
        zeros = torch.zeros(self.scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(x, self.scale, zeros, self.axis, -128, 127)


class QuantLayer(nn.Module):
    """A Conv2d or Linear with the recipe's quantizers: its input per tensor, its weight per
    output channel."""

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.layer = layer
        self.input_quantizer = FakeQuant()
        self.weight_quantizer = FakeQuant(axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.input_quantizer(x), self.weight_quantizer(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def _bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - a ResNet bottleneck
    """A ResNet-50 bottleneck (timm's or torchvision's layout: conv1..3, bn1..3, downsample, Relu)
    with the shortcut quantized before the add."""
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(out + self.residual_quantizer(shortcut))


def _plain_bottleneck(block: nn.Module) -> bool:
    """Whether `block` is the plain bottleneck _bottleneck_forward computes (timm's optional parts
    absent or identities in eval mode)."""
    extras = [getattr(block, n, None) for n in ("se", "drop_path", "drop_block", "aa")]
    return all(e is None or isinstance(e, nn.Identity) for e in extras)


def _quantize_modules(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, QuantLayer(child))
        else:
            _quantize_modules(child)
        if type(child).__name__ == "Bottleneck":
            assert _plain_bottleneck(child), "a bottleneck with squeeze-excitation, drop-path or blur pooling"
            child.residual_quantizer = FakeQuant()
            child.forward = types.MethodType(_bottleneck_forward, child)


def qat_model(module: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> nn.Module:
    """`module` (eval mode; a ResNet's bottlenecks also quantize their shortcut) with the recipe's
    quantizers, calibrated on `batches` (one input tensor, or a tuple of the forward's arguments)."""
    module.eval()
    _quantize_modules(module)
    with torch.no_grad():
        for x in batches:      # weights' quantizers see their weight, activations' the batches
            module(*(x if isinstance(x, tuple) else (x,)))
    for q in module.modules():
        if isinstance(q, FakeQuant):
            q.freeze()
    return module
