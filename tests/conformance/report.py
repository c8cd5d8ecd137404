"""The README's conformance section, computed from the suite's data and exclusions.txt.

    python tests/conformance/report.py           # print the section
    python tests/conformance/report.py --write   # rewrite it in README.md

Counts assume what CI enforces: every test not listed in exclusions.txt passes (the suite
fails otherwise, and fails too when a listed test starts passing). The op a test checks is
the last node of its model (for an `_expanded` test, of the test it expands).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "src"))

from conformance import suite  # noqa: E402
from kiln.onnx.support import unsupported_standard_ops  # noqa: E402

README = HERE.parents[1] / "README.md"
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"


def op_of(case: suite.Case, by_name: dict[str, suite.Case]) -> str:
    base = by_name.get(case.name.removesuffix("_expanded"), case)
    node = onnx.load(str(base.path / "model.onnx"), load_external_data=False).graph.node[-1]
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def section(device: str = "cpu") -> str:
    cases = suite.cases()
    by_name = {c.name: c for c in cases}
    excluded = suite.exclusions()
    ops: dict[str, list[bool]] = defaultdict(list)
    for c in cases:
        ops[op_of(c, by_name)].append(f"{c.name}_{device}" not in excluded)
    passed = sum(ok for results in ops.values() for ok in results)
    full = sorted(op for op, results in ops.items() if all(results))
    partial = sorted(op for op, results in ops.items() if any(results) and not all(results))
    none = sorted(op for op, results in ops.items() if not any(results))
    missing = unsupported_standard_ops()
    lines = [
        BEGIN,
        f"ONNX backend node tests (onnx {suite.ONNX_VERSION} data, `pytest tests/conformance`), {device.upper()}: "
        f"**{passed} of {len(cases)} pass**; **{len(full)} of {len(ops)} op types pass all their tests**.",
        "",
        f"- Op types with some tests excluded ({len(partial)}): {', '.join(partial) or 'none'}.",
        f"- Op types with every test excluded ({len(none)}): {', '.join(none) or 'none'}.",
        f"- ai.onnx ops kiln does not implement ({len(missing)}, from `kiln ops --missing`): "
        f"{', '.join(missing) or 'none'}.",
        "",
        "Every excluded test and its reason: `tests/conformance/exclusions.txt`. "
        "Regenerate this section with `python tests/conformance/report.py --write`.",
        END,
    ]
    return "\n".join(lines)


def write(readme: Path = README) -> None:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + section() + text[end:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    print(section())
