"""all-MiniLM-L6-v2 on one GPU: kiln engines vs PyTorch eager and torch.compile, same inputs.

Usage (GPU machine): python benchmarks/minilm.py [--batches 1,32] [--seq 128] [--iters 200]
Each configuration first checks the engine's embeddings against PyTorch fp32 (cosine),
then times every contender with CUDA events (median of --iters runs after warm-up).
Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import kiln
from kiln.models import minilm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
from benchmarks.measure import time_ms  # noqa: E402


def median_ms(fn, iters: int, warmup: int = 10) -> float:
    """Whole-model time: each call's own launches included (no GPU hold, unlike the kernel timers)."""
    return time_ms(fn, "cuda", iters=iters, warmup=warmup, max_seconds=math.inf, min_iters=iters).median_ms


def inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    sentences = [minilm.SAMPLE_SENTENCES[i % len(minilm.SAMPLE_SENTENCES)] for i in range(batch)]
    feeds = minilm.tokenize(sentences, max_length=seq)
    # pad every row to `seq` tokens so all contenders see [batch, seq]
    out = {}
    for k, v in feeds.items():
        t = torch.zeros((batch, seq), dtype=torch.int64)
        t[:, : v.shape[1]] = torch.from_numpy(v)
        out[k] = t.cuda()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--precisions", default="fp32,fp16")
    args = ap.parse_args()
    path = minilm.default_model_path()
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    rows = []
    for precision in args.precisions.split(","):
        ranges = {n: ((1, 1), (32, args.seq), (64, args.seq)) for n in minilm.INPUT_NAMES}
        t0 = time.perf_counter()
        engine = kiln.build(path, kiln.BuildConfig(precision=precision, device="cuda",
                                                   profiles=(kiln.Profile.from_ranges(ranges),)))
        build_s = time.perf_counter() - t0
        ref32 = minilm.embedding_module().cuda().eval()
        module = minilm.embedding_module().cuda().to(dtypes[precision]).eval()
        compiled = {mode: torch.compile(module, mode=mode) for mode in ("default", "reduce-overhead")}
        for batch in map(int, args.batches.split(",")):
            feeds = inputs(batch, args.seq)
            a = tuple(feeds[n] for n in minilm.INPUT_NAMES)
            with torch.inference_mode():
                want = ref32(*a).float()
                got = engine.run_tensors(feeds)[minilm.OUTPUT_NAME].float()
                cos = torch.nn.functional.cosine_similarity(got, want, dim=1).min().item()
                assert cos > 0.999, f"kiln {precision} batch {batch}: cosine {cos}"
                times = {"kiln": median_ms(lambda: engine.run_tensors(feeds, validate=False), args.iters),
                         "eager": median_ms(lambda: module(*a), args.iters)}
                for mode, fn in compiled.items():
                    t0 = time.perf_counter()
                    fn(*a)
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                    peer = fn(*a).float()
                    assert torch.nn.functional.cosine_similarity(peer, want, dim=1).min().item() > 0.999
                    times[f"compile:{mode}"] = median_ms(lambda: fn(*a), args.iters)
                    times[f"compile:{mode}:first_call_s"] = compile_s
            best = min(v for k, v in times.items() if k.startswith("compile:") and not k.endswith("_s"))
            rows.append((precision, batch, cos, times, best, build_s))
    print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}; seq {args.seq}; median of {args.iters}")
    print("| precision | batch | kiln ms | eager ms | compile default ms | compile reduce-overhead ms "
          "| kiln vs eager | kiln vs best compile | cosine vs fp32 | kiln build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for precision, batch, cos, t, best, build_s in rows:
        print(f"| {precision} | {batch} | {t['kiln']:.3f} | {t['eager']:.3f} | {t['compile:default']:.3f} | "
              f"{t['compile:reduce-overhead']:.3f} | {t['eager'] / t['kiln']:.2f}x | {best / t['kiln']:.2f}x | "
              f"{cos:.6f} | {build_s:.1f} |")


if __name__ == "__main__":
    main()
