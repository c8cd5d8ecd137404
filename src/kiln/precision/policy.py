"""The precision policy: which type each layer computes in, then the rewrite (retype.py).

Engine precision: fp32 and tf32 compute in float32 (tf32 only changes the CUDA math mode,
runtime/engine.py); fp16 and bf16 compute float32 tensors in that type; int8 engines have had
their calibrated layers quantized first (precision/int8.py, run by the builder because it needs
activation ranges) and compute everything else in BuildConfig.float_precision (float32 unless
asked: fp16 is TensorRT's --int8 --fp16); fp8 engines likewise (precision/fp8.py). Exceptions, in
order of authority:
1. layer precision rules (BuildConfig.layer_precision, layer_rules.py): a matching layer
   computes in the rule's type, whatever the engine precision;
2. the safety table (safety.py): in fp16/bf16 engines, layers unsafe by nature (large sums,
   exp of unbounded inputs ...) keep fp32 math;
3. a layer whose float32 inputs are all float32 graph inputs and whose outputs are 8-bit
   (the QuantizeLinear an int8/fp8 engine puts on its image input) keeps fp32: in the reduced
   type it would read the input through a Cast, one more pass over the largest tensor of a
   CNN's first layer, for a result of 8 bits either way (rounded once from the input itself);
4. quantized islands (quantized_islands.py): float math that reads and writes only 8-bit codes
   (between the DequantizeLinear and QuantizeLinear of an explicitly quantized model) keeps
   fp32, as the model states and ONNX Runtime computes: its values never reach memory, so a
   16-bit type would add roundings and save nothing.
A strongly typed engine converts nothing: every tensor keeps the type the ONNX graph states.
Every exception is recorded (decision.py) for the engine header and `kiln inspect`.
"""
from __future__ import annotations

from kiln.config import BuildConfig
from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.precision.decision import LayerPrecision, PrecisionReport
from kiln.precision.layer_rules import match_layer_rules
from kiln.precision.quantized_islands import quantized_islands
from kiln.precision.retype import F32, retype
from kiln.precision.safety import fp32_reason

# precision (engine or layer) -> the type its float32 tensors compute in
# (int8/fp8: the layers left in float after quantize_layers/quantize_fp8 compute in float32)
COMPUTE_TYPE = {"fp32": F32, "tf32": F32, "fp16": dtypes.FLOAT16, "bf16": dtypes.BFLOAT16, "int8": F32, "fp8": F32}


def engine_compute_type(config: BuildConfig) -> dtypes.DType:
    """The type the engine's float layers compute in (an int8/fp8 engine's: its float_precision)."""
    if config.precision in ("int8", "fp8"):
        return COMPUTE_TYPE[config.float_precision]
    return COMPUTE_TYPE[config.precision]


def apply_precision(graph: Graph, config: BuildConfig) -> PrecisionReport:
    """Rewrite `graph` to compute in config.precision with its per-layer exceptions."""
    if config.strongly_typed:
        return PrecisionReport(config.precision, True, False)
    default = engine_compute_type(config)
    decisions = layer_decisions(graph, config)
    compute = {id(n): COMPUTE_TYPE[d.precision] for n, d in decisions}
    changed = retype(graph, compute, default)
    return PrecisionReport(config.precision, False, changed, tuple(d for _, d in decisions))


def layer_decisions(graph: Graph, config: BuildConfig) -> list[tuple[Node, LayerPrecision]]:
    """The layers (with float32 math) whose compute type differs from the engine's, and why."""
    default = engine_compute_type(config)
    rules = match_layer_rules(graph, config.layer_precision)
    bindings = {id(v) for v in graph.inputs}
    islands = quantized_islands(graph) if default != F32 else set()
    out = []
    for n in graph.nodes:
        if not _has_float32_math(n) and id(n) not in islands:
            continue
        if id(n) in rules:
            precision, pattern = rules[id(n)]
            reason = f"layer precision rule {pattern}={precision}"
        elif default != F32 and (why := fp32_reason(n)):
            precision, reason = "fp32", why
        elif default != F32 and _quantizes_an_input(n, bindings):
            precision, reason = "fp32", ("reads a float32 graph input and writes 8 bits: a cast would be "
                                         "one more pass over the input")
        elif id(n) in islands:
            precision, reason = "fp32", ("float math between dequantization and quantization (reads and writes "
                                         "8-bit codes only): kept as the model states it")
        else:
            continue
        if COMPUTE_TYPE[precision] != default:
            out.append((n, LayerPrecision(n.name, n.qualified_op, precision, reason, n.fused_from)))
    return out


def _quantizes_an_input(n: Node, bindings: set[int]) -> bool:
    """n reads float32 only from graph inputs (constants aside) and writes only 8-bit tensors
    (integers or float8: the quantized types)."""
    floats = [v for v in n.inputs if v is not None and v.dtype == F32 and not v.is_const]
    return bool(floats) and all(id(v) in bindings for v in floats) and \
        all(o.dtype is not None and o.dtype.itemsize_bits == 8 for o in n.outputs)


def _has_float32_math(n: Node) -> bool:
    return any(v is not None and v.dtype == F32 for v in (*n.inputs, *n.outputs))
