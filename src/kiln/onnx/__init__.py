"""ONNX front end: load a ModelProto and import it into kiln's IR."""
from kiln.onnx.importer import import_model, load_model

__all__ = ["import_model", "load_model"]
