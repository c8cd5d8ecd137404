"""The SDPA attention tactic against the reference kiln::Attention (the oracle)."""
import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.tactics import TacticQuery, candidates, get_tactic


def _case(mask_kind: str, causal: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=dtype) for _ in range(3))
    if mask_kind == "float":
        mask = torch.where(torch.rand(2, 1, 1, 5, generator=g) > 0.3, 0.0, -1e4).to(dtype)
    elif mask_kind == "bool":
        mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
        mask[..., 0] = True  # every query keeps at least one key
    else:
        mask = None
    return q, k, v, mask, causal


@pytest.mark.parametrize("mask_kind", ["none", "float", "bool"])
@pytest.mark.parametrize("causal", [0, 1])
def test_sdpa_matches_reference(mask_kind, causal, device):
    q, k, v, mask, causal = _case(mask_kind, causal)
    q, k, v = q.to(device), k.to(device), v.to(device)
    mask = None if mask is None else mask.to(device)
    ref = lookup("kiln::Attention").fn(q, k, v, mask, scale=0.3, is_causal=causal)
    got = get_tactic("kiln::Attention.sdpa").kernel(q, k, v, mask, scale=0.3, is_causal=causal)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_sdpa_is_a_cuda_candidate_before_the_reference_and_not_for_int():
    q = TacticQuery("kiln::Attention", "cuda", ("float16", "float16", "float16", "float16"), {})
    assert [t.name for t in candidates(q)] == ["kiln::Attention.sdpa", "kiln::Attention.reference"]
    q = TacticQuery("kiln::Attention", "cuda", ("int8", "int8", "int8", None), {})
    assert [t.name for t in candidates(q)] == ["kiln::Attention.reference"]
    q = TacticQuery("kiln::Attention", "cpu", ("float32",) * 3, {})
    assert [t.name for t in candidates(q)] == ["kiln::Attention.reference"]
