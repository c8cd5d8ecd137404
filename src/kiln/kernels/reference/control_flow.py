"""Control flow: If, Loop, Scan.

Bodies arrive as callables, `body(*inputs) -> list`, with the outer values they capture
already bound (the executor compiles each subgraph to a plan of its own and binds it per
call). Loop-carried values may be tensors, sequences (lists) or absent optionals (None).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from kiln.kernels.reference.common import norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor
Body = Callable[..., list[Any]]


def _device(values: Sequence[Any]) -> torch.device:
    for v in values:
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")


@reference_op("If")
def if_(cond: Tensor, *, then_branch: Body, else_branch: Body) -> tuple[Any, ...]:
    """Run then_branch when cond (a one-element bool tensor) is true, else else_branch."""
    branch = then_branch if bool(cond.reshape(-1)[0]) else else_branch
    return tuple(branch())


def _empty_scan(body: Body, index: int, device: torch.device) -> Tensor:
    """A scan output of a loop that ran zero times: no rows, in the body's declared type."""
    from kiln.ir.dtypes import from_name
    names = getattr(body, "output_dtypes", None)
    dt = from_name(names[index]).torch if names else torch.float32
    return torch.zeros(0, dtype=dt, device=device)


@reference_op("Loop")
def loop(*inputs: Any, body: Body) -> tuple[Any, ...]:
    """Run body while iteration < M and cond; outputs the final carried values, then each
    scan output stacked over the iterations."""
    m = inputs[0] if len(inputs) > 0 else None
    cond = inputs[1] if len(inputs) > 1 else None
    carried = list(inputs[2:])
    dev = _device(inputs)
    trips = int(m.reshape(-1)[0]) if m is not None else None
    keep = bool(cond.reshape(-1)[0]) if cond is not None else True
    n_scans = getattr(body, "num_outputs", 1 + len(carried)) - 1 - len(carried)
    scans: list[list[Tensor]] = [[] for _ in range(n_scans)]
    i = 0
    while keep and (trips is None or i < trips):
        outs = body(torch.tensor(i, dtype=torch.int64, device=dev), torch.tensor(keep, device=dev), *carried)
        keep = bool(outs[0].reshape(-1)[0])
        carried = list(outs[1:1 + len(carried)])
        step_scans = outs[1 + len(carried):]
        if len(scans) < len(step_scans):
            scans = [[] for _ in step_scans]
        for acc, t in zip(scans, step_scans):
            acc.append(t)
        i += 1
    first_scan = 1 + len(carried)
    return tuple(carried) + tuple(torch.stack(acc) if acc else _empty_scan(body, first_scan + k, dev)
                                  for k, acc in enumerate(scans))


def _scan_once(states: list[Tensor], xs: list[Tensor], body: Body, num_scan_inputs: int,
               in_axes: list[int], in_dirs: list[int], out_axes: list[int] | None,
               out_dirs: list[int] | None) -> list[Tensor]:
    n_states = len(states)
    steps = xs[0].shape[in_axes[0]] if xs else 0
    collected: list[list[Tensor]] = []
    for t in range(steps):
        slices = [x.select(ax, steps - 1 - t if d else t) for x, ax, d in zip(xs, in_axes, in_dirs)]
        outs = body(*states, *slices)
        states = list(outs[:n_states])
        if not collected:
            collected = [[] for _ in outs[n_states:]]
        for acc, y in zip(collected, outs[n_states:]):
            acc.append(y)
    results = []
    for k, acc in enumerate(collected):
        if out_dirs and out_dirs[k]:
            acc = acc[::-1]
        y = torch.stack(acc)
        axis = norm_axis(out_axes[k], y.dim()) if out_axes else 0
        results.append(torch.movedim(y, 0, axis))
    return states + results


@reference_op("Scan")
def scan(*inputs: Any, body: Body, num_scan_inputs: int, scan_input_axes: Sequence[int] | None = None,
         scan_input_directions: Sequence[int] | None = None, scan_output_axes: Sequence[int] | None = None,
         scan_output_directions: Sequence[int] | None = None, directions: Sequence[int] | None = None,
         batched: int = 0) -> tuple[Tensor, ...]:
    """Iterate body over slices of the scan inputs, threading the state values through.

    `batched=1` is the opset-8 form (set by the importer): a leading sequence_lens input and a
    batch axis 0 on every state and scan input, each batch row scanned on its own."""
    if batched:
        return _scan_batched(inputs, body, num_scan_inputs, directions)
    n_states = len(inputs) - num_scan_inputs
    states, xs = list(inputs[:n_states]), list(inputs[n_states:])
    in_axes = [norm_axis(a, x.dim()) for a, x in zip(scan_input_axes or [0] * len(xs), xs)]
    in_dirs = list(scan_input_directions or [0] * len(xs))
    return tuple(_scan_once(states, xs, body, num_scan_inputs, in_axes, in_dirs,
                            list(scan_output_axes) if scan_output_axes else None,
                            list(scan_output_directions) if scan_output_directions else None))


def _scan_batched(inputs: Sequence[Any], body: Body, num_scan_inputs: int,
                  directions: Sequence[int] | None) -> tuple[Tensor, ...]:
    seq_lens, rest = inputs[0], list(inputs[1:])
    n_states = len(rest) - num_scan_inputs
    states, xs = rest[:n_states], rest[n_states:]
    batch = (states + xs)[0].shape[0]
    dirs = list(directions or [0] * len(xs))
    rows = []
    for b in range(batch):
        length = int(seq_lens[b]) if seq_lens is not None else xs[0].shape[1]
        row_xs = [x[b, :length] for x in xs]
        rows.append(_scan_once([s[b] for s in states], row_xs, body, num_scan_inputs,
                               [0] * len(xs), dirs, None, None))
    return tuple(torch.stack([r[k] for r in rows]) for k in range(len(rows[0])))
