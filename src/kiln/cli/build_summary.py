"""What `kiln build` (and `kiln rebuild`) report about a built engine: the summary dictionary
(--json) and its one-line-per-topic table (precision, int8/fp8 calibration, explicit
quantization, fp16 overflow, accuracy budget, tuning); `kiln inspect` reuses the lines."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.cli import output

if TYPE_CHECKING:
    from kiln.runtime.engine import Engine


def summary(engine: Engine, out: Path, size: int) -> dict[str, Any]:
    header = engine.header
    return {
        "engine": str(out),
        "source": header["source"]["name"],
        "source_nodes": header["build"]["source_nodes"],
        "layers": len(engine.plan.steps),
        "precision": header["build_config"]["precision"] + (
            f" (float layers {fp})" if (fp := header["build_config"].get("float_precision", "fp32")) != "fp32" else ""),
        "strongly_typed": header["build_config"].get("strongly_typed", False),
        "layer_precision": header["build"].get("precision", {}).get("layers", []),
        "device": {"kind": header["device"]["kind"], "name": header["device"].get("name")},
        "profiles": header["build_config"]["profiles"],
        "build_seconds": header["build"]["seconds"],
        "engine_bytes": size,
        "peak_activation_bytes": engine.plan.memory.peak_bytes,
        "total_activation_bytes": engine.plan.memory.total_bytes,
        "passes": header["build"]["passes"],
        "tuning": header["build"].get("tuning"),
        "int8": header["build"].get("int8"),
        "fp8": header["build"].get("fp8"),
        "fp16_overflow": header["build"].get("fp16_overflow"),
        "accuracy_budget": header["build"].get("accuracy_budget"),
        "explicit_quantization": explicit_quantization(engine),
        "reference_fallbacks": reference_fallbacks(engine),
    }


def reference_fallbacks(engine: Engine) -> list[dict[str, str]]:
    """The layers left on the reference implementation because the tuner rejected every kernel
    that accepted them (a kernel's output outside the tolerance, or an error): the slow layers a
    user should know of. From the tuning record (its first rejected candidates)."""
    tuning = engine.header["build"].get("tuning")
    rejected = tuning.get("rejected", ()) if isinstance(tuning, dict) else ()
    named = {r["layer"] for r in rejected}
    return [{"layer": s.name, "op": s.op} for s in engine.plan.steps
            if s.tactic.endswith(".reference") and s.name in named]


def fallback_line(fallbacks: list[dict[str, str]]) -> str:
    """E.g. "2 layer(s) run on the reference, every kernel rejected (kiln::Pointwise: gelu_1, ...);
    the reasons are in --json's tuning.rejected"."""
    ops: dict[str, list[str]] = {}
    for f in fallbacks:
        ops.setdefault(f["op"], []).append(f["layer"])
    names = "; ".join(f"{op}: " + ", ".join(layers[:3]) + (" ..." if len(layers) > 3 else "")
                      for op, layers in sorted(ops.items()))
    return (f"{len(fallbacks)} layer(s) run on the reference, every kernel rejected ({names}); "
            "the reasons are in --json's tuning.rejected")


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def explicit_quantization(engine: Engine) -> dict[str, Any] | None:
    """What the plan made of the model's own QuantizeLinear/DequantizeLinear (a build that did not
    calibrate, with quantized layers): the layers by op, the residual blocks folded into a conv
    (passes/fuse_qdq_residual.py: kiln::QConv with mid_scale), the attentions with Q/DQ inside made
    one layer (kiln::QDQAttention), the quantized residual adds a norm reads itself
    (precision/fuse_residual_norm.py), the element-wise programs looked up in a GEMM's epilogue
    (precision/fuse_code_table.py), the layers whose input is quantized at run time (ONNX Runtime's
    dynamic quantization: DynamicQuantizeLinear's scale, passes/integer_to_qdq.py), the Q/DQ steps
    left alone and the element-wise kernels with Q/DQ inside; None otherwise."""
    build = engine.header["build"]
    steps = engine.plan.steps
    layers: dict[str, int] = {}
    codes: dict[str, int] = {}      # the layers' weight types: int8, uint8, float8_e4m3fn
    for s in steps:
        if s.op in ("kiln::QConv", "kiln::QMatMul"):
            layers[s.op] = layers.get(s.op, 0) + 1
            dtype = engine.plan.slots[s.inputs[1]].dtype or "?"
            codes[dtype] = codes.get(dtype, 0) + 1
    if build.get("int8") or build.get("fp8") or not layers:
        return None
    from kiln.kernels.reference.quantized import QCONV_INPUTS, QMATMUL_INPUTS

    mid, table = QCONV_INPUTS.index("mid_scale"), QMATMUL_INPUTS.index("table")
    return {"layers": layers, "weight_types": codes,
            "residual_blocks": sum(1 for s in steps if s.op == "kiln::QConv" and len(s.inputs) > mid
                                   and s.inputs[mid] is not None),
            "attention": sum(1 for s in steps if s.op == "kiln::QDQAttention"),
            "residual_adds_in_norms": sum(1 for s in steps
                                          if s.op == "kiln::NormQuantize" and s.attrs.get("x_program")),
            "tables_in_gemms": sum(1 for s in steps if s.op == "kiln::QMatMul" and len(s.inputs) > table
                                   and s.inputs[table] is not None),
            "dynamic": sum(1 for s in steps if s.op == "kiln::QMatMul" and s.attrs.get("dynamic")),
            "qdq_steps": sum(1 for s in steps if s.op in QDQ_OPS),
            "qdq_pointwise": sum(1 for s in steps if s.op == "kiln::Pointwise"
                                 and any(i[0] in QDQ_OPS for i in s.attrs.get("program", [])))}


def explicit_line(info: dict[str, Any]) -> str:
    """E.g. "53 layer(s) from the model's Q/DQ (kiln::QConv 53; int8 weights 53), 16 residual block(s)
    in their conv; 1 Q/DQ step(s) and 0 element-wise Q/DQ kernel(s) left"."""
    layers = info["layers"]
    return (f"{sum(layers.values())} layer(s) from the model's Q/DQ ("
            + ", ".join(f"{op} {n}" for op, n in sorted(layers.items())) + "; "
            + ", ".join(f"{t} weights {n}" for t, n in sorted(info["weight_types"].items())) + ")"
            + (f", {info['residual_blocks']} residual block(s) in their conv" if info["residual_blocks"] else "")
            + (f", {info['attention']} attention(s) with Q/DQ inside as one layer" if info.get("attention") else "")
            + (f", {info['residual_adds_in_norms']} quantized residual add(s) in their norm"
               if info.get("residual_adds_in_norms") else "")
            + (f", {info['tables_in_gemms']} element-wise program(s) as a code table in their GEMM"
               if info.get("tables_in_gemms") else "")
            + (f", {info['dynamic']} with input scales computed at run time (DynamicQuantizeLinear)"
               if info.get("dynamic") else "")
            + f"; {info['qdq_steps']} Q/DQ step(s) and {info['qdq_pointwise']} element-wise Q/DQ kernel(s) left")


def print_summary(info: dict[str, Any]) -> None:
    dev = info["device"]
    output.stdout().print(output.key_values("engine built", [
        ("engine", info["engine"]),
        ("layers", f"{info['source_nodes']} source nodes -> {info['layers']} engine layers"),
        ("precision", precision_line(info["precision"], info["strongly_typed"], info["layer_precision"])),
        ("device", f"{dev['kind']} ({dev['name']})" if dev["name"] else dev["kind"]),
        ("build time", f"{info['build_seconds']:.2f} s"),
        *([("int8", int8_line(info["int8"]))] if info.get("int8") else []),
        *([("fp8", int8_line(info["fp8"]))] if info.get("fp8") else []),
        *([("quantization", explicit_line(info["explicit_quantization"]))] if info.get("explicit_quantization")
          else []),
        *([("fp16 overflow", overflow_line(info["fp16_overflow"]))] if info.get("fp16_overflow") else []),
        *([("accuracy budget", budget_line(info["accuracy_budget"]))] if info.get("accuracy_budget") else []),
        ("tuning", tuning_line(info["tuning"])),
        *([("fallbacks", fallback_line(info["reference_fallbacks"]))] if info.get("reference_fallbacks") else []),
        ("engine size", output.fmt_bytes(info["engine_bytes"])),
        ("peak activations", f"{output.fmt_bytes(info['peak_activation_bytes'])} planned "
                             f"(of {output.fmt_bytes(info['total_activation_bytes'])} if none were reused)"),
    ]))


def precision_line(precision: str, strongly_typed: bool, layers: list[dict[str, str]]) -> str:
    """E.g. "fp16; 2 layers in another precision (fp32: 2)"; the layers are in --json and `kiln inspect`."""
    text = precision + (" (strongly typed: the model's types as stated)" if strongly_typed else "")
    if layers:
        counts: dict[str, int] = {}
        for l in layers:
            counts[l["precision"]] = counts.get(l["precision"], 0) + 1
        text += (f"; {len(layers)} layer(s) in another precision ("
                 + ", ".join(f"{p}: {n}" for p, n in sorted(counts.items())) + ")")
    return text


def int8_line(int8: dict[str, Any]) -> str:
    """E.g. "3 layers quantized, 1 kept float (see --json); ranges: entropy, calibrated on 2 batches"."""
    calib = int8["calibration"]
    where = (f"from the cache {calib['cache']}" if calib["source"] == "cache"
             else f"calibrated on {calib['batches']} batch(es)" + (f", cached in {calib['cache']}" if calib["cache"] else ""))
    kept = len(int8["kept_float"])
    folded = int8.get("requantize_folded", 0)
    norms, matmuls = int8.get("norm_quantize_fused", 0), int8.get("matmul_quantize_fused", 0)
    inputs = int8.get("input_quantize_fused", 0)
    residuals, attention = int8.get("residuals_quantized", 0), int8.get("attention_requantized", 0)
    attention_in = int8.get("attention_inputs_quantized", 0)
    return (f"{len(int8['quantized'])} layer(s) quantized" + (f", {kept} kept float (see --json)" if kept else "")
            + (f", {folded} requantizing their output" if folded else "")
            + (f", {residuals} reading an 8-bit residual" if residuals else "")
            + (f", {attention} attention(s) writing 8 bits" if attention else "")
            + (f", {attention_in} attention(s) reading 8-bit Q, K and V" if attention_in else "")
            + (f", {norms} norm(s) quantizing their output" if norms else "")
            + (f", {matmuls} float matmul(s) quantizing their output" if matmuls else "")
            + (f", {inputs} conv(s) quantizing their float input" if inputs else "")
            + f"; ranges: {calib['method']}, {where}"
            + (f"; SmoothQuant alpha {sq['alpha']}: {len(sq['smoothed'])} activation(s) smoothed"
               if (sq := int8.get("smooth_quant")) else "")
            + ("; weight scales per tensor" if int8.get("weight_scales") == "tensor" else "")
            + (f"; GPTQ rounded {g['rounded']} weight(s), calibration output error "
               f"x{g['mean_error_ratio']:.3g} of nearest rounding's" if (g := int8.get("gptq")) and g["rounded"]
               else "; GPTQ rounded no weight (see --json)" if g else ""))


def overflow_line(overflow: dict[str, Any]) -> str:
    """E.g. "2 layer(s) kept in fp32 (mm1: max 1.2e+06, ...) on 4 calibration batch(es)"."""
    kept = overflow["kept_fp32"]
    names = ", ".join(f"{k['layer']}: max {k['amax']:.3g}" for k in kept[:4]) + (" ..." if len(kept) > 4 else "")
    text = (f"{len(kept)} layer(s) kept in fp32" + (f" ({names})" if kept else "")
            + f" on {overflow['batches']} calibration batch(es)")
    if overflow["overridden"]:
        text += f"; {len(overflow['overridden'])} overflowing layer(s) kept in fp16 by --layer-precision"
    return text


def budget_line(budget: dict[str, Any]) -> str:
    """E.g. "cosine=0.9995 (target 0.999): 2 layer(s) kept in fp16 of 40 ranked, 48 builds; runs in
    0.41 ms, 1.21x the fp16 engine's 0.496 ms" (the speed when the build tuned on a GPU)."""
    kept = ", ".join(k["layer"] for k in budget["kept"][:4]) + (" ..." if len(budget["kept"]) > 4 else "")
    achieved = budget["achieved"]
    achieved = f"{achieved:.6g}" if isinstance(achieved, float) else achieved  # "inf"/"-inf" come as strings
    speed = budget.get("speed")
    return (f"{budget['metric']}={achieved} (target {budget['target']}): {len(budget['kept'])} layer(s) "
            f"kept in {budget.get('kept_precision', 'fp32')} of {budget['candidates']} ranked, {budget['builds']} "
            "builds" + (f" ({kept})" if kept else "")
            + (f"; measured on {held} calibration batch(es) GPTQ did not calibrate on"
               if (held := budget.get("held_out_batches")) else
               f"; measured on {n} batch(es)" if (n := budget.get("batches")) and not budget.get("gptq_in_sample")
               else "")
            + ("; measured on the batches GPTQ calibrated on (more calibration batches would hold some out)"
               if budget.get("gptq_in_sample") else "")
            + (f"; runs in {speed['engine_ms']:.4g} ms, {speed['speedup']:.2f}x the {speed['wider_precision']} "
               f"engine's {speed['wider_ms']:.4g} ms" if speed else ""))


def tuning_line(tuning: Any) -> str:
    if not isinstance(tuning, dict):
        return str(tuning or "off")
    if "skipped" in tuning:
        return f"skipped: {tuning['skipped']}"
    rejected = tuning.get("rejected_count", len(tuning.get("rejected", ())))
    return (f"{tuning['layers_timed']} layers timed in {tuning['seconds']:.2f} s, {tuning['cache_hits']} from the "
            f"timing cache" + (f"; {rejected} candidate(s) rejected (see --json)" if rejected else "")
            + (f"; stopped early: {tuning['stopped']}" if tuning.get("stopped") else ""))
