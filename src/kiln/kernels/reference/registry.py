"""The table of reference implementations: one plain torch function per op.

Calling convention (shared by every op, the executor relies on it):
  fn(*inputs, **attrs) -> Tensor | tuple[Tensor, ...]
- `inputs` are torch tensors in ONNX input order; an omitted optional input in the
  middle is passed as None, trailing omitted ones are not passed at all.
- `attrs` are the node's attributes as plain Python values (int, float, str, lists,
  numpy arrays for tensor attributes), named exactly as in the ONNX spec, with the
  spec's defaults as keyword defaults.
- The result has one tensor per node output, on the device of the inputs.
The functions are the oracle every faster tactic is checked against: they favour
clarity and exactness over speed, but run on CPU and CUDA alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

OpFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


@dataclass(frozen=True, slots=True)
class OpDef:
    op: str        # qualified name: "Conv" for ai.onnx, "kiln::FusedConv" for kiln's own
    fn: OpFn
    since: int     # lowest ai.onnx opset this implementation covers
    doc: str


REFERENCE_OPS: dict[str, OpDef] = {}


def reference_op(op: str, *, domain: str = "", since: int = 1) -> Callable[[OpFn], OpFn]:
    """Register `fn` as the reference implementation of `op` (in `domain`)."""
    key = f"{domain}::{op}" if domain else op

    def register(fn: OpFn) -> OpFn:
        if key in REFERENCE_OPS:
            raise ValueError(f"reference op {key} registered twice")
        REFERENCE_OPS[key] = OpDef(key, fn, since, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


def lookup(op: str) -> OpDef | None:
    _load_all()
    return REFERENCE_OPS.get(op)


def supported_ops() -> dict[str, OpDef]:
    _load_all()
    return dict(REFERENCE_OPS)


def _load_all() -> None:
    # Importing the family modules fills the table; the import is idempotent.
    from kiln.kernels.reference import ops  # noqa: F401
