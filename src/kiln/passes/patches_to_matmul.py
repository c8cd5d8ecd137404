"""Non-overlapping ("patchify") convolutions as one GEMM: a ViT's patch embedding.

A Conv whose kernel equals its strides, with no padding, dilation 1 and group 1, over an input
whose H and W the kernel divides, reads every input pixel exactly once: it is the product of
the image cut into patches with the flattened weight. With HP = H / kh, WP = W / kw, K = C*kh*kw:

  Conv(X [N, C, H, W], W [OC, C, kh, kw], b)
    -> P = Reshape(Transpose(Reshape(X, [0, C, HP, kh, WP, kw]), [0, 2, 4, 1, 3, 5]), [0, HP, WP, K])
       Transpose(Add(MatMul(P, W'), b), [0, 3, 1, 2])          W' = W as [OC, K], transposed: [K, OC]

P's last dim runs over (c, i, j) as W' rows do. The GEMM's result is [N, HP, WP, OC] in memory;
the last Transpose shows it as NCHW (a view at run time), and a ViT's flatten(2).transpose(1, 2)
then reads it as [N, HP*WP, OC] without a copy. The patches cost one copy of X; the bias Add
joins the GEMM in fuse_epilogues, and int8/fp8 builds quantize the MatMul like any other.

Why: on an H200 (benchmarks/profile_kernels.py vit_b16:32, 2026-11-27) cuDNN ran ViT-B/16's
16x16/16 patch conv over 3 channels in 0.234 ms at batch 32, plus 0.087 ms converting layouts
around it: 11% of the engine's 2.78 ms, for a GEMM of [6272, 768] x [768, 768] (7.4 GFLOP).

Only where the graph runs NCHW (graph.layout "nchw": choose_layout found few convs) or this is
its only conv (a small ViT, whose patch conv is a third of its FLOPs, is "nhwc" for that conv
alone; with the conv gone, the layout is decided again), so that a channels-last CNN keeps its
convs and their layout; and not for an explicit QDQ conv (X or W from a DequantizeLinear), which
fuse_qdq makes a kiln::QConv. 1x1 kernels stay convs: their "patches" are pixels, which a GEMM
would need X transposed to reach.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.choose_layout import decide_layout
from kiln.passes.match import const_array, new_const, produced_by, replace_nodes


def patches_to_matmul(graph: Graph) -> bool:
    """Rewrite every eligible patchify Conv (module docstring); True if any was."""
    convs = [n for n in graph.nodes if n.domain == "" and n.op == "Conv"]
    if graph.layout != "nchw" and len(convs) != 1:
        return False
    changed = False
    for conv in convs:
        patches = _patch_grid(conv)
        if patches is not None:
            _rewrite(graph, conv, *patches)
            changed = True
    if changed:
        graph.layout = decide_layout(graph)
    return changed


def _patch_grid(conv: Node) -> tuple[int, int, np.ndarray] | None:
    """(HP, WP, W) when `conv` is a non-overlapping patch conv the rewrite takes, else None."""
    x, w_val = conv.input(0), conv.input(1)
    w = const_array(w_val)
    if x.shape is None or len(x.shape) != 4 or w is None or w.ndim != 4:
        return None
    if produced_by(x, "DequantizeLinear") is not None or produced_by(w_val, "DequantizeLinear") is not None:
        return None
    _, c, h, wd = x.shape
    oc, wc, kh, kw = w.shape
    if not all(isinstance(d, int) for d in (c, h, wd)) or c != wc or kh * kw < 2:
        return None
    a = conv.attrs
    if int(a.get("group", 1)) != 1 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if list(a.get("kernel_shape", (kh, kw))) != [kh, kw] or list(a.get("strides", (1, 1))) != [kh, kw]:
        return None
    if any(int(p) for p in a.get("pads", ())) or any(int(d) != 1 for d in a.get("dilations", ())):
        return None
    if h % kh or wd % kw:
        return None
    return h // kh, wd // kw, w


def _rewrite(graph: Graph, conv: Node, hp: int, wp: int, w: np.ndarray) -> None:
    x, bias, y = conv.input(0), conv.input(2), conv.outputs[0]
    oc, c, kh, kw = w.shape
    n = x.shape[0]
    k = c * kh * kw

    def add(op: str, inputs: list[Value | None], shape: tuple, attrs: dict | None = None) -> Value:
        node = graph.make_node(op, inputs, attrs=attrs, before=conv, name=f"{conv.name}_{op.lower()}")
        node.fused_from = (conv.name,)
        out = node.outputs[0]
        out.dtype, out.shape = y.dtype, shape
        return out

    def dims(*d: int) -> Value:
        return graph.constant(np.asarray(d, dtype=np.int64), f"{conv.name}_shape")

    split = add("Reshape", [x, dims(0, c, hp, kh, wp, kw)], (n, c, hp, kh, wp, kw))
    moved = add("Transpose", [split], (n, hp, wp, c, kh, kw), {"perm": [0, 2, 4, 1, 3, 5]})
    patches = add("Reshape", [moved, dims(0, hp, wp, k)], (n, hp, wp, k))
    weight = new_const(graph, w.reshape(oc, k).T, conv.input(1).const, f"{conv.name}_patch_weight")
    out = add("MatMul", [patches, weight], (n, hp, wp, oc))
    if bias is not None:
        out = add("Add", [out, bias], (n, hp, wp, oc))
    replace_nodes(graph, [conv], "Transpose", [out], {"perm": [0, 3, 1, 2]})
