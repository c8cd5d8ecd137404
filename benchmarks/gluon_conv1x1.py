"""GPU: a warp-specialized Gluon kernel for ResNet-50's 1x1 convs that add the block's residual,
against kiln's Triton kiln::QConv on the same operands.

    PYTHONPATH=$PWD/src python3 benchmarks/gluon_conv1x1.py [int8|fp8 ...]      # H100/H200: check and time it
    PYTHONPATH=$PWD/src python3 benchmarks/gluon_conv1x1.py --compile 90       # no GPU: compile for sm_90

Those convs (16 of ResNet-50's 52) move ~2 bytes per FLOP and kiln's Triton kernels run them at
~2.4 TB/s where a device copy reaches ~4.2 (benchmarks/kernels_qconv_residual.py, H200,
2026-11-29); no tile, stage count or occupancy moved that, nor loading the residual a tile ahead.
In a Triton kernel one program does everything in order: the loads of a tile, its MMAs, its
epilogue, its store. Here the work is split by warps (Gluon's warp_specialize): one warp issues
the TMA loads of X's and W's K steps and of the residual's tile into rings of shared-memory
buffers, as far ahead as the rings allow, across tiles; a warpgroup runs the MMAs (int8 ones
leaving a group in flight, which Triton does not) and the epilogue, and hands Y to the copy engine
as TMA stores that it does not wait for. Persistent: one or two programs per SM take tiles
i, i + programs, ..., row-major over (pixel block, channel block).

The conv is a GEMM here: X channels-last [N*H*W, C], the packed weight [OC, C], the residual and Y
[N*H*W, OC], all 8-bit (int8 or float8 e4m3); Y = requantize(Relu(acc * x_scale * w_scale[oc] +
bias[oc] + R * r_scale)) as kiln::QConv computes it (int8 rounded half to even, fp8 saturated).
Per 1x1 stride-1 layer (kernels_qconv_store.LAYERS, batch 64; without a residual the kernel skips
its ring): kiln's fastest config of its space, then each Gluon config, its codes compared with kiln's (at most one code apart: the
rounding of the scale product may differ by an ulp; the share of identical codes printed), in GB/s
of the bytes the layer must move. CUDA graphs of 5 calls, median of 20 (kernels_qconv.bench).
Not a tactic: the measurement that decides whether one is worth writing. Compiled for sm_90 with
Triton 3.6 (`--compile 90`, 2026-11-29): every config without spills (128 registers a thread at
maxnreg 128), 78-131 KB of shared memory, and the int8 variants' SASS keeps one wgmma group in
flight (WARPGROUP.DEPBAR 0x1). Not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
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
from benchmarks.gluon_wgmma_wait import _mma_layout  # noqa: E402

_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier     # renamed after Triton 3.6

# maxnreg: the registers per thread the kernel's 8 warps (the warpgroup, the loader's) are allotted,
# of which the loader keeps 40 and the compute warpgroup gets the rest; 128 lets two programs share
# an SM's 64K registers (the default, 256 less the rounding, lets one).
CONFIGS = [dict(BM=128, BN=128, STAGES=2, R_BUFS=2, Y_BUFS=2, SM_PROGRAMS=1, maxnreg=None),
           dict(BM=128, BN=128, STAGES=2, R_BUFS=2, Y_BUFS=2, SM_PROGRAMS=2, maxnreg=128),
           dict(BM=128, BN=64, STAGES=3, R_BUFS=3, Y_BUFS=2, SM_PROGRAMS=2, maxnreg=128),
           dict(BM=64, BN=128, STAGES=3, R_BUFS=3, Y_BUFS=2, SM_PROGRAMS=2, maxnreg=128)]


@gluon.jit
def _loader(a_desc, w_desc, r_desc, bars, bufs, M, N, K, programs, HAS_RES: gl.constexpr):
    """Worker partition (one warp): X's and W's K steps into the operand ring, then (HAS_RES) the
    tile's residual into the residual ring, each buffer once the compute partition has freed it."""
    ready, empty, r_ready, r_empty = bars
    a_bufs, w_bufs, r_bufs = bufs
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    R_BUFS: gl.constexpr = r_bufs.type.shape[0]
    tiles_n = gl.cdiv(N, BN)
    tiles = gl.cdiv(M, BM) * tiles_n
    steps = gl.cdiv(K, BK)
    it = 0
    count = 0
    for tile in range(gl.program_id(0), tiles, programs):
        off_m = (tile // tiles_n) * BM
        off_n = (tile % tiles_n) * BN
        for k in range(steps):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            _tma_load(a_desc, [off_m, k * BK], ready.index(s), a_bufs.index(s))
            _tma_load(w_desc, [off_n, k * BK], ready.index(s), w_bufs.index(s))
            it += 1
        if HAS_RES:
            rb = count % R_BUFS
            mbarrier.wait(r_empty.index(rb), ((count // R_BUFS) & 1) ^ 1)
            mbarrier.expect(r_ready.index(rb), r_desc.block_type.nbytes)
            _tma_load(r_desc, [off_m, off_n], r_ready.index(rb), r_bufs.index(rb))
        count += 1


@gluon.jit
def _compute(y_desc, bars, bufs, y_bufs, M, N, K, programs, XS, WS, BIAS, RS, INV_OS,
             INT: gl.constexpr, HAS_RES: gl.constexpr, num_warps: gl.constexpr):
    """Default partition (a warpgroup): the MMAs of each tile, one group left in flight, the
    operand buffers freed as their group completes; then the epilogue on the residual tile and
    the requantized tile handed to a TMA store that is not waited for until its buffer comes
    round again."""
    ready, empty, r_ready, r_empty = bars
    a_bufs, w_bufs, r_bufs = bufs
    BM: gl.constexpr = y_desc.block_type.shape[0]
    BN: gl.constexpr = y_desc.block_type.shape[1]
    BK: gl.constexpr = a_bufs.type.shape[2]
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    R_BUFS: gl.constexpr = r_bufs.type.shape[0]
    Y_BUFS: gl.constexpr = y_bufs.type.shape[0]
    layout: gl.constexpr = _mma_layout(BM, BN, num_warps, INT)
    cols: gl.constexpr = gl.SliceLayout(0, layout)
    tiles_n = gl.cdiv(N, BN)
    tiles = gl.cdiv(M, BM) * tiles_n
    steps = gl.cdiv(K, BK)
    xs = gl.load(XS)
    rs = gl.load(RS)
    inv = gl.load(INV_OS)
    it = 0
    count = 0
    for tile in range(gl.program_id(0), tiles, programs):
        off_m = (tile // tiles_n) * BM
        off_n = (tile % tiles_n) * BN
        if INT:
            acc = gl.zeros((BM, BN), dtype=gl.int32, layout=layout)
        else:
            acc = gl.zeros((BM, BN), dtype=gl.float32, layout=layout)
        for k in range(steps):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(s), w_bufs.index(s).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            # the group before this one has completed: its buffers go back to the loader
            mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=k > 0)
            it += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES))
        offs_n = off_n + gl.arange(0, BN, layout=cols)
        ws = gl.load(WS + offs_n, mask=offs_n < N, other=0.0)
        bias = gl.load(BIAS + offs_n, mask=offs_n < N, other=0.0)
        v = acc.to(gl.float32) * (xs * ws)[None, :] + bias[None, :]
        if HAS_RES:
            rb = count % R_BUFS
            mbarrier.wait(r_ready.index(rb), (count // R_BUFS) & 1)
            r = r_bufs.index(rb).load(layout)
            fence_async_shared()
            mbarrier.arrive(r_empty.index(rb))
            v = v + r.to(gl.float32) * rs
        v = gl.maximum(v * inv, 0.0)
        if INT:   # half to even by the float32 add of 1.5 * 2^23, then saturated
            y = gl.minimum((v + 12582912.0) - 12582912.0, 127.0).to(gl.int8)
        else:
            y = gl.minimum(v, 448.0).to(gl.float8e4nv)
        yb = count % Y_BUFS
        tma.store_wait(Y_BUFS - 1)          # the store that last used this buffer is done ...
        _barrier()                          # ... for every warp of the partition, not only the issuing thread
        y_bufs.index(yb).store(y)
        fence_async_shared()
        _tma_store(y_desc, [off_m, off_n], y_bufs.index(yb))
        count += 1
    tma.store_wait(0)


@gluon.jit
def conv1x1_kernel(a_desc, w_desc, r_desc, y_desc, M, N, K, programs, XS, WS, BIAS, RS, INV_OS,
                   STAGES: gl.constexpr, R_BUFS: gl.constexpr, Y_BUFS: gl.constexpr, INT: gl.constexpr,
                   HAS_RES: gl.constexpr, num_warps: gl.constexpr):
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    r_bufs = gl.allocate_shared_memory(r_desc.dtype, [R_BUFS] + r_desc.block_type.shape, r_desc.layout)
    y_bufs = gl.allocate_shared_memory(y_desc.dtype, [Y_BUFS] + y_desc.block_type.shape, y_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    r_ready = gl.allocate_shared_memory(gl.int64, [R_BUFS, 1], mbarrier.MBarrierLayout())
    r_empty = gl.allocate_shared_memory(gl.int64, [R_BUFS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(R_BUFS):
        mbarrier.init(r_ready.index(i), count=1)
        mbarrier.init(r_empty.index(i), count=1)
    bars = (ready, empty, r_ready, r_empty)
    bufs = (a_bufs, w_bufs, r_bufs)
    gl.warp_specialize([
        (_compute, (y_desc, bars, bufs, y_bufs, M, N, K, programs, XS, WS, BIAS, RS, INV_OS, INT, HAS_RES,
                    num_warps)),
        (_loader, (a_desc, w_desc, r_desc, bars, bufs, M, N, K, programs, HAS_RES)),
    ], [1], [40])


def _descriptors(a: torch.Tensor, w: torch.Tensor, r: torch.Tensor, y: torch.Tensor, cfg: dict, bk: int) -> tuple:
    bits = gl.int8 if a.dtype == torch.int8 else gl.float8e4nv
    la = gl.NVMMASharedLayout.get_default_for([cfg["BM"], bk], bits)
    lw = gl.NVMMASharedLayout.get_default_for([cfg["BN"], bk], bits)
    lr = gl.NVMMASharedLayout.get_default_for([cfg["BM"], cfg["BN"]], bits)
    return (TensorDescriptor.from_tensor(a, [cfg["BM"], bk], la), TensorDescriptor.from_tensor(w, [cfg["BN"], bk], lw),
            TensorDescriptor.from_tensor(r, [cfg["BM"], cfg["BN"]], lr),
            TensorDescriptor.from_tensor(y, [cfg["BM"], cfg["BN"]], lr))


def conv1x1(a, w, r, y, xs, ws, bias, rs, inv_os, cfg: dict, sms: int) -> torch.Tensor:  # noqa: ANN001
    """Y [M, N] from A [M, K], W [N, K], R [M, N] or None (8-bit, contiguous) and the epilogue's
    float32 operands (scalars as 1-element tensors; rs unused without R)."""
    has_res = r is not None
    cfg = cfg if has_res else {**cfg, "R_BUFS": 1}     # one idle buffer: the descriptor's layout
    r = r if has_res else y
    m, k = a.shape
    n = w.shape[0]
    bk = min(128, k)
    tiles = triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"])
    programs = min(tiles, sms * cfg["SM_PROGRAMS"])
    conv1x1_kernel[(programs,)](*_descriptors(a, w, r, y, cfg, bk), m, n, k, programs, xs, ws, bias, rs, inv_os,
                                STAGES=cfg["STAGES"], R_BUFS=cfg["R_BUFS"], Y_BUFS=cfg["Y_BUFS"],
                                INT=a.dtype == torch.int8, HAS_RES=has_res, num_warps=4,
                                **({"maxnreg": cfg["maxnreg"]} if cfg["maxnreg"] else {}))
    return y


def compile_only(arch: int) -> None:
    """Compile conv1x1_kernel for sm_`arch` without a GPU: registers, spills, shared memory and
    the SASS waits of each variant."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for dtype in (torch.int8, torch.float8_e4m3fn):
        for cfg in CONFIGS:
            for k, has_res in ((64, True), (256, True), (256, False)):
                a, w = torch.zeros(3136, k, dtype=dtype), torch.zeros(4 * k, k, dtype=dtype)
                r, y = torch.zeros(3136, 4 * k, dtype=dtype), torch.zeros(3136, 4 * k, dtype=dtype)
                descs = _descriptors(a, w, r, y, cfg, min(128, k))
                names = ("a_desc", "w_desc", "r_desc", "y_desc")
                sig = {**{nm: mangle_type(d) for nm, d in zip(names, descs)}, "M": "i32", "N": "i32", "K": "i32",
                       "programs": "i32", "XS": "*fp32", "WS": "*fp32", "BIAS": "*fp32", "RS": "*fp32",
                       "INV_OS": "*fp32", "STAGES": "constexpr", "R_BUFS": "constexpr", "Y_BUFS": "constexpr",
                       "INT": "constexpr", "HAS_RES": "constexpr", "num_warps": "constexpr"}
                consts = {"STAGES": cfg["STAGES"], "R_BUFS": cfg["R_BUFS"], "Y_BUFS": cfg["Y_BUFS"],
                          "INT": dtype == torch.int8, "HAS_RES": has_res, "num_warps": 4}
                kernel = triton.compile(GluonASTSource(conv1x1_kernel, sig, consts),
                                        target=GPUTarget("cuda", arch, 32),
                                        options={"num_warps": 4, **({"maxnreg": cfg["maxnreg"]} if cfg["maxnreg"] else {})})
                path = f"/tmp/gluon_conv1x1_{os.getpid()}.cubin"
                with open(path, "wb") as f:
                    f.write(kernel.asm["cubin"])
                usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", path],
                                       capture_output=True, text=True, check=True).stdout
                sass = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "-sass", path], capture_output=True,
                                      text=True, check=True).stdout
                os.remove(path)
                res = re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage)
                waits = sorted(set(re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", sass)))
                print(f"{str(dtype)[6:]:14s} K {k:3d}{' residual' if has_res else ''} {cfg}: regs {res[1]}, spill {res[2]} B, shared "
                      f"{kernel.metadata.shared} B, SASS waits {waits}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", type=int, default=0, metavar="ARCH", help="no GPU: compile for sm_ARCH only")
    ap.add_argument("precisions", nargs="*", default=["fp8", "int8"])
    args = ap.parse_args()
    if args.compile:
        compile_only(args.compile)
        return
    from benchmarks.kernels_qconv import bench
    from benchmarks.kernels_qconv_residual import moved
    from benchmarks.kernels_qconv_store import LAYERS, make
    from kiln.kernels.triton import qconv as tq
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), torch.__version__, "triton", triton.__version__, flush=True)
    for q in args.precisions:
        space = tq.FP8_CONFIGS if q == "fp8" else tq.INT8_CONFIGS
        total_kiln = total_gluon = 0.0
        for li, layer in enumerate(LAYERS):
            name, count, n, c, h, wd, oc, has_res = layer
            ops, attrs = make(li, q)
            x, wq, xs, _, ws, _, bias, res, os_, _, rs, _ = ops
            kiln = []
            for cfg in space:
                try:
                    fn = lambda cfg=cfg: tq.qconv(*ops, **attrs, config=cfg)  # noqa: E731
                    kiln.append((bench(fn) * 1e3, fn))
                except Exception:  # noqa: BLE001 - a config that does not launch here
                    continue
            best_us, best_fn = min(kiln, key=lambda t: t[0])
            want = best_fn().permute(0, 2, 3, 1).reshape(-1, oc).view(torch.uint8).int()
            gb = moved(li) / 1e3
            print(f"{q} {name:24s} x{count}  kiln best {best_us:6.1f} us ({gb / best_us:5.0f} GB/s)", flush=True)
            a = x.permute(0, 2, 3, 1).reshape(-1, c)
            w2 = wq.reshape(oc, c).contiguous()
            r2 = res.permute(0, 2, 3, 1).reshape(-1, oc) if has_res else None
            y = torch.empty((a.shape[0], oc), dtype=a.dtype, device="cuda")
            f32 = dict(xs=xs.float().reshape(1), ws=ws.float().contiguous(), bias=bias.float().contiguous(),
                       rs=(rs if has_res else xs).float().reshape(1), inv_os=(1.0 / os_.float()).reshape(1))
            best_gluon = float("inf")
            for cfg in CONFIGS:
                try:
                    got = conv1x1(a, w2, r2, y, **f32, cfg=cfg, sms=sms).view(torch.uint8).int()
                    diff = (got - want).abs()
                    us = bench(lambda cfg=cfg: conv1x1(a, w2, r2, y, **f32, cfg=cfg, sms=sms)) * 1e3
                    if int(diff.max()) <= 1:
                        best_gluon = min(best_gluon, us)
                    print(f"    gluon {cfg}: {us:6.1f} us ({gb / us:5.0f} GB/s)  codes equal {float((diff == 0).float().mean()):.4%}, "
                          f"max code difference {int(diff.max())}", flush=True)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"    gluon {cfg}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            total_kiln += count * best_us
            total_gluon += count * min(best_us, best_gluon)
        print(f"{q}: the 1x1 layers weighted by their counts: kiln {total_kiln:.1f} us, with the Gluon kernel where it "
              f"is faster and within a code {total_gluon:.1f} us", flush=True)


if __name__ == "__main__":
    main()
