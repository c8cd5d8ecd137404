"""GPTQ weight rounding: int8/fp8 weight codes chosen against the layer's calibration inputs.

Rounding each weight to its nearest code (the default, BuildConfig.weight_rounding "nearest")
makes errors that add up independently in every output. GPTQ (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", 2022) rounds the input
channels of a weight one at a time and moves each rounding error onto the channels not yet
rounded, weighted by how the calibration inputs correlate, so that the layer's outputs on
those inputs move as little as possible. For a layer y = x @ W' (W [N, K]: N output
channels, K input channels) and calibration rows X [rows, K] with H = X^T X:

    minimise  || X (Q - W)^T ||^2 = trace((Q - W) H (Q - W)^T)   over codes Q on W's grid

Greedy in the order of decreasing diag(H) (the busiest input channels first, "act order"):
H is damped (H += DAMP * mean(diag H) * I, the mean over excited channels), U = the upper
Cholesky factor of H^-1; for input channel k in that order: q_k = code(w_k), e = (w_k - q_k) /
U_kk, w_j -= e * U_kj for every later j (in blocks of BLOCK columns, the rest as one matrix
product per block).

The scales do not change: s_w (per output channel or per tensor) is max|W| / qmax of the
original W, and a compensated weight beyond it saturates to +-qmax codes. Input channels that
the calibration data never excites (H_kk = 0) round to nearest and pass no error on. The
codes stay plain int8 / float8 codes: the kernels, the engine format and the reference are the
same as with nearest rounding. Matmul layers (MatMul, Gemm, kiln::FusedMatMul) and 2-D
convolutions are rounded this way: a convolution's X rows are its input patches (every output
position of every image, padding included: patch_gram), one H per group; other convolutions keep
nearest rounding.

`GPTQRounding` holds the calibration Gram matrices (calibration/collect.py collects them per
activation name, and per convolution) and records, per layer, the proxy error trace(E H E^T)
of GPTQ's codes against nearest rounding's: the build report states their ratio.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kiln.kernels.reference.common import resolve_pads

# Share of the mean diagonal added to H's diagonal (GPTQ's percdamp, 0.01 in the paper). Larger
# here: a few hundred calibration samples (MiniLM's 200 sentences: ~5k rows for up to 1536 input
# channels) estimate H poorly in the directions they rarely excite, and GPTQ moves rounding error
# into exactly those. On MiniLM's 500 held-out sentences (benchmarks/accuracy_real.py) 0.01 let
# single sentences degrade (int8 with SmoothQuant auto: worst cosine 0.984, nearest rounding
# 0.9925); 0.3 raised the worst sentence above nearest rounding's in each configuration measured
# (fp8; fp8 and int8 with SmoothQuant 0.9 / auto) at a ranking 0.02 points below 0.01's.
DAMP = 0.3
BLOCK = 128  # input channels rounded before the rest of W is updated by one matrix product

Encode = Callable[[torch.Tensor], torch.Tensor]  # values in code units -> the nearest codes (same dtype)


@dataclass(frozen=True, slots=True)
class RoundedLayer:
    """One matmul layer's weight rounding: GPTQ's proxy error against nearest rounding's, or why nearest."""
    layer: str
    error_ratio: float | None  # trace(E H E^T) with GPTQ's codes / with nearest codes; None: nearest
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer}
        if self.error_ratio is not None:
            out["error_ratio"] = round(self.error_ratio, 6)
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class GPTQRounding:
    """The Gram matrices of the layers' calibration inputs and, filled while quantizing, what each
    layer's rounding gave. `grams`: H = X^T X [K, K] of each activation a matmul reads, keyed by
    activation name; `conv_grams`: of each 2-D convolution's input patches per group, [group, K, K]
    (K = C/group * kh * kw, patch_gram), keyed by the convolution node's name."""
    grams: Mapping[str, torch.Tensor]
    conv_grams: Mapping[str, torch.Tensor] = field(default_factory=dict)
    damp: float = DAMP
    block: int = BLOCK
    layers: list[RoundedLayer] = field(default_factory=list)

    def codes(self, layer: str, x_name: str, w: np.ndarray, scale: np.ndarray, axis: int,
              encode: Encode) -> np.ndarray | None:
        """GPTQ's codes (float64, W's layout) for the weight `w` of `layer` (its node's name), reading
        activation `x_name`, with scales `scale` ([C] along the output-channel `axis`, or [1]): a
        matmul's W [K, N] or [N, K] (Gram matrix: `x_name`'s), or a convolution's W [M, C/group, kh,
        kw] (axis 0; Gram matrices: `layer`'s). None when there is no usable Gram matrix (the caller
        rounds to nearest; the reason is recorded)."""
        conv = w.ndim > 2
        gram = self.conv_grams.get(layer) if conv else self.grams.get(x_name)
        if gram is None:
            why = "no calibration patches (GPTQ covers 2-D convolutions)" if conv else \
                f"no calibration rows of its input {x_name!r}"
            self.layers.append(RoundedLayer(layer, None, why))
            return None
        wt = torch.from_numpy(np.asarray(w, np.float64))
        if conv:  # per group: [M / group, K] rows against that group's [K, K]
            k = int(np.prod(w.shape[1:]))
            ok = gram.dim() == 3 and tuple(gram.shape[1:]) == (k, k) and w.shape[0] % gram.shape[0] == 0
            want = f"[group, {k}, {k}]"
        else:
            k = w.shape[1 - axis]
            ok, want = tuple(gram.shape) == (k, k), f"[{k}, {k}]"
        if not ok:
            self.layers.append(RoundedLayer(layer, None, f"its input's Gram matrix is {list(gram.shape)}, "
                                                         f"not {want}"))
            return None
        groups = wt.reshape(gram.shape[0], -1, k) if conv else (wt.T if axis == 1 else wt)[None]  # [G, rows, K]
        s = torch.from_numpy(np.asarray(scale, np.float64)).reshape(-1, 1)    # [rows, 1] or [1, 1]
        s = s.expand(w.shape[axis], 1).reshape(groups.shape[0], -1, 1)
        h = gram.to("cpu", torch.float64).reshape(-1, k, k)
        try:
            q = torch.stack([gptq_codes(wg / sg, hg, encode, self.damp, self.block)
                             for wg, sg, hg in zip(groups, s, h)])
        except torch.linalg.LinAlgError:
            self.layers.append(RoundedLayer(layer, None, "its damped Gram matrix is not positive definite"))
            return None
        got = sum(proxy_error(qg * sg - wg, hg) for qg, sg, wg, hg in zip(q, s, groups, h))
        base = sum(proxy_error(encode(wg / sg) * sg - wg, hg) for sg, wg, hg in zip(s, groups, h))
        self.layers.append(RoundedLayer(layer, float(got / max(base, 1e-300))))
        if conv:
            return q.reshape(w.shape).numpy()
        return (q[0].T if axis == 1 else q[0]).numpy()

    def to_json(self) -> dict[str, Any]:
        ratios = [r.error_ratio for r in self.layers if r.error_ratio is not None]
        return {"damp": self.damp, "block": self.block, "layers": [r.to_json() for r in self.layers],
                "rounded": len(ratios), "mean_error_ratio": round(float(np.mean(ratios)), 6) if ratios else None}


def gptq_codes(w: torch.Tensor, h: torch.Tensor, encode: Encode, damp: float = DAMP,
               block: int = BLOCK) -> torch.Tensor:
    """Codes [N, K] (float64) for w [N, K] in code units (W / s) minimising trace(E H E^T)
    greedily (module docstring); h [K, K] float64. Raises torch.linalg.LinAlgError when the
    damped h is not positive definite."""
    w = w.clone()
    n, k = w.shape
    h = h.clone()
    dead = torch.diagonal(h) <= 0
    live = torch.diagonal(h)[~dead]
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1.0                       # never excited: round to nearest, pass no error on
    h += damp * (float(live.mean()) if live.numel() else 1.0) * torch.eye(k, dtype=h.dtype)
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    w, h = w[:, order], h[order][:, order]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.empty_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb, ub = w[:, b0:b1], u[b0:b1, b0:b1]
        err = torch.empty_like(wb)
        for j in range(b1 - b0):
            col = wb[:, j]
            q[:, b0 + j] = encode(col)
            e = (col - q[:, b0 + j]) / ub[j, j]
            wb[:, j + 1:] -= e[:, None] * ub[j, j + 1:][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    out = torch.empty_like(q)
    out[:, order] = q
    return out


def proxy_error(e: torch.Tensor, h: torch.Tensor) -> float:
    """trace(E H E^T) for E [N, K]: the squared output error of the calibration rows."""
    return float(((e @ h) * e).sum())


PATCH_CHUNK = 1 << 24  # unfolded elements per step of patch_gram (bounds its scratch memory)


def patch_gram(x: torch.Tensor, kernel: Sequence[int], attrs: Mapping[str, Any]) -> torch.Tensor | None:
    """float32 [group, K, K]: sum over images and output positions of p p^T, p a 2-D convolution's
    input patch of one group (K = C/group * kh * kw, in its weight's (c, i, j) order), for input x
    [B, C, H, W] and the convolution's ONNX attributes; None where x or the kernel is not 2-D."""
    if x.dim() != 4 or len(kernel) != 2:
        return None
    group = int(attrs.get("group", 1))
    strides = [int(v) for v in attrs.get("strides") or (1, 1)]
    dilations = [int(v) for v in attrs.get("dilations") or (1, 1)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    top, left, bottom, right = resolve_pads(auto_pad, x.shape[2:], kernel, strides, dilations, attrs.get("pads"))
    xp = F.pad(x.detach().to(torch.float32), (left, right, top, bottom))
    b, c = x.shape[:2]
    k = c // group * kernel[0] * kernel[1]
    gram = torch.zeros(group, k, k, dtype=torch.float32, device=x.device)
    per_image = c * kernel[0] * kernel[1] * max(1, xp.shape[2] * xp.shape[3])
    step = max(1, PATCH_CHUNK // per_image)
    for i in range(0, b, step):
        cols = F.unfold(xp[i:i + step], tuple(kernel), dilation=dilations, stride=strides)  # [b, C*kh*kw, L]
        n, _, positions = cols.shape
        cols = cols.reshape(n, group, k, positions).permute(1, 0, 3, 2).reshape(group, n * positions, k)
        gram += cols.transpose(1, 2) @ cols
    return gram
