"""Kernel-level profile of kiln fp16 engines: CUDA-graph time, tuner choices, and GPU kernel time by kernel.

    PYTHONPATH=src [PEERS=1] python benchmarks/profile_kernels.py bert_base:32 vit_b16:32:1

Each argument is model:batch[:min_batch[:precision]] (a min_batch below batch builds one
dynamic-batch profile; precision fp16 by default, or int8/fp8 with fp16 float layers,
calibrated on 4 batches of the benchmark's random inputs). The engine is replayed eagerly under torch.profiler to attribute GPU time to
kernels; with PEERS=1 torch.compile (default mode) of the same module is profiled the same
way. Writes prof_<model>_<batch>_<min>_<precision>.txt under $OUT (default /tmp).
"""
import collections
import os
import sys
import time
from pathlib import Path
import torch
sys.path.insert(0, ".")
from benchmarks import models
import kiln
from kiln.config import BuildConfig, Profile
from kiln.kernels.triton.qgemm_space import describe
OUT = Path(os.environ.get("OUT", "/tmp"))
which = sys.argv[1:] or ["bert_base:32", "vit_b16:32", "resnet50:64"]

def timeit(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n

def kernel_table(fn, label, f):
    from torch.profiler import profile, ProfilerActivity
    for _ in range(2): fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5): fn()
        torch.cuda.synchronize()
    tot = collections.Counter(); cnt = collections.Counter()
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            tot[ev.name[:90]] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            cnt[ev.name[:90]] += 1
    allt = sum(tot.values()) / 5
    print(f"== {label}: GPU kernel time per run {allt/1000:.3f} ms, kernels/run {sum(cnt.values())/5:.0f}", file=f, flush=True)
    for k, v in tot.most_common(28):
        print(f"  {v/5/1000:8.3f} ms  x{cnt[k]//5:4d}  {k}", file=f)

GEMM_KERNELS = ("_qgemm_kernel", "qgemm_tma_kernel", "_qconv_kernel")


def gemm_steps(fn, steps, f):
    """Each Triton int8/fp8 GEMM step's kernel time in the engine (one eager run, in launch
    order: each such step launches one kernel) against the tuner's L2-flushed time for it,
    grouped by tactic, activation, output (float or requantized) and config."""
    from torch.profiler import profile, ProfilerActivity
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = sorted((ev for ev in prof.events() if ev.device_type.name == "CUDA"
                      and ev.name.startswith(GEMM_KERNELS)), key=lambda ev: ev.time_range.start)
    gemms = [s for s in steps if s.tactic.startswith(("kiln::QMatMul.triton", "kiln::QConv.triton"))]
    if not gemms:
        return
    print(f"  Triton int8/fp8 GEMM steps: {len(gemms)}, their kernels: {len(kernels)}", file=f)
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for st, ev in zip(gemms, kernels):
        c = st.config
        tile = describe(c)
        requant = len(st.inputs) > 8 and st.inputs[8] is not None
        key = (st.tactic.split(".")[-1], st.attrs.get("activation", "") or "-", "requant" if requant else "float", tile)
        g = groups[key]
        g[0] += 1
        g[1] += ev.time_range.elapsed_us()
        g[2] += 1000 * (st.tuning.ms if st.tuning is not None and st.tuning.ms else float("nan"))
    for key, (n, us, tuned) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"    {' | '.join(key):70s} x{n:3d}  in engine {us / n:7.1f} us, tuned (L2 flushed) {tuned / n:7.1f} us",
              file=f)


for spec in which:
    parts = spec.split(":"); name, batch = parts[0], int(parts[1]); lo = int(parts[2]) if len(parts) > 2 else batch
    precision = parts[3] if len(parts) > 3 else "fp16"
    m = getattr(models, {"bert_base": "bert"}.get(name, name))(0)
    p = models.export_onnx(m, Path("/tmp/bench"))
    t0 = time.time()
    quantized = precision in ("int8", "fp8")
    calibration = [{k: v.numpy() for k, v in models.make_inputs(m, batch, seed=s).items()} for s in range(1, 5)] \
        if quantized else None
    e = kiln.build(str(p), BuildConfig(precision=precision, device="cuda", timing_cache="/tmp/tc.json",
                                       float_precision="fp16" if quantized else "fp32",
                                       profiles=(Profile.from_ranges(models.profile_ranges(m, sorted({lo, batch}))),)),
                   calibration=calibration)
    bt = time.time() - t0
    feeds = {k: v.cuda() for k, v in models.make_inputs(m, batch).items()}
    with open(OUT / f"prof_{name}_{batch}_{lo}_{precision}.txt", "w") as f:
        g = timeit(lambda: e.run_tensors(feeds, validate=False))
        print(f"{name} {precision} b{batch}: build {bt:.1f}s; CUDA graph {g:.3f} ms ({e.cuda_graph_status[:80]})", file=f, flush=True)
        print("  tactics", collections.Counter(s.tactic for s in e.plan.steps if not s.host).most_common(30), file=f)
        tun = e.header["build"].get("tuning", {})
        print("  tuning", {k: v for k, v in tun.items() if k != "rejected"}, file=f)
        if tun.get("stopped"):
            print("  TUNING STOPPED: the steps from the failing one on are untuned", file=f)
        for r in tun.get("rejected", [])[:8]:
            print("  rejected", str(r)[:300], file=f)
        shown = collections.Counter()
        for st in e.plan.steps:
            if st.tuning is not None and shown[st.op] < 2 and st.op in ("LayerNormalization", "kiln::AddLayerNorm", "kiln::FusedMatMul", "kiln::QMatMul", "kiln::QConv", "QuantizeLinear", "Conv", "kiln::FusedConv"):
                shown[st.op] += 1
                t = st.tuning
                print(f"  step {st.name[:40]} {st.tactic} {st.config} {t.ms} | runner-up {t.runner_up} {t.runner_up_config} {t.runner_up_ms}", file=f)
        e.use_cuda_graphs = False
        print(f"  eager {timeit(lambda: e.run_tensors(feeds, validate=False)):.3f} ms", file=f)
        kernel_table(lambda: e.run_tensors(feeds, validate=False), f"kiln {name} b{batch}", f)
        gemm_steps(lambda: e.run_tensors(feeds, validate=False), e.plan.steps, f)
        mod = m.module.cuda().half() if os.environ.get("PEERS") else None
        if mod is not None:
            hf = {k: (v.half() if v.is_floating_point() else v) for k, v in feeds.items()}
            c = torch.compile(mod)
            with torch.no_grad():
                ct = timeit(lambda: c(*[hf[n] for n in m.input_names]))
                print(f"  torch.compile(default) {ct:.3f} ms", file=f)
                kernel_table(lambda: c(*[hf[n] for n in m.input_names]), f"torch.compile {name} b{batch}", f)
    print(open(OUT / f"prof_{name}_{batch}_{lo}_{precision}.txt").read(), flush=True)
