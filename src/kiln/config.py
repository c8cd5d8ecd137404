"""Build configuration: one frozen object passed down the whole pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from kiln.errors import KilnError

PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")

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

    precision: "fp32" | "fp16" | "bf16" (float tensors computed in that type; bindings keep
        the model's declared types).
    device: "auto" (CUDA when present, else CPU) | "cpu" | "cuda".
    profiles: shape ranges for inputs with dynamic dims; inputs not named keep the
        model's static dims, and a dynamic dim not covered is an error at build time.
    dump_ir: folder where the IR is written after each pass.
    embed_source: keep the source ONNX inside the engine so `kiln rebuild` needs nothing else.
    tune: time the candidate tactics of each layer on the target GPU and keep the fastest
        (CPU builds never tune: they take the first supported tactic).
    timing_cache: JSON file of tactic timings reused across builds (read, then updated);
        like dump_ir a local build option, not stored in the engine.
    """
    precision: str = "fp32"
    device: str = "auto"
    profiles: tuple[Profile, ...] = ()
    dump_ir: str | None = None
    embed_source: bool = True
    tune: bool = True
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KilnError(f"precision {self.precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise KilnError(f"device {self.device!r} is not known; choose one of {', '.join(DEVICES)}")

    def to_json(self) -> dict:
        return {"precision": self.precision, "device": self.device,
                "profiles": [p.to_json() for p in self.profiles], "embed_source": self.embed_source,
                "tune": self.tune}

    @staticmethod
    def from_json(data: Mapping) -> BuildConfig:
        return BuildConfig(precision=data["precision"], device=data["device"],
                           profiles=tuple(Profile.from_json(p) for p in data["profiles"]),
                           embed_source=data.get("embed_source", True), tune=data.get("tune", True))
