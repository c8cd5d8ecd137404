"""DFT, STFT, window functions and MelWeightMatrix against onnx's ReferenceEvaluator."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx_oracle import Case, Rand, check_case

R = Rand(seed=3)
REAL = R.f(2, 6, 3, 1)
CPLX = R.f(2, 6, 3, 2)
HALF = R.f(2, 4, 3, 2)            # a one-sided spectrum of 6 points along axis 1
TOL = (1e-5, 1e-5)                # float32 results of sums of a dozen terms


def i64(v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


CASES = [
    Case("DFT", (REAL,), tol=TOL, name="real_default_axis"),
    Case("DFT", (CPLX, None, i64(1)), tol=TOL, name="complex_axis1"),
    Case("DFT", (CPLX, i64(8), i64(-3)), tol=TOL, name="padded_negative_axis"),
    Case("DFT", (REAL, i64(4), i64(1)), tol=TOL, name="truncated"),
    Case("DFT", (REAL, None, i64(1)), {"onesided": 1}, tol=TOL, name="rfft"),
    Case("DFT", (CPLX, None, i64(2)), {"inverse": 1}, tol=TOL, name="inverse"),
    Case("DFT", (HALF, None, i64(1)), {"inverse": 1, "onesided": 1}, tol=TOL, name="irfft"),
    Case("DFT", (HALF, i64(7), i64(1)), {"inverse": 1, "onesided": 1}, tol=TOL, name="irfft_odd"),
    Case("DFT", (CPLX,), {"axis": 2}, opset=17, tol=TOL, name="opset17_axis_attr"),
    Case("DFT", (REAL.astype(np.float64),), name="float64"),
    Case("STFT", (R.f(2, 40, 1), i64(6), None, i64(10)), tol=TOL, name="no_window"),
    Case("STFT", (R.f(1, 33, 1), i64(4), np.hanning(8).astype(np.float32)), tol=TOL, name="window"),
    Case("STFT", (R.f(1, 30, 2), i64(5), None, i64(8)), {"onesided": 0}, tol=TOL, name="complex_twosided"),
    Case("STFT", (R.f(1, 16, 1), i64(3)), {"onesided": 0}, tol=TOL, name="whole_signal"),
    Case("MelWeightMatrix", (i64(8), i64(64), i64(8000), np.float32(0), np.float32(4000))),
    Case("MelWeightMatrix", (np.int32(5), np.int32(31), np.int32(16000), np.float32(300), np.float32(6000)),
         {"output_datatype": TensorProto.DOUBLE}, name="float64"),
]
for op in ("HannWindow", "HammingWindow", "BlackmanWindow"):
    CASES += [
        Case(op, (np.int64(10),), tol=(1e-6, 1e-7), name="periodic"),
        Case(op, (np.int32(9),), {"periodic": 0}, tol=(1e-6, 1e-7), name="symmetric"),
        Case(op, (np.int64(7),), {"output_datatype": TensorProto.DOUBLE}, name="float64"),
    ]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.id}-{k}" for k, c in enumerate(CASES)])
def test_signal(case: Case) -> None:
    check_case(case)
