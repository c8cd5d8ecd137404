"""kiln: an inference compiler and runtime for ONNX models on NVIDIA GPUs (and CPUs)."""
from __future__ import annotations

__version__ = "0.1.0"

from kiln.config import BuildConfig, InputRange, Profile  # noqa: E402
from kiln.errors import KilnError  # noqa: E402


def build(model, config=None, progress=None, timer=None, calibration=None):  # type: ignore[no-untyped-def]
    """Compile an ONNX model (a path or a ModelProto) into an Engine. See kiln.compiler.builder.build.

    `calibration`: an iterable of feed dicts for int8 builds (instead of BuildConfig.calib_data)."""
    from kiln.compiler.builder import build as _build
    return _build(model, config, progress, timer, calibration=calibration)


def load(path, device=None):  # type: ignore[no-untyped-def]
    """Load an engine file written by Engine.save. See kiln.runtime.engine.load."""
    from kiln.runtime.engine import load as _load
    return _load(path, device)


def __getattr__(name: str):  # lazy: `import kiln` stays cheap for the CLI's --help
    if name == "Engine":
        from kiln.runtime.engine import Engine
        return Engine
    raise AttributeError(name)


__all__ = ["BuildConfig", "Profile", "InputRange", "KilnError", "build", "load", "Engine", "__version__"]
