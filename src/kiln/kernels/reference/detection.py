"""Detection post-processing and box ops: NonMaxSuppression.

NMS is greedy by nature; it is computed here without a per-box host loop. For one
(batch, class) the candidates are sorted by score, the pairwise "i suppresses j"
matrix is built on the device, and the greedy keep mask is found as the fixed point of
keep[j] = not any(keep[i] and suppresses[i, j] for i before j). Iteration t settles at
least the first t candidates, so it ends after at most K rounds, usually a few.
"""
from __future__ import annotations

import torch

from kiln.kernels.reference.common import as_scalar
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _corners(boxes: Tensor, center_point_box: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_min, y_min, x_max, y_max) of [K, 4] boxes in either ONNX box format."""
    if center_point_box:
        xc, yc, w, h = boxes.unbind(-1)
        return xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    y1, x1, y2, x2 = boxes.unbind(-1)  # corners in any order: [y1, x1, y2, x2]
    return torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)


def _suppresses(boxes: Tensor, center_point_box: int, iou_threshold: Tensor) -> Tensor:
    """[K, K] bool: IoU(i, j) > iou_threshold, for boxes with positive area that overlap."""
    x0, y0, x1, y1 = _corners(boxes, center_point_box)
    ix = torch.minimum(x1[:, None], x1[None, :]) - torch.maximum(x0[:, None], x0[None, :])
    iy = torch.minimum(y1[:, None], y1[None, :]) - torch.maximum(y0[:, None], y0[None, :])
    inter = ix * iy
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None, :] - inter
    valid = (ix > 0) & (iy > 0) & (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    iou = inter / torch.where(valid, union, torch.ones_like(union))
    return valid & (iou > iou_threshold)


def _greedy_keep(sup: Tensor) -> Tensor:
    """Keep mask of greedy NMS over candidates in score order, `sup` their [K, K] suppression."""
    k = sup.shape[0]
    earlier = torch.ones(k, k, dtype=torch.bool, device=sup.device).triu(1)  # i strictly before j
    sup = sup & earlier
    keep = torch.ones(k, dtype=torch.bool, device=sup.device)
    for _ in range(k):
        new = ~(sup & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


@reference_op("NonMaxSuppression")
def non_max_suppression(boxes: Tensor, scores: Tensor, max_output_boxes_per_class: Tensor | None = None,
                        iou_threshold: Tensor | None = None, score_threshold: Tensor | None = None, *,
                        center_point_box: int = 0) -> Tensor:
    """selected_indices = int64 [num_selected, 3] (batch, class, box) kept by greedy NMS per class.

    Candidates need score > score_threshold (when given) and are taken in descending
    score order (ties: lower box index first); a box is dropped when its IoU with an
    already kept box of its class is > iou_threshold. At most max_output_boxes_per_class
    (default 0: none) are kept per (batch, class).
    """
    limit = int(as_scalar(max_output_boxes_per_class)) if _given(max_output_boxes_per_class) else 0
    iou_thr = (iou_threshold.reshape(-1)[0] if _given(iou_threshold)
               else torch.zeros((), dtype=boxes.dtype, device=boxes.device))
    rows: list[Tensor] = []
    n_batch, n_class = scores.shape[0], scores.shape[1]
    for b in range(n_batch if limit > 0 else 0):
        for c in range(n_class):
            s = scores[b, c]
            cand = torch.arange(s.shape[0], device=s.device)
            if _given(score_threshold):
                cand = cand[s > score_threshold.reshape(-1)[0]]
            order = torch.sort(s[cand], descending=True, stable=True).indices
            cand = cand[order]
            if cand.numel() == 0:
                continue
            keep = _greedy_keep(_suppresses(boxes[b, cand], center_point_box, iou_thr))
            chosen = cand[keep][:limit]
            rows.append(torch.stack([torch.full_like(chosen, b), torch.full_like(chosen, c), chosen], 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)


def _given(t: Tensor | None) -> bool:
    return t is not None and t.numel() > 0
