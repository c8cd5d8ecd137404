"""Shared pytest setup: the --device option, the gpu/slow markers and model fixtures."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run in Triton's interpreter (on CPU tensors): CI checks their
# logic that way. This must be set before any module defines a @triton.jit kernel.
if os.environ.get("KILN_TEST_GPU") != "1" and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", action="store", default="cpu", choices=("cpu", "cuda"),
                     help="device kiln builds engines for in tests (default: cpu)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped when none is present")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    # Imported here, not at module level, so collecting pure-Python tests stays fast.
    import torch
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU and torch.cuda.is_available() is False")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """"cpu" or "cuda", from --device; tests asking for cuda without a GPU are skipped."""
    name = request.config.getoption("--device")
    if name == "cuda" and not _cuda_available():
        pytest.skip("--device cuda was given but torch.cuda.is_available() is False")
    return name


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the ONNX files tests export, shared by the whole session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def minilm_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 as ONNX, exported once and reused across pytest runs.

    $KILN_CACHE_DIR wins when set (default_model_path reads it); otherwise the export
    lives in pytest's own cache (.pytest_cache), or in a temp folder when the cache
    plugin is disabled with -p no:cacheprovider.
    """
    from kiln.models import default_model_path

    if os.environ.get("KILN_CACHE_DIR"):
        return default_model_path()
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("kiln") if cache is not None else tmp_path_factory.mktemp("kiln-cache")
    return default_model_path(cache_dir=Path(folder))
