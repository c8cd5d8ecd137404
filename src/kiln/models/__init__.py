"""Models that ship with kiln: the embedded default model used by the README demo."""
from __future__ import annotations

from kiln.models.minilm import (
    EMBEDDING_DIM,
    INPUT_NAMES,
    OUTPUT_NAME,
    SAMPLE_SENTENCES,
    default_model_path,
    export_minilm_onnx,
    reference_embeddings,
    tokenize,
)

__all__ = [
    "EMBEDDING_DIM",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "SAMPLE_SENTENCES",
    "default_model_path",
    "export_minilm_onnx",
    "reference_embeddings",
    "tokenize",
]
