"""RNN, GRU and LSTM reference ops against onnx's ReferenceEvaluator (and onnxruntime for
sequence_lens, activations, clip and input_forget, which the onnx reference ignores)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_oracle import Case, Rand, check_case

R = Rand(seed=7)
SEQ, BATCH, INP, HID = 4, 3, 2, 5
X = R.f(SEQ, BATCH, INP, lo=-1.0, hi=1.0)
XB = np.ascontiguousarray(X.transpose(1, 0, 2))          # layout=1
LENS = np.array([4, 2, 1], dtype=np.int32)
TOL = (1e-5, 1e-6)


def weights(gates: int, dirs: int = 1, peep: bool = False) -> tuple[np.ndarray, ...]:
    w = R.f(dirs, gates * HID, INP, lo=-0.5, hi=0.5)
    r = R.f(dirs, gates * HID, HID, lo=-0.5, hi=0.5)
    b = R.f(dirs, 2 * gates * HID, lo=-0.5, hi=0.5)
    h0 = R.f(dirs, BATCH, HID, lo=-0.5, hi=0.5)
    return (w, r, b, h0, R.f(dirs, BATCH, HID), R.f(dirs, 3 * HID)) if peep else (w, r, b, h0)


def _cases(op: str, gates: int, outputs: int, extra: dict | None = None) -> list[Case]:
    peep = op == "LSTM"
    one, two = weights(gates, 1, peep), weights(gates, 2, peep)
    base = {"hidden_size": HID, **(extra or {})}

    def ins(x, w, states=None, lens=None):
        w_, r_, b_ = w[:3]
        return (x, w_, r_, b_, lens, *(states if states is not None else w[3:]))

    def swap(states):
        return tuple(np.ascontiguousarray(s.swapaxes(0, 1)) if s.ndim == 3 else s for s in states)

    return [
        Case(op, (X, one[0], one[1]), base, outputs, tol=TOL, name="no_bias"),
        Case(op, ins(X, one), base, outputs, tol=TOL, name="forward"),
        Case(op, ins(X, one), {**base, "direction": "reverse"}, outputs, tol=TOL, name="reverse"),
        Case(op, ins(X, two), {**base, "direction": "bidirectional"}, outputs, tol=TOL, name="bidirectional"),
        Case(op, ins(XB, two, swap(two[3:])), {**base, "direction": "bidirectional", "layout": 1}, outputs,
             tol=TOL, name="layout1"),
        Case(op, ins(X, two, lens=LENS), {**base, "direction": "bidirectional"}, outputs, tol=TOL,
             oracle="ort", name="sequence_lens"),
        Case(op, ins(X, one), {**base, "clip": 0.3}, outputs, tol=TOL, oracle="ort", name="clip"),
    ]


_ACTS = {"RNN": ["Affine"], "GRU": ["HardSigmoid", "LeakyRelu"], "LSTM": ["HardSigmoid", "ScaledTanh", "Softsign"]}

CASES = [
    *_cases("RNN", 1, 2),
    *_cases("GRU", 3, 2),
    *_cases("GRU", 3, 2, {"linear_before_reset": 1}),
    *_cases("LSTM", 4, 3),
    Case("RNN", (X, *weights(1)[:3]), {"hidden_size": HID, "activations": _ACTS["RNN"],
         "activation_alpha": [0.7], "activation_beta": [0.1]}, 2, tol=TOL, oracle="ort", name="activations"),
    Case("GRU", (X, *weights(3)[:3]), {"hidden_size": HID, "activations": _ACTS["GRU"],
         "activation_alpha": [0.3, 0.05], "activation_beta": [0.4]}, 2, tol=TOL, oracle="ort", name="activations"),
    Case("LSTM", (X, *weights(4)[:3]), {"hidden_size": HID, "activations": _ACTS["LSTM"],
         "activation_alpha": [0.3, 0.9], "activation_beta": [0.4, 1.1]}, 3, tol=TOL, oracle="ort",
         name="activations"),
    Case("LSTM", (X, *weights(4)[:3]), {"hidden_size": HID, "input_forget": 1}, 3, tol=TOL, oracle="ort",
         name="input_forget"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.id}-{k}" for k, c in enumerate(CASES)])
def test_recurrent(case: Case) -> None:
    check_case(case)
