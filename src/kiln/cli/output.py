"""Shared output helpers: rich tables for people, JSON for machines.

Reports go to stdout; progress, status lines and errors go to stderr, so that
`kiln ... --json | jq` always sees JSON and nothing else.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence

import click
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


PIPE_WIDTH = 160  # reports piped to a file or a log are not squeezed into 80 columns


def stdout() -> Console:
    # Made per call, not at import: click's CliRunner swaps sys.stdout per invocation.
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


# A JSON array holding no arrays or objects, e.g. a shape; matched across its indented lines.
_FLAT_ARRAY = re.compile(r"\[[^\[\]{}]*\]")


def emit_json(data: Any) -> None:
    """The whole JSON report, as one document on stdout; shapes and value lists stay on one line."""
    text = json.dumps(data, indent=2, default=_jsonable)
    # Strings in JSON cannot hold a raw newline, so only the indentation is rejoined.
    text = _FLAT_ARRAY.sub(lambda m: re.sub(r"\n\s*", "", re.sub(r",\n\s*", ", ", m.group(0))), text)
    click.echo(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def cell(value: Any) -> Text:
    # Text, not str: a shape like "[batch, 3]" would otherwise be parsed as rich markup.
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          right: Sequence[str] = ()) -> RenderableType:
    # The title goes above as its own line: a table title is wrapped to the table's width.
    t = Table(show_lines=False)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t if title is None else Group(Text(title, style="bold"), t)


def key_values(title: str | None, pairs: Iterable[tuple[str, Any]]) -> RenderableType:
    """A two-column table without a header: the summary block of a report."""
    t = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(cell(k), cell(v))
    return t if title is None else Group(Text(title, style="bold"), t)


def fmt_shape(dims: Sequence[Any] | None) -> str:
    if dims is None:
        return "?"
    return "[" + ", ".join(str(d) for d in dims) + "]"


def fmt_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def fmt_float(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.6g}"
