"""kernels/memo.py: values derived once per engine constant, again after an in-place change, and
for inference tensors (made under torch.inference_mode, which keeps no version counter)."""
from __future__ import annotations

import torch

from kiln.kernels.memo import derived, derived_table


def test_derived_once_per_tensor_and_again_after_an_in_place_change():
    table, calls = derived_table(), []
    t = torch.arange(4.0)
    make = lambda x: calls.append(1) or x * 2  # noqa: E731
    first = derived(table, t, "double", make)
    assert derived(table, t, "double", make) is first and len(calls) == 1
    t.add_(1.0)
    assert torch.equal(derived(table, t, "double", make), (torch.arange(4.0) + 1) * 2) and len(calls) == 2
    assert derived(table, torch.arange(4.0), "double", make) is not first       # another tensor: its own entry


def test_inference_tensors_have_entries_too():
    """The tuner and the runtime run under inference_mode, where a weight's K-major copy is an
    inference tensor: reading its version counter raised, and the quantized GEMM's tactic failed
    on every ONNX Runtime QDQ layer whose activations have a zero point."""
    table, calls = derived_table(), []
    with torch.inference_mode():
        t = torch.arange(6).reshape(2, 3).t().contiguous()
        assert t.is_inference()
        make = lambda x: calls.append(1) or x.sum(dim=0)  # noqa: E731
        first = derived(table, t, 0, make)
        assert derived(table, t, 0, make) is first and len(calls) == 1
