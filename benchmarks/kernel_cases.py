"""The kernel calls benchmarks/kernel_resources.py compiles: each case calls a real launcher on CPU
tensors of the shapes it names with the kernel swapped for a recorder, so that the arguments,
constexprs and specialisations are the ones the launcher would pass on the GPU."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from onnx import TensorProto

from kiln.kernels.triton import attention, frame, gemm, norm, pool, qconv, qconv_plan, qconv_window, qgemm


class _Recorder:
    """Stands in for a JITFunction: kernel[grid](*args, **kw) records the call instead."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kw: self.calls.append((args, kw))


@contextlib.contextmanager
def recording(module: Any, name: str) -> Iterator[_Recorder]:
    recorder, real = _Recorder(), getattr(module, name)
    setattr(module, name, recorder)
    try:
        yield recorder
    finally:
        setattr(module, name, real)


FFN1 = (4096, 3072, 768)   # BERT-base b32 s128: M = 32 * 128, N = 4 * 768, K = 768
TILE = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}


def qgemm_case(dtype: torch.dtype, activation: str, out: int | None, zero_points: bool = False,
               shape: tuple[int, int, int] = FFN1, config: dict | None = None,
               mid: bool | str = False, table: bool = False) -> tuple[Any, tuple, dict]:
    """The 8-bit GEMM kernel as qmatmul launches it: A [M, K] and a K-major weight, fp16 a_scale and
    bias, per-channel weight scales; requantized to `out` (an ONNX type) or fp16 out (None); mid:
    the product rounded to uint8 codes (zero point 128) before the bias (ONNX Runtime's QDQ);
    table: the codes looked up in a table of 256 (precision/fuse_code_table.py)."""
    m, n, k = shape
    zp = torch.zeros(1, dtype=torch.int8) if zero_points else None
    requant = {} if out is None else {"out_scale": torch.tensor(0.05), "out_dtype": out,
                                      "out_zp": zp if out == TensorProto.INT8 else None}
    if mid:   # "columns": one mid scale and zero point per column (merged projections)
        cols = n if mid == "columns" else 1
        requant.update(mid_scale=torch.full((cols,), 0.04), mid_zp=torch.full((cols,), 128, dtype=torch.uint8))
    if table:
        requant["table"] = torch.zeros(256, dtype=torch.int8)
    cfg = dict(config or {**TILE, **({"FP8_ACC": 0} if dtype == torch.float8_e4m3fn else {})})
    with recording(qgemm, "_qgemm_kernel") as plain, recording(qgemm, "qgemm_tma_kernel") as tma:
        qgemm.qmatmul(torch.zeros(m, k, dtype=dtype), torch.zeros(n, k, dtype=dtype),
                      torch.tensor(1 / 64, dtype=torch.float16), zp, torch.rand(n), None,
                      torch.zeros(n, dtype=torch.float16), trans_b=1, activation=activation, config=cfg, **requant)
    if tma.calls:   # TMA / PERSISTENT configs
        return (qgemm.qgemm_tma_kernel, *tma.calls[0])
    return (qgemm._qgemm_kernel, *plain.calls[0])


def gemm_case(activation: str, shape: tuple[int, int, int] = FFN1) -> tuple[Any, tuple, dict]:
    """The fp16 GEMM with a bias + activation epilogue, as fused_matmul launches it."""
    m, n, k = shape
    with recording(gemm, "_gemm_epilogue_kernel") as rec:
        gemm.fused_matmul(torch.zeros(m, k, dtype=torch.float16), torch.zeros(k, n, dtype=torch.float16),
                          torch.zeros(n, dtype=torch.float16), activation=activation, config=dict(TILE))
    return (gemm._gemm_epilogue_kernel, *rec.calls[0])


def qconv_case(dtype: torch.dtype, out: int | None, residual: bool, kernel: int = 3, channels: int = 256,
               size: int = 14, batch: int = 64, config: dict | None = None,
               residual_8bit: bool = False, strides: list[int] | None = None,
               x_uint8: bool = False, mid: bool = False) -> tuple[Any, tuple, dict]:
    """The 8-bit implicit-GEMM convolution as qconv launches it: a ResNet-50 stage-3 conv
    (channels-last X, stride 1, same padding), fp16 scales and bias, Relu, an optional residual
    (fp16, or of X's 8-bit type with a residual scale), requantized to `out` or fp16 out (None);
    x_uint8: X uint8 with a zero point of 128 (ONNX Runtime's QDQ activations), W int8; mid: the
    mid quantization of an explicitly quantized residual block (uint8 codes, zero point 128)."""
    zp = torch.zeros(1, dtype=torch.int8) if dtype == torch.int8 else None
    x = torch.zeros(batch, channels, size, size, dtype=torch.uint8 if x_uint8 else dtype).contiguous(
        memory_format=torch.channels_last)
    x_zp = torch.full((1,), 128, dtype=torch.uint8) if x_uint8 else zp
    # int8: W's magnitude decides the accumulator's conversion (qconv_plan.small_accumulator); 127 as calibrated
    w = torch.full((channels, channels, kernel, kernel), 127, dtype=dtype) if dtype == torch.int8 else \
        torch.zeros(channels, channels, kernel, kernel, dtype=dtype)
    res = torch.zeros(batch, channels, size, size, dtype=dtype if residual_8bit else torch.float16).contiguous(
        memory_format=torch.channels_last) if residual else None
    res_q = {"residual_scale": torch.tensor(0.05, dtype=torch.float16)} if residual_8bit else {}
    requant = {} if out is None else {"out_scale": torch.tensor(0.05, dtype=torch.float16), "out_dtype": out,
                                      "out_zp": zp if out == TensorProto.INT8 else None}
    space = qconv.FP8_CONFIGS if dtype == torch.float8_e4m3fn else qconv.INT8_CONFIGS
    with recording(qconv, "_qconv_kernel") as rec, recording(qconv_window, "window_kernel") as window:
        qconv.qconv(x, w, torch.tensor(0.02, dtype=torch.float16), x_zp, torch.rand(channels).half(), None,
                    torch.zeros(channels, dtype=torch.float16), res, pads=[kernel // 2] * 4, strides=strides,
                    activation="Relu", config=dict(config or space[0]), **requant, **res_q,
                    **({"mid_scale": torch.tensor(0.04, dtype=torch.float16),
                        "mid_zp": torch.full((1,), 128, dtype=torch.uint8)} if mid else {}))
    if window.calls:   # TMA configs where the WINDOW walk applies
        return (qconv_window.window_kernel, *window.calls[0])
    return (qconv._qconv_kernel, *rec.calls[0])


def stem_case(dtype: torch.dtype, config: dict | None = None) -> tuple[Any, tuple, dict]:
    """ResNet-50's stem as the 8-bit conv runs it: X [64, 3, 224, 224] channels-last (three channels:
    the ROWS walk, or with an S2D config the folded TAPS walk or, with TMA, the WINDOW walk), 7x7 stride 2 pad 3, fp16 bias, Relu,
    requantized to the 8-bit type (the int8/fp8 engines' stem, whose MaxPool then runs on 8-bit
    values)."""
    x = torch.zeros(64, 3, 224, 224, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(64, 3, 7, 7, dtype=dtype)
    out = TensorProto.FLOAT8E4M3FN if dtype == torch.float8_e4m3fn else TensorProto.INT8
    space = qconv.FP8_CONFIGS if dtype == torch.float8_e4m3fn else qconv.INT8_CONFIGS
    with recording(qconv, "_qconv_kernel") as rec, recording(frame, "_frame_kernel"), \
            recording(qconv_window, "window_kernel") as window:   # the framing copy not run
        qconv.qconv(x, w, torch.tensor(0.02, dtype=torch.float16), None, torch.rand(64).half(), None,
                    torch.zeros(64, dtype=torch.float16), None, out_scale=torch.tensor(0.05, dtype=torch.float16),
                    out_dtype=out, pads=[3] * 4, strides=[2, 2], activation="Relu",
                    config=dict(config or space[4]))
    if window.calls:   # an S2D config with TMA: the WINDOW walk over the folded view
        return (qconv_window.window_kernel, *window.calls[0])
    return (qconv._qconv_kernel, *rec.calls[0])


def norm_case(out: int | None, config: dict, rows: int = 4096, cols: int = 768) -> tuple[Any, tuple, dict]:
    """BERT's residual add + LayerNorm (fp16), its fp16 output stored and, with `out`, quantized
    per tensor into that type (kiln::NormQuantize), as the norm launchers call the block kernel."""
    x, r = torch.zeros(rows, cols, dtype=torch.float16), torch.zeros(rows, cols, dtype=torch.float16)
    w, b = torch.ones(cols, dtype=torch.float16), torch.zeros(cols, dtype=torch.float16)
    with recording(norm, "_norm_block") as rec:
        if out is None:
            norm.add_layer_norm(x, r, w, b, config=dict(config))
        else:
            zp = torch.zeros((), dtype=torch.int8) if out == TensorProto.INT8 else None
            norm.norm_quantize(x, r, w, b, torch.tensor(0.05, dtype=torch.float16), zp, output_dtype=out,
                               float_output=1, config=dict(config))
    return (norm._norm_block, *rec.calls[0])


NORM_TILE = {"num_warps": 4, "rows": 4}


def attention_case(config: dict | None = None, mask: bool = True, out: int | None = None,
                   channels: int = 1, codes: bool = False) -> tuple[Any, tuple, dict]:
    """BERT-base b32 attention (fp16 [32, 12, 128, 64], transposed views of one [B, S, 3, H, D] Q/K/V
    projection output) with its [B, 1, 1, S] additive padding mask; `out`: requantized to that ONNX
    type (the QuantizeLinear before the output projection, folded), with `channels` scales (1, or
    768: SmoothQuant's per-channel ones); `codes`: float8 Q, K and V with their scales
    (--quantize-attention)."""
    qkv = torch.zeros(32, 128, 3, 12, 64, dtype=torch.float8_e4m3fn if codes else torch.float16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    m = torch.zeros(32, 1, 1, 128, dtype=torch.float16) if mask else None
    requant = {} if out is None else {"out_scale": torch.full((channels,), 0.05, dtype=torch.float16),
                                      "out_dtype": out}
    if codes:
        requant.update(dict.fromkeys(("q_scale", "k_scale", "v_scale"), torch.full((1,), 0.01, dtype=torch.float16)))
    with recording(attention, "_attention_kernel") as rec:
        attention.attention(q, k, v, m, config=dict(config or attention.CONFIGS[0]), **requant)
    return (attention._attention_kernel, *rec.calls[0])


def pool_case(dtype: torch.dtype, config: dict | None = None) -> tuple[Any, tuple, dict]:
    """ResNet-50's stem MaxPool (3x3, stride 2, pad 1) over [64, 64, 112, 112] channels-last."""
    x = torch.zeros(64, 64, 112, 112, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with recording(pool, "_max_pool2d_kernel") as rec:
        pool.max_pool2d(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], config=config)
    return (pool._max_pool2d_kernel, *rec.calls[0])


CASES: dict[str, Callable[[], tuple[Any, tuple, dict]]] = {
    "int8 FFN1, bias, int8 out": lambda: qgemm_case(torch.int8, "", TensorProto.INT8),
    "int8 FFN1, bias + GELU, int8 out": lambda: qgemm_case(torch.int8, "Gelu", TensorProto.INT8),
    "int8 FFN1, bias + GELU, int8 out, zero points of 0": lambda: qgemm_case(torch.int8, "Gelu", TensorProto.INT8,
                                                                             zero_points=True),
    "int8 FFN1, bias + GELU, int8 out, TMA": lambda: qgemm_case(torch.int8, "Gelu", TensorProto.INT8,
                                                                 config={**TILE, "TMA": 1}),
    "int8 FFN1, bias + GELU, int8 out, TMA persistent": lambda: qgemm_case(torch.int8, "Gelu", TensorProto.INT8,
                                                                            config={**TILE, "PERSISTENT": 1}),
    "int8 FFN1, bias + GELU, fp16 out": lambda: qgemm_case(torch.int8, "Gelu", None),
    "int8 FFN1, mid + bias + GELU, int8 out (ONNX Runtime QDQ)": lambda: qgemm_case(
        torch.int8, "Gelu", TensorProto.INT8, mid=True),
    "int8 QKV, mid per column + bias, int8 out (merged ONNX Runtime QDQ)": lambda: qgemm_case(
        torch.int8, "", TensorProto.INT8, mid="columns", shape=(4096, 2304, 768)),
    "int8 QKV, mid per column + bias, int8 out, TMA persistent": lambda: qgemm_case(
        torch.int8, "", TensorProto.INT8, mid="columns", shape=(4096, 2304, 768),
        config=next(c for c in qgemm.INT8_CONFIGS if c.get("PERSISTENT"))),
    "int8 FFN1, mid + bias + GELU, int8 out, TMA persistent": lambda: qgemm_case(
        torch.int8, "Gelu", TensorProto.INT8, mid=True,
        config=next(c for c in qgemm.INT8_CONFIGS if c.get("PERSISTENT"))),
    "int8 FFN1, mid + bias, code table, int8 out, TMA persistent (ONNX Runtime QDQ Gelu)": lambda: qgemm_case(
        torch.int8, "", TensorProto.INT8, mid=True, table=True,
        config=next(c for c in qgemm.INT8_CONFIGS if c.get("PERSISTENT"))),
    "int8 FFN1, mid + bias, int8 out, TMA persistent": lambda: qgemm_case(
        torch.int8, "", TensorProto.INT8, mid=True,
        config=next(c for c in qgemm.INT8_CONFIGS if c.get("PERSISTENT"))),
    "fp8 FFN1, bias + GELU, fp8 out": lambda: qgemm_case(torch.float8_e4m3fn, "Gelu", TensorProto.FLOAT8E4M3FN),
    "int8 FFN1, bias, fp16 out": lambda: qgemm_case(torch.int8, "", None),
    "fp8 FFN1, bias, fp16 out": lambda: qgemm_case(torch.float8_e4m3fn, "", None),
    "int8 conv 3x3, Relu, int8 out": lambda: qconv_case(torch.int8, TensorProto.INT8, False),
    "int8 conv 1x1, residual + Relu, int8 out": lambda: qconv_case(torch.int8, TensorProto.INT8, True, kernel=1),
    "fp8 conv 3x3, Relu, fp8 out": lambda: qconv_case(torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FN, False),
    "uint8 X (zero point) conv 3x3, Relu, int8 out": lambda: qconv_case(torch.int8, TensorProto.INT8, False,
                                                                          x_uint8=True),
    "uint8 X (zero point) conv 1x1, Relu, int8 out": lambda: qconv_case(torch.int8, TensorProto.INT8, False, kernel=1,
                                                                          x_uint8=True),
    "uint8 X (zero point) conv 1x1, int8 residual + mid, WINDOW walk": lambda: qconv_case(
        torch.int8, TensorProto.INT8, True, kernel=1, x_uint8=True, residual_8bit=True, mid=True,
        config=next(c for c in qconv.INT8_CONFIGS if c.get("TMA") and c.get("PERSISTENT"))),
    "uint8 X (zero point) conv 1x1, int8 residual + mid, pointer walk": lambda: qconv_case(
        torch.int8, TensorProto.INT8, True, kernel=1, x_uint8=True, residual_8bit=True, mid=True),
    **{f"{label} conv 3x3 {size}x{size}, WINDOW walk (TMA persistent{', IMAGES boxes' if images else ''})": (
        lambda dtype=dtype, size=size, out=out, space=space, images=images: qconv_case(
            dtype, out, False, size=size, config={**next(c for c in space if c.get("TMA") and c.get("PERSISTENT")),
                                                  **({"IMAGES": 1, "BLOCK_M": 64} if images else {})}))
       for label, dtype, out, space in (("int8", torch.int8, TensorProto.INT8, qconv.INT8_CONFIGS),
                                        ("fp8", torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FN, qconv.FP8_CONFIGS))
       for size in (7, 14, 56) for images in (False, True)},
    "int8 conv 1x1, int8 residual + Relu, flat rows, WINDOW walk (TMA persistent)": lambda: qconv_case(
        torch.int8, TensorProto.INT8, True, kernel=1, residual_8bit=True,
        config=next(c for c in qconv.INT8_CONFIGS if c.get("TMA") and c.get("PERSISTENT"))),
    "fp8 conv 1x1, residual + Relu, fp8 out": lambda: qconv_case(torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FN, True,
                                                                  kernel=1),
    "int8 conv 1x1, int8 residual + Relu, int8 out": lambda: qconv_case(torch.int8, TensorProto.INT8, True, kernel=1,
                                                                         residual_8bit=True),
    "fp8 conv 1x1, fp8 residual + Relu, fp8 out": lambda: qconv_case(torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FN,
                                                                      True, kernel=1, residual_8bit=True),
    "int8 stem conv 7x7/2 over 3 channels, Relu, int8 out": lambda: stem_case(torch.int8),
    "int8 stem, folded space to depth (S2D)": lambda: stem_case(torch.int8, qconv_plan.INT8_S2D_CONFIGS[0]),
    "fp8 stem, folded space to depth (S2D)": lambda: stem_case(torch.float8_e4m3fn,
                                                               {**qconv_plan.FP8_S2D_CONFIGS[0]}),
    "fp8 stem, folded, WINDOW walk (S2D TMA)": lambda: stem_case(torch.float8_e4m3fn,
                                                                 {**qconv_plan.INT8_S2D_CONFIGS[3], "FP8_ACC": 0}),
    "fp8 stem, folded, WINDOW walk persistent (S2D TMA)": lambda: stem_case(
        torch.float8_e4m3fn, {**qconv_plan.INT8_S2D_CONFIGS[3], "FP8_ACC": 0, "PERSISTENT": 1}),
    "int8 conv 1x1 stride 2 (unpadded: every tap inside)": lambda: qconv_case(
        torch.int8, TensorProto.INT8, False, kernel=1, channels=256, size=56, config=qconv.INT8_CONFIGS[1],
        strides=[2, 2]),
    "fp16 add + LayerNorm [4096, 768]": lambda: norm_case(None, NORM_TILE),
    "fp16 add + LayerNorm, int8 out too": lambda: norm_case(TensorProto.INT8, NORM_TILE),
    "fp16 add + LayerNorm, fp8 out too": lambda: norm_case(TensorProto.FLOAT8E4M3FN, NORM_TILE),
    "fp16 attention [32, 12, 128, 64], padding mask": lambda: attention_case(),
    "fp16 attention, padding mask, fp8 out": lambda: attention_case(out=TensorProto.FLOAT8E4M3FN),
    "fp16 attention, padding mask, int8 out": lambda: attention_case(out=TensorProto.INT8),
    "fp16 attention, padding mask, fp8 out per channel": lambda: attention_case(out=TensorProto.FLOAT8E4M3FN,
                                                                                channels=768),
    "fp16 attention, one tile, padding mask, fp8 out": lambda: attention_case(attention.ONE_TILE_CONFIGS[0],
                                                                             out=TensorProto.FLOAT8E4M3FN),
    "fp8 Q/K/V attention, one tile, fp8 out": lambda: attention_case(attention.ONE_TILE_CONFIGS[0],
                                                                    out=TensorProto.FLOAT8E4M3FN, codes=True),
    "fp8 Q/K/V attention, streaming, fp8 out": lambda: attention_case(out=TensorProto.FLOAT8E4M3FN, codes=True),
    "fp16 max pool 3x3/2 [64, 64, 112, 112]": lambda: pool_case(torch.float16),
    "int8 max pool 3x3/2": lambda: pool_case(torch.int8),
    "int8 max pool 3x3/2, byte keys": lambda: pool_case(torch.int8, {**pool.CONFIGS[0], "INT_KEYS": 1}),
    "fp8 max pool 3x3/2": lambda: pool_case(torch.float8_e4m3fn),
    "fp16 FFN1, bias + GELU": lambda: gemm_case("Gelu"),
    "fp16 FFN1, bias + Sigmoid": lambda: gemm_case("Sigmoid"),
}
