"""Which nodes kiln can run: one source of truth for `kiln check`, the builder and the docs."""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Graph
from kiln.kernels.reference import supported_ops


# ai.onnx ops the importer itself consumes (they never reach the kernel table).
IMPORTED_OPS = {"Constant": "becomes a constant value at import", "Upsample": "rewritten to Resize at import"}


def supported_op_names() -> set[str]:
    """Qualified names of every op a model may contain: the kernel table plus IMPORTED_OPS."""
    return set(supported_ops()) | set(IMPORTED_OPS)


def unsupported_standard_ops() -> list[str]:
    """ai.onnx ops of the installed onnx's newest opset that kiln cannot run."""
    import onnx
    names = {s.name for s in onnx.defs.get_all_schemas_with_history()
             if s.domain in ("", "ai.onnx") and not s.deprecated}
    return sorted(names - supported_op_names())


@dataclass(frozen=True, slots=True)
class Unsupported:
    node: str
    op: str
    opset: int
    reason: str


def unsupported_nodes(graph: Graph) -> list[Unsupported]:
    """Every node of `graph` (subgraphs included) that kiln has no implementation for."""
    table = supported_ops()
    found: list[Unsupported] = []

    def walk(g: Graph) -> None:
        for n in g.nodes:
            key = n.qualified_op
            if key not in table:
                why = ("custom domain " + repr(n.domain) + " is not supported") if n.domain and n.domain != "kiln" \
                    else "no kiln implementation"
                found.append(Unsupported(n.name, key, g.opset, why))
            elif table[key].since > g.opset:
                found.append(Unsupported(n.name, key, g.opset, f"implemented from opset {table[key].since}"))
            for a in n.attrs.values():
                for sub in (a if isinstance(a, list) else [a]):
                    if isinstance(sub, Graph):
                        walk(sub)

    walk(graph)
    return found


def describe_unsupported(items: list[Unsupported]) -> str:
    ops = sorted({u.op for u in items})
    lines = [f"  - node {u.node!r}: {u.op} (opset {u.opset}): {u.reason}" for u in items[:20]]
    more = f"\n  ... and {len(items) - 20} more" if len(items) > 20 else ""
    return (f"the model contains {len(items)} node(s) with operators kiln cannot run ({', '.join(ops)}):\n"
            + "\n".join(lines) + more +
            f"\nkiln supports {len(supported_ops())} operators (`kiln ops` lists them). Replace these ops in the "
            "exporter (e.g. a different opset or a decomposed form) or file an issue naming them.")
