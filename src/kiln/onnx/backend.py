"""kiln as an ONNX backend (`onnx.backend.base.Backend`), so that ONNX's own test runner
(`onnx.backend.test.BackendTest`) and any code written against that interface run on kiln.

Every prepare() goes through the normal build pipeline (import, passes, precision, tactics,
plan) and returns a handle around the resulting Engine. A model whose inputs are all static
is built at once; one with dynamic dims is built on first run for the shapes it is given
(one static profile per input-shape signature, kept for reuse), as TensorRT's ONNX backend does.
Builds are not auto-tuned unless `prepare(..., tune=True)`: each node then runs the first tactic
that supports it (kiln's own kernels before the reference ones), which is what the conformance
suite should check, without timing ~1,800 tiny engines.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx.backend.base import Backend, BackendRep

from kiln.config import BuildConfig, Profile
from kiln.errors import KilnError
from kiln.runtime.arrays import VIEWED_TORCH, array_to_tensor

_DEVICES = {"CPU": "cpu", "CUDA": "cuda"}


def _device(device: str) -> str:
    kind = str(device).split(":")[0].upper()
    if kind not in _DEVICES:
        raise KilnError(f"device {device!r} is not one kiln can run on; use 'CPU' or 'CUDA'.")
    return _DEVICES[kind]


class KilnBackendRep(BackendRep):
    """A prepared model: run(inputs) -> tuple of numpy arrays, in the graph's output order."""

    def __init__(self, model: onnx.ModelProto, device: str, precision: str = "fp32", tune: bool = False) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.tune = tune
        inits = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.tensor_inputs = {i.name for i in model.graph.input if i.type.HasField("tensor_type")}
        self.output_types = [o.type for o in model.graph.output]
        self._engines: dict[tuple, Any] = {}
        if all(_static_dims(i) is not None for i in model.graph.input
               if i.name not in inits and i.type.HasField("tensor_type")):
            self._engines[None] = self._build(())

    def _build(self, profiles: tuple[Profile, ...]) -> Any:
        from kiln.compiler.builder import build
        return build(self.model, BuildConfig(precision=self.precision, device=self.device, profiles=profiles,
                                             tune=self.tune))

    def engine_for(self, feeds: dict[str, Any]) -> Any:
        if None in self._engines:
            return self._engines[None]
        key = tuple((n, tuple(np.shape(v))) for n, v in feeds.items() if n in self.tensor_inputs)
        if key not in self._engines:
            self._engines[key] = self._build((Profile.static(dict(key)),) if key else ())
        return self._engines[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        feeds = self._feeds(inputs)
        engine = self.engine_for(feeds)
        tensors = {n: array_to_tensor(v) for n, v in feeds.items()}
        with torch.inference_mode():
            outs = engine.run_tensors(tensors)
        return tuple(_to_numpy(outs[o.name], t) for o, t in zip(self.model.graph.output, self.output_types))

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, dict):
            return {n: inputs[n] for n in self.input_names if n in inputs}
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) > len(self.input_names):
            raise KilnError(f"the model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}) "
                            f"but {len(inputs)} were given.")
        return dict(zip(self.input_names, inputs))


def _static_dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]


def _to_numpy(value: Any, onnx_type: onnx.TypeProto | None = None) -> Any:
    """A torch tensor (or list, or None) as numpy, in the element type `onnx_type` declares."""
    if value is None:
        return None
    which = onnx_type.WhichOneof("value") if onnx_type is not None else None
    if which == "optional_type":
        return _to_numpy(value, onnx_type.optional_type.elem_type)
    if isinstance(value, (list, tuple)):
        elem = onnx_type.sequence_type.elem_type if which == "sequence_type" else None
        return [_to_numpy(v, elem) for v in value]
    t = value.detach().cpu()
    target = None
    if which == "tensor_type" and onnx_type.tensor_type.elem_type:
        target = onnx.helper.tensor_dtype_to_np_dtype(onnx_type.tensor_type.elem_type)
    if t.dtype in VIEWED_TORCH:
        raw = t.contiguous().view(torch.uint16 if t.dtype == torch.bfloat16 else torch.uint8).numpy()
        if target is not None and target.kind in "Vf" and target.itemsize == raw.itemsize:
            return raw.view(target)
        return t.float().numpy()
    arr = t.numpy()
    if target is not None and arr.dtype != target:
        return arr.astype(target)
    return arr


class KilnBackend(Backend):
    """`prepare(model, "CPU" | "CUDA")` builds an engine; `run_model`/`run_node` run one."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnBackendRep:
        return KilnBackendRep(model, _device(device), kwargs.get("precision", "fp32"), bool(kwargs.get("tune", False)))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node on `inputs` (numpy arrays in the node's input order)."""
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        names = [n for n in node.input if n]
        arrays = [np.asarray(x) for x in inputs]
        graph_inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for n, a in zip(names, arrays)]
        if outputs_info is not None:
            graph_outputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
                                                                shape)
                             for n, (dt, shape) in zip(node.output, outputs_info)]
        else:
            graph_outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        model = onnx.shape_inference.infer_shapes(model)
        return cls.run_model(model, dict(zip(names, arrays)), device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        kind = str(device).split(":")[0].upper()
        if kind == "CPU":
            return True
        if kind == "CUDA":
            import torch
            return torch.cuda.is_available()
        return False


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device
