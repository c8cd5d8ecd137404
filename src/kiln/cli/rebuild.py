"""`kiln rebuild`: build an engine again for this machine, from the model and config it carries.

The header is read without the device check (an engine for another GPU is exactly
what needs rebuilding). The source is the ONNX embedded in the engine, or --onnx when
the engine was built with --no-embed-source; either way its SHA-256 must be the one
recorded at build time.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import click

from kiln.cli import output
from kiln.cli.build import build_and_save
from kiln.cli.build_summary import print_summary, summary
from kiln.cli.enginefile import read_unchecked
from kiln.config import CALIBRATED_PRECISIONS, DEVICES, BuildConfig
from kiln.errors import EngineFormatError, KilnError


@click.command("rebuild")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the new engine [default: overwrite ENGINE].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Target device of the new engine.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The source model, for engines built with --no-embed-source (its SHA-256 is checked).")
@click.option("--calib-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Calibration inputs for an int8/fp8 engine (as kiln build --calib-data): the activation ranges "
                   "are not stored in an engine. An fp16 engine checks them for fp16 overflow.")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Activation ranges for an int8/fp8 engine (from `kiln calibrate` or an earlier build).")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON on stdout.")
def rebuild(engine_path: Path, out: Path | None, device: str, onnx_path: Path | None, calib_data: Path | None,
            calib_cache: Path | None, as_json: bool) -> None:
    """Rebuild ENGINE for this machine with the build config stored in it.

    Use it when an engine was built for another GPU or an older kiln. The precision and
    shape profiles are kept; the device is --device (auto by default). An int8/fp8 engine
    calibrates again: give --calib-data (or --calib-cache).
    """
    import onnx

    from kiln.onnx.load import load_model
    from kiln.runtime.engine import SOURCE_KEY

    header, tensors = read_unchecked(engine_path)
    old_source = header.get("source", {})
    embedded = tensors.get(SOURCE_KEY)
    try:
        config = BuildConfig.from_json({**header["build_config"], "device": device})
    except (KeyError, TypeError) as exc:
        raise EngineFormatError(f"{str(engine_path)!r} has a malformed build config ({exc!r}); build the engine "
                                "again from its ONNX model with `kiln build`.") from None
    if config.precision in CALIBRATED_PRECISIONS and calib_data is None and calib_cache is None:
        raise KilnError(f"{str(engine_path)!r} is an {config.precision} engine, and an engine does not store the "
                        "activation ranges it was calibrated with; pass the calibration inputs again with "
                        "--calib-data PATH (or the ranges with --calib-cache PATH from `kiln calibrate`).")
    config = replace(config, calib_data=None if calib_data is None else str(calib_data),
                     calib_cache=None if calib_cache is None else str(calib_cache))
    if onnx_path is not None:
        model: Path | onnx.ModelProto = onnx_path
        # The builder hashes the serialized, loaded model; hash the same thing here.
        digest = hashlib.sha256(load_model(onnx_path).SerializeToString()).hexdigest()
        if digest != old_source.get("sha256"):
            raise KilnError(f"{str(onnx_path)!r} is not the model {str(engine_path)!r} was built from: its SHA-256 "
                            f"is {digest}, the engine records {old_source.get('sha256')} (from "
                            f"{old_source.get('name')!r}). Pass the original model, or build anew with `kiln build`.")
    elif embedded is not None:
        model = onnx.ModelProto.FromString(embedded.numpy().tobytes())
    else:
        raise KilnError(f"{str(engine_path)!r} was built without its source model (--no-embed-source); pass the "
                        f"model it was built from with --onnx {old_source.get('name') or 'MODEL.onnx'}.")
    target = out or engine_path
    # From embedded bytes the builder knows no file name; keep the original one's.
    keep = None if isinstance(model, Path) else {"name": old_source.get("name"), "path": old_source.get("path")}
    engine, size = build_and_save(model, config, target, label="rebuilding", source=keep)
    info = summary(engine, target, size)
    if as_json:
        output.emit_json(info)
    else:
        print_summary(info)
