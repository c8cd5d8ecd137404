"""Triton kernels kiln writes at run time (pointwise.py's fused element-wise kernels,
qdq_attention.py's quantized attention): a generated module compiled from its text, once per
distinct text."""
from __future__ import annotations

import hashlib
import linecache
from typing import Any

_KERNELS: dict[str, Any] = {}


def compile_source(source: str, entry: str = "kiln_pointwise") -> Any:
    """The `entry` kernel of a generated module, one per distinct source text. The text is
    registered with linecache under a made-up file name, so that Triton (which reads a kernel's
    source through `inspect`) and tracebacks see it without a file on disk."""
    kernel = _KERNELS.get(source)
    if kernel is None:
        name = f"<kiln-pointwise-{hashlib.sha256(source.encode()).hexdigest()[:16]}>"
        linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
        namespace: dict[str, Any] = {"__name__": name.strip("<>").replace("-", "_")}
        exec(compile(source, name, "exec"), namespace)  # noqa: S102 (our own generated text)
        kernel = _KERNELS[source] = namespace[entry]
    return kernel
