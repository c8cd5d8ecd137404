"""The TMA kernel of the Triton quantized GEMM (kernels/triton/qgemm_tma.py) against the reference
kiln::QMatMul: TMA loads of ragged tiles, the fallback where TMA does not apply, the persistent
walk (one program per SM) and the TMA store of the output tile (config Y_TMA). Interpreted on
CPU at 16x16x32 tiles, compiled with `pytest --device cuda` (test_triton_qgemm.py's helpers)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import qgemm, qgemm_tma  # noqa: E402
from kiln.compiler.tolerance import mismatch  # noqa: E402
from tests.kernels.test_triton_qgemm import (DEV, OP, TINY_PERSISTENT, TINY_TMA, _check, _ints, _layer,  # noqa: E402
                                             _requant)


@pytest.mark.parametrize("a_dt", [torch.int8, torch.float8_e4m3fn])
def test_tma_kernel_ragged_tiles_and_every_epilogue(a_dt):
    """The TMA variant (qgemm_tma.qgemm_tma_kernel): M, N and K not multiples of the tile (the descriptors
    read 0 past the edges), float output with residual and activation, and a requantized one."""
    fp8 = a_dt == torch.float8_e4m3fn
    args = _layer(37, 40, 80, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, seed=12, fp8_ints=fp8)
    assert qgemm_tma.tma_ok(args[0], args[1], None, None) is (qgemm_tma.descriptor_type() is not None)
    _check(args, trans_b=1, activation="Gelu", config=TINY_TMA)
    got, want = _check(args, trans_b=1, activation="Relu", config=TINY_TMA, **_requant(torch.int8, None, 0.02))
    assert want.float().unique().numel() > 10


def test_tma_config_falls_back_where_tma_does_not_apply():
    """uint8 operands with zero points, a [K, N] weight, K not a multiple of 16: the same tiles
    through plain loads."""
    g = torch.Generator().manual_seed(13)
    args = _layer(20, 32, 64, a_dt=torch.uint8, b_dt=torch.uint8, trans_b=1,
                  a_zp=torch.tensor(120, dtype=torch.uint8, device=DEV), b_zp=_ints((32,), torch.uint8, g).to(DEV))
    assert not qgemm_tma.tma_ok(args[0], args[1], args[3], args[5])
    _check(args, trans_b=1, config=TINY_TMA)
    _check(_layer(20, 32, 64, trans_b=0, seed=14), trans_b=0, config=TINY_TMA)
    odd = _layer(20, 32, 72 + 8, trans_b=1, seed=15)
    odd[0] = odd[0][:, :72]                              # K = 72: rows of 72 bytes
    odd[1] = odd[1][:, :72].contiguous()
    assert not qgemm_tma.tma_ok(odd[0].contiguous(), odd[1], None, None)
    _check(odd, trans_b=1, config=TINY_TMA)


@pytest.mark.parametrize("config", [TINY_TMA, TINY_PERSISTENT], ids=["tma", "persistent"])
def test_int8_activation_zero_point_through_tma(config):
    """ONNX Runtime's QInt8 activations carry a zero point: the TMA kernels take it, subtracting
    za * colsum(B) with the weight's column sums made once per weight (qgemm.column_sums); the
    accumulation is exact, so the requantized codes are the reference's."""
    a_zp = torch.tensor(-37, dtype=torch.int8, device=DEV)
    args = _layer(45, 40, 64, trans_b=1, a_zp=a_zp, seed=16)
    assert qgemm_tma.tma_ok(args[0], args[1], a_zp, None) is (qgemm_tma.descriptor_type() is not None)
    assert not qgemm_tma.tma_ok(args[0].to(torch.float8_e4m3fn), args[1].to(torch.float8_e4m3fn), a_zp, None)
    _check(args, trans_b=1, activation="Gelu", config=dict(config))
    got, want = _check(args, trans_b=1, config=dict(config), **_requant(torch.int8, 5, 0.02))
    plain = _check([args[0], args[1], args[2], None, *args[4:]], trans_b=1, config=dict(config),
                   **_requant(torch.int8, 5, 0.02))[1]
    assert not torch.equal(want, plain)                            # the zero point matters here
    sums = qgemm.column_sums(args[1], 1)
    assert sums.dtype == torch.int32 and torch.equal(sums.cpu(), args[1].cpu().int().sum(dim=1))
    assert qgemm.column_sums(args[1], 1) is sums                  # made once per weight tensor


@pytest.mark.parametrize("a_dt", [torch.int8, torch.float8_e4m3fn])
def test_persistent_programs_walk_every_tile(a_dt):
    # 45 x 40 output in 16 x 16 tiles: 9 tiles (ragged edges) for sm_count programs (4 off the
    # GPU), so each program takes two or three; float and requantized outputs.
    assert qgemm_tma.sm_count(torch.device("cpu")) == 4
    fp8 = a_dt == torch.float8_e4m3fn
    args = _layer(45, 40, 64, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, fp8_ints=fp8)
    cfg = {**TINY_PERSISTENT, **({"FP8_ACC": 32} if fp8 else {})}
    _check(args, trans_b=1, activation="Gelu", config=dict(cfg))
    out = torch.float8_e4m3fn if fp8 else torch.int8
    _check(args, trans_b=1, activation="Relu", config=dict(cfg), **_requant(out, None))
    # Two programs per SM (SM_PROGRAMS): 8 programs for the 9 tiles, one of them takes two.
    assert qgemm_tma.persistent_programs(9, torch.device("cpu"), {"SM_PROGRAMS": 2}) == 8
    assert qgemm_tma.persistent_programs(9, torch.device("cpu"), {"SM_PROGRAMS": 3}) == 9
    _check(args, trans_b=1, activation="Gelu", config={**cfg, "SM_PROGRAMS": 2})


@pytest.mark.parametrize("a_dt", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("persistent", [0, 1])
def test_tma_store_of_ragged_tiles(a_dt, persistent):
    # Y_TMA: the tile goes out through a TMA box and the residual comes in through one; 45 x 48
    # in 16 x 16 tiles, so the last row of tiles hangs past M (the copy engine drops those rows
    # and reads zeros for the residual there). Float output, then every requantized type.
    fp8 = a_dt == torch.float8_e4m3fn
    args = _layer(45, 48, 64, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, seed=21, fp8_ints=fp8)
    cfg = {**TINY_TMA, "PERSISTENT": persistent, "Y_TMA": 1, **({"FP8_ACC": 32} if fp8 else {})}
    _check(args, trans_b=1, activation="Gelu", config=dict(cfg))
    for out_type, zp in [(torch.int8, 3), (torch.float8_e4m3fn, None)]:
        got, want = _check(args, trans_b=1, activation="Relu", config=dict(cfg), **_requant(out_type, zp, 0.02))
        assert want.float().unique().numel() > 10
    # Rows of Y not 16-byte aligned (int8, N 40): the same config stores through pointers.
    ragged = _layer(45, 40, 64, a_dt=a_dt, b_dt=a_dt, trans_b=1, seed=22, fp8_ints=fp8)
    assert not qgemm_tma.store_tma_ok(cfg, 1, torch.empty(45, 40, dtype=torch.int8))
    assert qgemm_tma.store_tma_ok(cfg, 1, torch.empty(45, 48, dtype=torch.int8))
    # Staging buffers that do not fit beside the operand stages: 128x256x128 at 3 stages is
    # 144 KiB of operands; a float16 Y fits (208 KiB), Y and a float16 residual do not.
    wide = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "num_stages": 3}
    y16 = torch.empty(256, 768, dtype=torch.float16)
    assert qgemm_tma.store_tma_ok(wide, 1, y16) and not qgemm_tma.store_tma_ok(wide, 1, y16, y16)
    _check(ragged, trans_b=1, config=dict(cfg), **_requant(torch.int8, None, 0.02))


def test_zero_point_correction_under_inference_mode():
    """The engine runs (and the tuner checks tactics) under torch.inference_mode, where the
    weight's K-major copy is an inference tensor: its column sums are memoised all the same."""
    from kiln.tactics.quantized import triton_qmatmul
    a_zp = torch.tensor(-37, dtype=torch.int8, device=DEV)
    args = _layer(45, 40, 64, trans_b=0, a_zp=a_zp, seed=17)
    out = _requant(torch.int8, 5, 0.02)
    want = _check(args, trans_b=0, **out)[1]
    with torch.inference_mode():
        got = triton_qmatmul(*args, trans_b=0, config=dict(TINY_PERSISTENT), **out).cpu()
    assert got.dtype == torch.int8 and mismatch(got, want, OP) is None


def test_fast_gelu_only_for_float8_codes_and_within_their_tolerance():
    # FAST_GELU: a Gelu whose output becomes float8 codes is computed in its tanh form (hardware
    # tanh where compiled); the codes still meet the quantized tolerance against the exact Gelu.
    # Other outputs, and other activations, keep their own code.
    from kiln.kernels.triton import activation as act
    fast = {"FAST_GELU": 1}
    assert act.fast_gelu_code(act.ACT_GELU_ERF, fast, True) == act.ACT_GELU_FAST
    assert act.fast_gelu_code(act.ACT_GELU_TANH, fast, True) == act.ACT_GELU_FAST
    assert act.fast_gelu_code(act.ACT_GELU_ERF, fast, False) == act.ACT_GELU_ERF      # int8 / float output
    assert act.fast_gelu_code(act.ACT_GELU_ERF, {}, True) == act.ACT_GELU_ERF
    assert act.fast_gelu_code(act.ACT_RELU, fast, True) == act.ACT_RELU
    f8 = torch.float8_e4m3fn
    args = _layer(45, 48, 64, a_dt=f8, b_dt=f8, trans_b=1, seed=23, fp8_ints=True)
    cfg = {**TINY_PERSISTENT, "FP8_ACC": 32, **fast}
    got, want = _check(args, trans_b=1, activation="Gelu", config=dict(cfg), **_requant(f8, None, 0.02))
    exact = qgemm.qmatmul(*args, trans_b=1, activation="Gelu", config={**TINY_PERSISTENT, "FP8_ACC": 32},
                          **_requant(f8, None, 0.02)).cpu()
    assert want.float().unique().numel() > 10 and not torch.equal(got.view(torch.uint8), exact.view(torch.uint8))
