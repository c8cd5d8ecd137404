"""An FP8 model with explicit Q/DQ, as NVIDIA's ModelOpt exports FP8 post-training quantization for
TensorRT: what a user who quantized with ModelOpt brings to kiln.

    path = fp8_qdq(float_onnx, calibration_feeds, out_path)

Every MatMul, Gemm and Conv with a constant weight gets float8_e4m3fn Q/DQ: its activation input
QuantizeLinear -> DequantizeLinear per tensor (scale = amax / 448, amax the largest magnitude the
calibration feeds give that input, through ONNX Runtime), its weight DequantizeLinear of float8
codes per output channel (scale = max|W_c| / 448). The model is converted to opset 19 first
(float8 Q/DQ). Layers whose input never reaches a nonzero value are left float.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

FP8_MAX = 448.0
OUTPUT_AXIS = {"MatMul": 1, "Conv": 0}   # Gemm: 0 with transB, else 1


def _layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMul/Gemm (2-D weight) and Conv nodes whose weight is an initializer."""
    dims = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1
            and n.input[1] in dims and (n.op_type == "Conv" or dims[n.input[1]] == 2)]


def _amax(model: onnx.ModelProto, names: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """The largest magnitude of each tensor in `names` over `feeds` (ONNX Runtime, unoptimised)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            amax[name] = max(amax[name], float(np.abs(value).max()))
    return amax


def _fp8_weight(w: np.ndarray, axis: int) -> tuple[onnx.TensorProto, np.ndarray]:
    """(float8 codes of w / s as a TensorProto, s float32 [C]) with s_c = max|W_c| / 448 along `axis`."""
    flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    scale = np.maximum(np.abs(flat).max(1), 1e-12).astype(np.float32) / np.float32(FP8_MAX)
    shape = [1] * w.ndim
    shape[axis] = -1
    codes = torch.from_numpy(w / scale.reshape(shape)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    proto = helper.make_tensor("", TensorProto.FLOAT8E4M3FN, list(w.shape), codes.view(torch.uint8).numpy().tobytes(),
                               raw=True)
    return proto, scale


def fp8_qdq(path: Path | str, feeds: Iterable[dict[str, np.ndarray]], out: Path | str) -> Path:
    """The float ONNX model at `path` with ModelOpt-style float8 Q/DQ (module docstring), saved to `out`."""
    from onnx import version_converter

    model = onnx.load(str(path))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 19:
        model = version_converter.convert_version(model, 19)
    layers = _layers(model)
    amax = _amax(model, sorted({n.input[0] for n in layers}), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    quantized: dict[str, str] = {}          # activation -> its dequantized name (one Q/DQ per tensor)
    weights: dict[tuple[str, int], str] = {}   # (weight, output axis) -> its dequantized name
    for node in model.graph.node:
        if node in layers and amax[node.input[0]] > 0:
            x = node.input[0]
            if x not in quantized:
                s, z = f"{x}_fp8_scale", f"{x}_fp8_zero"
                model.graph.initializer.extend([numpy_helper.from_array(np.float32(amax[x] / FP8_MAX), s),
                                                helper.make_tensor(z, TensorProto.FLOAT8E4M3FN, [], [0.0])])
                nodes += [helper.make_node("QuantizeLinear", [x, s, z], [f"{x}_fp8"]),
                          helper.make_node("DequantizeLinear", [f"{x}_fp8", s, z], [f"{x}_fp8_dq"])]
                quantized[x] = f"{x}_fp8_dq"
            w_name = node.input[1]
            axis = OUTPUT_AXIS.get(node.op_type, 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1)
            if (w_name, axis) not in weights:
                codes, scale = _fp8_weight(numpy_helper.to_array(inits[w_name]).astype(np.float32), axis)
                codes.name = f"{w_name}_fp8_{axis}"
                model.graph.initializer.extend([codes, numpy_helper.from_array(scale, f"{codes.name}_scale")])
                nodes.append(helper.make_node("DequantizeLinear", [codes.name, f"{codes.name}_scale"],
                                              [f"{codes.name}_dq"], axis=axis))
                weights[(w_name, axis)] = f"{codes.name}_dq"
            node.input[0], node.input[1] = quantized[x], weights[(w_name, axis)]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)
