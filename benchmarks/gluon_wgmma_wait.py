"""GPU: does an int8 GEMM whose warp-group MMAs stay in flight across K steps run at fp8's rate?

    PYTHONPATH=$PWD/src python3 benchmarks/gluon_wgmma_wait.py              # H100/H200: time it
    PYTHONPATH=$PWD/src python3 benchmarks/gluon_wgmma_wait.py --compile 90  # no GPU: compile for sm_90, read the waits

Triton keeps a dot in flight across K steps only when its accumulator is float32, so every int8
kernel kiln compiles with Triton waits for each K step's wgmmas before it issues the next
(BENCHMARKS.md, "why int8 convs trail fp8 ones"). This is the experiment that tells whether a
kernel that does not wait would close the gap: one GEMM written in Gluon (Triton's lower-level
dialect, where the kernel issues its own waits), a ring of STAGES TMA buffers and one wgmma group
per K step, its wait leaving WAIT groups in flight (0: what Triton does for int8; 1: what it does
for fp8), for int8 (int32 accumulator) and float8 e4m3 (float32) operands. Output: the accumulator
times a scale, as float16. Beside it, on the same operands, kiln's Triton int8 and fp8 GEMMs
(kernels/triton/qgemm.py, float16 out, the fastest config of each space) and torch._scaled_mm / torch._int_mm.
Shapes: BERT-base's FFN1 at batch 32 x 128 tokens, ResNet-50's stage-3 3x3 conv as a GEMM
(im2col, batch 64) and its stage-1 expand conv. Each output is checked against torch first (int8
exactly: the same int32 sums, the same float16 rounding). Timing: kernels_qconv.bench (CUDA graphs
of 5 calls, median of 20). Not a tactic: a measurement to decide whether one is worth writing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kiln.kernels.gluon.qconv_kernel import mma_layout  # noqa: E402

# The TMA copies' names: async_load / async_store since Triton 3.7, before that (3.6, the device's)
# async_copy_global_to_shared / async_copy_shared_to_global.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

# name: (M, N, K)
SHAPES = {"BERT FFN1 (b32 s128)": (4096, 3072, 768), "ResNet s3 3x3 as GEMM (b64)": (12544, 256, 2304),
          "ResNet s1 1x1 64->256 (b64)": (200704, 256, 64)}
CONFIGS = [dict(BM=128, BN=128, BK=128, STAGES=4, num_warps=4), dict(BM=128, BN=256, BK=128, STAGES=3, num_warps=8),
           dict(BM=64, BN=128, BK=128, STAGES=4, num_warps=4)]


@gluon.jit
def gemm_kernel(a_desc, b_desc, c_desc, scale, K, WAIT: gl.constexpr, STAGES: gl.constexpr,
                INT: gl.constexpr, num_warps: gl.constexpr):
    """C[BM, BN] tile = (A[off_m:, :] @ B[off_n:, :]^T) * scale: A [M, K] and B [N, K] 8-bit,
    K-major; a ring of STAGES TMA buffers; after each K step's wgmma group, a wait that leaves WAIT
    groups in flight, then the buffer the previous step read (now done) is refilled."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    nbytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    layout: gl.constexpr = mma_layout(BM, BN, num_warps, INT)
    if INT:
        acc = gl.zeros((BM, BN), dtype=gl.int32, layout=layout)
    else:
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=layout)
    steps = gl.cdiv(K, BK)
    for i in gl.static_range(STAGES - 1):   # the ring's first loads
        mbarrier.expect(bars.index(i), nbytes, pred=i < steps)
        _tma_load(a_desc, [off_m, i * BK], bars.index(i), a_bufs.index(i), pred=i < steps)
        _tma_load(b_desc, [off_n, i * BK], bars.index(i), b_bufs.index(i), pred=i < steps)
    for k in range(steps):
        s = k % STAGES
        mbarrier.wait(bars.index(s), (k // STAGES) & 1)
        a = a_bufs.index(s)
        b = b_bufs.index(s)
        acc = warpgroup_mma(a, b.permute((1, 0)), acc, is_async=True)
        acc, a, b = warpgroup_mma_wait(num_outstanding=WAIT, deps=(acc, a, b))
        # With WAIT <= 1 the previous step's group is done: its buffer takes step k + STAGES - 1.
        nxt = k + STAGES - 1
        ns = nxt % STAGES
        mbarrier.expect(bars.index(ns), nbytes, pred=nxt < steps)
        _tma_load(a_desc, [off_m, nxt * BK], bars.index(ns), a_bufs.index(ns), pred=nxt < steps)
        _tma_load(b_desc, [off_n, nxt * BK], bars.index(ns), b_bufs.index(ns), pred=nxt < steps)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    c_smem = gl.allocate_shared_memory(gl.float16, [BM, BN], c_desc.layout)
    c_smem.store((acc.to(gl.float32) * scale).to(gl.float16))
    fence_async_shared()
    _tma_store(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)


def _descriptors(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: dict) -> tuple:
    bits = gl.int8 if a.dtype == torch.int8 else gl.float8e4nv
    la = gl.NVMMASharedLayout.get_default_for([cfg["BM"], cfg["BK"]], bits)
    lb = gl.NVMMASharedLayout.get_default_for([cfg["BN"], cfg["BK"]], bits)
    lc = gl.NVMMASharedLayout.get_default_for([cfg["BM"], cfg["BN"]], gl.float16)
    return (TensorDescriptor.from_tensor(a, [cfg["BM"], cfg["BK"]], la),
            TensorDescriptor.from_tensor(b, [cfg["BN"], cfg["BK"]], lb),
            TensorDescriptor.from_tensor(c, [cfg["BM"], cfg["BN"]], lc))


def gemm(a: torch.Tensor, b: torch.Tensor, scale: float, cfg: dict, wait: int) -> torch.Tensor:
    """(a @ b^T) * scale in float16 by gemm_kernel (a [M, K], b [N, K], both int8 or both float8)."""
    m, n = a.shape[0], b.shape[0]
    c = torch.empty((m, n), dtype=torch.float16, device=a.device)
    grid = (triton.cdiv(m, cfg["BM"]), triton.cdiv(n, cfg["BN"]))
    gemm_kernel[grid](*_descriptors(a, b, c, cfg), scale, a.shape[1], WAIT=wait, STAGES=cfg["STAGES"],
                      INT=a.dtype == torch.int8, num_warps=cfg["num_warps"])
    return c


def compile_only(arch: int) -> None:
    """Compile gemm_kernel for sm_`arch` without a GPU and print each variant's SASS waits."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from benchmarks.kernel_resources import cubin_resources
    for dtype in (torch.int8, torch.float8_e4m3fn):
        for cfg in CONFIGS:
            for wait in (0, 1):
                a = torch.zeros(4096, 768, dtype=dtype)
                b = torch.zeros(3072, 768, dtype=dtype)
                c = torch.zeros(4096, 3072, dtype=torch.float16)
                descs = _descriptors(a, b, c, cfg)
                sig = {"a_desc": mangle_type(descs[0]), "b_desc": mangle_type(descs[1]), "c_desc": mangle_type(descs[2]),
                       "scale": "fp32", "K": "i32", "WAIT": "constexpr", "STAGES": "constexpr", "INT": "constexpr",
                       "num_warps": "constexpr"}
                consts = {"WAIT": wait, "STAGES": cfg["STAGES"], "INT": dtype == torch.int8,
                          "num_warps": cfg["num_warps"]}
                src = GluonASTSource(gemm_kernel, sig, consts, {(4,): [["tt.divisibility", 16]]})
                r = cubin_resources(triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                                   options={"num_warps": cfg["num_warps"]}))
                print(f"{str(dtype)[6:]:14s} {cfg} WAIT={wait}: SASS waits (groups left in flight: count) "
                      f"{dict(sorted(r.mma_waits.items()))}, {list(r.mma)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", type=int, default=0, metavar="ARCH", help="no GPU: compile for sm_ARCH only")
    args = ap.parse_args()
    if args.compile:
        compile_only(args.compile)
        return
    from benchmarks.kernels_qconv import bench
    from kiln.kernels.triton import qgemm
    from kiln.kernels.triton.qgemm_space import FP8_CONFIGS as GEMM_FP8, INT8_CONFIGS as GEMM_INT8
    print(torch.cuda.get_device_name(), torch.__version__, "triton", triton.__version__, flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, (m, n, k) in SHAPES.items():
        flop = 2 * m * n * k
        ai = torch.randint(-127, 128, (m, k), generator=g, device="cuda", dtype=torch.int8)
        bi = torch.randint(-127, 128, (n, k), generator=g, device="cuda", dtype=torch.int8)
        af = (torch.randn(m, k, generator=g, device="cuda") * 8).to(torch.float8_e4m3fn)
        bf = (torch.randn(n, k, generator=g, device="cuda") * 8).to(torch.float8_e4m3fn)
        scale = 1e-4
        want_i = (torch._int_mm(ai, bi.t()).float() * scale).half()
        want_f = (af.float() @ bf.float().t() * scale).half()
        rows = []
        for cfg in CONFIGS:
            for wait in (0, 1):
                for label, a, b, want in (("int8", ai, bi, want_i), ("fp8", af, bf, want_f)):
                    try:
                        got = gemm(a, b, scale, cfg, wait)
                        ok = torch.equal(got, want) if label == "int8" else \
                            bool(torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2))
                        ms = bench(lambda a=a, b=b, cfg=cfg, wait=wait: gemm(a, b, scale, cfg, wait))
                        rows.append((label, f"gluon {cfg['BM']}x{cfg['BN']}x{cfg['BK']} w{cfg['num_warps']} "
                                            f"s{cfg['STAGES']} WAIT={wait}", ms, ok))
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        rows.append((label, f"gluon {cfg} WAIT={wait} FAILED {type(exc).__name__}: {str(exc)[:120]}",
                                     float("inf"), False))
        ones = torch.ones(n, device="cuda", dtype=torch.float16)
        scale16 = torch.tensor(scale, device="cuda", dtype=torch.float16)   # made here: a copy cannot be captured
        for label, a, b, space in (("int8", ai, bi, GEMM_INT8), ("fp8", af, bf, GEMM_FP8)):
            best = (float("inf"), None)
            for cfg in space:
                try:
                    fn = lambda cfg=cfg, a=a, b=b: qgemm.qmatmul(  # noqa: E731
                        a, b, scale16, None, ones, trans_b=1, config=cfg)
                    fn()
                    best = min(best, (bench(fn), str(cfg)), key=lambda t: t[0])
                except Exception:  # noqa: BLE001 - a config that does not launch here
                    continue
            rows.append((label, f"kiln Triton qmatmul, best of its space ({best[1]})", best[0], True))
        rows.append(("fp8", "torch._scaled_mm (bf16 out)", bench(lambda: torch._scaled_mm(
            af, bf.t(), torch.tensor(1.0, device="cuda"), torch.tensor(scale, device="cuda"), out_dtype=torch.bfloat16)),
            True))
        rows.append(("int8", "torch._int_mm (int32 out)", bench(lambda: torch._int_mm(ai, bi.t())), True))
        print(f"== {name}: M {m}, N {n}, K {k}", flush=True)
        for label, what, ms, ok in sorted(rows, key=lambda r: (r[0], r[2])):
            tops = flop / (ms * 1e-3) / 1e12 if ms != float("inf") else 0.0
            print(f"  {label:5s} {ms * 1e3:8.1f} us {tops:6.0f} TOPS  {'ok ' if ok else 'BAD'} {what}", flush=True)


if __name__ == "__main__":
    main()
