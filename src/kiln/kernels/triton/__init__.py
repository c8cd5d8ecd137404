"""kiln's own GPU kernels, written in Triton. Each has an oracle in kernels/reference and a
conformance test; without a GPU the tests run them in Triton's interpreter (TRITON_INTERPRET=1)."""
from __future__ import annotations


def available() -> bool:
    """Whether Triton can be imported here (it ships for Linux only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
