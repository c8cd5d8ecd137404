"""A stable text form of a Graph, for --dump-ir and for tests."""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Value
from kiln.ir.shapes import format_shape


def _type(v: Value) -> str:
    return f"{v.dtype or '?'}{format_shape(v.shape)}"


def _attr(value: object) -> str:
    if isinstance(value, Graph):
        return f"<graph {value.name}: {len(value.nodes)} nodes>"
    if isinstance(value, np.ndarray):
        if value.size <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor<{value.dtype}{list(value.shape)}>"
    if isinstance(value, float):
        return repr(round(value, 6))
    return repr(value)


def print_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name} (opset {graph.opset}) {{"]
    for v in graph.inputs:
        lines.append(f"  input  %{v.name}: {_type(v)}")
    consts = sorted({v.name: v for n in graph.nodes for v in n.inputs if v is not None and v.is_const}.items())
    for name, v in consts:
        lines.append(f"  const  %{name}: {_type(v)}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o.name}: {_type(o)}" for o in n.outputs)
        ins = ", ".join(f"%{v.name}" if v is not None else "_" for v in n.inputs)
        attrs = ", ".join(f"{k}={_attr(a)}" for k, a in sorted(n.attrs.items()))
        attrs = f" {{{attrs}}}" if attrs else ""
        lines.append(f"  {outs} = {n.qualified_op}({ins}){attrs}")
    lines.append("  return " + ", ".join(f"%{o.name}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
