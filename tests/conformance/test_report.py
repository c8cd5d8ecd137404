"""The README's conformance section is the one report.py computes (regenerate it with
`python tests/conformance/report.py --write` after changing exclusions.txt)."""
from __future__ import annotations

from conformance import report, suite


def test_readme_section_is_current() -> None:
    text = report.README.read_text()
    start, end = text.index(report.BEGIN), text.index(report.END) + len(report.END)
    assert text[start:end] == report.section(), "README.md's conformance section is stale: run " \
        "`python tests/conformance/report.py --write`"


def test_exclusions_name_real_tests() -> None:
    names = {c.name for c in suite.cases()}
    unknown = sorted({e.test for e in suite.exclusions().values()} - names)
    assert not unknown, f"exclusions.txt lists tests the suite does not have: {unknown}"
