"""Gather on the GPU (kernels/triton/gather.py): one Triton kernel, the negative indices wrapped
per row, beside the reference (its wrap in three elementwise kernels, then torch's gather)."""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.kernels.triton import available as triton_available
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic


def supports_triton(q: TacticQuery) -> bool:
    """Data of any type with elements of 1, 2, 4 or 8 bytes and rank >= 1; int32/int64 indices."""
    dts = (*q.input_dtypes, None, None)
    if q.device != "cuda" or dts[0] is None or dts[1] not in ("int32", "int64"):
        return False
    shapes = (*q.input_shapes, None)
    if shapes[0] is not None and len(shapes[0]) == 0:
        return False
    try:
        return dtypes.from_name(dts[0]).torch.itemsize in (1, 2, 4, 8)
    except (TypeError, AttributeError):
        return False


if triton_available():
    from kiln.kernels.triton import gather as _kernel

    register_tactic(Tactic("Gather.triton", "Gather", 1, ("cuda",), _kernel.gather, supports_triton,
                           configs=_kernel.CONFIGS))
