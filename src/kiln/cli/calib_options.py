"""Click options shared by `kiln build` and `kiln calibrate`."""
from __future__ import annotations

from typing import Any, Callable

import click

from kiln.config import CALIB_METHODS


def calibration_method_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--calib-method, --calib-percentile and --calib-batch-size, shared by `calibrate` and `build`."""
    options = [
        click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="minmax", show_default=True,
                     help="How an activation's range is chosen from the calibration data."),
        click.option("--calib-percentile", type=float, default=99.99, show_default=True,
                     help="The percentile of |x| kept by --calib-method percentile."),
        click.option("--calib-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Samples per calibration batch cut from an .npz (a batch dim the model fixes wins)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def smooth_quant_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--smooth-quant ALPHA of `kiln build` (BuildConfig.smooth_quant, which checks the value)."""
    return click.option("--smooth-quant", "smooth_quant", type=AlphaType(), default=None, metavar="ALPHA|auto",
                        help="SmoothQuant for --int8/--fp8: divide the channels of each activation a quantized "
                             "matmul reads by max|x|^ALPHA / max|W|^(1-ALPHA) and multiply the weights' rows by the "
                             "same; folded into the LayerNorm when only quantized matmuls read its output, else "
                             "into per-channel QuantizeLinear scales (ALPHA in [0, 1], e.g. 0.9, or auto: searched "
                             "per activation on the calibration data; off when not given).")(command)


class AlphaType(click.ParamType):
    """A number (BuildConfig checks its range) or "auto"."""
    name = "alpha"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, (int, float)) or value == "auto":
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
