"""Activation memory of fp16 engines: the liveness plan against what the CUDA graphs' arena holds.

    PYTHONPATH=src python benchmarks/arena_memory.py [resnet50:64 bert:32 ...]

For each model:batch, builds the fp16 engine (static batch), runs it once (one CUDA-graph
capture) and prints the plan's peak (and the sum of all activations, had none been reused),
the peak the arena reserved for, the bytes its pool holds and its segments (runtime/arena.py).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import models  # noqa: E402
import kiln  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402

MIB = 2**20


def main(specs: list[str]) -> None:
    for spec in specs:
        name, batch = spec.split(":")[0], int(spec.split(":")[1])
        m = getattr(models, name)(0)
        path = models.export_onnx(m, Path("/tmp/bench"))
        engine = kiln.build(str(path), BuildConfig(precision="fp16", device="cuda", timing_cache="/tmp/tc.json",
                                                   profiles=(Profile.from_ranges(models.profile_ranges(m, [batch])),)))
        engine.run_tensors({k: v.cuda() for k, v in models.make_inputs(m, batch).items()})
        torch.cuda.synchronize()
        arena, plan = engine.arena, engine.plan.memory
        segments = [round(seg["total_size"] / MIB, 1) for seg in engine._graphs.arena.segments()]
        print(f"{name} b{batch} fp16: plan peak {plan.peak_bytes / MIB:.1f} MiB (all activations "
              f"{plan.total_bytes / MIB:.1f}), arena planned {arena['planned_bytes'] / MIB:.1f} MiB, pool holds "
              f"{arena['reserved_bytes'] / MIB:.1f} MiB in segments of {segments} MiB", flush=True)
        del engine
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50:64", "bert:32"])
