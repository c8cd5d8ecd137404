"""The Triton Gather (kernels/triton/gather.py) against the reference, exactly: embedding lookups
(axis 0) with negative indices, other axes, scalar and int32 indices, every element size (bool,
int8 codes, float8, float16, float32, int64), rows past one block, and what the tactic offers to
take. CPU: Triton's interpreter; compiled with `pytest --device cuda` on a GPU."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available
from kiln.tactics import TacticQuery, get_tactic

REF = lookup("Gather").fn
DEV = "cuda" if torch.cuda.is_available() else "cpu"

if triton_available():
    from kiln.kernels.triton import gather as kernel
else:
    kernel = None
pytestmark = pytest.mark.skipif(kernel is None, reason="Triton is not installed")


def _check(data: torch.Tensor, indices: torch.Tensor, axis: int = 0, config: dict | None = None) -> torch.Tensor:
    got = kernel.gather(data.to(DEV), indices.to(DEV), axis=axis, config=config).cpu()
    want = REF(data, indices, axis=axis)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.uint8) if got.dtype.itemsize == 1 else got,
                       want.view(torch.uint8) if want.dtype.itemsize == 1 else want)
    return got


@pytest.mark.parametrize("config", kernel.CONFIGS if kernel else [], ids=str)
def test_embedding_lookup_with_negative_indices(config):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 1100, generator=g).half()           # rows wider than a block: two column blocks
    ids = torch.randint(-50, 50, (3, 7), generator=g)
    got = _check(table, ids, config=config)
    assert torch.equal(got[0, 0], table[int(ids[0, 0]) % 50])


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.float8_e4m3fn, torch.float32, torch.int64])
def test_every_element_size(dtype):
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(9, 5, generator=g) * 20).to(dtype)
    _check(data, torch.tensor([[8, -1], [0, 3]]), config={"ROWS": 4, "BLOCK": 256, "num_warps": 4})


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_other_axes_and_int32_indices(axis):
    g = torch.Generator().manual_seed(2)
    data = torch.randn(4, 6, 5, generator=g)
    n = data.shape[axis]
    idx = torch.randint(-n, n, (2, 3), generator=g, dtype=torch.int64).to(torch.int32)
    _check(data, idx, axis=axis, config={"ROWS": 8, "BLOCK": 512, "num_warps": 4})


def test_scalar_index_drops_the_axis():
    data = torch.arange(24.0).reshape(2, 3, 4)
    got = _check(data, torch.tensor(-2), axis=1)
    assert got.shape == (2, 4) and torch.equal(got, data[:, 1])


def test_out_of_range_rows_are_zero():
    """An error in ONNX (the reference asserts on the device); the kernel writes zeros."""
    data = torch.randn(4, 8)
    got = kernel.gather(data.to(DEV), torch.tensor([1, 4, -5, 2]).to(DEV)).cpu()
    assert torch.equal(got[0], data[1]) and torch.equal(got[3], data[2])
    assert not got[1].any() and not got[2].any()


def test_empty_output():
    got = kernel.gather(torch.randn(4, 8).to(DEV), torch.zeros(0, 3, dtype=torch.int64).to(DEV))
    assert got.shape == (0, 3, 8)


def test_tactic_takes_device_gathers_with_integer_indices():
    tactic = get_tactic("Gather.triton")

    def ok(device="cuda", data="float16", idx="int64", shape=(30522, 768)) -> bool:
        return tactic.supports(TacticQuery("Gather", device, (data, idx), {"axis": 0}, (shape, (32, 128))))
    assert ok() and ok(data="int8") and ok(data="bool") and ok(idx="int32") and ok(data="float8_e4m3fn")
    assert not ok(device="cpu") and not ok(idx="float32") and not ok(shape=()) and not ok(data="string")
