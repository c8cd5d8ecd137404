"""Reference (torch) implementations of every op kiln supports: the oracle."""
from kiln.kernels.reference.registry import REFERENCE_OPS, OpDef, lookup, reference_op, supported_ops

__all__ = ["REFERENCE_OPS", "OpDef", "lookup", "reference_op", "supported_ops"]
