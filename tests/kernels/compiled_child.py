"""Compile-only checks for a GPU the tests do not have: the conftest runs Triton in its
interpreter, so code that compiles kernels for sm_90 runs in a child process without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_compiled(code: str, cache_dir: Path, timeout: int = 600) -> list[str]:
    """Run `code` in a child Python outside the interpreter (its own Triton cache, kiln's sources
    first on the path); its stdout lines. Fails the test with the child's stderr if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.split("\n")
