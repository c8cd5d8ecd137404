"""Shape profiles checked against the model's inputs before anything is built."""
from __future__ import annotations

import onnx

from kiln.config import BuildConfig, Profile
from kiln.errors import BuildError


def model_input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list[int | str]] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue  # rank unknown (or not a tensor): the profile, if any, gives the dims
        dims: list[int | str] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{inp.name}_dim{i}")
        out[inp.name] = dims
    return out


def resolve_profiles(model: onnx.ModelProto, config: BuildConfig) -> tuple[tuple[Profile, ...], dict[str, list[int | str]]]:
    """Check the profiles against the model; return them (one static profile when the model
    is static and none were given) and the dims to import each input with: static where
    every profile fixes the dim, symbolic otherwise."""
    declared = model_input_dims(model)
    profiles = config.profiles
    inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    for p in profiles:
        for name in p.names():
            if name not in inputs:
                raise BuildError(f"the shape profile names input {name!r}, which the model does not have; "
                                 f"its inputs are {', '.join(sorted(inputs)) or '(none)'}.")
    for p in profiles:  # inputs of unknown rank take their dims from the profile
        for name, r in p.ranges:
            declared.setdefault(name, [f"{name}_dim{i}" for i in range(len(r.min))])
    missing = [n for n, dims in declared.items() if any(isinstance(d, str) for d in dims)
               and any(p.get(n) is None for p in profiles or [Profile(())])]
    if missing:
        n = missing[0]
        example = "x".join(str(d) if isinstance(d, int) else "1" for d in declared[n])
        raise BuildError(
            f"input {n!r} has dynamic dims {declared[n]} and no shape profile covers it; give its shapes, "
            f"e.g. `--shapes {n}:{example}` or `--min/--opt/--max {n}:...` (Python: "
            "BuildConfig(profiles=(Profile.from_ranges({...}),))).")
    for p in profiles:
        for name, r in p.ranges:
            dims = declared[name]
            if len(r.min) != len(dims):
                raise BuildError(f"the profile gives input {name!r} {len(r.min)} dims but the model declares "
                                 f"{len(dims)} ({dims}); give a shape of rank {len(dims)}.")
            for i, d in enumerate(dims):
                if isinstance(d, int) and not (r.min[i] == r.max[i] == d):
                    raise BuildError(f"input {name!r} dim {i} is fixed to {d} by the model, but the profile "
                                     f"asks for {r.min[i]}..{r.max[i]}; keep that dim at {d}.")
    if not profiles:
        profiles = (Profile.static({n: [int(d) for d in dims] for n, dims in declared.items()}),)
    import_dims: dict[str, list[int | str]] = {}
    for name, dims in declared.items():
        ranges = [p.get(name) for p in profiles]
        fixed: list[int | str] = []
        for i, d in enumerate(dims):
            seen = {v for r in ranges if r is not None for v in (r.min[i], r.max[i])}
            fixed.append(seen.pop() if all(ranges) and len(seen) == 1 else d)
        import_dims[name] = fixed
    return profiles, import_dims


def symbol_bounds(profiles: tuple[Profile, ...], import_dims: dict[str, list[int | str]]) -> dict[str, tuple[int, int]]:
    """(min, max) of each symbolic dim the model is imported with (resolve_profiles' dims) over
    `profiles`: every input an engine runs lies inside one profile, so every value of the symbol
    lies inside these bounds. A symbol in several places ('batch' of each input) takes, per
    profile, the intersection of their ranges, then the hull over the profiles."""
    hull: dict[str, tuple[int, int]] = {}
    for p in profiles:
        own: dict[str, tuple[int, int]] = {}
        for name, dims in import_dims.items():
            r = p.get(name)
            if r is None:
                continue
            for i, d in enumerate(dims):
                if isinstance(d, str) and d != "?" and i < len(r.min):
                    lo, hi = own.get(d, (r.min[i], r.max[i]))
                    own[d] = (max(lo, r.min[i]), min(hi, r.max[i]))
        for sym, (lo, hi) in own.items():
            old = hull.get(sym)
            hull[sym] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return hull
