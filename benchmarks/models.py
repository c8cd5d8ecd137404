"""The suite's models: torch modules with seeded random weights, their inputs, their ONNX export.

Weights are random (seeded), not trained: the figures are about speed, and every
contender runs the same weights. ResNet-50's BatchNorm statistics are set from one
batch of random images so every layer sees unit-scale activations, as in a trained net.

Each model is a `BenchModel`: `module` is what the PyTorch peers run, `export_module`
what goes to ONNX (the same weights; BERT exports its eager attention, whose
MatMul/Softmax/MatMul pattern kiln fuses, while the peers run PyTorch's SDPA).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

OPSET = 17
EXPORT_VERSION = 2   # bump when the export changes: the cache file name carries it (2: float32 MiniLM)
IMAGE = (3, 224, 224)
SEQ = 128


@dataclass(frozen=True, slots=True)
class BenchModel:
    name: str
    module: torch.nn.Module         # fp32, eval, on the CPU
    export_module: torch.nn.Module  # same weights, the graph kiln gets
    input_names: tuple[str, ...]
    output_name: str
    item_shape: tuple[int, ...]     # every input's dims after the batch dim
    kind: str                       # "image" (float pixels) | "tokens" (ids, mask, types)
    source: str                     # where the architecture came from, with its version
    vocab: int = 0                  # token models: ids are drawn below this
    exporter: Callable[[Path], Path] | None = None  # a model's own ONNX exporter (MiniLM)


def make_inputs(model: BenchModel, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs on the CPU. Token rows have different lengths (padding at the end), so masks matter."""
    g = torch.Generator().manual_seed(seed + batch)
    if model.kind == "image":
        return {model.input_names[0]: torch.randn((batch, *model.item_shape), generator=g)}
    seq = model.item_shape[0]
    ids = torch.randint(1000, model.vocab, (batch, seq), generator=g)
    lengths = torch.tensor([seq - (7 * i) % max(seq // 4, 1) for i in range(batch)])
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64)
    return dict(zip(model.input_names, (ids * mask, mask, torch.zeros_like(ids))))


def calibrate_batchnorm(module: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/var from one forward pass over `x`."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


def randomize_zero_biases(module: torch.nn.Module, seed: int) -> None:
    """Give every all-zero bias small random values (N(0, 0.02)), as trained weights have.

    Random initialisation (timm, transformers) zeroes biases, and an x + 0 is folded away by an
    optimising compiler: that would benchmark a model without bias adds that no real checkpoint
    has. Both kiln and the torch peers then run the same biased model.
    """
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            b = getattr(m, "bias", None)
            if isinstance(b, torch.nn.Parameter) and not bool(b.any()):
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


def _timm(arch: str, **kwargs: object) -> tuple[torch.nn.Module, str] | None:
    try:
        import timm
    except Exception:  # noqa: BLE001 - timm (or its torchvision import) missing: use nets.py
        return None
    return timm.create_model(arch, pretrained=False, **kwargs), f"timm {timm.__version__} {arch}"


def resnet50(seed: int = 0) -> BenchModel:
    torch.manual_seed(seed)
    # zero_init_last=False: torchvision's init, so residual branches are not zero at random init.
    made = _timm("resnet50", zero_init_last=False)
    if made is None:
        from benchmarks.nets import ResNet50
        made = ResNet50(), "benchmarks/nets.py ResNet50 (torchvision architecture)"
    module, source = made
    calibrate_batchnorm(module, torch.randn((16, *IMAGE), generator=torch.Generator().manual_seed(seed)))
    return BenchModel("resnet50", module.eval(), module, ("pixel_values",), "logits", IMAGE, "image", source)


def vit_b16(seed: int = 0) -> BenchModel:
    torch.manual_seed(seed)
    made = _timm("vit_base_patch16_224")
    if made is None:
        from benchmarks.nets import ViTB16
        made = ViTB16(), "benchmarks/nets.py ViTB16 (timm vit_base_patch16_224 architecture)"
    module, source = made
    randomize_zero_biases(module, seed)
    return BenchModel("vit_b16", module.eval(), module.eval(), ("pixel_values",), "logits", IMAGE, "image", source)


class LastHidden(torch.nn.Module):
    """A transformers encoder with one output, its last hidden state [B, S, H]."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def bert(seed: int = 0, name: str = "bert_base", seq: int = SEQ, **config: object) -> BenchModel:
    """BERT (BertConfig() defaults: base, 110M parameters unless `config` overrides), no pooler."""
    import transformers
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    eager = BertModel(BertConfig(attn_implementation="eager", **config), add_pooling_layer=False).eval()
    sdpa = BertModel(BertConfig(attn_implementation="sdpa", **config), add_pooling_layer=False).eval()
    randomize_zero_biases(eager, seed)
    sdpa.load_state_dict(eager.state_dict())
    return BenchModel(name, LastHidden(sdpa).eval(), LastHidden(eager).eval(),
                      ("input_ids", "attention_mask", "token_type_ids"), "last_hidden_state", (seq,), "tokens",
                      f"transformers {transformers.__version__} BertModel", vocab=int(eager.config.vocab_size))


def minilm(seed: int = 0) -> BenchModel:
    """all-MiniLM-L6-v2 with pooling and normalisation, from kiln.models.minilm (its packaged weights)."""
    from kiln.models import minilm as m

    module = m.embedding_module().eval()
    return BenchModel("minilm", module, module, m.INPUT_NAMES, m.OUTPUT_NAME, (SEQ,), "tokens",
                      f"kiln.models.minilm {m.MODEL_NAME}", vocab=30522,
                      exporter=lambda folder: m.default_model_path(cache_dir=folder))


MODELS: dict[str, Callable[[int], BenchModel]] = {
    "resnet50": resnet50,
    "vit_b16": vit_b16,
    "bert_base": bert,
    "minilm": minilm,
}


def export_onnx(model: BenchModel, folder: Path, seed: int = 0, dynamic_seq: bool = False) -> Path:
    """The model as ONNX with a dynamic batch dim (and with `dynamic_seq`, a token model's dynamic
    sequence dim too), exported once into `folder` and reused.

    The file name carries the architecture source (with its version), the seed and
    EXPORT_VERSION, so a cached file always holds the same weights as `model.module`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dynamic_seq and (model.kind != "tokens" or model.exporter is not None):
        raise ValueError(f"{model.name}: a dynamic sequence needs a token model exported here (not an image model, "
                         "nor one with its own exporter)")
    if model.exporter is not None:
        return model.exporter(folder)
    tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in "_".join(model.source.split()[:2]))
    path = folder / f"{model.name}.{tag}.seed{seed}{'.seq' if dynamic_seq else ''}.export{EXPORT_VERSION}.opset{OPSET}.onnx"
    if path.exists():
        return path
    example = make_inputs(model, 2, seed)
    args = tuple(example[n] for n in model.input_names)
    axes = {n: {0: "batch", **({1: "seq"} if dynamic_seq else {})} for n in (*model.input_names, model.output_name)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(model.export_module, args, tmp, dynamo=False, opset_version=OPSET,
                              input_names=list(model.input_names), output_names=[model.output_name],
                              dynamic_axes=axes, do_constant_folding=True)
        os.replace(tmp, path)  # readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def profile_ranges(model: BenchModel, batches: list[int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """One kiln profile covering every batch: min = smallest, opt = max = largest."""
    lo, hi = min(batches), max(batches)
    return {n: ((lo, *model.item_shape), (hi, *model.item_shape), (hi, *model.item_shape))
            for n in model.input_names}
