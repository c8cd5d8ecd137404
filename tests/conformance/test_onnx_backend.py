"""The official ONNX backend node tests (onnx 1.22.0 data), run by ONNX's own runner against
kiln.onnx.backend. Tests listed in exclusions.txt are expected failures (strict: one that
starts passing fails the run until its line is removed)."""
from __future__ import annotations

import onnx.backend.test.runner as onnx_runner
from onnx.backend.test.case.test_case import TestCase

from kiln.onnx.backend import KilnBackend
from conformance import suite


class NodeTestRunner(onnx_runner.Runner):
    """ONNX's Runner over the on-disk node tests (onnx >= 1.23 generates them instead)."""

    def __init__(self, backend, parent_module=None):  # noqa: ANN001
        self.backend = backend
        self._parent_module = parent_module
        self._include_patterns = set()
        self._exclude_patterns = set()
        self._xfail_patterns = set()
        self._test_kwargs = {}
        self._test_items = onnx_runner.defaultdict(dict)
        for case in suite.cases():
            self._add_model_test(TestCase(name=case.name, url=None, model_name=case.name[len("test_"):],
                                          model_dir=str(case.path), model=None, data_sets=None, kind="node",
                                          rtol=case.rtol, atol=case.atol), "Node")


runner = NodeTestRunner(KilnBackend, __name__)
for key in suite.exclusions():
    runner.xfail(f"^{key}$")
globals().update(runner.test_cases)
