"""The ONNX backend node tests, as data: fetched once from the onnx==1.22.0 wheel (the last
one that ships `onnx/backend/test/data/node`), with kiln's exclusion list beside them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ONNX_VERSION = "1.22.0"
PREFIX = "onnx/backend/test/data/node/"
EXCLUSIONS = Path(__file__).with_name("exclusions.txt")


def cache_dir() -> Path:
    root = os.environ.get("KILN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    return Path(root) / f"onnx-{ONNX_VERSION}-node-tests"


def node_data_dir() -> Path:
    """The folder of node test cases, downloaded and extracted on first use."""
    target = cache_dir()
    done = target / ".complete"
    if done.exists():
        return target / "node"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                        f"onnx=={ONNX_VERSION}", "-d", tmp, "-q"], check=True)
        wheel = next(Path(tmp).glob("onnx-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(PREFIX) and not name.endswith("/"):
                    dest = target / "node" / name[len(PREFIX):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(name))
    done.write_text(ONNX_VERSION)
    return target / "node"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    rtol: float = 1e-3
    atol: float = 1e-7


def cases(data_dir: Path | None = None) -> list[Case]:
    data_dir = data_dir or node_data_dir()
    out = []
    for d in sorted(data_dir.iterdir()):
        if not (d / "model.onnx").exists():
            continue
        tol = json.loads((d / "data.json").read_text()) if (d / "data.json").exists() else {}
        out.append(Case(d.name, d, tol.get("rtol", 1e-3), tol.get("atol", 1e-7)))
    return out


@dataclass(frozen=True)
class Exclusion:
    test: str
    devices: tuple[str, ...]   # ("cpu", "cuda") or one of them
    reason: str


def exclusions(path: Path = EXCLUSIONS) -> dict[str, Exclusion]:
    """`test_name  cpu|cuda|all  reason` per line; `#` starts a comment."""
    out: dict[str, Exclusion] = {}
    if not path.exists():
        return out
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[1] not in ("cpu", "cuda", "all"):
            raise ValueError(f"{path}:{i}: expected `test_name cpu|cuda|all reason`, got {line!r}")
        devices = ("cpu", "cuda") if parts[1] == "all" else (parts[1],)
        for dev in devices:
            key = f"{parts[0]}_{dev}"
            if key in out:
                raise ValueError(f"{path}:{i}: {parts[0]} on {dev} is listed twice")
            out[key] = Exclusion(parts[0], devices, parts[2])
    return out
