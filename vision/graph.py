"""Queries on an ONNX graph that several stages share: which tensors are activations, which layers compute, where the
detection head is, and a copy with extra outputs. Pure functions of a loaded ``onnx.ModelProto``; nothing is read
from disk here and the model passed in is never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

# The layers INT8 is for. What follows the last of them in a detector is box decoding and the class Sigmoid, which
# collapse in INT8 (YOLO INT8 loses its head's Sigmoid/Concat unless kept in higher precision; Ultralytics keeps
# the head Sigmoid in FP32).
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
# Outputs that describe a tensor rather than its values: never activations.
_METADATA_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform"}
# Ops whose output holds exactly their first input's values, rearranged.
_MOVE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"}
# Elementwise activations TensorRT fuses into the compute layer before them (SiLU = Sigmoid + Mul, ReLU, ...).
_ACTIVATIONS = frozenset({"Sigmoid", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Mul"})


def quantizable_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor a TensorRT calibration cache lists for ``model``: the float network inputs, then every float
    tensor computed from them (each node output in graph order, network outputs included).

    TensorRT's cache names every tensor of the network it calibrated (see e.g. ultralytics/ultralytics#14121:
    ``images`` then each layer output), not only those feeding Conv/MatMul. Excluded: initializers, outputs of
    Constant-like nodes, and shape computations — anything not computed from a network input, or computed
    through ``Shape``/``Size`` (their outputs are metadata), and non-float tensors (int64 shape math, bool masks).
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a best effort; declared types are used below
        inferred = model
    elem_type = {
        info.name: info.type.tensor_type.elem_type
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if info.type.HasField("tensor_type")
    }
    names: list[str] = []
    data: set[str] = set()
    for graph_input in graph.input:
        if graph_input.name in initializers:
            continue
        data.add(graph_input.name)
        if elem_type.get(graph_input.name) in _FLOAT_TYPES:
            names.append(graph_input.name)
    for node in graph.node:
        if node.op_type in _METADATA_OPS or not any(name in data for name in node.input):
            continue
        for output in node.output:
            if not output:
                continue
            data.add(output)
            if elem_type.get(output) in _FLOAT_TYPES and output not in names:
                names.append(output)
    return names


def derivable_tensors(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, list[str]]:
    """Tensors among ``tensors`` whose values are exactly other listed tensors' values: outputs of pure data
    movement (Reshape, Transpose, ...: the same multiset of values) and of Concat (the union of its inputs).
    Their histograms are the sum of their sources' (exact for fixed bins), so they need no counting: ~18 % of a
    YOLOv8n's activation values. Maps each to its sources."""
    wanted = set(tensors)
    derived: dict[str, list[str]] = {}
    for node in model.graph.node:
        if not node.output or node.output[0] not in wanted:
            continue
        sources = [node.input[0]] if node.op_type in _MOVE_OPS else list(node.input) if node.op_type == "Concat" else []
        if sources and all(source in wanted for source in sources):
            derived[node.output[0]] = sources
    return derived


def compute_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def post_processing_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes after which no Conv/Gemm/MatMul follows (the decode tail), kept in float for ONNX Runtime.

    One pass in reverse topological order (ONNX requires nodes to be topologically sorted).
    """
    feeds_compute: set[str] = set()  # tensors from which a compute op is reachable
    tail: list[str] = []
    for node in reversed(model.graph.node):
        if node.op_type in COMPUTE_OPS or any(out in feeds_compute for out in node.output):
            feeds_compute.update(node.input)
        if node.op_type not in COMPUTE_OPS and not any(out in feeds_compute for out in node.output):
            tail.append(node.name)
    return tail[::-1]


def head_nodes(model: onnx.ModelProto, outputs: Sequence[str] | None = None) -> list[str]:
    """The detection head's all-anchor part: nodes producing a tensor whose last dimension is the anchor count N of
    the ``B x (4+nc) x N`` output (the level Concat, DFL Reshape/Softmax/Conv, box decode, class Sigmoid).

    Read from shapes, not names, so it holds for any YOLOv8 export. On the trained detector, quantizing this part
    (one scale shared by box-distribution and class logits, a quantized DFL Softmax) cost 2.4 of the 3.7 mAP50-95
    points INT8 lost; Ultralytics and TensorRT users keep it in higher precision for the same reason.
    ``outputs``: the tensors holding the raw head (default: the graph outputs; an end-to-end export's raw head is
    inside the graph, before its NMS).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    dims: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    heads = [dims.get(name, []) for name in (outputs if outputs is not None else [o.name for o in model.graph.output])]
    anchors = {shape[-1] for shape in heads if len(shape) == 3 and shape[-1] and shape[-1] > 1}
    if not anchors:
        return []
    return [n.name for n in model.graph.node
            if any(len(dims.get(o, [])) >= 2 and dims[o][-1] in anchors for o in n.output)]


def with_activations(model: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """``nodes`` plus the elementwise activation each compute layer feeds (SiLU = Sigmoid + Mul, ReLU, ...).

    TensorRT fuses Conv+activation into one layer, so keeping a layer in FP32 there keeps both. In the ONNX Runtime
    layout the activation is a node of its own; left INT8, its Q/DQ would quantize the float layer's output anyway.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    result = list(dict.fromkeys(nodes))
    for name in nodes:
        node = by_name.get(name)
        if node is None or node.op_type not in COMPUTE_OPS:
            continue
        out = node.output[0]
        first = [c for c in consumers.get(out, []) if c.op_type in _ACTIVATIONS]
        if len(first) != len(consumers.get(out, [])):
            continue  # the output feeds something else too: not a fused activation
        follow = [c for c in first if c.op_type != "Mul"]
        gated = {o for c in follow for o in c.output}
        muls = [c for c in first if c.op_type == "Mul" and set(c.input) <= {out, *gated}]
        result.extend(c.name for c in [*follow, *muls] if c.name not in result)
    return result


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (intermediate tensors become fetchable); names that
    are graph inputs or outputs already are left as they are. The one way extra outputs are exposed: a runner
    given ``extra_outputs`` (``vision.backends.onnxrt.OnnxrtRunner``) builds its session from this copy."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output} | {i.name for i in copy.graph.input}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return copy


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` with its top-level nodes in topological order, or None when they cannot be ordered (a
    cycle or an input nothing produces). Ultralytics' CPU ``half=True`` export (onnxruntime.transformers' float16
    converter with keep_io_types) appends its input Casts after the nodes that read them: ONNX Runtime loads it,
    onnx's checker refuses it."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        # outer-scope names a subgraph reads are not tracked here: such nodes keep their relative place
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            return None
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(ordered)
    return copy


def float_compute_nodes(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """The nodes of ``names`` that become a float-computing TensorRT layer, which precision constraints may pin to
    FP32: not Constant nodes (the ONNX parser adds no layer for them: onnx-tensorrt ``ImporterContext::registerLayer``),
    and only nodes reading a float tensor and writing float tensors. Integer and bool layers (shape math, an NMS
    tail's indices and masks) are left alone: under OBEY a forced FP32 there fails the build or changes the result.
    A tensor whose type cannot be inferred counts as not float."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*graph.input, *graph.output, *graph.value_info] if vi.type.HasField("tensor_type")}
    types.update({init.name: init.data_type for init in graph.initializer})
    wanted = set(names)
    result = []
    for node in graph.node:
        if node.name not in wanted or node.op_type == "Constant":
            continue
        outputs = [o for o in node.output if o]
        if not outputs or any(types.get(o) not in _FLOAT_TYPES for o in outputs):
            continue
        if not any(types.get(i) in _FLOAT_TYPES for i in node.input if i):
            continue
        result.append(node.name)
    return result
