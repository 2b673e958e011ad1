"""The bundled detector exported the ways TensorRT users export: mAP50-95 of FP16 and opset-12 variants against
their FP32 / opset-17 twin, FP32 and both INT8 layouts, all calibrated on the same images (run on demand).

Variants (made here from the bundled ONNX, no Ultralytics needed):
- ``fp16-io``: FP16 weights and I/O (a GPU ``half=True`` export), onnxruntime.transformers' float16 converter;
- ``fp16-cpu``: FP16 weights, FP32 I/O cast inside (Ultralytics' CPU ``half=True`` export: same converter,
  ``keep_io_types=True``, nodes left out of topological order);
- ``opset12``: the same graph written at opset 12 (Split sizes as attributes, Resize with an roi tensor, the DFL
  Softmax over its last axis between two Transposes, as opset < 13 Softmax flattens).

    .venv/bin/python benchmarks/export_variants.py --images 100 --calib-images 32 --out out/export_variants
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision.backends.select import load_runner  # noqa: E402
from vision.config import BUNDLED_MODEL, load_config  # noqa: E402
from vision.data.synthetic import generate_calibration_images, generate_dataset  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
from vision.evaluation.evaluate import evaluate  # noqa: E402
from vision.pipeline.build import build  # noqa: E402


def to_opset12(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (opset 13-17, the ops of a YOLOv8 detection export) rewritten for opset 12, same computation."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    nodes: list[onnx.NodeProto] = []
    roi = "opset12_empty_roi"
    graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), roi))
    for node in graph.node:
        if node.op_type == "Split" and len(node.input) > 1:
            sizes = [int(v) for v in values[node.input[1]]]
            node.input[:] = node.input[:1]
            node.attribute.append(helper.make_attribute("split", sizes))
        elif node.op_type == "Resize" and len(node.input) > 1 and not node.input[1]:
            node.input[1] = roi
        elif node.op_type == "Reshape":  # allowzero exists from opset 14; 0 (its default) is opset 12's meaning
            kept = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 0)]
            del node.attribute[:]
            node.attribute.extend(kept)
        elif node.op_type == "Softmax":
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if axis not in (-1, 3):
                perm = [0, 2, 3, 1] if axis == 1 else None
                if perm is None:
                    raise SystemExit(f"no opset-12 rewrite for Softmax axis {axis}")
                moved, soft = f"{node.output[0]}_last", f"{node.output[0]}_soft"
                nodes.append(helper.make_node("Transpose", [node.input[0]], [moved], perm=perm,
                                              name=f"{node.name}_to_last"))
                nodes.append(helper.make_node("Softmax", [moved], [soft], axis=3, name=node.name))
                nodes.append(helper.make_node("Transpose", [soft], [node.output[0]], perm=[0, 3, 1, 2],
                                              name=f"{node.name}_back"))
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del out.opset_import[:]
    out.opset_import.append(helper.make_opsetid("", 12))
    out.ir_version = 7
    onnx.checker.check_model(out)
    return out


def make_variants(work: Path) -> dict[str, Path]:
    from onnxruntime.transformers import float16

    base = onnx.load(str(BUNDLED_MODEL))
    paths = {"fp32-opset17": BUNDLED_MODEL}
    for name, model in (("fp16-io", float16.convert_float_to_float16(base, keep_io_types=False)),
                        ("fp16-cpu", float16.convert_float_to_float16(base, keep_io_types=True)),
                        ("opset12", to_opset12(base))):
        paths[name] = work / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="val images to score")
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("out/export_variants"))
    parser.add_argument("--variants", default="fp32-opset17,fp16-io,fp16-cpu,opset12",
                        help="comma-separated subset (the first is the reference row)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    annotations = generate_dataset(args.out / "shapes", args.images, seed=0, split="val")
    images = args.out / "shapes" / "images" / "val"
    calib = args.out / "calib"
    if not calib.is_dir():
        generate_calibration_images(calib, args.calib_images, 1)
    rows: list[dict[str, Any]] = []
    wanted = args.variants.split(",")
    for name, path in make_variants(args.out).items():
        if name not in wanted:
            continue
        built = build(load_config(model=path, calib_data=calib, out=args.out / f"build-{name}", agreement_images=0))
        row: dict[str, Any] = {"variant": name}
        for label, model in (("source", path), ("int8-trt-layout", built.artifacts["qdq_trt"]),
                             ("int8-ort-layout", built.artifacts["qdq_ort"])):
            result = evaluate(load_runner(model), images, annotations, max_images=args.images)
            row[label] = round(100 * result.map50_95, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nCPU: {cpu_name()}; flags: {' '.join(cpu_flags())}")
    print(f"mAP50-95 (%) on {args.images} generated val images (seed 0), {args.calib_images} calibration images")
    header = ["variant", "source", "int8-trt-layout", "int8-ort-layout"]
    print("| " + " | ".join(header) + " | Δ int8-ort vs fp32-opset17 int8-ort |")
    print("|" + "---|" * (len(header) + 1))
    reference = rows[0]["int8-ort-layout"]
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + f" | {row['int8-ort-layout'] - reference:+.2f} |")
    (args.out / "export_variants.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
