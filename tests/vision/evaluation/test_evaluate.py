"""COCO evaluation over real runners: oracle detectors with known answers, the trained detector, Q/DQ, engines."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from quant_common.errors import MissingDependencyError, QuantError, is_importable
from tests.vision.eval_helpers import (
    CATEGORY_IDS,
    GT_BOXES,
    GT_CLASSES,
    classifier_onnx,
    labelled_set,
    oracle_onnx,
    raw_output,
    to_network,
)
from vision.backends.select import load_runner
from vision.data.synthetic import generate_dataset
from vision.evaluation.evaluate import class_to_category, coco_map, evaluate, load_annotations

ASSET = Path(__file__).resolve().parents[3] / "vision" / "assets" / "yolov8n_shapes.onnx"


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three images of the detector's own val split (seed 0), regenerated from the seed."""
    root = tmp_path_factory.mktemp("shapes")
    annotations = generate_dataset(root, 3, seed=0, split="val", workers=1)
    return root / "images" / "val", annotations


def _evaluate(model: Path, images: Path, annotations: Path, **kwargs: object) -> object:
    with load_runner(model) as runner:
        return evaluate(runner, images, annotations, **kwargs)


def test_perfect_predictions_score_one_and_shifted_boxes_less(tmp_path: Path) -> None:
    images, annotations = labelled_set(tmp_path)
    net_boxes = to_network(GT_BOXES)
    perfect = oracle_onnx(tmp_path / "perfect.onnx", raw_output(net_boxes, GT_CLASSES, 3))
    result = _evaluate(perfect, images, annotations)
    assert result.map50_95 == pytest.approx(1.0) and result.map50 == pytest.approx(1.0)
    assert [c.category_id for c in result.per_class] == CATEGORY_IDS
    assert all(c.map50_95 == pytest.approx(1.0) and c.instances == 2 for c in result.per_class)

    shifted_boxes = net_boxes.copy()
    shifted_boxes[:, [0, 2]] += 0.15 * (net_boxes[:, 2] - net_boxes[:, 0])[:, None]  # IoU 0.74 with the truth
    shifted = _evaluate(oracle_onnx(tmp_path / "shifted.onnx", raw_output(shifted_boxes, GT_CLASSES, 3)),
                        images, annotations)
    assert shifted.map50 == pytest.approx(1.0)
    assert 0.3 < shifted.map50_95 < 0.7

    wrong_class = _evaluate(oracle_onnx(tmp_path / "wrong.onnx", raw_output(net_boxes, (GT_CLASSES + 1) % 3, 3)),
                            images, annotations)
    assert wrong_class.map50 == pytest.approx(0.0)


def test_coco_map_on_records_with_a_missed_object(tmp_path: Path) -> None:
    _, annotations = labelled_set(tmp_path, images=1)
    coco = load_annotations(annotations)
    records = [{"image_id": 1, "category_id": CATEGORY_IDS[c], "score": 0.9,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for b, c in zip(GT_BOXES, GT_CLASSES, strict=True)]
    _, full, _ = coco_map(coco, records, [1], 300)
    _, missing_one, _ = coco_map(coco, records[:2], [1], 300)
    assert full == pytest.approx(1.0)
    assert missing_one == pytest.approx(2 / 3)  # one class has no detection at all
    assert coco_map(coco, [], [1], 300)[1:] == (0.0, 0.0)


def test_class_map_by_list_mapping_and_names(tmp_path: Path) -> None:
    _, annotations = labelled_set(tmp_path, images=1)
    coco = load_annotations(annotations)
    assert class_to_category(coco, 3) == [3, 7, 11]
    (tmp_path / "map.json").write_text(json.dumps([11, 3, 7]))
    assert class_to_category(coco, 3, tmp_path / "map.json") == [11, 3, 7]
    (tmp_path / "map.yaml").write_text("names:\n  0: class7\n  1: class3\n")
    assert class_to_category(coco, 2, tmp_path / "map.yaml") == [7, 3]
    with pytest.raises(QuantError, match="predicts 4 classes but the annotations have 3"):
        class_to_category(coco, 4)
    (tmp_path / "bad.json").write_text(json.dumps({"0": 99}))
    with pytest.raises(QuantError, match="class map"):
        class_to_category(coco, 3, tmp_path / "bad.json")


@pytest.fixture(scope="module")
def fp32_result(shapes_val: tuple[Path, Path]) -> object:
    return _evaluate(ASSET, *shapes_val)


def test_trained_detector_on_generated_val_images(fp32_result: object) -> None:
    result = fp32_result
    assert result.images == 3 and result.instances > 10
    assert result.map50 > 0.8 and result.map50_95 > 0.6  # the full 500-image split scores 0.90 / 0.98
    assert len(result.per_class) == 8


def test_qdq_onnx_is_evaluated_like_fp32(tmp_path: Path, shapes_val: tuple[Path, Path], fp32_result: object) -> None:
    """A Q/DQ model (ONNX Runtime's static QDQ quantization of the trained detector) runs through the same eval."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from vision.data.images import preprocess

    images, annotations = shapes_val
    feeds = [{"images": preprocess(p, (640, 640))[0]} for p in sorted(images.glob("*.jpg"))[:1]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(ASSET), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    int8 = _evaluate(qdq, images, annotations)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    assert int8.map50 > 0.5
    assert abs(int8.map50_95 - fp32_result.map50_95) < 0.2


@pytest.mark.skipif(not is_importable("tensorrt"), reason="needs TensorRT (and an NVIDIA GPU) to build an engine")
def test_engine_is_evaluated_through_tensorrt(tmp_path: Path, shapes_val: tuple[Path, Path]) -> None:
    from vision.backends.trt import EngineSpec, build_engine

    engine = tmp_path / "model.engine"
    build_engine(EngineSpec(onnx_path=ASSET, engine_path=engine, precision="fp16", input_name="images",
                            input_hw=(640, 640), dynamic_batch=False))
    images, annotations = shapes_val
    assert _evaluate(engine, images, annotations).map50 > 0.8


@pytest.mark.skipif(is_importable("tensorrt"), reason="checks the message shown when TensorRT is absent")
def test_engine_without_tensorrt_is_one_clear_line(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(MissingDependencyError, match="tensorrt") as info:
        load_runner(engine)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    images, annotations = labelled_set(tmp_path)
    perfect = oracle_onnx(tmp_path / "perfect.onnx", raw_output(to_network(GT_BOXES), GT_CLASSES, 3))
    # annotations naming images that are not there
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(QuantError, match="2 of 2 images named in the annotations are not under"):
        _evaluate(perfect, other, annotations)
    # annotations made for images of another size
    data = json.loads(annotations.read_text())
    data["images"][0]["width"] = 999
    (tmp_path / "resized.json").write_text(json.dumps(data))
    with pytest.raises(QuantError, match="annotations say 999x300"):
        _evaluate(perfect, images, tmp_path / "resized.json")
    # not a detection model
    with pytest.raises(QuantError, match="not a YOLOv8 detection output"):
        _evaluate(classifier_onnx(tmp_path / "cls.onnx"), images, annotations, imgsz=64)
    # not a COCO file, a missing file, an unknown suffix
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(QuantError, match="not a COCO detection file"):
        load_annotations(tmp_path / "list.json")
    with pytest.raises(QuantError, match="annotation file not found"):
        load_annotations(tmp_path / "absent.json")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(QuantError, match="cannot tell what kind of model"):
        load_runner(tmp_path / "model.pt")
    with pytest.raises(QuantError, match="model file not found"):
        load_runner(tmp_path / "absent.onnx")
