"""Per-channel INT8 weights in the ONNX Runtime layout, uint8 storage, and layers kept in float by name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant_common.errors import QuantError
from tests.vision.artifacts.test_qdq import absmax_scales, tiny_conv_model
from vision.artifacts.qdq_ort import ort_quantized_tensors, write_ort_qdq
from vision.artifacts.qdq_verify import activation_q_scales
from vision.artifacts.qdq_weights import cpu_has_vnni, store_weights_uint8
from vision.backends.onnxrt import create_session
from vision.evaluation.sensitivity import sqnr_db


def uneven_channels_model(path):
    """Conv → Sigmoid → Conv where one output channel of the first Conv holds a ±8 weight pair on the R and G inputs.
    Fed images with R == G, the pair cancels, so activations keep their range, but a per-tensor weight scale is
    set by the outlier (step 8/127) and coarsens every other channel; per-channel scales confine it to channel 0."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.3, (16, 3, 3, 3))
    w1[0, 0, 1, 1], w1[0, 1, 1, 1] = 8.0, -8.0
    w2 = rng.normal(0, 0.2, (8, 16, 3, 3))
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b1"), numpy_helper.from_array(np.zeros(8, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["r1"], name="sig1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["out"], name="sig2")]
    graph = helper.make_graph(nodes, "uneven", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    root = tmp_path_factory.mktemp("qdqw")
    path = uneven_channels_model(root / "uneven.onnx")
    images = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    images[:, 1] = images[:, 0]  # R == G: the outlier pair cancels
    feeds = {"images": images}
    tensors = ort_quantized_tensors(onnx.load(str(path)))
    return root, path, feeds, absmax_scales(path, feeds, tensors)


def weight_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    return {n.input[0]: numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2}


@pytest.mark.parametrize("storage", ["int8", "uint8"])
def test_per_channel_weights_use_tensorrt_scales_and_beat_per_tensor(uneven, storage):
    root, path, feeds, scales = uneven
    per_channel = write_ort_qdq(path, scales, [feeds], root / f"pc.{storage}.onnx", weight_storage=storage)
    per_tensor = write_ort_qdq(path, scales, [feeds], root / f"pt.{storage}.onnx", per_channel=False,
                               weight_storage=storage)
    assert per_channel.per_channel_weights == 2 and per_channel.per_tensor_weights == 0
    assert per_tensor.per_tensor_weights == 2 and per_channel.weight_storage == storage
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    found = weight_scales(onnx.load(str(root / f"pc.{storage}.onnx")))
    for name, weight in (("w1", floats["w1"]), ("w2", floats["w2"])):
        scale = next(s for k, s in found.items() if k.startswith(name))
        # symmetric, per output channel, max|w_c| / 127: what TensorRT and modelopt use
        np.testing.assert_allclose(scale, np.abs(weight).reshape(len(weight), -1).max(1) / 127, rtol=1e-6)
    # run with ORT's integer kernels only where they are exact (int8 storage needs VNNI, see vision.artifacts.qdq_weights)
    opts = ort.SessionOptions()
    if storage == "int8" and not cpu_has_vnni():
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = create_session(path).run(None, feeds)[0]

    def run(p):
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    pc, pt = sqnr_db(ref, run(per_channel.path)), sqnr_db(ref, run(per_tensor.path))
    assert pc > pt + 3.0, (pc, pt)


def test_uint8_storage_dequantizes_bit_identically(uneven):
    root, path, feeds, scales = uneven
    write_ort_qdq(path, scales, [feeds], root / "s8.onnx", weight_storage="int8")
    model = onnx.load(str(root / "s8.onnx"))
    before = _dequantized_weights(model)
    assert store_weights_uint8(model) == 2
    after = _dequantized_weights(model)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    # uint8 weights are computed exactly by the fused kernels on any x86 CPU: same result as the unfused graph
    onnx.save(model, str(root / "u8.onnx"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(str(root / "u8.onnx"), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    fused = create_session(root / "u8.onnx").run(None, feeds)[0]
    assert sqnr_db(unfused, fused) > 30


def _dequantized_weights(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2:
            q, s, z = inits[n.input[0]], inits[n.input[1]], inits[n.input[2]]
            shape = [-1] + [1] * (q.ndim - 1)
            out[n.output[0]] = (q.astype(np.int32) - z.astype(np.int32).reshape(shape)) * s.reshape(shape)
    return out


def test_a_layer_kept_in_float_keeps_its_neighbours_quantized(tmp_path):
    path = tiny_conv_model(tmp_path / "tiny.onnx")
    feeds = {"images": np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)}
    scales = absmax_scales(path, feeds, ort_quantized_tensors(onnx.load(str(path))))
    summary = write_ort_qdq(path, scales, [feeds], tmp_path / "mixed.onnx", nodes_to_exclude=["conv2"])
    assert summary.excluded_nodes == ["conv2"]
    model = onnx.load(str(tmp_path / "mixed.onnx"))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    producers = {o: n for n in model.graph.node for o in n.output}
    assert conv2.input[1] == "w2" and conv2.input[1] not in producers  # its weight stays a float initializer
    assert producers[conv2.input[0]].op_type == "DequantizeLinear"  # it reads the INT8 neighbour's dequantized output
    quantized = activation_q_scales(model)
    assert "a1" in quantized and "a2" in quantized  # conv1's and conv3's activations are still INT8
    conv3 = next(n for n in model.graph.node if n.name == "conv3")
    assert producers[conv3.input[1]].op_type == "DequantizeLinear"
    with pytest.raises(QuantError, match="not in tiny.onnx"):
        write_ort_qdq(path, scales, [feeds], tmp_path / "bad.onnx", nodes_to_exclude=["no-such-node"])
