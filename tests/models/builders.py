"""Small deterministic PyTorch models exported to ONNX, the shapes kiln is tested on.

Each builder seeds torch, builds a module in eval mode, exports it (opset 17, the
TorchScript exporter, dim 0 dynamic and named "batch") into the given folder and
returns an ExportedModel: the file, its input specs and the torch module itself, so
tests can check ONNX Runtime against torch and kiln against ONNX Runtime.

The models are chosen for the passes they exercise, not for accuracy:
  small_cnn            Conv+BatchNorm folding, ReLU epilogues, residual Add, MaxPool,
                       GlobalAveragePool, Flatten+Gemm
  mobilenet_block      depthwise Conv (group = channels), HardSwish, squeeze-excite
                       (GlobalAveragePool -> 1x1 Conv -> HardSigmoid -> Mul broadcast)
  transformer_encoder  attention written out (MatMul, Div, Add mask, Softmax, MatMul),
                       LayerNormalization and a hand-decomposed LayerNorm, erf GELU
  tiny_vit             a ViT: patchify Conv (kernel = stride) -> flatten(2).transpose(1, 2),
                       class token Concat, position embedding Add, an encoder layer, head
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17
BATCH = "batch"

# Additive attention mask value at padded keys; matches kiln.models.minilm.
MASKED_SCORE = -10000.0


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One graph input. `shape` holds "batch" where the dim is dynamic.

    kind: "normal" (standard normal floats) or "additive_mask" (0 at kept positions,
    MASKED_SCORE at a random-length padded tail, at least one position kept per row).
    """
    name: str
    shape: tuple[int | str, ...]
    kind: str = "normal"

    def dims(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True, slots=True)
class ExportedModel:
    path: Path
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    module: nn.Module  # eval mode; the source the ONNX file was exported from

    def random_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {spec.name: _random_input(spec, batch, rng) for spec in self.inputs}

    def profile_ranges(self, min_batch: int, opt_batch: int, max_batch: int) -> dict:
        """{name: (min, opt, max)} for kiln.Profile.from_ranges, varying only the batch dim."""
        return {spec.name: (spec.dims(min_batch), spec.dims(opt_batch), spec.dims(max_batch))
                for spec in self.inputs}

    def torch_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = self.module(*(torch.from_numpy(feeds[spec.name]) for spec in self.inputs))
        results = result if isinstance(result, tuple) else (result,)
        return {name: r.numpy() for name, r in zip(self.output_names, results)}


def _random_input(spec: InputSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    dims = spec.dims(batch)
    if spec.kind == "normal":
        return rng.standard_normal(dims, dtype=np.float32)
    if spec.kind == "additive_mask":
        kept = rng.integers(1, dims[-1] + 1, size=dims[:-1])         # [B] tokens kept per row
        positions = np.arange(dims[-1])
        return np.where(positions < kept[..., None], 0.0, MASKED_SCORE).astype(np.float32)
    raise ValueError(f"input kind {spec.kind!r} is unknown; use 'normal' or 'additive_mask'")


def _export(module: nn.Module, inputs: tuple[InputSpec, ...], output_names: tuple[str, ...],
            path: Path) -> ExportedModel:
    module.eval()
    example = tuple(torch.from_numpy(_random_input(s, 2, np.random.default_rng(0))) for s in inputs)
    dynamic_axes = {name: {0: BATCH} for name in (*(s.name for s in inputs), *output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter"
        # PRESERVE warns that constant folding may alter trainable params; it only does
        # so for modules in train mode, and ours are in eval mode.
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*", category=UserWarning)
        # TrainingMode.PRESERVE on an eval-mode module exports inference BatchNormalization
        # but skips the exporter's eval peephole, which would fold BN into Conv itself and
        # leave kiln's fold_batchnorm pass nothing to test.
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=OPSET,
                          input_names=[s.name for s in inputs], output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE)
    return ExportedModel(path, inputs, output_names, module)


def _randomize_norms(module: nn.Module) -> None:
    """Give every BatchNorm and LayerNorm parameters and stats far from the identity.

    Fresh BN has mean 0, var 1, gamma 1, beta 0: folding it is a no-op, so a wrong fold
    (say, mean and var swapped, or eps dropped) would still pass. Draws from torch's
    seeded generator keep the models deterministic.
    """
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_mean, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.25, 2.0)


# ---- small_cnn -------------------------------------------------------------------------

class _BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 strided projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class _SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = _BasicBlock(16, 16, stride=1)                # identity shortcut
        self.pool = nn.MaxPool2d(2)                                # 32x32 -> 16x16
        self.block2 = _BasicBlock(16, 32, stride=2)                # projection, 16x16 -> 8x8
        self.gap = nn.AdaptiveAvgPool2d(1)                         # exports GlobalAveragePool
        self.fc = nn.Linear(32, num_classes)                       # Flatten + Gemm

    def forward(self, x: torch.Tensor) -> torch.Tensor:            # [B, 3, 32, 32]
        x = self.block2(self.pool(self.block1(self.stem(x))))      # [B, 32, 8, 8]
        return self.fc(torch.flatten(self.gap(x), 1))              # [B, 10]


def small_cnn(folder: Path) -> ExportedModel:
    torch.manual_seed(0)
    inputs = (InputSpec("input", (BATCH, 3, 32, 32)),)
    module = _SmallCNN()
    _randomize_norms(module)
    return _export(module, inputs, ("logits",), Path(folder) / "small_cnn.onnx")


# ---- mobilenet_block ---------------------------------------------------------------------

class _MobileNetV3Block(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise 3x3 -> squeeze-excite -> project 1x1, + x."""

    def __init__(self, channels: int = 16, expanded: int = 64, squeezed: int = 16) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, expanded, 1, bias=False),
                                    nn.BatchNorm2d(expanded), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(expanded, expanded, 3, 1, 1, groups=expanded, bias=False),
                                       nn.BatchNorm2d(expanded), nn.Hardswish())
        self.se_pool = nn.AdaptiveAvgPool2d(1)
        self.se_reduce = nn.Conv2d(expanded, squeezed, 1)
        self.se_expand = nn.Conv2d(squeezed, expanded, 1)
        self.project = nn.Sequential(nn.Conv2d(expanded, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # [B, 16, 28, 28]
        y = self.depthwise(self.expand(x))                              # [B, 64, 28, 28]
        scale = self.se_pool(y)                                         # [B, 64, 1, 1]
        scale = nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(scale))))
        return x + self.project(y * scale)                              # [B, 16, 28, 28]


def mobilenet_block(folder: Path) -> ExportedModel:
    torch.manual_seed(0)
    inputs = (InputSpec("input", (BATCH, 16, 28, 28)),)
    module = _MobileNetV3Block()
    _randomize_norms(module)
    return _export(module, inputs, ("output",), Path(folder) / "mobilenet_block.onnx")


# ---- transformer_encoder -----------------------------------------------------------------

class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, t: torch.Tensor) -> torch.Tensor:                  # [B, S, H*D] -> [B, H, S, D]
        b, s, _ = t.shape
        return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)   # [B, H, S, S]
        scores = scores + mask[:, None, None, :]                                   # mask over keys
        context = torch.matmul(torch.softmax(scores, dim=-1), v)                   # [B, H, S, D]
        b, _, s, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class _EncoderLayer(nn.Module):
    """Pre-norm layer: x + Attn(LN(x)), then x + MLP(LN(x)) with erf GELU."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = _SelfAttention(hidden, heads)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _DecomposedLayerNorm(nn.Module):
    """LayerNorm spelled out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add.

    Older exporters and TensorFlow converters emit this chain instead of
    LayerNormalization; keeping one in the model tests kiln's pattern that recognises it.
    """

    def __init__(self, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden).uniform_(0.5, 1.5))
        self.bias = nn.Parameter(torch.empty(hidden).uniform_(-0.5, 0.5))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = centred.pow(2).mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(variance + self.eps) * self.weight + self.bias


class _TransformerEncoder(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, hidden)
        self.layers = nn.ModuleList(_EncoderLayer(hidden, heads) for _ in range(layers))
        self.final_norm = _DecomposedLayerNorm(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:   # [B, 16, 64], [B, 16]
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, mask)
        return self.final_norm(h)                                              # [B, 16, 64]


def transformer_encoder(folder: Path) -> ExportedModel:
    torch.manual_seed(0)
    module = _TransformerEncoder()
    _randomize_norms(module)
    inputs = (InputSpec("input", (BATCH, 16, 64)), InputSpec("mask", (BATCH, 16), kind="additive_mask"))
    return _export(module, inputs, ("output",), Path(folder) / "transformer_encoder.onnx")


# ---- tiny_vit ----------------------------------------------------------------------------

class _TinyViT(nn.Module):
    """ViT-B/16's structure at toy size: 4x4 patches of a 16x16 image, width 32, one layer."""

    def __init__(self, hidden: int = 32, patch: int = 4, image: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, hidden, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, hidden) * 0.5)
        self.layer = _EncoderLayer(hidden, heads=4)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                          # [B, 3, 16, 16]
        h = self.patch_embed(x).flatten(2).transpose(1, 2)                       # [B, 16, 32]
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed
        h = self.layer(h, torch.zeros(h.shape[:2], dtype=h.dtype))
        return self.head(self.norm(h)[:, 0])                                     # [B, 10]


def tiny_vit(folder: Path) -> ExportedModel:
    torch.manual_seed(0)
    module = _TinyViT()
    _randomize_norms(module)
    inputs = (InputSpec("input", (BATCH, 3, 16, 16)),)
    return _export(module, inputs, ("output",), Path(folder) / "tiny_vit.onnx")


BUILDERS = {"small_cnn": small_cnn, "mobilenet_block": mobilenet_block,
            "transformer_encoder": transformer_encoder, "tiny_vit": tiny_vit}
