"""Dev-only recipe: train a YOLOv8 test detector (n by default, --arch picks another size) on the synthetic shapes set and export it to ONNX.

Ultralytics is AGPL-3.0, so it is a tool here, never a dependency of the package: run this script in a separate
environment that has ultralytics (its own virtual environment, or ultralytics installed with ``pip install --no-deps
--target DIR`` and DIR on PYTHONPATH; set YOLO_OFFLINE=1 and YOLO_CONFIG_DIR, with any TTF font copied to
``$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf``, or Ultralytics tries to download one). It writes into --out:

    <arch>_shapes.onnx    opset 17, images 1x3x640x640 -> output0 1x(4+8)x8400
    best.pt               the trained weights (for re-export)
    train_results.json    recipe arguments, training time/epochs, Ultralytics val mAP on the val split
                          (PyTorch weights, and the ONNX file through ONNX Runtime where it runs)

Example (GPU box, ~8 minutes):
    python scripts/train_yolo_shapes.py --data /tmp/shapes --out $OUT --n-train 4000 --n-val 500 --hours 0.11
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision.data.synthetic import CLASSES, generate_dataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="where the generated data set goes")
    parser.add_argument("--out", type=Path, required=True, help="where the ONNX, weights and results go")
    parser.add_argument("--arch", default="yolov8n", help="Ultralytics model config without .yaml (yolov8n, yolov8s, ...)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (train and val differ by split name)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--hours", type=float, default=0.11, help="training time box (Ultralytics time=)")
    parser.add_argument("--epochs", type=int, default=300, help="upper bound; the time box usually ends first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--device", default=None, help="Ultralytics device (default: GPU 0 if present, else cpu)")
    parser.add_argument("--gen-workers", type=int, default=None)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    results_path = args.out / "train_results.json"

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    start = time.time()
    val_json = generate_dataset(args.data, args.n_val, args.seed, args.imgsz, "val", args.gen_workers)
    generate_dataset(args.data, args.n_train, args.seed, args.imgsz, "train", args.gen_workers)
    results["generate_s"] = round(time.time() - start, 1)
    annotations = json.loads(Path(val_json).read_text())
    results["val_images"] = len(annotations["images"])
    results["val_boxes"] = len(annotations["annotations"])
    names = "names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    data_yaml = args.data / "data.yaml"  # the full val split: final numbers
    data_yaml.write_text(f"path: {args.data.resolve()}\ntrain: images/train\nval: images/val\n{names}")
    # per-epoch validation on a 100-image subset: on 500 images it took a third of each short epoch
    mini = sorted((args.data / "images" / "val").glob("*.jpg"))[:100]
    (args.data / "val_mini.txt").write_text("".join(f"{p.resolve()}\n" for p in mini))
    train_yaml = args.data / "data_train.yaml"
    train_yaml.write_text(f"path: {args.data.resolve()}\ntrain: images/train\nval: val_mini.txt\n{names}")
    save()

    import torch
    from ultralytics import YOLO

    device = args.device if args.device is not None else (0 if torch.cuda.is_available() else "cpu")
    train_args = dict(data=str(train_yaml), epochs=args.epochs, time=args.hours, imgsz=args.imgsz, batch=args.batch,
                      workers=args.workers, device=device, pretrained=False, amp=False, plots=False, cache="ram",
                      seed=args.seed, deterministic=False, project=str(args.data / "runs"), name="train",
                      exist_ok=True, patience=1000, verbose=False)
    results["train_args"] = {k: v for k, v in train_args.items() if k not in ("data", "project")}
    model = YOLO(f"{args.arch}.yaml")
    start = time.time()
    model.train(**train_args)
    results["train_s"] = round(time.time() - start, 1)
    save_dir = Path(model.trainer.save_dir)
    results["epochs_done"] = int(model.trainer.epoch) + 1
    best = save_dir / "weights" / "best.pt"
    shutil.copy2(best, args.out / "best.pt")
    save()

    best_model = YOLO(str(best))
    metrics = best_model.val(data=str(data_yaml), split="val", imgsz=args.imgsz, batch=32, conf=0.001, iou=0.7,
                             max_det=300, device=device, plots=False, verbose=False)
    results["ultralytics_val_pt"] = {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50),
                                     "per_class_map50_95": [float(v) for v in metrics.box.maps[:len(CLASSES)]]}
    save()

    onnx_path = Path(best_model.export(format="onnx", opset=17, simplify=False, imgsz=args.imgsz, dynamic=False))
    onnx_name = f"{args.arch}_shapes.onnx"
    shutil.copy2(onnx_path, args.out / onnx_name)
    results["onnx_bytes"] = (args.out / onnx_name).stat().st_size
    save()
    try:  # Ultralytics' val of the ONNX file itself (ONNX Runtime, CPU): the number our eval must match
        onnx_metrics = YOLO(str(onnx_path), task="detect").val(
            data=str(data_yaml), split="val", imgsz=args.imgsz, batch=1, conf=0.001, iou=0.7, max_det=300,
            device="cpu", plots=False, verbose=False)
        results["ultralytics_val_onnx"] = {"map50_95": float(onnx_metrics.box.map),
                                           "map50": float(onnx_metrics.box.map50)}
    except Exception:  # noqa: BLE001 - keep the trained model even if this optional check fails
        results["ultralytics_val_onnx_error"] = traceback.format_exc()[-2000:]
    results["versions"] = {"torch": torch.__version__, "python": sys.version.split()[0],
                           "ultralytics": __import__("ultralytics").__version__}
    save()
    print(json.dumps({k: v for k, v in results.items() if k != "ultralytics_val_onnx_error"}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.exit(main())
