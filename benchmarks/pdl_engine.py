"""GPU: whole engines with and without programmatic dependent launch (kernels/triton/pdl.py).

    PYTHONPATH=src python benchmarks/pdl_engine.py resnet50:64:fp8 [bert:32:fp8-tensor ...]

Each argument is model:batch:precision as benchmarks/profile_steps.py takes it (its build, timing
cache /tmp/tc.json). The engine is built once and saved; then loaded four times, alternately with
PDL off and on (pdl.ENABLED, read at every launch: the CUDA graph a load captures has its Triton
kernels launched one way or the other), each load's outputs compared with the first's (the same
kernels, so they must be equal bit for bit) and timed as budget_plan.graph_ms times engines (CUDA
graph replays, 5 x 20 runs, median). Prints each load's time and the median per mode.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from benchmarks.budget_plan import graph_ms  # noqa: E402
from benchmarks.profile_steps import build  # noqa: E402
from kiln.kernels.triton import pdl  # noqa: E402


def main(specs: list[str]) -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; PDL available: {pdl.AVAILABLE}")
    for spec in specs:
        name, batch, precision = spec.split(":")
        engine, feeds = build(name, int(batch), precision)
        path = Path(tempfile.mkdtemp(prefix="kiln-pdl-")) / "engine.kiln"
        engine.save(path)
        del engine
        first = None
        times: dict[bool, list[float]] = {False: [], True: []}
        for on in (False, True, False, True):
            pdl.ENABLED = on
            loaded = kiln.load(path, device="cuda")
            out = {k: v.clone() for k, v in loaded.run_tensors(feeds, validate=False).items()}
            first = first or out
            same = all(torch.equal(out[k], first[k]) for k in first)
            ms = graph_ms(loaded, feeds)
            times[on].append(ms)
            print(f"  {spec} PDL {'on ' if on else 'off'}: {ms:.4f} ms  outputs {'equal' if same else 'DIFFER'}",
                  flush=True)
            del loaded
        off, on_ = median(times[False]), median(times[True])
        print(f"{spec}: PDL off {off:.4f} ms, on {on_:.4f} ms ({off / on_:.3f}x)", flush=True)
    pdl.ENABLED = True


if __name__ == "__main__":
    main(sys.argv[1:])
