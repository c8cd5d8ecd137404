"""Error types. Every message names the thing, the reason and the fix."""
from __future__ import annotations


class KilnError(Exception):
    """Base of every error kiln raises on purpose; the CLI prints it without a traceback."""


class ModelLoadError(KilnError):
    """The ONNX file could not be read or is not a valid model."""


class UnsupportedOpError(KilnError):
    """The graph contains an operator kiln cannot run."""


class BuildError(KilnError):
    """The compiler could not turn the graph into an engine."""


class EngineFormatError(KilnError):
    """An engine file is corrupt, truncated, foreign or of a newer format."""


class DeviceMismatchError(KilnError):
    """The engine was built for another GPU than the one present."""


class InputError(KilnError):
    """Inputs given to an engine do not match its bindings or shape profile."""
