"""The device side of kiln::QConv for stride-1 convolutions over channels-last 8-bit tensors,
warp-specialized (Gluon); its launcher is kernels/gluon/qconv.py. The oracle is kiln::QConv
(kernels/reference/quantized.py).

A 1x1 stride-1 conv is a GEMM: X [N*H*W, C] (channels-last, a view), the weight [OC, C], the residual and
Y [N*H*W, OC]. ResNet-50's are bandwidth-bound (the expand convs with the block's residual move ~2
bytes per FLOP), and kiln's Triton kernels run them at ~2.4 TB/s where a device copy reaches ~4.2
on an H200 (benchmarks/kernels_qconv_residual.py, 2026-11-29): a Triton program does a tile's
loads, MMAs, epilogue and store in order. Here the work is split by warps: one warp issues the TMA
loads of X's and W's K steps and of the residual's tile into rings of shared-memory buffers, as far
ahead as the rings allow and across tiles; a warpgroup runs the MMAs (int8 ones leaving a group in
flight across K steps, which Triton does not: benchmarks/gluon_wgmma_wait.py) and the epilogue,
and hands Y to the copy engine as TMA stores it waits for only when their buffer comes round again.
Persistent: SM_PROGRAMS programs per SM take tiles i, i + programs, ..., row-major over (pixel
block, channel block), so a block of X is read for all its channel blocks in a row.
Programmatic dependent launch as kiln's Triton kernels (kernels/triton/pdl.py): launched with it
on sm_90, the kernel's first statement, before the partitions fork, waits for the kernel before.

Other stride-1 convs (3x3 and any KxK, padding of any size, no dilation) take the same kernel as
the WINDOW walk of kernels/triton/qconv_window.py: an output tile is a box of BI images x BH rows
x BW columns (window_box), and each K step (a tap (kh, kw), then BK of its C channels) is one 4-D
TMA copy of X's box at the tap's offset, the copy engine filling what lies outside X (the
padding) with zeros, beside a block of the packed weight [OC, KH*KW*C]. The box's pixels land in
shared memory as consecutive rows of BK bytes, swizzled as a [BM, BK] matrix's would be, so the
MMA reads that view directly (Triton's compiler does so only for a box of one row, and otherwise
takes the operand through registers without a group in flight). Y and the residual are boxes of
[N, OH, OW, OC], clipped by the copy engine at the edges. A 1x1 stride-1 conv without padding is
the case of one tap over the view [1, 1, N*H*W, C]. Compiled for sm_90 (Triton 3.6 and 3.9); its
GPU tests (3x3, 5x5 and padded 1x1 convs) pass on an H200 (2026-11-29).

Arithmetic (the reference's, as kernels/triton/qconv_epilogue.py computes it): acc (int32, or
float32 for float8 operands) * (x_scale * w_scale[oc]) + bias[oc] + R * residual_scale, Relu where
asked, times the correctly rounded 1 / out_scale, then int8 rounded half to even and saturated,
or float8 e4m3 saturated at +-448 and rounded to nearest even. The int8 accumulator becomes
float32 by the conversion (I2FP, which an H200 runs faster here than the bits of acc + 1.5 * 2^23
that the Triton kernels use), residual codes by their bits, int8 codes are read off the bits of
the value shifted by 1.5 * 2^23 (Relu folded into a bound), and float8 is left to the
conversion's own saturation. Zero points must be 0 (kiln's symmetric quantization): the
launcher checks each once and raises otherwise. Compiled for sm_90 under
Triton 3.6 and 3.9: no spills at 128 registers a thread (maxnreg) and one wgmma group left in
flight (benchmarks/gluon_conv1x1.py --compile 90). On an H200 (2026-11-29) its codes equal the
Triton kernel's on ResNet-50's 1x1 layers, and it is faster on most of them (the residual expand
convs most: 49.1 -> 36.7 us at stage 1, fp8; BENCHMARKS.md).
"""
from __future__ import annotations

from typing import Any

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from kiln.kernels.triton.pdl import wait_for_inputs

# Names across Triton versions: the TMA copies became async_load / async_store in 3.7, the
# partition barrier gl.barrier after 3.6.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

# The tuning space. maxnreg: the registers per thread of the kernel's 8 warps (the compute
# warpgroup, the loader's warpgroup of which one warp works), of which the loader keeps 40; 128
# lets two programs share an SM's registers.
CONFIGS: tuple[dict[str, Any], ...] = (
    {"BM": 128, "BN": 128, "STAGES": 2, "R_BUFS": 2, "Y_BUFS": 2, "SM_PROGRAMS": 1, "maxnreg": 0},
    {"BM": 128, "BN": 128, "STAGES": 2, "R_BUFS": 2, "Y_BUFS": 2, "SM_PROGRAMS": 2, "maxnreg": 128},
    {"BM": 128, "BN": 64, "STAGES": 3, "R_BUFS": 3, "Y_BUFS": 2, "SM_PROGRAMS": 2, "maxnreg": 128},
    {"BM": 64, "BN": 128, "STAGES": 3, "R_BUFS": 3, "Y_BUFS": 2, "SM_PROGRAMS": 2, "maxnreg": 128},
    # deeper rings for the layers with many K steps (C 512-2048), one program per SM
    {"BM": 128, "BN": 128, "STAGES": 4, "R_BUFS": 2, "Y_BUFS": 1, "SM_PROGRAMS": 1, "maxnreg": 0},
    {"BM": 128, "BN": 256, "STAGES": 3, "R_BUFS": 1, "Y_BUFS": 1, "SM_PROGRAMS": 1, "maxnreg": 0, "num_warps": 8},
    # (the same tile with the residual and Y double-buffered and two operand stages ran slower on
    # an H200, 21.4 against 18.1 us on stage 4's 1024 -> 512 conv, and no layer of ResNet-50 took it)
)
EIGHT_BIT = {torch.int8: gl.int8, torch.float8_e4m3fn: gl.float8e4nv}


@gluon.constexpr_function
def mma_layout(BM, BN, num_warps, int_operands):
    """The wgmma accumulator layout: warps along M first (16 rows each, at least a warpgroup),
    the widest instruction N that divides BN (int8 instructions stop at N = 224)."""
    warps = [4, 1]
    while warps[0] * warps[1] != num_warps:
        if BM > 16 * warps[0]:
            warps[0] *= 2
        else:
            warps[1] *= 2
    n = min(BN // warps[1], 128 if int_operands else 256)
    while BN % n:
        n -= 16
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=warps, instr_shape=[16, n, 32])


@gluon.jit
def _tile_count(NI, OH, OW, OC, BI: gl.constexpr, BH: gl.constexpr, BW: gl.constexpr, BN: gl.constexpr):
    """Output tiles: boxes of BI images x BH rows x BW columns x BN channels."""
    return gl.cdiv(NI, BI) * gl.cdiv(OH, BH) * gl.cdiv(OW, BW) * gl.cdiv(OC, BN)


@gluon.jit
def _tile_origin(tile, OH, OW, OC, BI: gl.constexpr, BH: gl.constexpr, BW: gl.constexpr, BN: gl.constexpr):
    """The tile's first (image, row, column, channel): channel blocks fastest, then columns, rows
    and images, so a box of X is read for all its channel blocks in a row."""
    tiles_n = gl.cdiv(OC, BN)
    tiles_w = gl.cdiv(OW, BW)
    tiles_h = gl.cdiv(OH, BH)
    p = tile // tiles_n
    return ((p // (tiles_w * tiles_h)) * BI, ((p // tiles_w) % tiles_h) * BH, (p % tiles_w) * BW,
            (tile % tiles_n) * BN)


@gluon.jit
def _loader(a_desc, w_desc, r_desc, bars, bufs, NI, OH, OW, OC, C, KW, PH, PW, KSTEPS, programs,
            HAS_RES: gl.constexpr):
    """Worker partition (one warp): for each K step (tap (kh, kw), then BK channels) X's box at the
    tap's offset (the copy engine fills the padding outside X with zeros) and W's block into the
    operand ring, then (HAS_RES) the tile's residual box into the residual ring, each buffer once
    the compute partition has freed it."""
    ready, empty, r_ready, r_empty = bars
    a_bufs, w_bufs, r_bufs = bufs
    BK: gl.constexpr = a_desc.block_type.shape[3]
    BI: gl.constexpr = r_desc.block_type.shape[0]
    BH: gl.constexpr = r_desc.block_type.shape[1]
    BW: gl.constexpr = r_desc.block_type.shape[2]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    R_BUFS: gl.constexpr = r_bufs.type.shape[0]
    c_steps = gl.cdiv(C, BK)
    it = 0
    count = 0
    for tile in range(gl.program_id(0), _tile_count(NI, OH, OW, OC, BI, BH, BW, BN), programs):
        off_i, off_h, off_w, off_n = _tile_origin(tile, OH, OW, OC, BI, BH, BW, BN)
        for k in range(KSTEPS):
            tap = k // c_steps
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)    # a fresh barrier passes phase 1
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            _tma_load(a_desc, [off_i, off_h + tap // KW - PH, off_w + tap % KW - PW, (k % c_steps) * BK],
                      ready.index(s), a_bufs.index(s))
            _tma_load(w_desc, [off_n, k * BK], ready.index(s), w_bufs.index(s))   # W packed (kh, kw, c)
            it += 1
        if HAS_RES:
            rb = count % R_BUFS
            mbarrier.wait(r_empty.index(rb), ((count // R_BUFS) & 1) ^ 1)
            mbarrier.expect(r_ready.index(rb), r_desc.block_type.nbytes)
            _tma_load(r_desc, [off_i, off_h, off_w, off_n], r_ready.index(rb), r_bufs.index(rb))
        count += 1


@gluon.jit
def _int8_to_float(x):
    """int8 codes as float32, exactly, by bits: the byte zero-extended, its sign bit flipped (x +
    128, in 0..255) and set into 1.5 * 2^23 (one logic op: the byte and the constant share no
    bits), read as float32, less 1.5 * 2^23 + 128. On sm_90 (benchmarks/gluon_conv1x1.py
    --compile 90) this takes the stage-1 residual conv's int8 kernel from 2768 SASS instructions
    to 2600, registers and spills unchanged, where sign extension (two byte permutes) then the
    same trick on the int32 (add 1.5 * 2^23, read as float32, subtract) took one more add. (In
    the Triton kernels, which load the residual with vector loads, the same form raised
    registers and instructions, so they keep the other.)"""
    u = x.to(gl.uint8, bitcast=True).to(gl.int32)
    return (u ^ 0x4B400080).to(gl.float32, bitcast=True) - 12583040.0


@gluon.jit
def _channel_values(P, offs_n, N, PER_CHANNEL: gl.constexpr):
    """A per-channel vector at offs_n (float32), or its one value."""
    if PER_CHANNEL:
        return gl.load(P + offs_n, mask=offs_n < N, other=0.0).to(gl.float32)
    return gl.load(P + offs_n * 0).to(gl.float32)


@gluon.jit
def _compute(y_desc, bars, bufs, y_bufs, NI, OH, OW, OC, KSTEPS, programs, XS, WS, BIAS, RS, OS, INT: gl.constexpr,
             HAS_RES: gl.constexpr, WS_PER_CHANNEL: gl.constexpr,
             HAS_BIAS: gl.constexpr, BIAS_PER_CHANNEL: gl.constexpr, RELU: gl.constexpr, num_warps: gl.constexpr):
    """Default partition (a warpgroup): each tile's MMAs with one group left in flight, the operand
    buffers freed as their group completes; the epilogue on the residual tile; the 8-bit tile
    handed to a TMA store."""
    ready, empty, r_ready, r_empty = bars
    a_bufs, w_bufs, r_bufs = bufs
    BI: gl.constexpr = y_desc.block_type.shape[0]
    BH: gl.constexpr = y_desc.block_type.shape[1]
    BW: gl.constexpr = y_desc.block_type.shape[2]
    BN: gl.constexpr = y_desc.block_type.shape[3]
    BM: gl.constexpr = BI * BH * BW
    BK: gl.constexpr = a_bufs.type.shape[4]
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    R_BUFS: gl.constexpr = r_bufs.type.shape[0]
    Y_BUFS: gl.constexpr = y_bufs.type.shape[0]
    layout: gl.constexpr = mma_layout(BM, BN, num_warps, INT)
    xs = gl.load(XS).to(gl.float32)
    os_ = gl.load(OS).to(gl.float32)
    inv = gl.div_rn(os_ * 0.0 + 1.0, os_)          # 1 / out_scale, correctly rounded once
    rs = gl.load(RS).to(gl.float32)
    # int8's bounds in the domain shifted by 1.5 * 2^23; Relu folds into the bound on the side the
    # sign of 1 / out_scale keeps (quantize.requantize_relu)
    lo = -128.0 + 12582912.0
    hi = 127.0 + 12582912.0
    if RELU:
        lo = gl.where(inv > 0, 12582912.0, lo)
        hi = gl.where(inv < 0, 12582912.0, hi)
    it = 0
    count = 0
    for tile in range(gl.program_id(0), _tile_count(NI, OH, OW, OC, BI, BH, BW, BN), programs):
        off_i, off_h, off_w, off_n = _tile_origin(tile, OH, OW, OC, BI, BH, BW, BN)
        if INT:
            acc = gl.zeros((BM, BN), dtype=gl.int32, layout=layout)
        else:
            acc = gl.zeros((BM, BN), dtype=gl.float32, layout=layout)
        for k in range(KSTEPS):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            # the box's pixels are the operand's rows, as TMA wrote them (a view, no copy)
            acc = warpgroup_mma(a_bufs.index(s).reshape([BM, BK]), w_bufs.index(s).permute((1, 0)), acc,
                                is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            # the group before this one has completed: its buffers go back to the loader
            mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=k > 0)
            it += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES))
        offs_n = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
        # int32 to float32 by the conversion (I2FP on sm_90): faster than by the bits of acc + 1.5 *
        # 2^23 (an integer and a float add) on an H200, 38.9 against 41.0 us on stage 1's residual
        # conv, codes equal (the A/B in BENCHMARKS.md, 2026-11-29 16:50)
        v = acc.to(gl.float32)
        v = v * (xs * _channel_values(WS, offs_n, OC, WS_PER_CHANNEL))[None, :]
        if HAS_BIAS:
            v = v + _channel_values(BIAS, offs_n, OC, BIAS_PER_CHANNEL)[None, :]
        if HAS_RES:
            rb = count % R_BUFS
            mbarrier.wait(r_ready.index(rb), (count // R_BUFS) & 1)
            r = r_bufs.index(rb).reshape([BM, BN]).load(layout)
            fence_async_shared()                     # the read is ordered before the next TMA write
            mbarrier.arrive(r_empty.index(rb))
            if INT:
                rf = _int8_to_float(r)
            else:
                rf = r.to(gl.float32)
            v = v + rf * rs
        if INT:   # half to even by the float32 add of 1.5 * 2^23, saturated (Relu: from 0), the low byte
            t = gl.minimum(gl.maximum(v * inv + 12582912.0, lo), hi)
            y = t.to(gl.int32, bitcast=True).to(gl.int8)
        else:     # the conversion saturates at +-448 itself (cvt.rn.satfinite)
            if RELU:
                v = gl.maximum(v, 0.0)
            y = (v * inv).to(gl.float8e4nv)
        yb = count % Y_BUFS
        tma.store_wait(Y_BUFS - 1)                   # the store that last used this buffer is done ...
        _barrier()                                   # ... for every warp, not only the issuing thread
        y_bufs.index(yb).reshape([BM, BN]).store(y)
        fence_async_shared()
        _tma_store(y_desc, [off_i, off_h, off_w, off_n], y_bufs.index(yb))   # clipped at Y's edges
        count += 1
    tma.store_wait(0)


@gluon.jit
def conv_kernel(a_desc, w_desc, r_desc, y_desc, NI, OH, OW, OC, C, KW, PH, PW, KSTEPS, programs, XS, WS, BIAS, RS, OS,
                   STAGES: gl.constexpr, R_BUFS: gl.constexpr, Y_BUFS: gl.constexpr, INT: gl.constexpr,
                   HAS_RES: gl.constexpr, WS_PER_CHANNEL: gl.constexpr,
                   HAS_BIAS: gl.constexpr, BIAS_PER_CHANNEL: gl.constexpr, RELU: gl.constexpr, num_warps: gl.constexpr,
                   PDL: gl.constexpr = False):
    wait_for_inputs(PDL)   # first, before the partitions fork: pdl.py's rule
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
        (_compute, (y_desc, bars, bufs, y_bufs, NI, OH, OW, OC, KSTEPS, programs, XS, WS, BIAS, RS, OS, INT,
                    HAS_RES, WS_PER_CHANNEL, HAS_BIAS, BIAS_PER_CHANNEL, RELU, num_warps)),
        (_loader, (a_desc, w_desc, r_desc, bars, bufs, NI, OH, OW, OC, C, KW, PH, PW, KSTEPS, programs, HAS_RES)),
    ], [1], [40])
