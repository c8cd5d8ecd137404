"""Inputs for `kiln run` and `kiln bench`: from an .npz file, or random at profile shapes."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import InputError

if TYPE_CHECKING:
    import torch

    from kiln.runtime.engine import Engine


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays by name from an .npz (np.savez); pickled objects are refused, as in engines."""
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist; write one with "
                         "numpy.savez(path, input_name=array, ...).")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(f"{str(path)!r} holds a single .npy array, not named inputs; save them with "
                                 "numpy.savez(path, input_name=array, ...).")
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{str(path)!r} is not a readable .npz file ({exc}); save the inputs with "
                         "numpy.savez(path, input_name=array, ...).") from None


def random_feeds(engine: Engine, shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Random inputs (seed 0) at the first profile's opt shapes, with `shapes` overriding them."""
    from kiln.runtime.synthetic import synthetic_inputs

    unknown = [n for n in shapes if n not in engine.input_names]
    if unknown:
        raise InputError(f"--shapes names input {unknown[0]!r}, which the engine does not have; its inputs "
                         f"are {', '.join(engine.input_names)}.")
    profile: dict[str, dict[str, Any]] = dict(engine.profiles[0]) if engine.profiles else {}
    profile.update({n: {"opt": dims} for n, dims in shapes.items()})
    try:
        return synthetic_inputs(engine.plan.inputs, profile, "opt", engine.device)
    except ValueError as exc:
        raise InputError(f"{exc}; give its dims with --shapes NAME:DIMS.") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    import torch

    t = t.detach()
    # numpy has no bfloat16/float8: widen them to float32 for display and .npz files.
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


def batch_size(feeds: dict[str, Any], engine: Engine) -> int:
    """Dim 0 of the first input, as trtexec counts samples; 1 for a rank-0 input."""
    if not engine.input_names:
        return 1
    shape = tuple(feeds[engine.input_names[0]].shape)
    return int(shape[0]) if shape else 1
