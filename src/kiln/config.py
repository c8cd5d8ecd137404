"""Build configuration: one frozen object passed down the whole pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from kiln.errors import KilnError

# Engine precisions. tf32 computes like fp32 (fp32 weights and activations) but lets CUDA
# matmuls and convolutions use TF32 tensor cores; fp32 engines turn TF32 off. int8 and fp8 run the
# calibrated matmuls and convolutions on int8 (precision/int8.py) or float8 e4m3 (precision/fp8.py)
# and everything else in fp32.
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
# Precisions that quantize calibrated layers: they read the calibration options.
CALIBRATED_PRECISIONS = ("int8", "fp8")
# What one layer may be kept in (--layer-precision NAME=...): TF32 is a process-wide math mode,
# not a tensor type, so it is an engine precision only.
LAYER_PRECISIONS = ("fp32", "fp16", "bf16")
# What an int8/fp8 engine's non-quantized layers may compute in (BuildConfig.float_precision).
FLOAT_PRECISIONS = LAYER_PRECISIONS
# Precisions a strongly typed engine may have: they convert no tensor type.
STRONGLY_TYPED_PRECISIONS = ("fp32", "tf32")
DEVICES = ("auto", "cpu", "cuda")
# Activation range calibrators (kiln.calibration.calibrators.METHODS; named here so that
# reading a config imports no torch).
CALIB_METHODS = ("entropy", "minmax", "percentile")
# Weight scales of an int8/fp8 engine's quantized layers (BuildConfig.weight_scales).
WEIGHT_SCALES = ("channel", "tensor")
# How an int8/fp8 engine's weights are rounded to codes (BuildConfig.weight_rounding).
WEIGHT_ROUNDINGS = ("nearest", "gptq")
# batches an accuracy budget is measured on unless set (BuildConfig.budget_batches)
BUDGET_BATCHES = 3

Dims = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InputRange:
    """The dims one input may take: every dim of `min` <= actual <= `max`; `opt` is tuned for."""
    min: Dims
    opt: Dims
    max: Dims

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise KilnError(f"shape range {self.min}/{self.opt}/{self.max} mixes ranks; "
                            "give min, opt and max with the same number of dims")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (0 <= lo <= mid <= hi):
                raise KilnError(f"shape range min={list(self.min)} opt={list(self.opt)} max={list(self.max)} "
                                "is not ordered; each dim needs 0 <= min <= opt <= max")

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def contains(self, dims: Sequence[int]) -> bool:
        return len(dims) == len(self.min) and all(lo <= d <= hi for lo, d, hi in zip(self.min, dims, self.max))


@dataclass(frozen=True, slots=True)
class Profile:
    """An optimization profile: the shape range of each input, by input name."""
    ranges: tuple[tuple[str, InputRange], ...]

    @staticmethod
    def from_ranges(ranges: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> Profile:
        return Profile(tuple((name, InputRange(tuple(lo), tuple(opt), tuple(hi)))
                             for name, (lo, opt, hi) in ranges.items()))

    @staticmethod
    def static(shapes: Mapping[str, Sequence[int]]) -> Profile:
        return Profile.from_ranges({name: (s, s, s) for name, s in shapes.items()})

    def get(self, name: str) -> InputRange | None:
        return dict(self.ranges).get(name)

    def names(self) -> list[str]:
        return [n for n, _ in self.ranges]

    def to_json(self) -> dict:
        return {n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in self.ranges}

    @staticmethod
    def from_json(data: Mapping) -> Profile:
        return Profile.from_ranges({n: (r["min"], r["opt"], r["max"]) for n, r in data.items()})


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """What to build: precision, target device, shape profiles and build options.

    precision: "fp32" | "tf32" | "fp16" | "bf16" (float tensors computed in that type; bindings
        keep the model's declared types). tf32 keeps fp32 tensors and allows TF32 tensor-core math.
    layer_precision: (name or fnmatch pattern, "fp32" | "fp16" | "bf16") pairs: the matching
        layers (by ONNX node name, or any source name of a fused layer) keep that precision while
        the rest follow `precision`; earlier pairs win. A pattern that matches nothing is an error.
    strongly_typed: keep exactly the types the ONNX graph states (no conversion at all, like
        TensorRT's strongly typed networks); needs precision fp32 or tf32 and no layer_precision.
    device: "auto" (CUDA when present, else CPU) | "cpu" | "cuda".
    profiles: shape ranges for inputs with dynamic dims; inputs not named keep the
        model's static dims, and a dynamic dim not covered is an error at build time.
    dump_ir: folder where the IR is written after each pass.
    embed_source: keep the source ONNX inside the engine so `kiln rebuild` needs nothing else.
    tune: time the candidate tactics of each layer on the target GPU and keep the fastest
        (CPU builds never tune: they take the first supported tactic).
    timing_cache: JSON file of tactic timings reused across builds (read, then updated);
        like dump_ir a local build option, not stored in the engine.
    calib_data: int8/fp8 calibration data, an .npz file (one array per input, axis 0 the samples,
        cut into batches of calib_batch_size; a batch dim the model fixes wins) or a folder of
        .npy/.npz files (one batch each). The Python API also takes an iterable of feed dicts
        (builder.build(..., calibration=...)), which is not stored here. Local, not stored.
    calib_method: "minmax" (the default) | "entropy" (TensorRT's KL threshold) | "percentile".
        minmax is the default because it measured best on both real-weight models kiln checks
        (benchmarks/accuracy_real.py, 2026-11-27): all-MiniLM-L6-v2 int8 cosine min 0.957 vs
        entropy 0.850, fp8 0.994 vs 0.860; YOLOv8n passes with every method.
    calib_percentile: the percentile of |x| kept by calib_method "percentile".
    calib_cache: JSON file of activation ranges: reused when made for the same ONNX bytes and
        method, else calibrated again and rewritten. Local, not stored in the engine.
    calib_batch_size: samples per calibration batch cut from an .npz file.
    float_precision: what an int8/fp8 engine computes its non-quantized layers in: "fp32"
        (the default, like trtexec --int8) | "fp16" | "bf16" (like trtexec --int8 --fp16: the
        float layers, activations between quantized layers and the quantized layers' float
        outputs in 16 bits; the speed configuration). Only with precision int8 or fp8.
    accuracy_budget: (metric, value), e.g. ("cosine", 0.999): before building, search the fewest
        layers to keep in fp32 so the reduced engine stays within the budget of an fp32 engine
        (compiler/accuracy_budget.py); the found layers become layer_precision rules. Local, not
        stored (the engine stores the rules and build.accuracy_budget).
    budget_batches: how many batches the accuracy budget is measured on (default 3): the first
        calibration batches of an int8/fp8 build (with GPTQ held out of the search's
        calibration), else synthetic batches. More batches: a closer estimate of the metric on
        other inputs, at one run of every search build per batch. Local, not stored.
    smooth_quant: SmoothQuant's alpha in [0, 1], "auto", or None (the default: off). An int8/fp8
        build then also calibrates per-channel maxima and divides the channels of each activation
        a quantized matmul reads by s_k = max|x_k|^alpha / max|W_k,:|^(1-alpha), folding s into the
        norm (or a per-channel QuantizeLinear scale) and the weights (precision/smooth_quant.py);
        "auto" picks each activation's alpha on calibration rows (the calibration cache is then
        not read: it holds no rows). Only with precision int8 or fp8.
    weight_scales: "channel" (the default: one symmetric scale per output channel) | "tensor"
        (one per weight, the FP8 recipe of TensorRT-LLM and ModelOpt): a quantized matmul whose
        scales are all per tensor can run as one cuBLASLt fp8 GEMM with a tensorwise scale and
        the bias in its epilogue (tactic QMatMul.scaled_mm), which per-channel scales keep from
        the fastest cuBLASLt kernels. Per-tensor weights lose precision in channels much
        narrower than the widest: check with `kiln compare`. Only with precision int8 or fp8.
    weight_rounding: "nearest" (the default: each weight to its nearest code) | "gptq" (the
        matmul and 2-D convolution weights' codes chosen so that the layer's outputs on the
        calibration data move least, precision/gptq.py). The codes, kernels and speed are
        the same; "gptq" needs the calibration data, or a calibration cache that a GPTQ build
        wrote (it keeps the Gram matrices beside it, CACHE.gram.npz). Only with precision int8
        or fp8.
    quantize_attention: int8/fp8, off by default. Attention's Q, K and V become 8-bit codes
        of the build's type with calibrated per-tensor scales (precision/quantize_attention_inputs.py):
        the Q/K/V projection writes 8 bits and the attention kernel reads them, at 8-bit
        precision for Q K^T and V (check with `kiln compare`).
    """
    precision: str = "fp32"
    device: str = "auto"
    profiles: tuple[Profile, ...] = ()
    dump_ir: str | None = None
    embed_source: bool = True
    tune: bool = True
    timing_cache: str | None = None
    layer_precision: tuple[tuple[str, str], ...] = ()
    strongly_typed: bool = False
    calib_data: str | None = None
    calib_method: str = "minmax"
    calib_percentile: float = 99.99
    calib_cache: str | None = None
    calib_batch_size: int = 8
    accuracy_budget: tuple[str, float] | None = None
    budget_batches: int = BUDGET_BATCHES
    float_precision: str = "fp32"
    smooth_quant: float | str | None = None
    weight_scales: str = "channel"
    weight_rounding: str = "nearest"
    quantize_attention: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KilnError(f"precision {self.precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise KilnError(f"device {self.device!r} is not known; choose one of {', '.join(DEVICES)}")
        for rule in self.layer_precision:
            if not (isinstance(rule, tuple) and len(rule) == 2 and all(isinstance(x, str) for x in rule) and rule[0]):
                raise KilnError(f"layer precision rule {rule!r} is not a (pattern, precision) pair of strings; "
                                "give e.g. ('encoder/*', 'fp32').")
            if rule[1] not in LAYER_PRECISIONS:
                raise KilnError(f"layer precision {rule[1]!r} for {rule[0]!r} is not one a layer can keep; choose "
                                f"one of {', '.join(LAYER_PRECISIONS)} (tf32 is an engine precision only).")
        if self.strongly_typed and self.precision not in STRONGLY_TYPED_PRECISIONS:
            raise KilnError(f"a strongly typed engine keeps the model's types, so it cannot compute in "
                            f"{self.precision}; build with precision {' or '.join(STRONGLY_TYPED_PRECISIONS)}, or "
                            "leave strongly typed off (or store the model in that type).")
        if self.strongly_typed and self.layer_precision:
            raise KilnError("a strongly typed engine keeps the model's types, so it takes no layer precision "
                            f"rules ({', '.join(f'{p}={t}' for p, t in self.layer_precision)}); drop them or "
                            "leave strongly typed off.")
        self._check_calibration()

    def _check_calibration(self) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise KilnError(f"calibration method {self.calib_method!r} is not known; choose one of "
                            f"{', '.join(CALIB_METHODS)}.")
        if not 0.0 < self.calib_percentile <= 100.0:
            raise KilnError(f"calibration percentile {self.calib_percentile} is outside (0, 100]; give e.g. 99.99.")
        if isinstance(self.calib_batch_size, bool) or not isinstance(self.calib_batch_size, int) \
                or self.calib_batch_size < 1:
            raise KilnError(f"calibration batch size {self.calib_batch_size!r} is not a whole number >= 1; "
                            "give e.g. 8.")
        if isinstance(self.budget_batches, bool) or not isinstance(self.budget_batches, int) \
                or self.budget_batches < 1:
            raise KilnError(f"budget batches {self.budget_batches!r} is not a whole number >= 1: it is how many "
                            "batches the accuracy budget is measured on; give e.g. 3.")
        if self.float_precision not in FLOAT_PRECISIONS:
            raise KilnError(f"float precision {self.float_precision!r} is not one of {', '.join(FLOAT_PRECISIONS)}.")
        if self.float_precision != "fp32" and self.precision not in CALIBRATED_PRECISIONS:
            raise KilnError(f"a float precision ({self.float_precision}) for the non-quantized layers needs an int8 or "
                            f"fp8 engine, but the precision is {self.precision}; build with --int8 or --fp8, or give "
                            f"the precision as the engine's (--precision {self.float_precision}).")
        if self.smooth_quant is not None:
            alpha = self.smooth_quant
            if alpha != "auto" and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                    or not 0.0 <= alpha <= 1.0):
                raise KilnError(f"smooth_quant alpha {alpha!r} is not a number in [0, 1]: it is the share of each "
                                "activation channel's range moved into the weights (0 none, 1 all); give e.g. "
                                "0.5 or 0.85, \"auto\" (searched per activation on the calibration data), or None "
                                "(no --smooth-quant) to leave SmoothQuant off.")
            if self.precision not in CALIBRATED_PRECISIONS:
                raise KilnError(f"smooth_quant (SmoothQuant alpha {alpha}) only changes int8 and fp8 builds, which "
                                f"quantize calibrated activations, but the precision is {self.precision}; build with "
                                "--int8 or --fp8, or drop --smooth-quant.")
        if self.weight_scales not in WEIGHT_SCALES:
            raise KilnError(f"weight scales {self.weight_scales!r} are not known: give \"channel\" (one scale per "
                            "output channel, the default) or \"tensor\" (one per weight).")
        if self.weight_scales != "channel" and self.precision not in CALIBRATED_PRECISIONS:
            raise KilnError(f"weight scales per {self.weight_scales} only change int8 and fp8 builds, which quantize "
                            f"weights, but the precision is {self.precision}; build with --int8 or --fp8, or drop "
                            "--weight-scales.")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise KilnError(f"weight rounding {self.weight_rounding!r} is not known: give \"nearest\" (each weight "
                            "to its nearest code, the default) or \"gptq\" (codes chosen against the calibration "
                            "data).")
        if self.weight_rounding != "nearest" and self.precision not in CALIBRATED_PRECISIONS:
            raise KilnError(f"weight rounding {self.weight_rounding} only changes int8 and fp8 builds, which quantize "
                            f"weights, but the precision is {self.precision}; build with --int8 or --fp8, or drop "
                            "--weight-rounding.")
        if self.quantize_attention and self.precision not in CALIBRATED_PRECISIONS:
            raise KilnError(f"quantize_attention gives attention 8-bit Q, K and V, an int8 or fp8 build's, but the "
                            f"precision is {self.precision}; build with --int8 or --fp8, or drop "
                            "--quantize-attention.")
        if self.calib_cache is not None and self.precision not in CALIBRATED_PRECISIONS:
            raise KilnError(f"calib_cache is only read by int8 and fp8 builds, but the precision is {self.precision}; "
                            "build with precision int8 (--int8) or fp8 (--fp8), or drop --calib-cache.")
        if self.calib_data is not None and self.precision not in (*CALIBRATED_PRECISIONS, "fp16"):
            raise KilnError(f"calib_data is only read by int8 and fp8 builds (calibration) and fp16 builds (the "
                            f"fp16 overflow check), but the precision is {self.precision}; build with one of those "
                            "precisions, or drop --calib-data.")

    def to_json(self) -> dict:
        data = {"precision": self.precision, "device": self.device,
                "profiles": [p.to_json() for p in self.profiles], "embed_source": self.embed_source,
                "tune": self.tune, "layer_precision": [list(r) for r in self.layer_precision],
                "strongly_typed": self.strongly_typed}
        if self.precision in CALIBRATED_PRECISIONS:  # how it was calibrated; the data and cache paths are local
            data.update(calib_method=self.calib_method, calib_percentile=self.calib_percentile,
                        calib_batch_size=self.calib_batch_size, float_precision=self.float_precision)
            if self.smooth_quant is not None:
                data["smooth_quant"] = self.smooth_quant
            if self.weight_scales != "channel":
                data["weight_scales"] = self.weight_scales
            if self.weight_rounding != "nearest":
                data["weight_rounding"] = self.weight_rounding
            if self.quantize_attention:
                data["quantize_attention"] = True
        return data

    @staticmethod
    def from_json(data: Mapping) -> BuildConfig:
        return BuildConfig(precision=data["precision"], device=data["device"],
                           profiles=tuple(Profile.from_json(p) for p in data["profiles"]),
                           embed_source=data.get("embed_source", True), tune=data.get("tune", True),
                           layer_precision=tuple((p, t) for p, t in data.get("layer_precision", ())),
                           strongly_typed=data.get("strongly_typed", False),
                           calib_method=data.get("calib_method", "entropy"),  # engines from before minmax became the default
                           calib_percentile=data.get("calib_percentile", 99.99),
                           calib_batch_size=data.get("calib_batch_size", 8),
                           float_precision=data.get("float_precision", "fp32"),
                           smooth_quant=data.get("smooth_quant"),
                           weight_scales=data.get("weight_scales", "channel"),
                           weight_rounding=data.get("weight_rounding", "nearest"),
                           quantize_attention=bool(data.get("quantize_attention", False)))
