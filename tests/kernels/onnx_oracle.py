"""Check kiln's reference ops against onnx.reference.ReferenceEvaluator, one node at a time.

A `Case` is one op with its inputs and attributes; `check_case` builds a one-node ONNX
model from it, runs both implementations and compares every output (values and dtype).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kiln.kernels.reference.registry import lookup

# (rtol, atol) per output dtype; float32 as the brief asks, half types looser.
TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float16): (1e-3, 1e-3),
}


@dataclass(frozen=True)
class Case:
    op: str
    inputs: tuple[np.ndarray | None, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    opset: int = 21
    tol: tuple[float, float] | None = None
    name: str = ""
    # "onnx" (ReferenceEvaluator) or "ort" (onnxruntime), for the few ops where the
    # onnx reference is wrong or missing; each such case says why in a comment.
    oracle: str = "onnx"

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


class Rand:
    """Seeded random arrays, so a module's cases are the same on every run."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def f(self, *shape: int, lo: float = -3.0, hi: float = 3.0, dtype: Any = np.float32) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=shape).astype(dtype)

    def i(self, *shape: int, lo: int = -10, hi: int = 10, dtype: Any = np.int32) -> np.ndarray:
        return self.rng.integers(lo, hi, size=shape).astype(dtype)

    def b(self, *shape: int) -> np.ndarray:
        return self.rng.random(shape) < 0.5


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _onnx_attr(value: Any) -> Any:
    return numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value


def build_model(case: Case) -> onnx.ModelProto:
    inputs = list(case.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    names = ["" if a is None else f"in{k}" for k, a in enumerate(inputs)]
    outs = [f"out{k}" for k in range(case.outputs)]
    node = helper.make_node(case.op, names, outs, **{k: _onnx_attr(v) for k, v in case.attrs.items()})
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs) if a is not None],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def expected_outputs(case: Case) -> list[np.ndarray]:
    model = build_model(case)
    feeds = {f"in{k}": a for k, a in enumerate(case.inputs) if a is not None}
    if case.oracle == "ort":
        import onnxruntime as ort

        # onnxruntime needs typed graph outputs: let shape inference fill them in.
        for out in model.graph.output:
            out.type.Clear()
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.ir_version = min(model.ir_version, 10)  # older onnxruntimes reject newer IR versions
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return [np.asarray(v) for v in session.run(None, feeds)]
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def run_kiln(case: Case, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    op = lookup(case.op)
    assert op is not None, f"no reference op for {case.op}"
    inputs = list(case.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    tensors = [None if a is None else torch.from_numpy(np.array(a)).to(device) for a in inputs]
    result = op.fn(*tensors, **case.attrs)
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        t = t.to(torch.float32)
    return t.numpy()


def _comparable(a: np.ndarray) -> np.ndarray:
    # onnx represents float8 with ml_dtypes types; compare those as float32.
    return a.astype(np.float32) if a.dtype.kind == "V" or "float8" in str(a.dtype) else a


def check_case(case: Case, device: str = "cpu") -> None:
    expected = expected_outputs(case)
    got = run_kiln(case, device)
    assert len(got) >= case.outputs, f"{case.id}: {len(got)} outputs, expected {case.outputs}"
    for k, (g, e) in enumerate(zip(got, expected)):
        g_np, e_np = _comparable(to_numpy(g)), _comparable(e)
        assert g_np.dtype == e_np.dtype, f"{case.id} output {k}: dtype {g_np.dtype} != {e_np.dtype}"
        assert g_np.shape == e_np.shape, f"{case.id} output {k}: shape {g_np.shape} != {e_np.shape}"
        if g_np.dtype.kind in "fc":
            rtol, atol = case.tol or TOLERANCES[g_np.dtype]
            np.testing.assert_allclose(g_np, e_np, rtol=rtol, atol=atol, err_msg=f"{case.id} output {k}")
        else:
            np.testing.assert_array_equal(g_np, e_np, err_msg=f"{case.id} output {k}")
