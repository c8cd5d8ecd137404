"""`kiln`: the click group, and the one place a KilnError becomes "error: ..." and exit 1.

Command modules import torch, onnx and the compiler inside their functions, so that
`kiln --help` and `kiln ops` start fast. Errors kiln raises on purpose (KilnError) are
printed without a traceback; anything else escaping is a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Any

import click

from kiln import __version__
from kiln.cli.bench import bench
from kiln.cli.build import build
from kiln.cli.calibrate import calibrate
from kiln.cli.check import check
from kiln.cli.compare import compare
from kiln.cli.demo import demo
from kiln.cli.inspect import inspect
from kiln.cli.ops import ops
from kiln.cli.rebuild import rebuild
from kiln.cli.run import run
from kiln.errors import KilnError


def format_error(exc: KilnError) -> str:
    """The message as one paragraph: no blank lines, no trailing spaces, "error: " first."""
    lines = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()]
    return "error: " + "\n".join(lines or [type(exc).__name__])


class KilnGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KilnError as exc:
            click.echo(format_error(exc), err=True)
            ctx.exit(1)


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="kiln")
def main() -> None:
    """kiln: compile ONNX models into engines for this machine's GPU (or CPU), and run them.

    \b
    Typical use:
      kiln check model.onnx                       can kiln run every op?
      kiln build model.onnx -o model.kiln --fp16  compile an engine
      kiln run model.kiln                         run once on random inputs
      kiln bench model.kiln                       throughput and latency
      kiln inspect model.kiln                     layers, bindings, memory
      kiln demo                                   the default model, end to end
    """


for _command in (build, run, bench, inspect, check, rebuild, ops, demo, compare, calibrate):
    main.add_command(_command)


if __name__ == "__main__":
    main()
