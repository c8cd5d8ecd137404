"""Fixtures of the kernel tests."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def kernel_device():  # noqa: ANN201
    """Tensors made without a device go where the kernels run: the CPU under Triton's interpreter
    (no GPU), the GPU otherwise (the compiled kernels take no CPU tensors)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        yield
        return
    torch.set_default_device("cuda")
    yield
    torch.set_default_device(None)
