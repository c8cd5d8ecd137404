"""Recurrent layers: RNN, GRU, LSTM (forward, reverse, bidirectional), as the ONNX spec defines them.

Shared conventions (ONNX names): X [seq, batch, input] (layout=1: [batch, seq, input]);
W [dirs, gates*hidden, input], R [dirs, gates*hidden, hidden], B [dirs, 2*gates*hidden]
(input biases, then recurrent biases); outputs Y [seq, dirs, batch, hidden] (layout=1:
[batch, seq, dirs, hidden]) and Y_h / Y_c [dirs, batch, hidden] (layout=1: [batch, dirs,
hidden]). With sequence_lens, steps past a batch entry's length leave its state unchanged
and write zeros to Y; the reverse direction starts at the entry's last valid step.
The recurrence runs in float64 and the outputs are cast to X's dtype.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor
Act = Callable[[Tensor], Tensor]


# name -> (how many alphas, how many betas, default alpha, default beta, fn(x, alpha, beta))
_ACTIVATIONS: dict[str, tuple[int, int, float, float, Callable[[Tensor, float, float], Tensor]]] = {
    "relu": (0, 0, 0.0, 0.0, lambda x, a, b: torch.relu(x)),
    "tanh": (0, 0, 0.0, 0.0, lambda x, a, b: torch.tanh(x)),
    "sigmoid": (0, 0, 0.0, 0.0, lambda x, a, b: torch.sigmoid(x)),
    "softsign": (0, 0, 0.0, 0.0, lambda x, a, b: x / (1 + x.abs())),
    "softplus": (0, 0, 0.0, 0.0, lambda x, a, b: torch.nn.functional.softplus(x)),
    "affine": (1, 1, 1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (1, 0, 0.01, 0.0, lambda x, a, b: torch.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, 0, 1.0, 0.0, lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x))),
    "scaledtanh": (1, 1, 1.0, 1.0, lambda x, a, b: a * torch.tanh(b * x)),
    "hardsigmoid": (1, 1, 0.2, 0.5, lambda x, a, b: torch.clamp(a * x + b, 0.0, 1.0)),
    "elu": (1, 0, 1.0, 0.0, lambda x, a, b: torch.where(x >= 0, x, a * torch.expm1(x))),
}


def _activations(names: Sequence[str], alphas: Sequence[float] | None, betas: Sequence[float] | None,
                 clip: float | None, n_acts: int) -> list[Act]:
    """Callables for `names`; alphas/betas are consumed in order by the functions that take them.

    `clip` bounds each activation's input to [-clip, clip], except LSTM's output activation
    h(C) (the third of three per direction), which onnxruntime leaves unclipped.
    """
    alpha_it: Iterator[float] = iter(alphas or ())
    beta_it: Iterator[float] = iter(betas or ())
    acts: list[Act] = []
    for k, name in enumerate(names):
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown recurrent activation {name!r}")
        n_alpha, n_beta, alpha, beta, fn = _ACTIVATIONS[key]
        if n_alpha:
            alpha = float(next(alpha_it, alpha))
        if n_beta:
            beta = float(next(beta_it, beta))

        def act(x: Tensor, _fn=fn, _a=alpha, _b=beta, _clip=clip is not None and k % n_acts != 2) -> Tensor:
            if _clip:
                x = torch.clamp(x, -clip, clip)
            return _fn(x, _a, _b)
        acts.append(act)
    return acts


# A cell maps (one step of X W^T + Wb, the states (H, and C for LSTM)) -> the new states, H first.
Cell = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]


def _run(X: Tensor, W: Tensor, R: Tensor, B: Tensor | None, sequence_lens: Tensor | None,
         initial: Sequence[Tensor | None], *, gates: int, n_acts: int, default_acts: Sequence[str],
         activations: Sequence[str] | None, activation_alpha: Sequence[float] | None,
         activation_beta: Sequence[float] | None, clip: float | None, direction: str, layout: int,
         make_cell: Callable[[int, Tensor, Tensor, list[Act]], Cell]) -> tuple[Tensor, ...]:
    """Drive `make_cell(d, R[d], Rb[d], acts)` over time for each direction; returns Y and final states.

    `initial` holds the optional initial states (initial_h, and initial_c for LSTM) as given.
    """
    dirs = {"forward": 1, "reverse": 1, "bidirectional": 2}.get(direction)
    if dirs is None:
        raise ValueError(f"unknown RNN direction {direction!r}")
    if W.shape[0] != dirs:
        raise ValueError(f"direction {direction!r} needs W with {dirs} direction(s), got {W.shape[0]}")
    f64 = torch.float64
    if layout:
        X = X.transpose(0, 1)
        initial = [None if s is None else s.transpose(0, 1) for s in initial]
    seq, batch = X.shape[0], X.shape[1]
    hidden = R.shape[-1]
    X, W, R = X.to(f64), W.to(f64), R.to(f64)
    B = torch.zeros(dirs, 2 * gates * hidden, dtype=f64, device=X.device) if B is None else B.to(f64)
    states0 = [torch.zeros(dirs, batch, hidden, dtype=f64, device=X.device) if s is None else s.to(f64)
               for s in initial]
    steps = torch.arange(seq, device=X.device)[:, None]
    if sequence_lens is None:
        valid = torch.ones(seq, batch, dtype=torch.bool, device=X.device)
    else:
        valid = steps < sequence_lens.to(X.device, torch.int64)[None, :]      # [seq, batch]
    names = list(activations) if activations else list(default_acts)
    if len(names) == n_acts:  # one set for both directions, as onnxruntime accepts too
        names *= dirs
    if len(names) != n_acts * dirs:
        raise ValueError(f"expected {n_acts * dirs} activations for {direction!r}, got {len(names)}")
    acts = _activations(names, activation_alpha, activation_beta, clip, n_acts)

    ys, finals = [], []
    for d in range(dirs):
        wb, rb = B[d, : gates * hidden], B[d, gates * hidden:]
        x_proj = X @ W[d].T + wb                                          # [seq, batch, gates*hidden]
        cell = make_cell(d, R[d], rb, acts[d * n_acts:(d + 1) * n_acts])
        state = tuple(s[d] for s in states0)
        y = torch.zeros(seq, batch, hidden, dtype=f64, device=X.device)
        reverse = direction == "reverse" or d == 1
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            new = cell(x_proj[t], state)
            m = valid[t][:, None]
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            y[t] = torch.where(m, new[0], torch.zeros_like(new[0]))
        ys.append(y)
        finals.append(state)
    Y = torch.stack(ys, dim=1)                                            # [seq, dirs, batch, hidden]
    outs = [torch.stack([f[k] for f in finals], dim=0) for k in range(len(states0))]
    if layout:
        Y = Y.permute(2, 0, 1, 3)
        outs = [o.transpose(0, 1) for o in outs]
    return (Y, *outs)


def _cast(X: Tensor, outs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(o.to(X.dtype) for o in outs)


@reference_op("RNN")
def rnn(X: Tensor, W: Tensor, R: Tensor, B: Tensor | None = None, sequence_lens: Tensor | None = None,
        initial_h: Tensor | None = None, *, activation_alpha: Sequence[float] | None = None,
        activation_beta: Sequence[float] | None = None, activations: Sequence[str] | None = None,
        clip: float | None = None, direction: str = "forward", hidden_size: int | None = None,
        layout: int = 0) -> tuple[Tensor, Tensor]:
    """Y, Y_h of a simple RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb), f = Tanh by default."""
    def make_cell(d: int, r: Tensor, rb: Tensor, acts: list[Act]) -> Cell:
        (f,) = acts
        return lambda x, s: (f(x + s[0] @ r.T + rb),)

    return _cast(X, _run(X, W, R, B, sequence_lens, [initial_h], gates=1, n_acts=1, default_acts=["Tanh"],
                         activations=activations, activation_alpha=activation_alpha,
                         activation_beta=activation_beta, clip=clip, direction=direction, layout=layout,
                         make_cell=make_cell))


@reference_op("GRU")
def gru(X: Tensor, W: Tensor, R: Tensor, B: Tensor | None = None, sequence_lens: Tensor | None = None,
        initial_h: Tensor | None = None, *, activation_alpha: Sequence[float] | None = None,
        activation_beta: Sequence[float] | None = None, activations: Sequence[str] | None = None,
        clip: float | None = None, direction: str = "forward", hidden_size: int | None = None,
        layout: int = 0, linear_before_reset: int = 0) -> tuple[Tensor, Tensor]:
    """Y, Y_h of a GRU (gates z, r, h; f = Sigmoid, g = Tanh by default).

    z = f(X Wz + H Rz + b_z), r = f(X Wr + H Rr + b_r), H' = (1 - z) h + z H, with
    h = g(X Wh + (r * H) Rh + Rbh + Wbh), or g(X Wh + r * (H Rh + Rbh) + Wbh) if linear_before_reset.
    """
    def make_cell(d: int, r: Tensor, rb: Tensor, acts: list[Act]) -> Cell:
        f, g = acts
        n = r.shape[-1]
        r_zr, r_h, rb_zr, rb_h = r[: 2 * n], r[2 * n:], rb[: 2 * n], rb[2 * n:]

        def cell(x: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor]:
            h = s[0]
            zr = x[:, : 2 * n] + h @ r_zr.T + rb_zr
            z, reset = f(zr[:, :n]), f(zr[:, n:])
            if linear_before_reset:
                cand = g(x[:, 2 * n:] + reset * (h @ r_h.T + rb_h))
            else:
                cand = g(x[:, 2 * n:] + (reset * h) @ r_h.T + rb_h)
            return ((1 - z) * cand + z * h,)
        return cell

    return _cast(X, _run(X, W, R, B, sequence_lens, [initial_h], gates=3, n_acts=2,
                         default_acts=["Sigmoid", "Tanh"], activations=activations,
                         activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip,
                         direction=direction, layout=layout, make_cell=make_cell))


@reference_op("LSTM")
def lstm(X: Tensor, W: Tensor, R: Tensor, B: Tensor | None = None, sequence_lens: Tensor | None = None,
         initial_h: Tensor | None = None, initial_c: Tensor | None = None, P: Tensor | None = None, *,
         activation_alpha: Sequence[float] | None = None, activation_beta: Sequence[float] | None = None,
         activations: Sequence[str] | None = None, clip: float | None = None, direction: str = "forward",
         hidden_size: int | None = None, input_forget: int = 0, layout: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Y, Y_h, Y_c of an LSTM (gates i, o, f, c; peepholes P = [Pi, Po, Pf]; f = Sigmoid, g = h = Tanh).

    i = f(X Wi + H Ri + Pi * C + b_i), f_ = f(X Wf + H Rf + Pf * C + b_f), c = g(X Wc + H Rc + b_c),
    C' = f_ * C + i * c, o = f(X Wo + H Ro + Po * C' + b_o), H' = o * h(C').
    input_forget=1 couples the gates: f_ = 1 - i.
    """
    def make_cell(d: int, r: Tensor, rb: Tensor, acts: list[Act]) -> Cell:
        f, g, h_act = acts
        n = r.shape[-1]
        if P is None:
            p_i = p_o = p_f = torch.zeros(n, dtype=r.dtype, device=r.device)
        else:
            p = P[d].to(r.dtype)
            p_i, p_o, p_f = p[:n], p[n: 2 * n], p[2 * n:]

        def cell(x: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
            h, c = s
            pre = x + h @ r.T + rb
            i = f(pre[:, :n] + p_i * c)
            forget = 1 - i if input_forget else f(pre[:, 2 * n: 3 * n] + p_f * c)
            c_new = forget * c + i * g(pre[:, 3 * n:])
            o = f(pre[:, n: 2 * n] + p_o * c_new)
            return o * h_act(c_new), c_new
        return cell

    return _cast(X, _run(X, W, R, B, sequence_lens, [initial_h, initial_c], gates=4, n_acts=3,
                         default_acts=["Sigmoid", "Tanh", "Tanh"], activations=activations,
                         activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip,
                         direction=direction, layout=layout, make_cell=make_cell))
