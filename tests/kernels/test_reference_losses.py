"""Losses, CumProd, Det and the random ops against onnx's ReferenceEvaluator.

Random ops cannot match numpy's draws: they are checked for shape, dtype, determinism
under a seed and the statistics of the distribution instead.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx_oracle import Case, Rand, check_case, run_kiln

R = Rand(seed=5)
SCORES = R.f(3, 5, 2, 2)                                # [N, C, d1, d2]
LABELS = R.i(3, 2, 2, lo=0, hi=5, dtype=np.int64)
LABELS_II = LABELS.copy()
LABELS_II[0, 0, 0] = LABELS_II[2, 1, 1] = -1           # ignored, and out of [0, C)
WEIGHTS = R.f(5, lo=0.1, hi=2.0)


def _loss_cases(op: str, outputs: int) -> list[Case]:
    return [
        Case(op, (SCORES, LABELS), {"reduction": red}, outputs=outputs, opset=13, name=red)
        for red in ("none", "sum", "mean")
    ] + [
        Case(op, (SCORES, LABELS, WEIGHTS), {"reduction": "mean"}, outputs=outputs, opset=13, name="weight_mean"),
        Case(op, (SCORES, LABELS_II, WEIGHTS), {"reduction": "mean", "ignore_index": -1}, outputs=outputs,
             opset=13, name="weight_ii_mean"),
        Case(op, (SCORES, LABELS_II), {"reduction": "sum", "ignore_index": -1}, outputs=outputs,
             opset=13, name="ii_sum"),
        Case(op, (SCORES[:, :, 0, 0], LABELS_II[:, 0, 0].astype(np.int32)),
             {"reduction": "none", "ignore_index": -1}, outputs=outputs, opset=13, name="2d_int32_labels"),
        Case(op, (SCORES.astype(np.float64), LABELS, WEIGHTS.astype(np.float64)), {"reduction": "mean"},
             outputs=outputs, opset=13, name="float64"),
    ]


CASES = _loss_cases("NegativeLogLikelihoodLoss", 1) + _loss_cases("SoftmaxCrossEntropyLoss", 2) + [
    Case("CumProd", (R.f(4, 5, lo=0.5, hi=1.5), np.array(1, np.int64)), opset=26, name="axis1"),
    Case("CumProd", (R.f(4, 5, lo=0.5, hi=1.5), np.array(-2, np.int32)), {"exclusive": 1, "reverse": 1},
         opset=26, name="exclusive_reverse_negative_axis"),
    Case("CumProd", (R.i(6, lo=-4, hi=5, dtype=np.int32), np.array(0, np.int64)), {"exclusive": 1},
         opset=26, name="int32"),
    Case("CumProd", (R.i(2, 6, lo=-4, hi=5, dtype=np.int64), np.array(1, np.int64)), {"reverse": 1},
         opset=26, name="int64"),
    Case("CumProd", (R.f(3, 4, dtype=np.float64), np.array(0, np.int64)), opset=26, name="float64"),
    Case("Det", (R.f(3, 3),), opset=22, tol=(1e-5, 1e-5), name="2d"),
    Case("Det", (R.f(2, 3, 4, 4),), opset=22, tol=(1e-5, 1e-5), name="batched"),
    Case("Det", (R.f(2, 2, dtype=np.float64),), opset=22, name="float64"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


def test_cumprod_unsigned_wraps_like_numpy() -> None:
    x = np.array([70000, 70000, 3], np.uint32)
    got = run_kiln(Case("CumProd", (x, np.array(0, np.int64))))[0]
    assert got.dtype == torch.uint32
    np.testing.assert_array_equal(got.numpy(), np.cumprod(x, dtype=np.uint32))


def test_det_of_singular_and_half() -> None:
    x = np.array([[1, 2], [2, 4]], np.float16)
    got = run_kiln(Case("Det", (x,)))[0]
    assert got.dtype == torch.float16 and float(got) == 0.0


P = np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]], np.float32)


def test_bernoulli_with_p_zero_or_one_is_exact(device: str) -> None:
    x = torch.from_numpy(P).to(device)
    from kiln.kernels.reference.random import bernoulli
    assert torch.equal(bernoulli(x).cpu(), torch.from_numpy(P))
    got = bernoulli(x, dtype=TensorProto.INT64, seed=3.0)
    assert got.dtype == torch.int64 and torch.equal(got.cpu(), torch.from_numpy(P).long())


def test_seeded_ops_are_deterministic_and_well_distributed(device: str) -> None:
    from kiln.kernels.reference import random as rnd
    like = torch.zeros(200, 100, dtype=torch.float64, device=device)
    u = rnd.random_uniform_like(like, low=-2.0, high=3.0, seed=1.5)
    assert u.dtype == torch.float64 and u.shape == (200, 100)
    assert torch.equal(u, rnd.random_uniform_like(like, low=-2.0, high=3.0, seed=1.5))
    assert not torch.equal(u, rnd.random_uniform_like(like, low=-2.0, high=3.0, seed=2.5))
    assert u.min() >= -2.0 and u.max() < 3.0 and abs(float(u.mean()) - 0.5) < 0.05
    n = rnd.random_normal(shape=[200, 100], dtype=TensorProto.FLOAT16, mean=4.0, scale=2.0, seed=0.0)
    assert n.dtype == torch.float16 and n.shape == (200, 100)
    assert abs(float(n.float().mean()) - 4.0) < 0.1 and abs(float(n.float().std()) - 2.0) < 0.1
    assert rnd.random_uniform(shape=[2, 3]).dtype == torch.float32
    assert rnd.random_normal_like(like.to(torch.int32), dtype=TensorProto.DOUBLE).dtype == torch.float64


def test_multinomial_follows_softmax_of_logits(device: str) -> None:
    from kiln.kernels.reference.random import multinomial
    # Row 0 puts all the mass on class 2, row 1 splits it evenly between classes 0 and 1.
    logits = torch.tensor([[-1e4, -1e4, 0.0], [0.0, 0.0, -1e4]], device=device)
    got = multinomial(logits, sample_size=2000, seed=7.0)
    assert got.dtype == torch.int32 and got.shape == (2, 2000)
    assert bool((got[0] == 2).all()) and bool((got[1] < 2).all())
    assert abs(float((got[1] == 0).double().mean()) - 0.5) < 0.05
    assert torch.equal(got, multinomial(logits, sample_size=2000, seed=7.0))
    assert multinomial(logits, dtype=TensorProto.INT64).dtype == torch.int64
