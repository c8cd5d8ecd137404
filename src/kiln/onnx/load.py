"""Reading an ONNX file from disk, with errors that say what is wrong and what to do."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from kiln.errors import ModelLoadError

# The oldest ai.onnx opset kiln imports; older op forms are normalised on import
# (kiln.onnx.normalize). A model that imports no ai.onnx opset uses no ai.onnx ops.
MIN_OPSET = 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and validate an ONNX model file (external data files beside it are read too)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX file {str(p)!r} does not exist; check the path.")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{str(p)!r} is empty, so it holds no ONNX model; re-export the model.")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{str(p)!r} is not a readable ONNX model: protobuf decoding failed ({_short(exc)}). "
            "The file may be truncated or of another format; re-export it with torch.onnx.export "
            "or check that the download completed.") from None
    if not model.HasField("graph") or (not model.graph.output and not model.graph.node):
        raise ModelLoadError(
            f"{str(p)!r} decodes but holds no ONNX graph (no nodes and no outputs); it is probably "
            "truncated or not an ONNX file. Re-export or re-download it.")
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(
            f"{str(p)!r} refers to external weight data that could not be read ({_short(exc)}); keep the "
            "external data files in the same folder as the .onnx file.") from None
    check_model(model, str(p))
    return model


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelLoadError(
            f"{where} uses ai.onnx opset {opset}, newer than the {newest} this onnx package knows; "
            "upgrade onnx (pip install -U onnx) or export with a lower opset.")
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{where} uses ai.onnx opset {opset}; kiln imports opset {MIN_OPSET} and newer. "
            "Convert it with onnx.version_converter.convert_version(model, 17).")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{where} is not a valid ONNX model: {_short(exc)}. "
                             "Fix the exporter's output or re-export the model.") from None
    except ValueError:
        # The checker refuses in-memory models over 2 GiB; those were validated on decode.
        pass


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
