"""Signal processing: DFT, STFT, window functions and MelWeightMatrix.

Complex values travel as a trailing dim of 2 (real, imaginary); a trailing dim of 1 is a
real signal. Transforms run in complex128 and windows in float64, then cast to the
output dtype, so float32 results are exact to rounding.
"""
from __future__ import annotations

import math

import torch

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.common import as_scalar, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _to_complex(x: Tensor) -> Tensor:
    """[..., 1] real or [..., 2] (re, im) -> complex128 tensor without the trailing dim."""
    if x.shape[-1] == 1:
        return torch.complex(x[..., 0].to(torch.float64), torch.zeros_like(x[..., 0], dtype=torch.float64))
    if x.shape[-1] == 2:
        return torch.complex(x[..., 0].to(torch.float64), x[..., 1].to(torch.float64))
    raise ValueError(f"signal's last dim must be 1 (real) or 2 (complex), got {x.shape[-1]}")


def _from_complex(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Complex tensor -> [..., 2] (re, im) in `dtype`."""
    return torch.stack((y.real, y.imag), dim=-1).to(dtype)


@reference_op("DFT")
def dft(input: Tensor, dft_length: Tensor | None = None, axis_input: Tensor | None = None, *,
        inverse: int = 0, onesided: int = 0, axis: int | None = None) -> Tensor:
    """Output = (inverse) discrete Fourier transform of input along `axis` (default -2).

    onesided=1 with inverse=0 is RFFT (half spectrum + 1 bins); with inverse=1 it is IRFFT
    (a one-sided spectrum in, a real [..., 1] signal out). `axis` as an attribute is the
    opset < 20 form; an `axis` input (opset 20) wins over it.
    """
    rank = input.dim()
    ax = int(as_scalar(axis_input)) if axis_input is not None else (-2 if axis is None else int(axis))
    ax = norm_axis(ax, rank)
    if ax == rank - 1:
        raise ValueError("DFT axis cannot be the last dim (it holds the real/imaginary parts)")
    x = _to_complex(input)
    dim = x.shape[ax]
    if dft_length is not None:
        n = int(as_scalar(dft_length))
    else:
        n = 2 * (dim - 1) if inverse and onesided else dim
    if inverse and onesided:
        return torch.fft.irfft(x, n=n, dim=ax).unsqueeze(-1).to(input.dtype)
    if inverse:
        return _from_complex(torch.fft.ifft(x, n=n, dim=ax), input.dtype)
    y = torch.fft.fft(x, n=n, dim=ax)
    if onesided:
        y = y.narrow(ax, 0, n // 2 + 1)
    return _from_complex(y, input.dtype)


@reference_op("STFT")
def stft(signal: Tensor, frame_step: Tensor, window: Tensor | None = None,
         frame_length: Tensor | None = None, *, onesided: int = 1) -> Tensor:
    """Output [batch, frames, bins, 2] = DFT of each windowed frame of signal [batch, length, 1|2].

    frames = (length - frame_length) // frame_step + 1; bins = frame_length // 2 + 1 if
    onesided else frame_length. frame_length defaults to the window's length, else the signal's.
    """
    step = int(as_scalar(frame_step))
    if frame_length is not None:
        n = int(as_scalar(frame_length))
    else:
        n = window.shape[0] if window is not None else signal.shape[-2]
    if window is not None and window.shape[0] != n:
        raise ValueError(f"STFT window has {window.shape[0]} values but frame_length is {n}")
    x = _to_complex(signal)                                # [batch, length]
    frames = x.unfold(-1, n, step)                         # [batch, frames, n]
    if window is not None:
        frames = frames * window.to(torch.float64)
    y = torch.fft.fft(frames, n=n, dim=-1)
    if onesided:
        y = y[..., : n // 2 + 1]
    return _from_complex(y, signal.dtype)


def _window_positions(size: Tensor, periodic: int) -> tuple[Tensor, int]:
    """n = 0..size-1 (float64) and the period N (size if periodic else size - 1)."""
    count = int(as_scalar(size))
    n = torch.arange(count, dtype=torch.float64, device=size.device)
    return n, count if periodic else count - 1


def _cosine_window(size: Tensor, coeffs: tuple[float, ...], periodic: int, output_datatype: int) -> Tensor:
    """sum_k (-1)**k * coeffs[k] * cos(2 pi k n / N), the generalized cosine window."""
    n, period = _window_positions(size, periodic)
    w = torch.zeros_like(n)
    for k, a in enumerate(coeffs):
        w = w + (-1) ** k * a * torch.cos(2 * math.pi * k * n / period)
    return w.to(onnx_to_torch(output_datatype))


@reference_op("HannWindow")
def hann_window(size: Tensor, *, output_datatype: int = 1, periodic: int = 1) -> Tensor:
    """Output[n] = sin(pi n / N)**2, N = size (periodic) or size - 1 (symmetric)."""
    n, period = _window_positions(size, periodic)
    return (torch.sin(math.pi * n / period) ** 2).to(onnx_to_torch(output_datatype))


@reference_op("HammingWindow")
def hamming_window(size: Tensor, *, output_datatype: int = 1, periodic: int = 1) -> Tensor:
    """Output[n] = 25/46 - 21/46 cos(2 pi n / N), N = size (periodic) or size - 1 (symmetric)."""
    return _cosine_window(size, (25 / 46, 21 / 46), periodic, output_datatype)


@reference_op("BlackmanWindow")
def blackman_window(size: Tensor, *, output_datatype: int = 1, periodic: int = 1) -> Tensor:
    """Output[n] = 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N), N = size or size - 1."""
    return _cosine_window(size, (0.42, 0.5, 0.08), periodic, output_datatype)


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log1p(hz / 700.0) / math.log(10.0)


@reference_op("MelWeightMatrix")
def mel_weight_matrix(num_mel_bins: Tensor, dft_length: Tensor, sample_rate: Tensor,
                      lower_edge_hertz: Tensor, upper_edge_hertz: Tensor, *,
                      output_datatype: int = 1) -> Tensor:
    """Output [dft_length // 2 + 1, num_mel_bins]: triangular mel filters over the spectrogram bins.

    num_mel_bins + 2 points, equally spaced in mel between the edge frequencies, are mapped to
    spectrogram bins floor((dft_length + 1) * hz / sample_rate); filter i rises linearly from
    point i to point i + 1 and falls to point i + 2.
    """
    mels, length, rate = int(as_scalar(num_mel_bins)), int(as_scalar(dft_length)), as_scalar(sample_rate)
    low, high = _hz_to_mel(float(as_scalar(lower_edge_hertz))), _hz_to_mel(float(as_scalar(upper_edge_hertz)))
    device = num_mel_bins.device
    points = torch.arange(mels + 2, dtype=torch.float64, device=device) * ((high - low) / (mels + 2)) + low
    hz = 700.0 * torch.expm1(points / 2595.0 * math.log(10.0))
    bins = torch.floor((length + 1) * hz / rate)
    lo, center, hi = bins[:-2], bins[1:-1], bins[2:]             # [mels] each
    j = torch.arange(length // 2 + 1, dtype=torch.float64, device=device)[:, None]
    rising = (j >= lo) & (j <= center)
    falling = (j >= center) & (j < hi)
    up = torch.where(center > lo, (j - lo) / (center - lo).clamp(min=1), torch.ones_like(j))
    down = (hi - j) / (hi - center).clamp(min=1)
    out = torch.where(falling, down, torch.where(rising, up, torch.zeros_like(up)))
    return out.to(onnx_to_torch(output_datatype))
