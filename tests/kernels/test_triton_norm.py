"""Triton LayerNorm / RMSNorm / Softmax / LogSoftmax against the reference ops.

Without a GPU the small cases run in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1); with one they run on CUDA. The `gpu` cases cover each tactic's whole
supported domain: dtypes, BERT-sized shapes, odd sizes, long rows and every config.
"""
from __future__ import annotations

import os

import pytest
import torch

from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.registry import lookup

pytestmark = pytest.mark.skipif(not kiln_triton.available(), reason="Triton does not import here")

if kiln_triton.available():
    from kiln.kernels.triton import norm, softmax

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def ref(op: str, *inputs, **attrs):
    return lookup(op).fn(*inputs, **attrs)


def close(got, want, dtype: torch.dtype) -> None:
    got, want = (got,) if isinstance(got, torch.Tensor) else got, (want,) if isinstance(want, torch.Tensor) else want
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=TOL[dtype], atol=TOL[dtype], equal_nan=True)


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = DEV) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype).to(device)


# ------------------------------------------------------------------ interpreted (or GPU) small cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,axis,bias", [((7, 13), -1, True), ((7, 13), -1, False), ((2, 3, 5), 1, True),
                                             ((1, 1), 0, True)])
def test_layer_norm_small(shape, axis, bias, dtype):
    x = rand(*shape, dtype=dtype)
    w, b = rand(*shape[axis:], seed=1), rand(*shape[axis:], seed=2) if bias else None
    args = (x, w, b) if bias else (x, w)
    close(norm.layer_norm(*args, axis=axis, epsilon=1e-3), ref("LayerNormalization", *args, axis=axis, epsilon=1e-3),
          dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("shape,axis", [((7, 13), -1), ((2, 3, 8), -1), ((3, 4, 5), 1)])
def test_add_layer_norm_small(shape, axis, n_outputs, dtype):
    x, r = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, seed=3)
    w, b = rand(*shape[axis:], seed=1), rand(*shape[axis:], seed=2)
    y, s = norm.add_layer_norm(x, r, w, b, axis=axis, epsilon=1e-3, n_outputs=n_outputs)
    want_y, want_s = ref("kiln::AddLayerNorm", x, r, w, b, axis=axis, epsilon=1e-3)
    close(y, want_y, dtype)
    if n_outputs == 2:  # the sum is rounded to X's type exactly as the reference's Add
        assert torch.equal(s, want_s)


def test_add_layer_norm_rejects_a_broadcast_residual():
    x = rand(4, 8)
    with pytest.raises(ValueError, match="residual .* must match X"):
        norm.add_layer_norm(x, rand(1, 8), rand(8), rand(8))


def test_layer_norm_broadcast_scale():
    # Scale [1, C] and a scalar-like B [1] broadcast over the normalised dim.
    x, w, b = rand(5, 6), rand(1, 6, seed=1), rand(1, seed=2)
    close(norm.layer_norm(x, w, b), ref("LayerNormalization", x, w, b), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,axis", [((7, 13), -1), ((2, 3, 5), -2)])
def test_rms_norm_small(shape, axis, dtype):
    x, w = rand(*shape, dtype=dtype), rand(*shape[axis:], seed=1)
    close(norm.rms_norm(x, w, axis=axis, epsilon=1e-4), ref("RMSNormalization", x, w, axis=axis, epsilon=1e-4), dtype)


@pytest.mark.parametrize("op,fn", [("Softmax", "softmax"), ("LogSoftmax", "log_softmax")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,axis,coerce", [((7, 13), -1, 0), ((3, 5, 7), 1, 0), ((3, 5, 7), 0, 0),
                                               ((3, 5, 7), 1, 1), ((4,), 0, 0)])
def test_softmax_small(op, fn, shape, axis, coerce, dtype):
    x = rand(*shape, dtype=dtype)
    close(getattr(softmax, fn)(x, axis=axis, coerce_2d=coerce), ref(op, x, axis=axis, coerce_2d=coerce), dtype)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN row
def test_softmax_infinities():
    # -inf entries get probability 0; a row all -inf is NaN, as in torch.
    x = torch.tensor([[0.0, -float("inf"), 1.0], [-float("inf")] * 3], device=DEV)
    close(softmax.softmax(x), ref("Softmax", x), torch.float32)


def test_loop_kernels(monkeypatch):
    """The chunked long-row kernels, made to run on small rows by shrinking their limits."""
    monkeypatch.setattr(norm, "BLOCK_MAX", 8)
    monkeypatch.setattr(norm, "CHUNK", 4)
    x, w, b = rand(3, 2, 13), rand(2, 13, seed=1), rand(2, 13, seed=2)
    close(norm.layer_norm(x, w, b, axis=1), ref("LayerNormalization", x, w, b, axis=1), torch.float32)
    close(norm.rms_norm(x, w, axis=1), ref("RMSNormalization", x, w, axis=1), torch.float32)
    for axis in (-1, 1):
        close(softmax.softmax(x, axis=axis), ref("Softmax", x, axis=axis), torch.float32)
        close(softmax.log_softmax(x, axis=axis, coerce_2d=1), ref("LogSoftmax", x, axis=axis, coerce_2d=1),
              torch.float32)


@pytest.mark.parametrize("config", [{"num_warps": 4, "rows": 4}, {"num_warps": 4, "rows": 16}])
def test_rows_per_program(config):
    x, w = rand(37, 9), rand(9, seed=1)
    close(norm.layer_norm(x, w, config=config), ref("LayerNormalization", x, w), torch.float32)
    close(softmax.softmax(x, axis=0, config=config), ref("Softmax", x, axis=0), torch.float32)


def test_empty():
    x = torch.zeros(0, 5, device=DEV)
    assert softmax.softmax(x).shape == (0, 5)
    y, mean, inv = norm.layer_norm(x, torch.ones(5, device=DEV))
    assert y.shape == (0, 5) and mean.shape == inv.shape == (0, 1)


# ------------------------------------------------------------------ tactics: registration and supports


def _query(op, dtype="float16", shapes=((32, 128, 768), (768,), (768,)), device="cuda", **attrs):
    from kiln.tactics import TacticQuery
    return TacticQuery(op, device, (dtype,) * len(shapes), attrs, shapes)


def test_tactics_registered_first():
    # LayerNormalization's Y-only node is offered torch's fused kernel first (faster on H200).
    from kiln.tactics import candidates
    for op in ("LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax"):
        shapes = ((8, 64), (64,)) if op != "Softmax" and op != "LogSoftmax" else ((8, 64),)
        names = [t.name for t in candidates(_query(op, shapes=shapes))]
        assert f"{op}.triton" in names[:2] and names[-1] == f"{op}.reference"


@pytest.mark.parametrize("query,ok", [
    (dict(op="LayerNormalization"), True),
    (dict(op="LayerNormalization", device="cpu"), False),
    (dict(op="LayerNormalization", dtype="float64"), False),
    (dict(op="LayerNormalization", stash_type=0), False),
    (dict(op="LayerNormalization", shapes=((32, 16, 768), (768,), (768,)), axis=-2), True),
    (dict(op="LayerNormalization", axis=-2), False),                   # rows of 128 * 768
    (dict(op="LayerNormalization", axis=3), False),
    (dict(op="LayerNormalization", shapes=(("B", "S", 768), (768,))), True),
    (dict(op="LayerNormalization", shapes=((4, 70000), (70000,))), False),
    (dict(op="LayerNormalization", shapes=((4, 8), (4, 8))), False),   # Scale varies per row
    (dict(op="LayerNormalization", shapes=((4, 8), (1, 8))), True),
    (dict(op="LayerNormalization", shapes=((4, 0), (0,))), False),
    (dict(op="RMSNormalization", dtype="bfloat16", shapes=((4, 4096), (4096,))), True),
    (dict(op="Softmax", shapes=((32, 12, 128, 128),)), True),
    (dict(op="Softmax", shapes=((32, 12, 128, 128),), axis=1), True),
    (dict(op="Softmax", shapes=((2, 100000),)), False),
    (dict(op="Softmax", shapes=((2, 300, 300),), axis=1, coerce_2d=1), False),
    (dict(op="LogSoftmax", shapes=((2, "S"),)), True),
    (dict(op="Softmax", shapes=((),)), False),
])
def test_supports(query, ok):
    from kiln.tactics import get_tactic
    q = dict(query)
    op = q.pop("op")
    assert get_tactic(f"{op}.triton").supports(_query(op, **q)) is ok


# ------------------------------------------------------------------ GPU: the whole supported domain

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NORM_SHAPES = [((32 * 128, 768), -1), ((32, 128, 768), -1), ((7, 13), -1), ((3, 5, 1000), -2), ((64, 4096), -1),
               ((5, 12345), -1), ((3, 20000), -1), ((2, 65536), -1), ((1, 1), -1)]
SOFTMAX_SHAPES = [((32, 12, 128, 128), -1, 0), ((32 * 128, 768), -1, 0), ((7, 13), -1, 0), ((2, 3, 1000), 1, 0),
                  ((4, 33, 7, 5), 1, 0), ((4, 33, 7, 5), 1, 1), ((3, 20000), -1, 0), ((2, 65536), -1, 0),
                  ((300, 3), 0, 0)]


def _configs(tactic, dtype: torch.dtype) -> tuple[dict, ...]:
    """Every config in fp16 (the dtype the tuner sees most); one elsewhere, to bound compile time."""
    return tactic.configs if dtype == torch.float16 else tactic.configs[:1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape,axis", NORM_SHAPES)
@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_gpu_norm_tactics(op, shape, axis, dtype):
    from kiln.tactics import get_tactic
    tactic = get_tactic(f"{op}.triton")
    x, w, b = rand(*shape, dtype=dtype, device="cuda"), rand(*shape[axis:], seed=1, device="cuda"), \
        rand(*shape[axis:], seed=2, device="cuda")
    args = (x, w, b) if op == "LayerNormalization" else (x, w)
    assert tactic.supports(_query(op, str(dtype).removeprefix("torch."), tuple(tuple(a.shape) for a in args),
                                  axis=axis))
    want = ref(op, *args, axis=axis)
    for config in _configs(tactic, dtype):
        close(tactic.kernel(*args, axis=axis, config=config), want, dtype)
    close(tactic.kernel(*args, axis=axis), want, dtype)


@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("shapes,axis,ok", [
    (((32, 128, 768), (32, 128, 768), (768,), (768,)), -1, True),
    (((32, 128, 768), (1, 128, 768), (768,), (768,)), -1, False),    # residual broadcast
    ((("B", 128, 768), ("B", 128, 768), (768,), (768,)), -1, True),   # a dynamic batch: any number of rows
    (((4, "C"), (4, "C"), ("C",), ("C",)), -1, False),                # the row length must be known
    (((4, 20000), (4, 20000), (20000,), (20000,)), -1, False),         # longer than a register block
])
def test_add_layer_norm_supports(shapes, axis, ok, n_outputs):
    from kiln.tactics import TacticQuery, get_tactic
    q = TacticQuery("kiln::AddLayerNorm", "cuda", ("float16",) * 4, {"axis": axis}, shapes, n_outputs=n_outputs)
    assert get_tactic("kiln::AddLayerNorm.triton").supports(q) is (ok and n_outputs == 2)
    assert get_tactic("kiln::AddLayerNorm.triton_y").supports(q) is (ok and n_outputs == 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape", [(32, 128, 768), (7, 13), (64, 4096), (3, 16384)])
@pytest.mark.parametrize("name", ["triton", "triton_y", "torch"])
def test_gpu_add_layer_norm_tactics(name, shape, dtype):
    from kiln.tactics import TacticQuery, get_tactic
    tactic = get_tactic(f"kiln::AddLayerNorm.{name}")
    x, r = rand(*shape, dtype=dtype, device="cuda"), rand(*shape, dtype=dtype, seed=3, device="cuda")
    w, b = rand(shape[-1], seed=1, device="cuda").to(dtype), rand(shape[-1], seed=2, device="cuda").to(dtype)
    n_out = 1 if name == "triton_y" else 2
    q = TacticQuery("kiln::AddLayerNorm", "cuda", (str(dtype).removeprefix("torch."),) * 4, {},
                    (shape, shape, (shape[-1],), (shape[-1],)), n_outputs=n_out)
    assert tactic.supports(q)
    want = ref("kiln::AddLayerNorm", x, r, w, b)
    for config in _configs(tactic, dtype):
        got = tactic.kernel(x, r, w, b, **({"config": config} if config else {}))
        close(got[0], want[0], dtype)
        if n_out == 2:
            close(got[1], want[1], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape,axis,coerce", SOFTMAX_SHAPES)
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_gpu_softmax_tactics(op, shape, axis, coerce, dtype):
    from kiln.tactics import get_tactic
    tactic = get_tactic(f"{op}.triton")
    x = rand(*shape, dtype=dtype, device="cuda")
    assert tactic.supports(_query(op, str(dtype).removeprefix("torch."), (shape,), axis=axis, coerce_2d=coerce))
    want = ref(op, x, axis=axis, coerce_2d=coerce)
    for config in _configs(tactic, dtype):
        close(tactic.kernel(x, axis=axis, coerce_2d=coerce, config=config), want, dtype)
    close(tactic.kernel(x, axis=axis, coerce_2d=coerce), want, dtype)
