"""Bring older-opset node forms to the newest opset's signature.

The reference ops (and every tactic) implement one signature per op: the newest. Where
an attribute became an input in a later opset, the attribute is turned into a constant
input here; attributes that later opsets dropped are removed. Each rule is a plain
function in RULES, keyed by op type, and says in its docstring which opsets it covers.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from kiln.errors import ModelLoadError
from kiln.ir.graph import Graph, Node, Value

Rule = Callable[[Graph, Node, int], None]
RULES: dict[str, list[Rule]] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES.setdefault(op, []).append(fn)
        return fn
    return register


def normalize_node(graph: Graph, node: Node, opset: int) -> None:
    if node.domain:
        return
    if opset < 7:
        # Opset-1 ops carried an optimisation hint that no later opset has.
        node.attrs.pop("consumed_inputs", None)
    # A rule may rename the op (Upsample -> Resize); the new op's rules then run too.
    done: set[str] = set()
    while node.op not in done:
        done.add(node.op)
        for fn in RULES.get(node.op, []):
            fn(graph, node, opset)


def _attr_to_input(graph: Graph, node: Node, attr: str, index: int, dtype: Any = np.int64) -> None:
    """Move attribute `attr` to input position `index` as a constant (padding with None)."""
    if attr not in node.attrs:
        return
    value = np.asarray(node.attrs.pop(attr), dtype=dtype)
    inputs = list(node.inputs)
    while len(inputs) < index:
        inputs.append(None)
    const = graph.constant(value, f"{node.name}_{attr}")
    if len(inputs) == index:
        inputs.append(const)
    else:
        inputs[index] = const
    node.set_inputs(inputs)


# op -> the opset in which its `axes` attribute became input 1.
_AXES_BECAME_INPUT = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13, **{op: 18 for op in (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare")}}


@rule(*_AXES_BECAME_INPUT)
def _axes_input(graph: Graph, node: Node, opset: int) -> None:
    """Squeeze/Unsqueeze/ReduceSum < 13, other Reduce* < 18: axes attribute -> input 1."""
    if opset < _AXES_BECAME_INPUT[node.op]:
        _attr_to_input(graph, node, "axes", 1)


@rule("Split")
def _split(graph: Graph, node: Node, opset: int) -> None:
    """Split < 13: split attribute -> input 1; < 18: number of outputs made explicit."""
    if opset < 13:
        _attr_to_input(graph, node, "split", 1)
    if node.input(1) is None and "num_outputs" not in node.attrs:
        node.attrs["num_outputs"] = len(node.outputs)


@rule("Slice")
def _slice(graph: Graph, node: Node, opset: int) -> None:
    """Slice < 10: starts/ends/axes attributes -> inputs 1..3."""
    if opset < 10:
        for i, name in enumerate(("starts", "ends", "axes"), start=1):
            _attr_to_input(graph, node, name, i)


@rule("Pad")
def _pad(graph: Graph, node: Node, opset: int) -> None:
    """Pad < 11: pads/value attributes -> inputs 1 and 2."""
    if opset < 11:
        _attr_to_input(graph, node, "pads", 1)
        _attr_to_input(graph, node, "value", 2, dtype=_float_dtype(node.input(0)))


@rule("Clip")
def _clip(graph: Graph, node: Node, opset: int) -> None:
    """Clip < 11: min/max attributes -> inputs 1 and 2."""
    if opset < 11:
        _attr_to_input(graph, node, "min", 1, dtype=_float_dtype(node.input(0)))
        _attr_to_input(graph, node, "max", 2, dtype=_float_dtype(node.input(0)))


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(graph: Graph, node: Node, opset: int) -> None:
    """Softmax family < 13: 2-D coercion at `axis` (default 1)."""
    if opset < 13:
        node.attrs.setdefault("axis", 1)
        node.attrs["coerce_2d"] = 1


_DROPPED = {"consumed_inputs", "is_test", "spatial"}


@rule("BatchNormalization", "Dropout", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh",
      "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Clip", "Elu",
      "LeakyRelu", "Selu", "PRelu", "HardSigmoid")
def _legacy_attrs(graph: Graph, node: Node, opset: int) -> None:
    """Old opsets: drop attributes later removed (consumed_inputs, is_test, spatial)."""
    for name in _DROPPED:
        node.attrs.pop(name, None)


def _float_dtype(v: Value | None) -> Any:
    if v is not None and v.dtype is not None and v.dtype.is_float and v.dtype.torch_name in ("float16", "float64"):
        return np.dtype(v.dtype.torch_name)
    return np.float32


# ------------------------------------------------------------------ opsets 1-10


_LEGACY_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less")


@rule(*_LEGACY_BROADCAST)
def _legacy_broadcast(graph: Graph, node: Node, opset: int) -> None:
    """Binary ops < 7: `broadcast`/`axis` attributes -> numpy broadcasting.

    With broadcast=1, B's dims matched A's starting at `axis` (default: its trailing
    dims, which numpy broadcasting does too); an Unsqueeze appends the trailing 1s.
    """
    broadcast = node.attrs.pop("broadcast", 0)
    axis = node.attrs.pop("axis", None)
    if opset >= 7 or not broadcast or axis is None:
        return
    a, b = node.input(0), node.input(1)
    if a is None or b is None or a.shape is None or b.shape is None:
        raise ModelLoadError(f"node {node.name!r} ({node.op}, opset {opset}) broadcasts at axis {axis}, "
                             "but the ranks of its inputs are unknown; give the model input shapes or "
                             "convert it with onnx.version_converter.convert_version(model, 17).")
    rank_a, rank_b = len(a.shape), len(b.shape)
    axis = axis + rank_a if axis < 0 else axis
    trailing = rank_a - axis - rank_b
    if trailing <= 0:
        return
    axes = graph.constant(np.arange(rank_b, rank_b + trailing, dtype=np.int64), f"{node.name}_axes")
    unsq = graph.make_node("Unsqueeze", [b, axes], before=node, name=f"{node.name}_broadcast")
    out = unsq.outputs[0]
    out.dtype, out.shape = b.dtype, (*b.shape, *([1] * trailing))
    node.set_input(1, out)


@rule("Gemm")
def _gemm(graph: Graph, node: Node, opset: int) -> None:
    """Gemm < 7: drop `broadcast` (C broadcasts unidirectionally from opset 7 on)."""
    node.attrs.pop("broadcast", None)


@rule("Concat")
def _concat(graph: Graph, node: Node, opset: int) -> None:
    """Concat < 4: `axis` was optional, default 1."""
    if opset < 4:
        node.attrs.setdefault("axis", 1)


@rule("Reshape")
def _reshape(graph: Graph, node: Node, opset: int) -> None:
    """Reshape < 5: shape attribute -> input 1."""
    if opset < 5:
        _attr_to_input(graph, node, "shape", 1)


@rule("Cast")
def _cast(graph: Graph, node: Node, opset: int) -> None:
    """Cast < 6: `to` named the type as a string ("FLOAT") rather than the enum."""
    to = node.attrs.get("to")
    if isinstance(to, str):
        node.attrs["to"] = onnx.TensorProto.DataType.Value(to.upper())


@rule("TopK")
def _topk(graph: Graph, node: Node, opset: int) -> None:
    """TopK < 10: k attribute -> input 1 (a 1-D int64 tensor)."""
    if opset < 10 and "k" in node.attrs:
        node.attrs["k"] = [node.attrs["k"]]
        _attr_to_input(graph, node, "k", 1)


@rule("Tile")
def _tile(graph: Graph, node: Node, opset: int) -> None:
    """Tile < 6: inputs (input, tiles, axis) of scalars -> the repeats vector."""
    if opset >= 6 or len(node.inputs) < 3:
        return
    x, tiles, axis = node.inputs[:3]
    if x is None or x.shape is None or not (tiles is not None and tiles.is_const and axis is not None
                                            and axis.is_const):
        raise ModelLoadError(f"node {node.name!r} (Tile, opset {opset}) needs constant tiles and axis and a "
                             "known input rank; convert it with onnx.version_converter.convert_version(model, 17).")
    rank = len(x.shape)
    ax = int(np.asarray(axis.const).reshape(-1)[0])
    repeats = np.ones(rank, dtype=np.int64)
    repeats[ax + rank if ax < 0 else ax] = int(np.asarray(tiles.const).reshape(-1)[0])
    node.set_inputs([x, graph.constant(repeats, f"{node.name}_repeats")])


@rule("Dropout")
def _dropout(graph: Graph, node: Node, opset: int) -> None:
    """Dropout < 12: the `ratio` attribute (no effect at inference) is dropped."""
    if opset < 12:
        node.attrs.pop("ratio", None)


@rule("RNN", "GRU", "LSTM")
def _rnn_output_sequence(graph: Graph, node: Node, opset: int) -> None:
    """RNN/GRU/LSTM < 7: drop `output_sequence` (Y is simply an optional output later)."""
    node.attrs.pop("output_sequence", None)


@rule("Upsample")
def _upsample(graph: Graph, node: Node, opset: int) -> None:
    """Upsample (deprecated, opsets 1-9) -> Resize with asymmetric coordinates, floor rounding.

    Opset 1 gave height_scale/width_scale, 7-8 a `scales` attribute, 9 a `scales` input.
    """
    x = node.input(0)
    if "scales" in node.attrs:
        scales = np.asarray(node.attrs.pop("scales"), dtype=np.float32)
    elif "height_scale" in node.attrs or "width_scale" in node.attrs:
        scales = np.array([1.0, 1.0, node.attrs.pop("height_scale", 1.0), node.attrs.pop("width_scale", 1.0)],
                          dtype=np.float32)
    else:
        scales = None
    scales_value = graph.constant(scales, f"{node.name}_scales") if scales is not None else node.input(1)
    mode = node.attrs.get("mode", "nearest")
    node.attrs["mode"] = "linear" if mode in ("linear", "bilinear") else mode
    node.op = "Resize"
    node.set_inputs([x, None, scales_value])
    node.attrs["coordinate_transformation_mode"] = "asymmetric"
    node.attrs["nearest_mode"] = "floor"


@rule("Resize")
def _resize(graph: Graph, node: Node, opset: int) -> None:
    """Resize 10: inputs (X, scales) -> (X, roi=None, scales); asymmetric coordinates, floor rounding."""
    if opset >= 11 or len(node.inputs) != 2:  # 3 inputs: already converted (from Upsample)
        return
    node.set_inputs([node.input(0), None, node.input(1)])
    node.attrs["coordinate_transformation_mode"] = "asymmetric"
    node.attrs["nearest_mode"] = "floor"


@rule("RoiAlign")
def _roi_align(graph: Graph, node: Node, opset: int) -> None:
    """RoiAlign < 16: no coordinate_transformation_mode; it behaved as output_half_pixel."""
    if opset < 16:
        node.attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")


@rule("GridSample")
def _grid_sample(graph: Graph, node: Node, opset: int) -> None:
    """GridSample < 20: modes were named bilinear and bicubic."""
    if opset < 20:
        mode = node.attrs.get("mode", "bilinear")
        node.attrs["mode"] = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)


@rule("QuantizeLinear")
def _quantize_output_dtype(graph: Graph, node: Node, opset: int) -> None:
    """QuantizeLinear (all opsets): record the output type in `output_dtype`; int4/int2/float4
    are held widened, so the kernel cannot tell them from int8/uint8/float32 by torch dtype."""
    if node.attrs.get("output_dtype"):
        return
    for v in (node.outputs[0] if node.outputs else None, node.input(2)):
        if v is not None and v.dtype is not None:
            node.attrs["output_dtype"] = v.dtype.onnx
            return


@rule("DFT")
def _dft_axis(graph: Graph, node: Node, opset: int) -> None:
    """DFT < 20: the `axis` attribute (default 1 there, -2 since) becomes input 2."""
    if opset < 20:
        node.attrs.setdefault("axis", 1)
        _attr_to_input(graph, node, "axis", 2)


@rule("Scan")
def _scan_batched(graph: Graph, node: Node, opset: int) -> None:
    """Scan 8: a leading sequence_lens input and a batch axis on every state and scan input;
    kiln's Scan runs that form when `batched=1` (each batch row scanned on its own)."""
    if opset < 9:
        node.attrs["batched"] = 1


@rule("CastLike")
def _castlike_to_cast(graph: Graph, node: Node, opset: int) -> None:
    """CastLike(x, like) with like's element type known -> Cast(x, to=type): int4, float4 ... are
    held in wider torch types, so the kernel could not tell the target from `like` alone."""
    like = node.input(1)
    if like is None or like.dtype is None:
        return
    node.op = "Cast"
    node.attrs["to"] = like.dtype.onnx
    node.set_inputs([node.input(0)])
