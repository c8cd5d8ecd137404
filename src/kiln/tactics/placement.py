"""Where each tensor lives: shape arithmetic on the host, everything else on the device.

Design note. Exported models compute shapes at run time (Shape -> Gather -> Concat ->
Reshape). Done on the GPU, every Reshape would read its shape back to the host and stall
the stream. Instead, on CUDA, Shape and Size produce host tensors, the small integer ops
that consume only host values run on the host too, and ops that take a shape parameter
(Reshape's shape, Slice's starts...) read it from the host. A host value that a device op
uses as data (e.g. position ids from Range) is copied to the device at that step. Because
host values depend only on input shapes, a CUDA graph captured for one set of shapes
stays valid: the copies are made before capture and reused.
"""
from __future__ import annotations

# Ops that may run on the host when all their inputs are host values or constants.
HOST_OPS = frozenset({
    "Shape", "Size", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Add", "Sub", "Mul",
    "Div", "Mod", "Neg", "Abs", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
    "Or", "Where", "Max", "Min", "Reshape", "Identity", "Range", "ConstantOfShape", "Expand", "ReduceProd",
    "ReduceSum", "ReduceMax", "ReduceMin", "Floor", "Ceil", "Sqrt",
})

# Input positions that are shape/axis parameters, read on the host by the reference ops.
HOST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,),
    "ConstantOfShape": (0,), "Pad": (1, 3), "Split": (1,), "TopK": (1,), "OneHot": (1,), "Resize": (1, 2, 3),
    "Upsample": (1,), "CumSum": (1,), "CumProd": (1,), "Range": (0, 1, 2), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}

# Host values stay small: a host op whose constant inputs are bigger than this runs on the device.
MAX_HOST_CONST_ELEMENTS = 4096
