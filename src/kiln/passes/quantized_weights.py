"""The codes and scales of a quantized weight that constant folding turned into floats.

fold_constants folds an explicitly quantized model's DequantizeLinear(w_q, s) of a constant into
a float constant W = fl32(q * s). A quantized layer needs q and s back: they are searched, and
accepted only when *every* element matches, so the layer's DQ(q, s) is W bit for bit.

- int8 (recover_int8): symmetric codes |q| <= 127; s_c searched near max|W_c| / qmax for qmax
  127, 64, 63 (ONNX Runtime's symmetric and reduced ranges), then near max|W| / qmax (one
  per-tensor scale, which a channel with smaller values shares).
- float8 E4M3 (recover_fp8): codes on the float8_e4m3fn grid, |q| <= 448; s_c searched near
  max|W_c| / 448, then max|W| / 448 (ModelOpt's and TensorRT's FP8 weight scales, amax / 448).
Each candidate is tried at 0, -1, +1, -2 and +2 float32 ulps (the exporter's division may round
either way).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

SYMMETRIC_QMAX = (127, 64, 63)
FP8_QMAX = 448.0


def recover_codes(w: np.ndarray, axis: int, fp8: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(q as float64 values, s float32 [channels]) with fl32(q * s) == w exactly, per channel along
    `axis`, q on the float8_e4m3fn grid where `fp8`, else symmetric int8 codes; else None."""
    if fp8:
        return _recover(w, axis, (FP8_QMAX,), _on_fp8_grid, FP8_QMAX)
    return _recover(w, axis, SYMMETRIC_QMAX, lambda x: np.round(x), 127)


def recover_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(q int8, s float32 [channels]) with fl32(q * s) == w exactly, per channel along `axis`; else None."""
    found = recover_codes(w, axis, fp8=False)
    return None if found is None else (found[0].astype(np.int8), found[1])


def recover_fp8(w: np.ndarray, axis: int) -> tuple[torch.Tensor, np.ndarray] | None:
    """(q float8_e4m3fn, s float32 [channels]) with fl32(q * s) == w exactly, per channel along
    `axis`; else None."""
    found = recover_codes(w, axis, fp8=True)
    return None if found is None else (torch.from_numpy(found[0].astype(np.float32)).to(torch.float8_e4m3fn), found[1])


def _on_fp8_grid(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest float8_e4m3fn value (saturated at 448), as float64."""
    t = torch.from_numpy(np.nan_to_num(x, nan=0.0, posinf=FP8_QMAX, neginf=-FP8_QMAX).astype(np.float32))
    return t.clamp(-FP8_QMAX, FP8_QMAX).to(torch.float8_e4m3fn).to(torch.float64).numpy()


def _recover(w: np.ndarray, axis: int, qmaxes: tuple[float, ...], codes: Callable[[np.ndarray], np.ndarray],
             limit: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(q float64 codes, s float32 [C]) with fl32(q * s) == w per channel along `axis`, |q| <= limit,
    q = codes(w / s); None unless every channel is found (module docstring)."""
    rows = np.moveaxis(w, axis, 0)
    flat = rows.reshape(rows.shape[0], -1).astype(np.float64)  # [C, R]
    absmax = np.abs(flat).max(axis=1)
    scale = np.ones(flat.shape[0], dtype=np.float32)
    q = np.zeros_like(flat)
    done = absmax == 0  # an all-zero channel is q = 0 with any scale
    # Each channel's own largest value (per-channel scales), then the tensor's (one scale for all:
    # a channel whose largest code is below qmax then still divides exactly).
    for qmax, top in [(m, absmax) for m in qmaxes] + [(m, np.full_like(absmax, absmax.max())) for m in qmaxes]:
        base = (top / qmax).astype(np.float32)
        for ulps in (0, -1, 1, -2, 2):
            s = base
            for _ in range(abs(ulps)):
                s = np.nextafter(s, np.float32(np.inf if ulps > 0 else 0))
            s64 = s.astype(np.float64)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                cand = codes(flat / s64)
            exact = ((cand * s64).astype(np.float32) == flat.astype(np.float32)).all(axis=1)
            ok = ~done & (s > 0) & exact & (np.abs(cand).max(axis=1) <= limit)
            q[ok], scale[ok], done = cand[ok], s[ok], done | ok
    if not done.all():
        return None
    return np.moveaxis(q.reshape(rows.shape), 0, axis), scale
