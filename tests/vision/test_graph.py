"""Graph queries shared by the stages: the detection head, fused activations, exposed outputs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from tests.vision.conftest import TINY_OUTPUT, tiny_detector_onnx
from vision.graph import head_nodes, with_activations, with_outputs

ASSET = Path(__file__).resolve().parents[2] / "vision" / "assets" / "yolov8n_shapes.onnx"


def test_head_nodes_are_the_all_anchor_part_of_any_yolov8_export() -> None:
    model = onnx.load(str(ASSET))
    head = set(head_nodes(model))
    assert {"/model.22/Concat", "/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Sigmoid"} <= head
    assert not any("cv2" in n or "cv3" in n for n in head)  # the per-level branch convs stay INT8 candidates
    tiny = onnx.load(str(tiny_detector_onnx(Path(tempfile.mkdtemp()))))
    assert "/model.head/Concat" in set(head_nodes(tiny))


def test_a_float_layer_takes_its_fused_activation_along() -> None:
    model = onnx.load(str(ASSET))
    kept = with_activations(model, ["/model.9/cv2/conv/Conv", "/model.22/cv3.2/cv3.2.2/Conv"])
    # SiLU = Sigmoid + Mul follows the backbone conv; the class conv feeds a Concat (no activation to take)
    assert kept == ["/model.9/cv2/conv/Conv", "/model.22/cv3.2/cv3.2.2/Conv", "/model.9/cv2/act/Sigmoid",
                    "/model.9/cv2/act/Mul"]


def test_with_outputs_copies_and_leaves_the_model_alone(tiny_detector: Path) -> None:
    model = onnx.load(str(tiny_detector))
    before = model.SerializeToString()
    exposed = with_outputs(model, ["/model.3/Conv_output_0", TINY_OUTPUT, "images", "/model.3/Conv_output_0"])
    assert model.SerializeToString() == before
    assert [o.name for o in exposed.graph.output] == [TINY_OUTPUT, "/model.3/Conv_output_0"]
