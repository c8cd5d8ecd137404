"""Calibration data sources (.npz file, folder, iterable) and their errors."""
import numpy as np
import pytest
import torch

from kiln.calibration.data import calibration_batches, folder_batches, iterable_batches, npz_batches
from kiln.errors import InputError
from kiln.ir import dtypes
from kiln.ir.graph import Value

X = Value("x", dtypes.FLOAT32, ("N", 4))
IDS = Value("ids", dtypes.INT64, ("N", 2))


def _x(n):
    return np.arange(n * 4, dtype=np.float32).reshape(n, 4)


def test_npz_is_cut_into_batches(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_x(10), ids=np.zeros((10, 2), np.int64))
    feeds = list(calibration_batches(path, [X, IDS], batch_size=4))
    assert [f["x"].shape[0] for f in feeds] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), _x(10))
    assert [f["x"].shape[0] for f in npz_batches(path, [X, IDS], 4, drop_last=True)] == [4, 4]


def test_npz_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        npz_batches(tmp_path / "missing.npz", [X])
    path = tmp_path / "c.npz"
    np.savez(path, x=_x(3), extra=_x(3))
    with pytest.raises(InputError, match="unknown name.*'extra'.*inputs are 'x'"):
        npz_batches(path, [X])
    np.savez(path, x=_x(3), ids=np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match="different numbers of samples"):
        npz_batches(path, [X, IDS])
    np.savez(path, x=_x(3).astype(np.float64))
    with pytest.raises(InputError, match="'x' is float64 but the model expects float32.*astype"):
        list(npz_batches(path, [X]))
    np.savez(path, x=_x(3)[:, :, None])
    with pytest.raises(InputError, match="rank 3.*expects rank 2"):
        list(npz_batches(path, [X]))
    np.savez(path, x=np.zeros((3, 5), np.float32))
    with pytest.raises(InputError, match="axis 1.*fixes it to 4"):
        list(npz_batches(path, [X]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        npz_batches(tmp_path / "junk.npz", [X])


def test_folder_of_npy_and_npz(tmp_path):
    np.save(tmp_path / "b1.npy", _x(2))
    np.savez(tmp_path / "b0.npz", x=_x(3))
    (tmp_path / "README.txt").write_text("skipped")
    feeds = list(calibration_batches(tmp_path, [X]))
    assert [f["x"].shape[0] for f in feeds] == [3, 2]  # sorted by name, one batch per file


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="holds no .npy or .npz"):
        folder_batches(tmp_path, [X])
    np.save(tmp_path / "b0.npy", _x(2))
    with pytest.raises(InputError, match="b0.npy.*2 inputs.*save each batch as an .npz"):
        folder_batches(tmp_path, [X, IDS])
    with pytest.raises(InputError, match="does not exist"):
        folder_batches(tmp_path / "nope", [X])


def test_iterable_of_dicts(tmp_path):
    feeds = list(iterable_batches([{"x": _x(1)}, {"x": torch.from_numpy(_x(2))}], [X]))
    assert all(isinstance(f["x"], np.ndarray) for f in feeds)
    assert [f["x"].shape[0] for f in feeds] == [1, 2]
    assert len(list(calibration_batches(iter([{"x": _x(1)}]), [X]))) == 1


def test_iterable_errors():
    with pytest.raises(InputError, match="batch 1 is a list, not a dict"):
        list(iterable_batches([{"x": _x(1)}, [_x(1)]], [X]))
    with pytest.raises(InputError, match="batch 0 lacks input.*'x'"):
        list(iterable_batches([{}], [X]))
    with pytest.raises(InputError, match="is a list, not an array"):
        list(iterable_batches([{"x": [[1.0] * 4]}], [X]))
