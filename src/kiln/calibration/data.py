"""Calibration data: sources that yield feed dicts {input name: numpy array}, one per batch.

Three sources, all checked against the model's inputs (names, dtypes, ranks and static dims):
- an .npz file: one array per input, keyed by input name, with the model's rank; axis 0 is
  the sample (batch) axis and is cut into batches of `batch_size` samples (the last batch
  may be smaller unless `drop_last`);
- a folder of .npy/.npz files, read in sorted name order, each file one batch as stored:
  an .npz holds one array per input (keyed by name), an .npy holds the array of the
  model's only input (so .npy files serve single-input models only); other files are skipped;
- any Python iterable of dicts {input name: numpy array or torch tensor}.
`calibration_batches` picks the source from what it is given. Pickled objects are refused.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from kiln.errors import InputError
from kiln.ir import dtypes
from kiln.ir.graph import Value
from kiln.ir.shapes import format_shape

Feed = dict[str, np.ndarray]
_SAVE_HINT = "numpy.savez(path, input_name=array, ...)"


def calibration_batches(source: str | os.PathLike | Iterable[Mapping[str, Any]], inputs: Sequence[Value],
                        batch_size: int = 1, drop_last: bool = False) -> Iterator[Feed]:
    """Feed dicts from an .npz file, a folder of .npy/.npz files or an iterable of dicts."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return folder_batches(path, inputs)
        return npz_batches(path, inputs, batch_size, drop_last)
    return iterable_batches(source, inputs)


def npz_batches(path: str | os.PathLike, inputs: Sequence[Value], batch_size: int = 1,
                drop_last: bool = False) -> Iterator[Feed]:
    """Batches of `batch_size` samples cut along axis 0 of each input's array in the .npz."""
    if batch_size < 1:
        raise InputError(f"calibration batch size must be at least 1, got {batch_size}.")
    path = Path(path)
    arrays = _read_npz(path)
    where = str(path)
    _check_names(arrays, inputs, where)
    counts = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if any(c is None for c in counts.values()):
        scalar = next(n for n, c in counts.items() if c is None)
        raise InputError(f"{where!r}: array {scalar!r} is a scalar, but axis 0 of every array counts samples; "
                         "save a batch axis (e.g. array[None]).")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise InputError(f"{where!r}: the arrays hold different numbers of samples along axis 0 ({listed}); "
                         "save the same number of samples for every input.")
    n = next(iter(counts.values()))
    if n == 0:
        raise InputError(f"{where!r} holds no samples (axis 0 is empty); save at least one sample per input.")
    stop = n - n % batch_size if drop_last else n
    if stop == 0:
        raise InputError(f"{where!r} holds {n} samples, fewer than one batch of {batch_size} with drop_last; "
                         "lower the batch size or pass drop_last=False.")

    def gen() -> Iterator[Feed]:
        for start in range(0, stop, batch_size):
            feed = {name: a[start:start + batch_size] for name, a in arrays.items()}
            check_feed(feed, inputs, f"{where} samples {start}..{min(start + batch_size, n) - 1}")
            yield feed
    return gen()


def folder_batches(path: str | os.PathLike, inputs: Sequence[Value]) -> Iterator[Feed]:
    """One batch per .npy/.npz file in `path`, in sorted name order."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"calibration folder {str(folder)!r} does not exist; create it with one .npz "
                         f"({_SAVE_HINT}) or .npy file per batch.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".npy", ".npz"))
    if not files:
        raise InputError(f"calibration folder {str(folder)!r} holds no .npy or .npz files; save one file per "
                         f"batch with {_SAVE_HINT}.")
    if any(p.suffix == ".npy" for p in files) and len(inputs) != 1:
        npy = next(p for p in files if p.suffix == ".npy")
        names = ", ".join(v.name for v in inputs)
        raise InputError(f"{str(npy)!r} is an .npy file, which holds one array, but the model has "
                         f"{len(inputs)} inputs ({names}); save each batch as an .npz keyed by input name "
                         f"with {_SAVE_HINT}.")

    def gen() -> Iterator[Feed]:
        for p in files:
            feed = _read_npz(p) if p.suffix == ".npz" else {inputs[0].name: _read_npy(p)}
            check_feed(feed, inputs, str(p))
            yield feed
    return gen()


def iterable_batches(batches: Iterable[Mapping[str, Any]], inputs: Sequence[Value]) -> Iterator[Feed]:
    """Each item of `batches` as a checked feed dict; torch tensors become numpy arrays."""
    for k, item in enumerate(batches):
        where = f"calibration batch {k}"
        if not isinstance(item, Mapping):
            raise InputError(f"{where} is a {type(item).__name__}, not a dict; yield dicts "
                             "{input name: array} from the calibration data.")
        feed = {str(name): _to_numpy(value, f"{where}, input {name!r}") for name, value in item.items()}
        check_feed(feed, inputs, where)
        yield feed


def check_feed(feed: Mapping[str, np.ndarray], inputs: Sequence[Value], where: str) -> None:
    """Raise InputError unless `feed` has exactly the model's inputs, with their dtypes and shapes."""
    _check_names(feed, inputs, where)
    for v in inputs:
        a = feed[v.name]
        try:
            got = dtypes.from_numpy(a.dtype).name
        except (KeyError, TypeError):
            got = str(a.dtype)
        if v.dtype is not None and got != v.dtype.name:
            raise InputError(f"{where}: input {v.name!r} is {got} but the model expects {v.dtype.name}; "
                             f"convert it with array.astype(numpy.{v.dtype.name}).")
        if v.shape is None:
            continue
        if a.ndim != len(v.shape):
            raise InputError(f"{where}: input {v.name!r} has rank {a.ndim} (shape {list(a.shape)}) but the model "
                             f"expects rank {len(v.shape)} ({format_shape(v.shape)}); reshape the data.")
        for axis, (want, have) in enumerate(zip(v.shape, a.shape)):
            if isinstance(want, int) and want != have:
                raise InputError(f"{where}: input {v.name!r} has {have} at axis {axis} (shape {list(a.shape)}) but "
                                 f"the model fixes it to {want} ({format_shape(v.shape)}); reshape the data "
                                 f"or choose a batch size that fits.")


def _check_names(feed: Mapping[str, Any], inputs: Sequence[Value], where: str) -> None:
    names = [v.name for v in inputs]
    missing = [n for n in names if n not in feed]
    extra = [n for n in feed if n not in names]
    if missing or extra:
        parts = ([f"lacks input(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"has unknown name(s) {', '.join(map(repr, extra))}"] if extra else [])
        raise InputError(f"{where} {' and '.join(parts)}; the model's inputs are {', '.join(map(repr, names))}. "
                         "Key the arrays by input name.")


def _to_numpy(value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype not in (torch.bfloat16,) and not str(t.dtype).startswith("torch.float8"):
            return t.numpy()
        raise InputError(f"{where} is a torch {t.dtype} tensor, which numpy cannot hold; pass float32 data.")
    if isinstance(value, np.ndarray):
        return value
    raise InputError(f"{where} is a {type(value).__name__}, not an array; pass numpy arrays or torch tensors.")


def _read_npz(path: Path) -> Feed:
    if not path.is_file():
        raise InputError(f"calibration file {str(path)!r} does not exist; write one with {_SAVE_HINT}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(f"{str(path)!r} holds a single .npy array, not arrays keyed by input name; "
                                 f"save them with {_SAVE_HINT}.")
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{str(path)!r} is not a readable .npz file ({exc}); save the calibration data "
                         f"with {_SAVE_HINT}.") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{str(path)!r} is not a readable .npy file ({exc}); save each batch with "
                         "numpy.save(path, array).") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{str(path)!r} is not a single array; save each batch with numpy.save(path, array).")
    return arr
