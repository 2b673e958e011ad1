"""`vision-quant package | serve | detect`: serve a build with Triton; thin typer layers over ``vision.serving``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError
from quant_common.progress import track
from triton_backend.cli import run_in_foreground
from triton_backend.server import TritonServer
from vision.serving.client import DetectClient, detect_files
from vision.serving.evaluate import evaluate_served
from vision.serving.repository import ENSEMBLE, package, serving_options

PACKAGE_HELP = """
Write a Triton model repository for a build: preprocess (image bytes -> letterboxed tensor), detector (dynamic
batching), postprocess (decode, NMS, boxes in image pixels) and the yolov8 ensemble tying them.

--detector python (default) runs the build's INT8 ONNX with our own runtime inside Triton's python backend, so the
repository runs on the bundled CPU server. tensorrt (the build's engine), onnxruntime, onnxruntime_trt and openvino
write the detector for those Triton backends (NVIDIA's tritonserver container); the pre/post-processing models
import this package there too: pip install tensorrt-quantization in the container.

Examples:

  vision-quant package build/

  vision-quant package build/ --out repo/ --detector tensorrt --max-batch-size 16
"""

SERVE_HELP = """
Start Triton Inference Server on a repository written by `vision-quant package`; Ctrl-C stops it.

Examples:

  vision-quant serve build/triton_repo

  vision-quant serve build/triton_repo --http-port 9000 --grpc-port 9001 --metrics-port 9002
"""

DETECT_HELP = """
Send images to the served detector and print what it found (a table, --json in `vision-quant predict`'s schema,
or --save DIR for the images with the boxes drawn).

Examples:

  vision-quant detect bus.jpg zidane.jpg --url 127.0.0.1:8000

  vision-quant detect img.jpg --url 127.0.0.1:8001 --protocol grpc --json

  vision-quant detect --data val/images --annotations val.json --max-images 100   (mAP through the server)
"""


def register(app: typer.Typer) -> None:
    app.command("package", help=PACKAGE_HELP)(handle_errors(package_command))
    app.command("serve", help=SERVE_HELP)(handle_errors(serve_command))
    app.command("detect", help=DETECT_HELP)(handle_errors(detect_command))


def package_command(
    build_dir: Annotated[Path, typer.Argument(help="Output folder of `vision-quant build` (holds build.json)")],
    out: Annotated[Path | None, typer.Option(help="Repository folder [default: BUILD_DIR/triton_repo]")] = None,
    detector: Annotated[str, typer.Option(help="python | tensorrt | onnxruntime | onnxruntime_trt | openvino")] = "python",
    runner_backend: Annotated[str, typer.Option(help="--detector python: the runtime it runs (auto | onnxruntime "
                                                     "| openvino where installed)")] = "auto",
    max_batch_size: Annotated[int | None, typer.Option(help="Largest batch [default: the build's --max-batch]")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(help="How long the detector waits to fill a batch (µs)")] = 2000,
    instances: Annotated[int, typer.Option(help="Instances of each model")] = 1,
    threads: Annotated[int | None, typer.Option(help="--detector python: runtime threads [default: all cores]")] = None,
    conf: Annotated[float, typer.Option(help="Default confidence threshold")] = 0.25,
    iou: Annotated[float, typer.Option(help="Default NMS IoU threshold")] = 0.7,
    max_det: Annotated[int, typer.Option(help="Default detections kept per image")] = 300,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    options = serving_options(detector=detector, runner_backend=runner_backend, max_batch_size=max_batch_size,
                              max_queue_delay_us=max_queue_delay_us, instances=instances, threads=threads,
                              conf=conf, iou=iou, max_det=max_det)
    result = package(build_dir, out, options)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    typer.echo(f"wrote {result.path} ({', '.join(result.models)}; detector {result.detector} on "
               f"{result.model_file.name}, max batch {result.max_batch_size}, preferred {result.preferred_batch_sizes})")
    typer.echo(f"serve it with: vision-quant serve {result.path}")


def serve_command(
    repo: Annotated[Path, typer.Argument(help="Model repository (vision-quant package's --out)")],
    http_port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port")] = 8002,
    host: Annotated[str, typer.Option(help="Address to bind (all three endpoints)")] = "127.0.0.1",
    log_file: Annotated[Path | None, typer.Option(help="Server log [default: REPO/../tritonserver.log]")] = None,
    tritonserver: Annotated[Path | None, typer.Option(help="tritonserver binary [default: PATH, else "
                                                          "nvidia-pytriton]")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to load")] = 300.0,
) -> None:
    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                          log_file=log_file, binary=tritonserver, ready_timeout_s=ready_timeout)
    run_in_foreground(server, f"vision-quant detect IMAGE.jpg --url {host}:{http_port}")


def detect_command(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files")] = None,
    url: Annotated[str | None, typer.Option(help="host:port [default: 127.0.0.1:8000 http, :8001 grpc]")] = None,
    protocol: Annotated[str, typer.Option(help="http | grpc")] = "http",
    model: Annotated[str, typer.Option(help="Model to ask")] = ENSEMBLE,
    save: Annotated[Path | None, typer.Option("--save", help="Directory for the images with boxes drawn")] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold")] = 0.25,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold")] = 0.7,
    max_det: Annotated[int, typer.Option(help="Detections kept per image")] = 300,
    data: Annotated[Path | None, typer.Option(help="With --annotations: labelled images to score (mAP)")] = None,
    annotations: Annotated[Path | None, typer.Option(help="COCO instances json: print the served model's mAP, "
                                                          "as `vision-quant eval` does")] = None,
    max_images: Annotated[int | None, typer.Option(help="With --annotations: the first N images")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    client = DetectClient(url, protocol=protocol, model=model)  # type: ignore[arg-type]
    if annotations is not None or data is not None:
        if annotations is None or data is None:
            raise QuantError("scoring needs both --data DIR and --annotations FILE", "pass both, or neither")
        result = evaluate_served(client, data, annotations, iou=iou, max_det=max_det, max_images=max_images,
                                 progress=lambda items, description, total: track(items, description, total))
        if json_output:
            print_json(result.to_dict())
        else:
            typer.echo(f"mAP50-95 {result.map50_95:.4f}  mAP50 {result.map50:.4f}  ({result.images} images, "
                       f"{result.instances} boxes, {result.seconds:.1f} s through {result.device})")
        return
    if not images:
        raise QuantError("no images given", "pass image files, or --data and --annotations to score the server")
    names = client.class_names() or None
    records = detect_files(client, images, save, conf=conf, iou=iou, max_det=max_det, names=names)
    if json_output:
        print_json({"server": f"{protocol}://{client.url}", "model": model, "images": records})
        return
    table = Table("image", "class", "score", "box (x1, y1, x2, y2)")
    for record in records:
        for det in record["detections"] or [{"name": "-", "class": "", "score": "", "box_xyxy": []}]:
            box = ", ".join(f"{v:.1f}" for v in det["box_xyxy"])
            score = f"{det['score']:.3f}" if det["score"] != "" else ""
            table.add_row(Path(record["image"]).name, str(det["name"] or det["class"]), score, box)
        if "saved" in record:
            typer.echo(f"{record['image']} -> {record['saved']}", err=True)
    Console().print(table)
