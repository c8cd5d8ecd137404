"""Which convolutions fold space to depth (kernels/triton/qconv_s2d.py has the fold itself): the
rule alone, free of Triton, for the tactics that offer the folded walk and the precision pass that
moves a QuantizeLinear into such a layer (precision/fuse_input_quantize.py)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from kiln.kernels.triton.qgemm_space import MIN_BLOCK_K   # 8-bit MMAs take K in 32s (a Triton-free module)

# The implicit-GEMM conv reads a pixel's channels padded to a multiple of this many elements
# (every pixel starts 4-byte aligned: its loads are 32-bit words).
PIXEL_ALIGN = 4
MAX_PIXEL = 64         # elements of a folded pixel: the fold is for few channels (the stem: 16)
PIXEL_RUN = 16         # ... and a multiple of this: every folded pixel starts 16-byte aligned


def folds(channels: int, strides: Sequence[int], dilations: Sequence[int]) -> bool:
    """Whether a 2-D conv over `channels` (W's dim 1) folds: equal strides of at least 2, no
    dilation, C not a multiple of 32 (those take the TAPS walk unfolded) and a folded pixel of at
    most MAX_PIXEL elements, a multiple of PIXEL_RUN (stride 3 needs C in 16s)."""
    if len(strides) != 2 or strides[0] < 2 or strides[1] != strides[0] or tuple(dilations) != (1, 1) \
            or channels % MIN_BLOCK_K == 0:
        return False
    s = strides[0]
    p = s * s * -(-channels // PIXEL_ALIGN) * PIXEL_ALIGN
    return p <= MAX_PIXEL and p % PIXEL_RUN == 0


def conv_folds(w_shape: Sequence[Any] | None, attrs: Mapping[str, Any]) -> bool:
    """Whether a conv node with weight shape `w_shape` ([OC, C, KH, KW]; C must be known) and ONNX
    attributes `attrs` folds: group 1, then `folds` on its strides and dilations (default ones)."""
    if w_shape is None or len(w_shape) != 4 or not isinstance(w_shape[1], int):
        return False
    if int(attrs.get("group", 1) or 1) != 1:
        return False
    return folds(w_shape[1], list(attrs.get("strides") or [1, 1]), list(attrs.get("dilations") or [1, 1]))
