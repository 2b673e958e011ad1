"""`vision-quant cache retarget`: the same scales under another TensorRT version or calibrator header."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError
from vision.artifacts.cache import ALGORITHMS, retarget_file
from vision.backends.select import installed_tensorrt

RETARGET_HELP = """
Re-label a calibration cache for another TensorRT version (TensorRT reads a cache only when its header names
exactly its own version) or for another calibrator (trtexec --calib reads EntropyCalibration2 headers only),
without recalibrating: the scales do not depend on either. The provenance sidecar (CACHE.json) is carried over.

Examples:

  vision-quant cache retarget build/calibration.cache --trt-version 10.16.0 --out build/calibration.10.16.cache

  vision-quant cache retarget build/calibration.cache --algorithm EntropyCalibration2 --out trtexec.cache
"""


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Calibration cache tools.", no_args_is_help=True)
    group.command("retarget", help=RETARGET_HELP)(retarget_command)
    app.add_typer(group, name="cache")


@handle_errors
def retarget_command(
    cache: Annotated[Path, typer.Argument(help="The calibration cache to re-label")],
    out: Annotated[Path, typer.Option(help="Where to write the re-labelled cache")],
    trt_version: Annotated[str | None, typer.Option(
        help="The exact TensorRT version that will read it (default: the installed TensorRT)")] = None,
    algorithm: Annotated[str | None, typer.Option(help=" | ".join(ALGORITHMS) + " (default: the cache's own)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the new header as one JSON object")] = False,
) -> None:
    version = trt_version or installed_tensorrt()
    if version is None and algorithm is None:
        raise QuantError("no TensorRT is installed here to re-label the cache for",
                         "pass --trt-version X.Y.Z (the exact version that will read it)")
    new = retarget_file(cache, out, trt_version=version, algorithm=algorithm)
    if json_output:
        print_json({"out": str(out), "header": new.header, "tensorrt_version": new.trt_version,
                    "algorithm": new.algorithm, "tensors": len(new.scales)})
        return
    typer.echo(f"{out}: {new.header} ({len(new.scales)} tensors; read only by TensorRT {new.trt_version})")
