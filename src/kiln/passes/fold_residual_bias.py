"""Move a residual branch's conv bias into the conv that adds the residual.

  r = Conv(x, Wd, bd)                          (or kiln::FusedConv without activation)
  act(Conv(h, W, b) + r)  = kiln::FusedConv(h, W, b, r, act)
    ->  r = Conv(x, Wd);   kiln::FusedConv(h, W, b + bd, r, act)

Exact in real arithmetic: the residual enters the sum linearly, so its per-channel bias
can be added where the other bias is. Why: a conv with a bias and no activation is the
one conv that vendor libraries run as two kernels (cuDNN's conv, then a broadcast bias
add over the whole output), while the consumer already adds a bias in its epilogue for
free. ResNet's four downsample convs are this case (their folded BatchNorm's shift).
Only when r has no other reader and is no graph output, both biases are constants, and
the residual conv's output channels are the consumer's. Run after fuse_epilogues.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node
from kiln.passes.match import const_array, live_ops, new_const, pinned, place_inputs, produced_by, sole_user


def fold_residual_bias(graph: Graph) -> bool:
    keep = pinned(graph)
    changed = False
    for node in live_ops(graph, "kiln::FusedConv"):
        r = node.input(3)
        source = produced_by(r, "Conv", "kiln::FusedConv")
        if source is None or sole_user(r, keep) is not node or not _linear(source):
            continue
        extra, own = const_array(source.input(2)), node.input(2)
        base = const_array(own) if own is not None else np.zeros(0)
        if extra is None or base is None or extra.ndim != 1 or base.size not in (0, extra.size):
            continue
        total = extra.astype(np.float64) + (base.astype(np.float64) if base.size else 0.0)
        like = source.input(2).const if own is None else own.const
        node.set_input(2, new_const(graph, total, like, "bias"))
        place_inputs(source, {2: None})
        changed = True
    return changed


def _linear(node: Node) -> bool:
    """A conv whose output is linear in its bias: no activation after the sum."""
    return node.qualified_op == "Conv" or not node.attrs.get("activation", "")
