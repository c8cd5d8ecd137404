"""MatMul / Gemm / kiln::FusedMatMul tactics (cuBLAS through torch, Triton GEMM) against the
reference ops. CPU: the cuBLAS-path kernels run on torch's CPU BLAS, the Triton GEMM in Triton's
interpreter at tiny shapes (bfloat16 only on the GPU: the interpreter's bf16 dot is wrong).
GPU (marked): every tactic across its dtypes, epilogues and shapes, BERT-base sizes included."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kiln.kernels.reference import lookup
from kiln.tactics import TacticQuery, candidates, get_tactic
from kiln.tactics import matmul as mm_tactics

REF_FUSED = lookup("kiln::FusedMatMul").fn
REF_MATMUL = lookup("MatMul").fn
REF_GEMM = lookup("Gemm").fn
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
HAS_CUDA = torch.cuda.is_available()
TRITON_DEV = "cuda" if HAS_CUDA else "cpu"   # interpreted on CPU, compiled on the GPU
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# (activation, params): every epilogue the Triton GEMM has.
EPILOGUES = [("", []), ("Relu", []), ("LeakyRelu", [0.1]), ("Clip", [-0.5, 0.75]), ("Sigmoid", []),
             ("HardSigmoid", [0.3, 0.4]), ("HardSwish", []), ("Tanh", []), ("Gelu", [0.0]), ("Gelu", [1.0]),
             ("Silu", [])]


def _operands(lead, m, n, k, dtype, device, *, trans_b=0, bias=True, residual=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*lead, m, k, generator=g)
    b = torch.randn(*((n, k) if trans_b else (k, n)), generator=g) / math.sqrt(k)   # keeps Y ~ N(0, 1)
    c = torch.randn(n, generator=g) if bias else None
    r = torch.randn(*lead, m, n, generator=g) if residual else None
    return tuple(None if t is None else t.to(dtype=dtype, device=device) for t in (a, b, c, r))


def _check_fused(fn, ops, dtype, config=None, **attrs):
    """fn(*ops) against the reference: same dtype and shape, values near the fp32 reference."""
    got = fn(*ops, **attrs) if config is None else fn(*ops, **attrs, config=config)
    like = REF_FUSED(*ops, **attrs)
    want = REF_FUSED(*(None if t is None else t.float() for t in ops), **attrs)
    assert got.dtype == like.dtype and got.shape == like.shape
    torch.testing.assert_close(got.float(), want, rtol=TOL[dtype], atol=TOL[dtype])


# --- Triton GEMM, interpreted on CPU ---------------------------------------------------------

if mm_tactics.triton_available():
    from kiln.kernels.triton import activation as triton_act
    from kiln.kernels.triton import gemm as triton_gemm
else:
    triton_act = triton_gemm = None
needs_triton = pytest.mark.skipif(triton_gemm is None, reason="Triton is not installed")


@needs_triton
def test_triton_gemm_every_epilogue_fp32():
    # One tile, all inputs: alpha, bias, residual and each activation.
    ops = _operands((), 16, 16, 16, torch.float32, TRITON_DEV)
    for act, params in EPILOGUES:
        _check_fused(triton_gemm.fused_matmul, ops, torch.float32, alpha=0.5, activation=act,
                     activation_params=params, config=TINY)


@needs_triton
@pytest.mark.parametrize("m,n,k,trans_b,lead", [(16, 32, 16, 0, ()), (17, 33, 19, 1, (2,)), (5, 40, 24, 0, (1, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_gemm_shapes_masking(m, n, k, trans_b, lead, dtype):
    ops = _operands(lead, m, n, k, dtype, TRITON_DEV, trans_b=trans_b)
    _check_fused(triton_gemm.fused_matmul, ops, dtype, trans_b=trans_b, activation="Gelu",
                 activation_params=[0.0], config=TINY)


@needs_triton
def test_triton_gemm_optional_inputs_and_empty():
    a, b, c, r = _operands((), 17, 33, 19, torch.float32, TRITON_DEV)
    _check_fused(triton_gemm.fused_matmul, (a, b), torch.float32, activation="Relu", config=TINY)
    _check_fused(triton_gemm.fused_matmul, (a, b, None, r), torch.float32, alpha=2.0, config=TINY)
    empty = triton_gemm.fused_matmul(a[:, :0], b[:0], c, config=TINY)   # K = 0: bias only
    torch.testing.assert_close(empty, c.expand(17, 33))


@needs_triton
def test_triton_activation_codes():
    assert triton_act.activation_code("Gelu", [1.0])[0] == triton_act.ACT_GELU_TANH
    assert triton_act.activation_code("Gelu", [])[0] == triton_act.ACT_GELU_ERF
    assert triton_act.activation_code("Clip", []) == (triton_act.ACT_CLIP, -math.inf, math.inf)
    assert triton_act.activation_code("LeakyRelu", [])[1] == 0.01
    with pytest.raises(ValueError, match="Mish"):
        triton_act.activation_code("Mish", [])
    assert len(triton_gemm.CONFIGS) >= 6 and all(
        set(c) - {"PERSISTENT", "Y_TMA"} == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}
        for c in triton_gemm.CONFIGS)


TINY_PERSISTENT = {**TINY, "PERSISTENT": 1}


@needs_triton
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("m,n,k,lead", [(16, 32, 16, ()), (37, 48, 40, (2,))])
def test_triton_gemm_persistent_tma_walk(m, n, k, lead, trans_b):
    """PERSISTENT=1 (gemm_tma.py where TMA applies, else the same tiles through the plain kernel):
    edges the copy engine zero-fills, B read as [K, N] or [N, K] in place, several tiles per program."""
    ops = _operands(lead, m, n, k, torch.float16, TRITON_DEV, trans_b=trans_b)
    _check_fused(triton_gemm.fused_matmul, ops, torch.float16, trans_b=trans_b, activation="Gelu",
                 activation_params=[0.0], config=TINY_PERSISTENT)
    # Y_TMA: Y and the residual through TMA boxes (rows of 32 / 48 halves are 16-byte aligned).
    _check_fused(triton_gemm.fused_matmul, ops, torch.float16, trans_b=trans_b, activation="Gelu",
                 activation_params=[0.0], config={**TINY_PERSISTENT, "Y_TMA": 1})


# --- cuBLAS-path kernels, on torch's CPU BLAS -------------------------------------------------

@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("act,params", [("", []), ("Relu", []), ("Gelu", [0.0]), ("Gelu", [1.0]), ("Clip", [0.0, 1.0])])
def test_cublas_fused_on_cpu(bias, residual, act, params):
    ops = _operands((2,), 7, 12, 9, torch.float32, "cpu", trans_b=1, bias=bias, residual=residual)
    while ops and ops[-1] is None:
        ops = ops[:-1]
    _check_fused(mm_tactics.cublas_fused_matmul, ops, torch.float32, trans_b=1, alpha=0.75,
                 activation=act, activation_params=params)


def test_cublas_fused_fallbacks_and_half_on_cpu():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, generator=g), torch.randn(2, 4, 5, generator=g)       # batched B
    _check_fused(mm_tactics.cublas_fused_matmul, (a, b, torch.randn(5, generator=g)), torch.float32)
    r = torch.randn(3, 2, 3, 5, generator=g)                                          # residual grows Y
    _check_fused(mm_tactics.cublas_fused_matmul, (a, b[0], None, r), torch.float32, activation="Tanh")
    ops = _operands((3,), 8, 16, 8, torch.float16, "cpu")
    _check_fused(mm_tactics.cublas_fused_matmul, ops, torch.float16, activation="Silu")


def test_cublas_matmul_and_gemm_on_cpu():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 4, generator=g), torch.randn(4, 5, generator=g)
    torch.testing.assert_close(mm_tactics.cublas_matmul(a, b), REF_MATMUL(a, b))
    torch.testing.assert_close(mm_tactics.cublas_matmul(a, a.transpose(1, 2)), REF_MATMUL(a, a.transpose(1, 2)))
    x, w = torch.randn(4, 3, generator=g), torch.randn(5, 4, generator=g)             # transA, transB
    for c in (None, torch.randn(5, generator=g), torch.randn(3, 1, generator=g), torch.tensor(2.0)):
        for alpha, beta in ((1.0, 1.0), (0.5, 2.0)):
            attrs = {"alpha": alpha, "beta": beta, "transA": 1, "transB": 1}
            args = (x, w) if c is None else (x, w, c)
            torch.testing.assert_close(mm_tactics.cublas_gemm(*args, **attrs), REF_GEMM(*args, **attrs))


def test_lt_gelu_only_where_torch_computes_the_same_gelu():
    cpu, cuda, f16 = torch.device("cpu"), torch.device("cuda"), torch.float16
    assert mm_tactics.lt_activation("Relu", [], cpu, torch.float32) == "relu"
    assert mm_tactics.lt_activation("Gelu", [1.0], cuda, f16) == "gelu"
    assert mm_tactics.lt_activation("Gelu", [1.0], cuda, torch.bfloat16) == "gelu"
    assert mm_tactics.lt_activation("Gelu", [1.0], cuda, torch.float32) is None   # tolerance 1e-4
    assert mm_tactics.lt_activation("Gelu", [0.0], cuda, f16) is None     # cuBLASLt GELU is tanh-approximate
    assert mm_tactics.lt_activation("Gelu", [1.0], cpu, f16) is None      # torch's CPU GELU there is exact
    assert mm_tactics.lt_activation("Silu", [], cuda, f16) is None


# --- supports ---------------------------------------------------------------------------------

def _names(op, device, dtypes, attrs=None, shapes=()):
    return [t.name for t in candidates(TacticQuery(op, device, dtypes, attrs or {}, shapes))]


def test_candidates_by_device_dtype_and_shape():
    f16 = ("float16",) * 4
    gelu = {"activation": "Gelu", "activation_params": [0.0]}
    bert = ((8, "S", 768), (768, 3072), (3072,), (8, "S", 3072))
    found = _names("kiln::FusedMatMul", "cuda", f16, gelu, bert)
    assert found[0] == "kiln::FusedMatMul.cublas" and found[-1] == "kiln::FusedMatMul.reference"
    assert ("kiln::FusedMatMul.triton" in found) == (triton_gemm is not None)
    assert _names("kiln::FusedMatMul", "cpu", f16, gelu, bert) == ["kiln::FusedMatMul.reference"]
    # Triton: fp16/bf16 only, known ranks, K and N multiples of 16, residual within Y.
    assert "kiln::FusedMatMul.triton" not in _names("kiln::FusedMatMul", "cuda", ("float32",) * 4, gelu, bert)
    assert "kiln::FusedMatMul.triton" not in _names("kiln::FusedMatMul", "cuda", f16, gelu)
    for k, n in ((770, 3072), (776, 3072), (768, 3080)):
        odd = ((8, 30, k), (k, n), (n,), (8, 30, n))
        assert "kiln::FusedMatMul.triton" not in _names("kiln::FusedMatMul", "cuda", f16, gelu, odd)
    nk = ((8, 30, 768), (3072, 768), (3072,), (8, 30, 3072))                         # trans_b: B is [N, K]
    assert "kiln::FusedMatMul.triton" in _names("kiln::FusedMatMul", "cuda", f16, {"trans_b": 1}, nk) or not triton_gemm
    grows = ((30, 768), (768, 3072), (3072,), (8, 30, 3072))
    assert "kiln::FusedMatMul.triton" not in _names("kiln::FusedMatMul", "cuda", f16, gelu, grows)
    # cuBLAS: no integers, no mixed dtypes, no batched B when it is known.
    assert _names("kiln::FusedMatMul", "cuda", ("int8",) * 2) == ["kiln::FusedMatMul.reference"]
    assert _names("kiln::FusedMatMul", "cuda", ("float16", "float32")) == ["kiln::FusedMatMul.reference"]
    assert _names("kiln::FusedMatMul", "cuda", ("float16",) * 2, {}, ((2, 3, 4), (2, 4, 5))) == [
        "kiln::FusedMatMul.reference"]
    assert _names("MatMul", "cuda", ("bfloat16",) * 2) == ["MatMul.cublas", "MatMul.reference"]
    assert _names("MatMul", "cuda", ("int64",) * 2) == ["MatMul.reference"]
    assert _names("Gemm", "cuda", ("float32",) * 3) == ["Gemm.cublas", "Gemm.reference"]
    assert _names("Gemm", "cuda", ("float16", "float16", "float32")) == ["Gemm.reference"]


def test_tanh_gelu_epilogue_only_for_exact_gelu_with_bias_in_half_types():
    ffn = ((8, 128, 768), (768, 3072), (3072,))
    exact = {"activation": "Gelu", "activation_params": [0.0]}
    name = "kiln::FusedMatMul.cublas_tanh_gelu"
    assert name in _names("kiln::FusedMatMul", "cuda", ("float16",) * 3, exact, ffn)
    assert name in _names("kiln::FusedMatMul", "cuda", ("bfloat16",) * 3, exact, ffn)
    assert name not in _names("kiln::FusedMatMul", "cuda", ("float32",) * 3, exact, ffn)     # fp32: exact only
    assert name not in _names("kiln::FusedMatMul", "cpu", ("float16",) * 3, exact, ffn)
    assert name not in _names("kiln::FusedMatMul", "cuda", ("float16",) * 3, {"activation": "Relu"}, ffn)
    assert name in _names("kiln::FusedMatMul", "cuda", ("float16", "float16", None), exact, ffn[:2])   # zero bias
    assert name not in _names("kiln::FusedMatMul", "cuda", ("float16",) * 4, exact, ffn + ((8, 128, 3072),))


# --- GPU --------------------------------------------------------------------------------------

GPU_SHAPES = [((), 4096, 3072, 768), ((), 4096, 768, 3072), ((8,), 128, 768, 768), ((2,), 33, 72, 40),
              ((), 1, 64, 128), ((), 17, 33, 19)]
FUSED_TACTICS = ["kiln::FusedMatMul.cublas", "kiln::FusedMatMul.triton"]


def _gpu_dtypes(name):
    return [torch.float16, torch.bfloat16] + ([torch.float32] if name.endswith("cublas") else [])


@pytest.mark.gpu
@pytest.mark.parametrize("name", FUSED_TACTICS)
@pytest.mark.parametrize("lead,m,n,k", GPU_SHAPES)
def test_gpu_fused_shapes_dtypes(name, lead, m, n, k):
    tactic = get_tactic(name)
    for dtype in _gpu_dtypes(name):
        for trans_b in (0, 1):
            ops = _operands(lead, m, n, k, dtype, "cuda", trans_b=trans_b)
            _check_fused(tactic.kernel, ops, dtype, trans_b=trans_b, activation="Gelu", activation_params=[0.0])


@pytest.mark.gpu
@pytest.mark.parametrize("name", FUSED_TACTICS)
def test_gpu_fused_epilogues(name):
    # Each Triton epilogue is its own compile (~seconds): every activation once with bias and
    # residual in fp16, the bias/residual combinations with two activations in every dtype.
    tactic = get_tactic(name)
    ops = _operands((2,), 256, 512, 256, torch.float16, "cuda")
    for act, params in EPILOGUES:
        _check_fused(tactic.kernel, ops, torch.float16, alpha=0.5, activation=act, activation_params=params)
    for dtype in _gpu_dtypes(name):
        for bias, residual in ((False, False), (True, False), (False, True), (True, True)):
            ops = _operands((2,), 256, 512, 256, dtype, "cuda", bias=bias, residual=residual)
            for act, params in (("", []), ("Relu", []), ("Gelu", [1.0])):   # Relu, tanh-Gelu: cublasLt epilogues
                _check_fused(tactic.kernel, ops, dtype, activation=act, activation_params=params)


@pytest.mark.gpu
@pytest.mark.parametrize("config", list(triton_gemm.CONFIGS) if triton_gemm is not None else [])
def test_gpu_triton_every_config(config):
    ops = _operands((), 1000, 768, 320, torch.float16, "cuda")    # ragged M, K not a multiple of 64 or 128
    _check_fused(triton_gemm.fused_matmul, ops, torch.float16, activation="Gelu", activation_params=[0.0],
                 config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tanh_gelu_epilogue_within_tolerance_of_exact_gelu(dtype):
    for bias in (True, False):
        ops = _operands((8,), 128, 3072, 768, dtype, "cuda", bias=bias, residual=False)
        _check_fused(get_tactic("kiln::FusedMatMul.cublas_tanh_gelu").kernel, ops, dtype, activation="Gelu",
                     activation_params=[0.0])


@pytest.mark.gpu
def test_gpu_addmm_activation_gelu_is_the_tanh_form():
    # The reason lt_activation sends only Gelu(approximate="tanh") to torch._addmm_activation.
    # The two GELUs differ by up to 4.7e-4 near |x| = 2.7; the bias sweeps that range and the
    # product is tiny, so in float32 the epilogue's form shows clearly.
    n = 4096
    a = torch.full((64, 32), 1e-3, device="cuda")
    b = torch.full((32, n), 1e-3, device="cuda")
    c = torch.linspace(-4.0, 4.0, n, device="cuda")
    got = torch._addmm_activation(c, a, b, use_gelu=True)
    pre = torch.addmm(c, a, b)
    err_tanh = (got - F.gelu(pre, approximate="tanh")).abs().max().item()
    err_erf = (got - F.gelu(pre)).abs().max().item()
    assert err_erf > 3e-4 and err_tanh < 0.5 * err_erf, (err_tanh, err_erf)
    for dtype in (torch.float16, torch.bfloat16):   # and within tolerance where the tactic uses it
        got = torch._addmm_activation(c.to(dtype), a.to(dtype), b.to(dtype), use_gelu=True).float()
        torch.testing.assert_close(got, F.gelu(pre, approximate="tanh"), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matmul_and_gemm(dtype):
    a, b, c, _ = _operands((4,), 64, 96, 128, dtype, "cuda", residual=False)
    tol = TOL[dtype]
    torch.testing.assert_close(get_tactic("MatMul.cublas").kernel(a, b).float(), REF_MATMUL(a.float(), b.float()),
                               rtol=tol, atol=tol)
    x = a[0]
    for cc in (None, c, c[:1].reshape(1, 1)):
        attrs = {"alpha": 0.5, "beta": 2.0, "transB": 1}
        args = (x, b.t().contiguous()) if cc is None else (x, b.t().contiguous(), cc)
        got = get_tactic("Gemm.cublas").kernel(*args, **attrs)
        want = REF_GEMM(*(t.float() for t in args), **attrs)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
