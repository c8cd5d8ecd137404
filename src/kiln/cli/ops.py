"""`kiln ops`: the operators kiln can run (the reference kernel table)."""
from __future__ import annotations

import click

from kiln.cli import output


@click.command("ops")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON on stdout.")
@click.option("--missing", is_flag=True, help="List the standard ONNX ops kiln cannot run instead.")
def ops(as_json: bool, missing: bool) -> None:
    """List the supported operators: name, lowest opset, and a one-line description.

    Ops in the default ONNX domain are listed by name (Conv); kiln's own fused ops by
    qualified name (kiln::FusedConv). `kiln check MODEL.onnx` tells whether a model's
    ops are all among them.
    """
    from kiln.kernels.reference import supported_ops
    from kiln.onnx.support import unsupported_standard_ops

    if missing:
        names = unsupported_standard_ops()
        if as_json:
            output.emit_json({"count": len(names), "missing": names})
        else:
            output.stdout().print(f"{len(names)} standard ONNX ops kiln cannot run: {', '.join(names) or 'none'}")
        return
    rows = [{"op": d.op, "since": d.since, "doc": d.doc}
            for d in sorted(supported_ops().values(), key=lambda d: (d.op.startswith("kiln::"), d.op))]
    if as_json:
        output.emit_json({"count": len(rows), "ops": rows})
        return
    out = output.stdout()
    out.print(output.table(f"{len(rows)} supported operators", ["op", "since opset", "description"],
                           ([r["op"], r["since"], r["doc"]] for r in rows), right=["since opset"]))
