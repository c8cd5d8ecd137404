"""DynamicQuantizeLinear and kiln::DynamicQuantize (its int8 form) on the GPU
(kernels/triton/dynamic_quantize.py): two Triton passes, the scale and zero point derived on the
device; bit for bit the reference's outputs."""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.kernels.triton import available as triton_available
from kiln.tactics.quantized import device_capability
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic


def supports_triton(q: TacticQuery) -> bool:
    """A float32/float16/bfloat16 X on a CUDA device of compute capability 8.0 or later."""
    if q.device != "cuda" or not q.input_dtypes or q.input_dtypes[0] not in dtypes.FLOAT_NAMES:
        return False
    cap = device_capability()
    return cap is not None and cap >= (8, 0)


if triton_available():
    from kiln.kernels.triton import dynamic_quantize as _kernel

    register_tactic(Tactic("DynamicQuantizeLinear.triton", "DynamicQuantizeLinear", 1, ("cuda",),
                           _kernel.dynamic_quantize_linear, supports_triton, configs=_kernel.CONFIGS))
    register_tactic(Tactic("kiln::DynamicQuantize.triton", "kiln::DynamicQuantize", 1, ("cuda",),
                           _kernel.signed_dynamic_quantize, supports_triton, configs=_kernel.CONFIGS))
