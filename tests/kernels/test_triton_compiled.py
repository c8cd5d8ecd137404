"""kernels/triton/compiled.py: the compiled/interpreted switch and fast_reciprocal, against 1 / x.

CPU (interpreted): the division it stands for. GPU (compiled, marked): rcp.approx.ftz within
an ulp over [1, 2**126], 0 beyond and for inf, NaN kept: the domain the activations use."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available as triton_available

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"

if triton_available():
    import triton
    import triton.language as tl

    from kiln.kernels.triton import compiled

    @triton.jit
    def _reciprocal(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(Y + offs, compiled.fast_reciprocal(tl.load(X + offs, mask=mask, other=1.0)), mask=mask)
else:
    compiled = None
pytestmark = pytest.mark.skipif(compiled is None, reason="Triton is not installed")


def _run(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    _reciprocal[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y


def _domain(n: int, dev: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0x3F800000, 0x7F000000, (n,), generator=g, dtype=torch.int32)   # [1, 2**127)
    special = torch.tensor([1.0, 2.0, 3.0, 2.0 ** 126, 2.0 ** 127, float("inf"), float("nan")])
    return torch.cat([bits.view(torch.float32), special]).to(dev)


def test_compiled_follows_the_interpreter_switch():
    assert bool(compiled.COMPILED) == (not compiled.interpreting())


def test_reciprocal_matches_one_over_x():
    x = _domain(4096, DEV)
    y, want = _run(x).cpu(), 1.0 / x.cpu().double()
    ok = x.cpu() <= 2.0 ** 126
    rel = ((y.double() - want) / want).abs()[ok]
    assert float(rel.max()) <= 2.0 ** -23                 # within an ulp (exact in the interpreter)
    assert torch.all(y[~ok & ~torch.isnan(x.cpu())] <= 2.0 ** -126)   # beyond: flushed to 0 (or exact)
    assert y[-2] == 0.0 and torch.isnan(y[-1])


@pytest.mark.gpu
def test_gpu_reciprocal_on_many_values():
    assert compiled.COMPILED
    x = _domain(1 << 22, "cuda")
    y, want = _run(x), 1.0 / x.double()
    ok = x <= 2.0 ** 126
    assert float((((y.double() - want) / want).abs()[ok]).max()) <= 2.0 ** -23
    assert torch.all(y[~ok & ~torch.isnan(x)] == 0)
