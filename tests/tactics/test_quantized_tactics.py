"""kiln::QMatMul.triton, kiln::QMatMul.scaled_mm and QuantizeLinear.triton (tactics/quantized.py).

supports(): what each accepts and refuses (device, dtypes, capability, shapes, parameters,
epilogue), with the device capability patched so the CPU machine can ask as a GPU would.
Kernels on CPU: the Triton GEMM through the tactic (interpreter; the K-major weight memo) and
the scaled_mm tactic on torch's CPU _scaled_mm (its epilogue logic; per-channel scales only
where this torch's CPU _scaled_mm takes them). GPU (marked): each tactic against the
reference on CUDA, checked with the tuner's own rule (tolerance.mismatch); the reference
always runs on CPU copies of every tensor."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference import lookup
from kiln.tactics import TacticQuery, candidates, get_tactic
from kiln.tactics import quantized as qt

REF = lookup("kiln::QMatMul").fn
OP = "kiln::QMatMul"
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
FP8 = "float8_e4m3fn"


@pytest.fixture
def hopper(monkeypatch):
    """Ask as on the H200 (sm_90, torch built with CUDA 13)."""
    monkeypatch.setattr(qt, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(qt, "_cuda_at_least", lambda major, minor: True)


def _qmm(a="int8", b="int8", *, m=64, n=768, k=768, trans_b=0, scale="float16", b_scale=None, a_zp="int8",
         b_zp=None, bias="float16", residual=None, out=None, out_zp=None, out_shape=(), device="cuda",
         **attrs) -> TacticQuery:
    """A QMatMul query as int8.py / fp8.py build them (shapes: A [2, m, k], B [k, n] or [n, k])."""
    b_shape = (n, k) if trans_b else (k, n)
    dts = [a, b, scale, a_zp, "float32", b_zp, bias, residual, out and "float32", out_zp]
    shapes = [(2, m, k), b_shape, (), (), b_scale or (n,), (n,), (n,), (2, m, n), out_shape, out_shape]
    attrs = {"trans_b": trans_b, "activation": "", "activation_params": [], **attrs}
    if out:
        attrs["out_dtype"] = out
    while dts and dts[-1] is None:
        dts.pop()
    return TacticQuery(OP, device, tuple(dts), attrs, tuple(shapes[:len(dts)]))


# --- supports ----------------------------------------------------------------------------------

def test_triton_accepts_what_int8_and_fp8_builds_make(hopper):
    assert qt.supports_triton_qmatmul(_qmm())                                          # int8.py
    assert qt.supports_triton_qmatmul_fp8(_qmm(FP8, FP8, a_zp=None))                   # fp8.py
    # One tactic per input type (each with its own tuning space).
    assert not qt.supports_triton_qmatmul(_qmm(FP8, FP8, a_zp=None)) and not qt.supports_triton_qmatmul_fp8(_qmm())
    assert qt.supports_triton_qmatmul(_qmm("uint8", "int8", b_zp="int8", trans_b=1, residual="float16",
                                           activation="Gelu", activation_params=[0.0]))
    assert qt.supports_triton_qmatmul(_qmm(out=TensorProto.INT8, out_zp="int8"))       # fuse_qdq's requant
    assert qt.supports_triton_qmatmul(_qmm(b_scale=(1,), bias=None, a_zp=None))        # per tensor
    # Requantized per output column (SmoothQuant's per-channel scales of the next input): Triton
    # only, scaled_mm requantizes per tensor.
    assert qt.supports_triton_qmatmul(_qmm(out=TensorProto.INT8, out_zp="int8", out_shape=(768,)))
    assert not qt.supports_triton_qmatmul(_qmm(out=TensorProto.INT8, out_shape=(384,)))
    # A classifier head of 1000 classes: N not a multiple of 16, Triton only (cuBLASLt needs 16s).
    head = _qmm(FP8, FP8, a_zp=None, m=64, n=1000, k=2048, trans_b=1)
    assert qt.supports_triton_qmatmul(_qmm(n=1000, trans_b=1)) and qt.supports_triton_qmatmul_fp8(head)
    assert not qt.supports_scaled_mm(head)
    fp8_cols = _qmm(FP8, FP8, a_zp=None, out=TensorProto.FLOAT8E4M3FN, out_shape=(768,))
    assert qt.supports_triton_qmatmul_fp8(fp8_cols) and not qt.supports_scaled_mm(fp8_cols)


def test_triton_refusals(hopper):
    refused = [
        _qmm(device="cpu"),                                       # CUDA only
        _qmm(FP8, "int8", a_zp=None),                             # mixed fp8 x int8
        _qmm(FP8, FP8),                                           # float8 with a zero point
        _qmm(k=760),                                              # K not a multiple of 16
        _qmm(k=qt.TRITON_MAX_K + 16),                             # int32 sum could overflow
        _qmm(k="K"),                                              # K unknown at build time
        _qmm(b_scale=(3,)),                                       # scale neither per tensor nor per N
        _qmm(scale="float64"),                                    # float64 output
        _qmm(out=TensorProto.INT4),                               # requantized type it lacks
        _qmm(out=TensorProto.INT8, out_zp="int16"),
        _qmm(residual="float16", activation="Softplus"),          # activation outside the vocabulary
        TacticQuery(OP, "cuda", ("int8", "int8", "float16", None, "float32"),
                    {"trans_b": 0}, ((64, 768), (2, 768, 768), (), None, (768,))),   # batched B
    ]
    for q in refused:
        assert not qt.supports_triton_qmatmul(q) and not qt.supports_triton_qmatmul_fp8(q), q
    q = _qmm()
    bad_residual = TacticQuery(OP, "cuda", q.input_dtypes[:7] + ("float16",), q.attrs,
                               q.input_shapes[:7] + ((3, 64, 768),))          # would grow Y
    assert not qt.supports_triton_qmatmul(bad_residual)


def test_capability_gates(monkeypatch):
    monkeypatch.setattr(qt, "device_capability", lambda: None)          # no CUDA device to ask
    assert not qt.supports_triton_qmatmul(_qmm())
    assert not qt.supports_scaled_mm(_qmm(FP8, FP8, a_zp=None))
    monkeypatch.setattr(qt, "device_capability", lambda: (8, 0))        # Ampere: int8 only
    assert qt.supports_triton_qmatmul(_qmm())
    assert not qt.supports_triton_qmatmul_fp8(_qmm(FP8, FP8, a_zp=None))
    assert not qt.supports_triton_qmatmul(_qmm(out=TensorProto.FLOAT8E4M3FN))   # fp8 output cast
    assert not qt.supports_scaled_mm(_qmm(FP8, FP8, a_zp=None))
    monkeypatch.setattr(qt, "device_capability", lambda: (7, 5))
    assert not qt.supports_triton_qmatmul(_qmm())


def test_scaled_mm_supports(hopper, monkeypatch):
    fp8 = dict(a=FP8, b=FP8, a_zp=None)
    assert qt.supports_scaled_mm(_qmm(**fp8, b_scale=(1,)))                       # tensorwise
    assert qt.supports_scaled_mm(_qmm(**fp8, residual="float16", activation="Gelu", activation_params=[0.0]))
    assert qt.supports_scaled_mm(_qmm(**fp8, out=TensorProto.INT8))               # requantized (torch)
    assert not qt.supports_scaled_mm(_qmm())                                      # int8
    assert not qt.supports_scaled_mm(_qmm(**fp8, n=760))                          # N % 16
    assert not qt.supports_scaled_mm(_qmm(**fp8, device="cpu"))
    # Rowwise (per-channel b_scale) with a non-bfloat16 output needs cuBLASLt's (CUDA 12.9+).
    monkeypatch.setattr(qt, "_cuda_at_least", lambda major, minor: False)
    assert not qt.supports_scaled_mm(_qmm(**fp8))
    assert qt.supports_scaled_mm(_qmm(**fp8, scale="bfloat16", bias="bfloat16"))
    assert qt.supports_scaled_mm(_qmm(**fp8, b_scale=(1,)))


def test_quantize_supports(hopper):
    q = lambda dts, shapes, **attrs: TacticQuery("QuantizeLinear", "cuda", dts, attrs, shapes)  # noqa: E731
    x = (32, 64, 56, 56)
    assert qt.supports_triton_quantize(q(("float16", "float16", "int8"), (x, (), ()),
                                         output_dtype=TensorProto.INT8))
    assert qt.supports_triton_quantize(q(("float32", "float32"), (x, (1,)), output_dtype=TensorProto.FLOAT8E4M3FN,
                                         saturate=1))
    assert qt.supports_triton_quantize(q(("bfloat16", "float32"), (x, ())))       # uint8 default
    tokens = (32, 128, 384)                                                        # per channel of the last axis
    assert qt.supports_triton_quantize(q(("float16", "float32"), (tokens, (384,)), axis=-1))
    assert qt.supports_triton_quantize(q(("float16", "float32", "int8"), (tokens, (384,), (384,)), axis=2))
    refused = [
        q(("float16", "float32", "int8"), (tokens, (384,), ()), axis=2),          # zero point per tensor
        q(("float16", "float32"), (tokens, (128,)), axis=1),                       # not the last axis
        q(("float16", "float16"), (x, (64,)), axis=1),                             # per axis
        q(("float16", "float16"), (x, (1, 64, 1, 1)), block_size=2),               # blocked
        q(("float64", "float64"), (x, ())),                                        # float64
        q(("float32", "float32"), (x, ()), output_dtype=TensorProto.INT4),         # int4
        q(("float32", "float32"), (x, ()), output_dtype=TensorProto.FLOAT8E4M3FN, saturate=0),
        q(("float32", "float32"), (x, ()), output_dtype=TensorProto.FLOAT8E5M2),
        q(("float32", "float32"), (x, ()), precision=TensorProto.DOUBLE),
        q(("float32", "float32"), (x, None)),                                      # scale shape unknown
    ]
    for r in refused:
        assert not qt.supports_triton_quantize(r), r
    assert not qt.supports_triton_quantize(TacticQuery("QuantizeLinear", "cpu", ("float32", "float32"), {},
                                                       (x, ())))


def test_candidates_list_the_tactics_before_the_reference(hopper):
    names = [t.name for t in candidates(_qmm(FP8, FP8, a_zp=None))]
    assert names[-1] == "kiln::QMatMul.reference"
    assert {"kiln::QMatMul.triton_fp8", "kiln::QMatMul.scaled_mm"} <= set(names) and "kiln::QMatMul.triton" not in names
    assert [t.name for t in candidates(_qmm(device="cpu"))] == ["kiln::QMatMul.reference"]


# --- kernels on CPU ------------------------------------------------------------------------------

def _operands(m, n, k, dtype, *, trans_b=0, per_channel=True, seed=0, dev=DEV, fp8_ints=False):
    """A QMatMul's inputs. fp8_ints: float8 operands that are integers in [-4, 4], which any
    float8 tensor-core accumulator sums exactly (Hopper's is narrower than float32), so a
    requantized output is held to the one-step rule by its epilogue alone."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.float8_e4m3fn and fp8_ints:
        a = torch.randint(-4, 5, (2, m, k), generator=g).to(dtype)
        b = torch.randint(-4, 5, (n, k) if trans_b else (k, n), generator=g).to(dtype)
        a_scale, a_zp = torch.tensor(4.0), None
    elif dtype == torch.float8_e4m3fn:
        a = (torch.randn(2, m, k, generator=g) * 40).to(dtype)
        b = (torch.randn(*((n, k) if trans_b else (k, n)), generator=g) * 40).to(dtype)
        a_scale, a_zp = torch.tensor(0.02), None
    else:
        a = torch.randint(-128, 128, (2, m, k), generator=g, dtype=torch.int32).to(dtype)
        b = torch.randint(-128, 128, (n, k) if trans_b else (k, n), generator=g, dtype=torch.int32).to(dtype)
        a_scale, a_zp = torch.tensor(1 / 64), torch.tensor(0, dtype=torch.int8)
    b_scale = (torch.rand(n if per_channel else 1, generator=g) + 0.5) / (k ** 0.5 * 48)
    bias, residual = torch.randn(n, generator=g), torch.randn(2, m, n, generator=g)
    return [None if t is None else t.to(dev) for t in (a, b, a_scale, a_zp, b_scale, None, bias, residual)]


def _cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


def _agrees(got, args, **attrs):
    want = REF(*[_cpu(t) for t in args], **{name: _cpu(v) for name, v in attrs.items()})   # all on CPU
    why = mismatch(got.cpu(), want, OP)
    assert why is None, why


@pytest.mark.skipif(not qt.triton_available(), reason="Triton is not installed")
def test_triton_tactic_uses_one_k_major_copy_per_weight():
    args = _operands(9, 32, 64, torch.int8)
    before = qt.cached_weights()
    got = qt.triton_qmatmul(*args, activation="Relu", config=TINY)
    _agrees(got, args, activation="Relu")
    copy = qt.k_major(args[1], 0)
    assert qt.cached_weights() == before + 1 and qt.k_major(args[1], 0) is copy
    assert copy.shape == (32, 64) and copy.is_contiguous()
    args_t = _operands(9, 32, 64, torch.int8, trans_b=1)
    assert qt.k_major(args_t[1], 1) is args_t[1]                 # already K-major: a view, no copy
    _agrees(qt.triton_qmatmul(*args_t, trans_b=1, config=TINY), args_t, trans_b=1)


def _cpu_scaled_mm(rowwise: bool = False) -> bool:
    """Whether this torch build has a CPU torch._scaled_mm (2.5+ with oneDNN), and (rowwise) one
    that takes per-row/per-column scales ([M, 1] and [1, N]; some builds take per-tensor only)."""
    a = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
    sa, sb = (torch.ones(16, 1), torch.ones(1, 16)) if rowwise else (torch.ones(()), torch.ones(()))
    try:
        torch._scaled_mm(a, a.t(), sa, sb, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch has no CPU torch._scaled_mm")
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scaled_mm_tactic_epilogue_on_cpu(per_channel, dtype):
    # torch's CPU _scaled_mm computes what cuBLASLt does; this checks the tactic's handling of
    # scales, the fused or deferred bias, residual, activation and output types.
    if per_channel and not _cpu_scaled_mm(rowwise=True):
        pytest.skip("this torch's CPU torch._scaled_mm takes per-tensor scales only")
    a, b, _, _, b_scale, _, bias, residual = _operands(5, 32, 48, torch.float8_e4m3fn, per_channel=per_channel,
                                                       dev="cpu")
    a_scale = torch.tensor(0.02, dtype=dtype)
    for bias_t in (bias, bias.to(dtype)):
        args = [a, b, a_scale, None, b_scale, None, bias_t, residual.to(dtype)]
        got = qt.scaled_mm_qmatmul(*args, activation="Gelu")
        assert got.dtype == dtype and got.shape == (2, 5, 32)
        _agrees(got, args, activation="Gelu")
    args = [a, b, a_scale, None, b_scale, None, bias, None]
    for out in (TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT8E4M3FN):
        got = qt.scaled_mm_qmatmul(*args, out_scale=torch.tensor(0.02), out_dtype=out, activation="Relu")
        _agrees(got, args, out_scale=torch.tensor(0.02), out_dtype=out, activation="Relu")
    bt = b.t().contiguous()
    _agrees(qt.scaled_mm_qmatmul(a, bt, a_scale, None, b_scale, trans_b=1), [a, bt, a_scale, None, b_scale],
            trans_b=1)
    for cfg in qt.SCALED_MM_CONFIGS:   # precise and fast accumulation: the same result on small integers
        _agrees(qt.scaled_mm_qmatmul(*args, config=cfg), args)


# --- GPU -----------------------------------------------------------------------------------------

def _cuda_fp8() -> bool:
    return HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gpu_tactics_match_the_reference(dtype, trans_b):
    if dtype == torch.float8_e4m3fn and not _cuda_fp8():
        pytest.skip("float8 needs compute capability 8.9+")
    fp8 = dtype == torch.float8_e4m3fn
    args = _operands(512, 768, 768, dtype, trans_b=trans_b, dev="cuda")
    # Requantized: float8 operands of small integers, summed exactly by any float8 accumulator.
    exact = _operands(512, 768, 768, dtype, trans_b=trans_b, dev="cuda", fp8_ints=True) if fp8 else args
    for ops in (args, exact):
        ops[2] = ops[2].half()
        ops[7] = ops[7].half()
    requant = [dict(out_scale=torch.tensor(0.05, device="cuda"), out_dtype=TensorProto.INT8)]
    if fp8:
        requant.append(dict(out_scale=torch.tensor(0.05, device="cuda"), out_dtype=TensorProto.FLOAT8E4M3FN))
    tactics = [qt.triton_qmatmul] + ([qt.scaled_mm_qmatmul] if fp8 else [])
    for fn in tactics:
        attrs = dict(activation="Gelu")
        _agrees(fn(*args, trans_b=trans_b, **attrs), args, trans_b=trans_b, **attrs)
        for attrs in requant:
            _agrees(fn(*exact, trans_b=trans_b, **attrs), exact, trans_b=trans_b, **attrs)


@pytest.mark.gpu
def test_gpu_quantize_tactic_is_offered_and_exact():
    x = torch.randn(8, 64, 28, 28, device="cuda").half().contiguous(memory_format=torch.channels_last)
    scale, zp = torch.tensor(0.02, dtype=torch.float16, device="cuda"), torch.tensor(0, dtype=torch.int8,
                                                                                      device="cuda")
    q = TacticQuery("QuantizeLinear", "cuda", ("float16", "float16", "int8"),
                    {"output_dtype": TensorProto.INT8}, (tuple(x.shape), (), ()))
    tactic = next(t for t in candidates(q) if t.name == "QuantizeLinear.triton")
    got = tactic.kernel(x, scale, zp, output_dtype=TensorProto.INT8)
    want = lookup("QuantizeLinear").fn(x, scale, zp, output_dtype=TensorProto.INT8)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)


def test_scaled_mm_scale_operands_are_memoised_float32():
    a_scale = torch.tensor(0.5, dtype=torch.float16)
    b_scale = torch.tensor([1.0, 2.0, 3.0])
    sa = qt.scale_operand(a_scale, (4, 1))
    assert sa.shape == (4, 1) and sa.dtype == torch.float32 and sa.is_contiguous() and (sa == 0.5).all()
    assert qt.scale_operand(a_scale, (4, 1)) is sa and qt.scale_operand(a_scale, ()).shape == ()
    sb = qt.scale_operand(b_scale, (1, 3))
    assert sb.tolist() == [[1.0, 2.0, 3.0]] and qt.scale_operand(b_scale, (1, 3)) is sb
    b_scale.add_(1.0)                                                      # a changed constant is re-read
    assert qt.scale_operand(b_scale, (1, 3)).tolist() == [[2.0, 3.0, 4.0]]


# --- split-K (kernels/triton/qgemm_splitk.py) ----------------------------------------------------

@pytest.mark.skipif(not qt.triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("t, name", [("int8", "kiln::QMatMul.triton_splitk"),
                                     ("float8_e4m3fn", "kiln::QMatMul.triton_fp8_splitk")])
def test_split_k_takes_few_tiles_over_a_long_k(hopper, t, name):
    """A classifier over a batch (ResNet-50's FC: [64, 2048] x [2048, 1000]) and nothing else:
    not BERT's FFN (many tiles), not a short K, not a symbolic M, not uint8 or mid quantization."""
    supports = get_tactic(name).supports
    zp = "int8" if t == "int8" else None
    fc = dict(m=32, n=1000, k=2048, a_zp=zp, b_zp=None, scale="float32")
    assert supports(_qmm(t, t, **fc))
    assert supports(_qmm(t, t, **fc, trans_b=1, out=TensorProto.INT8 if t == "int8" else None))
    assert not supports(_qmm(t, t, m=2048, n=3072, k=768, a_zp=zp))            # BERT-base FFN1: 48 x 48 tiles
    assert not supports(_qmm(t, t, **{**fc, "k": 512}))                        # short K
    symbolic = _qmm(t, t, **fc)
    shapes = (("batch", 32, 2048),) + symbolic.input_shapes[1:]
    assert not supports(TacticQuery(OP, "cuda", symbolic.input_dtypes, symbolic.attrs, shapes))
    if t == "int8":
        assert not supports(_qmm("uint8", "int8", **{**fc, "a_zp": "uint8"}))
