"""Engine: a loaded plan with its weights on a device, callable like a function."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from kiln.engine.device import check_compatible
from kiln.engine.format import read_engine, write_engine
from kiln.engine.plan import Plan
from kiln.engine.serialize import plan_from_json, plan_to_json
from kiln.errors import EngineFormatError, InputError
from kiln.runtime.arrays import array_to_tensor
from kiln.runtime.executor import Executor, constants_by_slot
from kiln.runtime.graphs import GraphRunner
from kiln.runtime.validate import validate_inputs

SOURCE_KEY = "source/model.onnx"


class Engine:
    """Run with `engine(name=array, ...)` or `engine(array, ...)` in binding order.

    Returns a dict of output name -> array: numpy arrays when every input was numpy,
    torch tensors (on the engine's device, no host copy) otherwise.
    """

    def __init__(self, plan: Plan, constants: Mapping[str, torch.Tensor], header: dict[str, Any],
                 device: str, source: bytes | None = None) -> None:
        self.plan = plan
        self.header = header
        self.device = torch.device(device)
        self.source = source
        self._constants = dict(constants)  # host copies: what host steps read and what save() writes
        self.executor = Executor(plan, constants_by_slot(plan, self._constants, self.device), self.device)
        # CUDA graphs on by default on a GPU (`kiln bench --no-cuda-graph` turns them off), for
        # plans of tensors only with no control flow (whose trip counts are data on the device).
        self.use_cuda_graphs = self.device.type == "cuda" and graphable(plan)
        self._graphs: GraphRunner | None = None
        self._precision = header.get("build_config", {}).get("precision", "fp32")

    # -- running ---------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [b.name for b in self.plan.inputs]

    @property
    def output_names(self) -> list[str]:
        return [b.name for b in self.plan.outputs]

    @property
    def profiles(self) -> list[dict[str, dict[str, list[int]]]]:
        return self.header["build_config"]["profiles"]

    @property
    def precision(self) -> str:
        """The precision the engine was built for (fp32, tf32, fp16, bf16)."""
        return self._precision

    @property
    def weights_bytes(self) -> int:
        """Bytes of the engine's constants (its weights)."""
        return sum(t.numel() * t.element_size() for t in self._constants.values())

    @property
    def arena(self) -> dict[str, int] | None:
        """The CUDA graphs' activation arena (runtime/arena.py): the largest liveness peak
        reserved for and the bytes its pool holds; None until a shape has been captured."""
        arena = self._graphs.arena if self._graphs is not None else None
        if arena is None:
            return None
        return {"planned_bytes": arena.planned_bytes, "reserved_bytes": arena.reserved_bytes}

    @property
    def cuda_graph_status(self) -> str:
        """"off", "captured", or why the last shape could not be captured (it then ran step by step)."""
        if not self.use_cuda_graphs:
            return "off"
        if self._graphs is not None and self._graphs.captured_signatures == 0 and self._graphs.last_failure:
            return f"not capturable ({self._graphs.last_failure}); ran step by step"
        return "captured"

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if len(args) > len(self.plan.inputs):
            raise InputError(f"the engine takes {len(self.plan.inputs)} input(s) ({', '.join(self.input_names)}) "
                             f"but {len(args)} were given.")
        given = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k in given:
                raise InputError(f"input {k!r} was given twice (positionally and by name); pass it once.")
            given[k] = v
        all_numpy = not any(isinstance(v, torch.Tensor) or isinstance(v, list) and v and isinstance(v[0], torch.Tensor)
                            for v in given.values())
        tensors = {k: self._to_tensor(k, v) for k, v in given.items()}
        outputs = self.run_tensors(tensors)
        if all_numpy:
            return {k: _to_numpy(v) for k, v in outputs.items()}
        return outputs

    def run_tensors(self, tensors: Mapping[str, torch.Tensor], validate: bool = True) -> dict[str, torch.Tensor]:
        """The fast path: torch tensors in, torch tensors out (already on the engine's device)."""
        if validate:
            validate_inputs(self.plan.inputs, tensors, self.profiles)
        feeds = {b.slot: _to_device(tensors[b.name], self.device) for b in self.plan.inputs}
        slots = [b.slot for b in self.plan.outputs]
        with torch.inference_mode(), math_mode(self._precision if self.device.type == "cuda" else None):
            if self.use_cuda_graphs:
                if self._graphs is None:
                    self._graphs = GraphRunner(self.executor, self.device)
                outs = self._graphs.run(feeds, slots)
            else:
                env = self.executor.run(feeds, device=self.device)
                outs = [env[s] for s in slots]
        return {b.name: _to_device(t, self.device) for b, t in zip(self.plan.outputs, outs)}

    def _to_tensor(self, name: str, value: Any) -> Any:
        if value is None or isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)) and self._kind(name) == "sequence":
            return [self._to_tensor(name, v) for v in value]
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001
            raise InputError(f"input {name!r} is a {type(value).__name__}, not an array; pass a numpy array "
                             "or a torch tensor.") from None
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise InputError(f"input {name!r} has numpy dtype {arr.dtype}, which no engine input can take; "
                             "pass numeric arrays.")
        return array_to_tensor(arr)

    def _kind(self, name: str) -> str:
        return next((b.kind for b in self.plan.inputs if b.name == name), "tensor")

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        data, tensors = plan_to_json(self.plan)
        tensors.update(self._constants)
        if self.source is not None:
            tensors[SOURCE_KEY] = torch.frombuffer(bytearray(self.source), dtype=torch.uint8)
        write_engine(path, {**self.header, "plan": data}, tensors)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return [_to_device(v, device) for v in value]
    return value


# Steps whose work depends on tensor data read on the host: a CUDA graph cannot replay them.
_DATA_DEPENDENT = {"If", "Loop", "Scan", "SequenceMap", "NonZero", "Unique", "NonMaxSuppression", "Compress",
                   "TopK", "SequenceAt", "SequenceInsert", "SequenceErase", "SplitToSequence"}


def graphable(plan: Plan) -> bool:
    """Whether the whole plan can be captured as one CUDA graph per input shape."""
    return (all(b.kind == "tensor" for b in (*plan.inputs, *plan.outputs))
            and any(not s.host for s in plan.steps)  # a plan of host steps only has no kernels to capture
            and not any(s.op in _DATA_DEPENDENT or s.captures for s in plan.steps))


# Engine precision -> whether CUDA matmuls and convolutions may use TF32 tensor cores. fp32 is
# IEEE fp32; tf32 is its own precision mode. Others (fp16/bf16) leave torch's flags as they are.
_ALLOW_TF32 = {"fp32": False, "tf32": True}


@contextlib.contextmanager
def math_mode(precision: str | None) -> Iterator[None]:
    """The CUDA math flags an engine of `precision` runs under (None: leave them), restored after."""
    allow = _ALLOW_TF32.get(precision) if precision else None
    if allow is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fp32_math(strict: bool) -> contextlib.AbstractContextManager[None]:
    """An fp32 engine computes in IEEE fp32 (TF32 off) when `strict`; math_mode for any precision."""
    return math_mode("fp32" if strict else None)


def load(path: str | os.PathLike, device: str | None = None) -> Engine:
    """Load an engine file; raises when it is corrupt, newer, or built for another GPU."""
    header, tensors = read_engine(path)
    if "plan" not in header or "device" not in header or "build_config" not in header:
        raise EngineFormatError(f"{str(path)!r} lacks a plan, device or build config in its header; rebuild it.")
    target = check_compatible(header["device"], str(path))
    if device is not None and device != target:
        raise EngineFormatError(f"engine {str(path)!r} was built for {target} and cannot run on {device}; "
                                f"rebuild it with `kiln rebuild {path} --device {device}`.")
    plan = plan_from_json(header.pop("plan"), tensors)
    source = tensors.pop(SOURCE_KEY, None)
    consts = {s.const_key: tensors[s.const_key] for s in plan.slots if s.const_key}
    return Engine(plan, consts, header, target, None if source is None else source.numpy().tobytes())
