"""`kiln check`: can kiln run this model? Every node, by op type, supported or not.

kiln.onnx.support.unsupported_nodes is the single source of truth; this command only
presents its answer next to the model's op counts.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import click
from rich.text import Text

from kiln.cli import output

if TYPE_CHECKING:
    from kiln.ir.graph import Graph, Node


def walk(graph: Graph) -> Iterator[Node]:
    """Every node, subgraph bodies (If/Loop/Scan) included."""
    from kiln.ir.graph import Graph as G

    for n in graph.nodes:
        yield n
        for a in n.attrs.values():
            for sub in (a if isinstance(a, list) else [a]):
                if isinstance(sub, G):
                    yield from walk(sub)


def check_report(path: Path) -> tuple[dict[str, Any], list[Any]]:
    from kiln.onnx.importer import import_model, load_model
    from kiln.onnx.load import default_opset
    from kiln.onnx.support import unsupported_nodes
    from kiln.precision.erasing_scales import erasing_message, erasing_quantizers, nodes_to_exclude

    proto = load_model(path)
    graph = import_model(proto)
    bad = unsupported_nodes(graph)
    erasing = erasing_quantizers(graph)
    bad_keys = {(u.node, u.op) for u in bad}
    bad_ops = {u.op for u in bad}
    nodes = [{"name": n.name, "op": n.qualified_op, "supported": (n.name, n.qualified_op) not in bad_keys}
             for n in walk(graph)]
    counts = Counter(n["op"] for n in nodes)
    report = {
        "model": str(path),
        "opset": default_opset(proto),
        "supported": not bad,
        "node_count": len(nodes),
        "op_counts": [{"op": op, "count": c, "supported": op not in bad_ops} for op, c in sorted(counts.items())],
        "unsupported": [{"node": u.node, "op": u.op, "opset": u.opset, "reason": u.reason} for u in bad],
        # the model's own QuantizeLinears that erase a tensor (precision/erasing_scales.py), as kiln build warns
        "erasing_quantizers": [{"node": n.name, "scale": scale} for n, scale in erasing],
        "nodes_to_exclude": nodes_to_exclude(erasing),
        "warnings": [erasing_message(erasing)] if erasing else [],
        "nodes": nodes,
    }
    return report, bad


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--nodes", "show_nodes", is_flag=True, help="List every node, not only the op types.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def check(model: Path, show_nodes: bool, as_json: bool) -> None:
    """Check that kiln can run every node of MODEL (an .onnx file).

    Loads and validates the model, imports it (with shape inference) and lists its
    op types with their counts, each marked supported or not, and warns where the model's own
    quantization erases a tensor (as kiln build does). Exits 0 when every node is
    supported, 1 otherwise (naming the unsupported nodes).
    """
    from kiln.errors import UnsupportedOpError
    from kiln.onnx.support import describe_unsupported

    report, bad = check_report(model)
    if as_json:
        output.emit_json(report)
    else:
        _print(report, show_nodes)
    if bad:
        raise UnsupportedOpError(describe_unsupported(bad))


def _mark(ok: bool) -> Text:
    return Text("✓", style="green") if ok else Text("✗", style="bold red")


def _print(r: dict[str, Any], show_nodes: bool) -> None:
    out = output.stdout()
    out.print(output.table(f"{r['model']}: {r['node_count']} nodes, ai.onnx opset {r['opset']}",
                           ["op", "nodes", "supported"],
                           ([o["op"], o["count"], _mark(o["supported"])] for o in r["op_counts"]), right=["nodes"]))
    if show_nodes:
        out.print(output.table("nodes", ["node", "op", "supported"],
                               ([n["name"], n["op"], _mark(n["supported"])] for n in r["nodes"])))
    if r["supported"]:
        out.print(f"all {r['node_count']} nodes are supported; build with `kiln build {r['model']} -o ENGINE.kiln`",
                  markup=False)
    for w in r["warnings"]:
        output.stderr().print(f"warning: {w}", markup=False)
