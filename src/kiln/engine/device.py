"""The device fingerprint an engine is built for, and the check at load time."""
from __future__ import annotations

import platform
from typing import Any

import torch

from kiln.errors import DeviceMismatchError


def fingerprint(device: str) -> dict[str, Any]:
    """What identifies the target: GPU name, compute capability and software versions, or "cpu"."""
    soft = {"torch": torch.__version__, "triton": triton_version()}
    if device == "cpu":
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), **soft}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "kind": "cuda",
        "name": props.name,
        "compute_capability": [props.major, props.minor],
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "driver": _driver_version(),
        **soft,
    }


def check_compatible(built: dict[str, Any], path: str) -> str:
    """Return the device ("cpu" or "cuda") to run on, or raise when this machine differs."""
    if built.get("kind") == "cpu":
        return "cpu"
    rebuild = f"kiln rebuild {path}"
    if not torch.cuda.is_available():
        raise DeviceMismatchError(
            f"engine {path!r} was built for GPU {built.get('name')!r} (compute capability "
            f"{_cc(built)}), but this machine has no CUDA GPU. Run it on that GPU, or rebuild it for "
            f"this machine's CPU with `{rebuild} --device cpu`.")
    here = fingerprint("cuda")
    if here["name"] != built.get("name") or here["compute_capability"] != built.get("compute_capability"):
        raise DeviceMismatchError(
            f"engine {path!r} was built for {built.get('name')!r} (compute capability {_cc(built)}) but "
            f"this GPU is {here['name']!r} (compute capability {_cc(here)}); kernels tuned for one GPU are "
            f"not valid on another. Rebuild it here with `{rebuild}`.")
    return "cuda"


def _cc(fp: dict[str, Any]) -> str:
    cc = fp.get("compute_capability") or ["?", "?"]
    return f"{cc[0]}.{cc[1]}"


def triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def _driver_version() -> str | None:
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
