"""The region search (`vision.pipeline.mixed_precision`, `vision.regions`): whole blocks float, never scattered
layers, chosen on a measured accuracy and a measured latency; the Pareto verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vision.artifacts.cache import amax_to_scale
from vision.artifacts.qdq_ort import write_ort_qdq
from vision.backends.onnxrt import OnnxrtRunner
from vision.graph import head_nodes, quantizable_tensors, with_activations, with_outputs
from vision.pipeline.mixed_precision import (
    Measured,
    RegionPrice,
    Target,
    choose,
    output_sqnr,
    rank_regions,
    recommend,
    search_regions,
)
from vision.regions import count_by_region, float_regions, isolated_float_layers, region_nodes

BUNDLED = Path(__file__).resolve().parents[3] / "vision" / "assets" / "yolov8n_shapes.onnx"
SIZE = 48


def two_module_chain(path: Path) -> Path:
    """Two modules of six Conv+SiLU (16 channels). In ``/model.0`` layers 1, 3 and 5 each have one weight of 100 per
    output channel, on an input channel that layers 0, 2 and 4 hold at ~0 (weights 0, bias -10): per-channel INT8
    rounds every other weight of those layers to 0, so INT8 loses almost everything there and the layers an SQNR
    ranking keeps float are three islands. ``/model.1`` is benign."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "images"
    for module in range(2):
        for j in range(6):
            c_in = 3 if (module, j) == (0, 0) else 16
            w = (rng.standard_normal((16, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
            b = (rng.standard_normal(16) * 0.1).astype(np.float32)
            if module == 0 and j % 2 == 0:
                w[0], b[0] = 0.0, -10.0
            if module == 0 and j % 2 == 1:
                w[:, 0, 1, 1] = 100.0
            prefix = f"/model.{module}/m.{j}"
            inits += [numpy_helper.from_array(w, f"{prefix}.w"), numpy_helper.from_array(b, f"{prefix}.b")]
            nodes.append(helper.make_node("Conv", [x, f"{prefix}.w", f"{prefix}.b"], [f"{prefix}/conv"],
                                          name=f"{prefix}/conv/Conv", pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Sigmoid", [f"{prefix}/conv"], [f"{prefix}/sig"], name=f"{prefix}/act/Sigmoid"))
            nodes.append(helper.make_node("Mul", [f"{prefix}/conv", f"{prefix}/sig"], [f"{prefix}/act"],
                                          name=f"{prefix}/act/Mul"))
            x = f"{prefix}/act"
    nodes.append(helper.make_node("Identity", [x], ["output0"], name="/model.2/Identity"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                              [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 16, SIZE, SIZE])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.random((1, 3, SIZE, SIZE), dtype=np.float32)} for _ in range(n)]


def _scales(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    names = quantizable_tensors(model)
    with OnnxrtRunner(with_outputs(model, names)) as runner:
        runs = [{**runner.infer(f), **f} for f in feeds]
    return {n: amax_to_scale(max(float(np.abs(r[n]).max()) for r in runs)) for n in names}


def _standalone_qdq(path: Path, tmp: Path) -> int:
    """Q/DQ nodes ONNX Runtime's optimizer could not fold into an INT8 kernel: each one is a pass over a tensor
    that only moves between INT8 and float (the cost of a float island)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    weights = {i.name for i in optimized.graph.initializer}
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in weights
               for n in optimized.graph.node)


def test_regions_of_the_bundled_detector_are_whole_modules_without_islands() -> None:
    model = onnx.load(str(BUNDLED))
    head = head_nodes(model)
    regions = float_regions(model, head)
    names = [r.name for r in regions]
    assert "model.2" in names and "model.3–model.4" in names and "model.22/cv3.1" in names
    assert all(r.layers >= 2 for r in regions)
    every = region_nodes(regions)
    assert len(every) == len(set(every)) and not set(every) & set(head)
    c2f = {n.name for n in model.graph.node if n.name.startswith("/model.4/")}
    assert c2f <= set(next(r for r in regions if r.name == "model.3–model.4").nodes)  # a C2f is never cut
    for region in regions:  # any region alone, or with the head, leaves no float layer between INT8 neighbours
        assert isolated_float_layers(model, [*head, *region.nodes]) == []
    assert isolated_float_layers(model, ["/model.4/m.0/cv1/conv/Conv"]) == ["/model.4/m.0/cv1/conv/Conv"]
    counts = count_by_region([*head, *regions[2].nodes], regions, head)
    assert counts == {"head": len(head), regions[2].name: len(regions[2].nodes)}


def test_search_keeps_a_whole_region_where_the_sqnr_ranking_picks_scattered_slower_islands(tmp_path: Path) -> None:
    model = onnx.load(str(two_module_chain(tmp_path / "chain.onnx")))
    feeds = _feeds(2)
    scales = _scales(model, _feeds(4, seed=2))
    with OnnxrtRunner(model) as runner:
        reference = [runner.infer(f) for f in feeds]

    def write(nodes, path: Path) -> None:
        write_ort_qdq(model, scales, feeds[:1], path, nodes_to_exclude=nodes, weight_storage="uint8")

    def sqnr_score(path: Path) -> float:  # the accuracy probe: output SQNR, in "mAP" units of 100 dB
        with OnnxrtRunner(path) as runner:
            return output_sqnr(reference, [runner.infer(f) for f in feeds]) / 100.0

    uniform = tmp_path / "uniform.onnx"
    write([], uniform)
    # The scattered choice: exactly the three layers INT8 ruins, kept float one by one (what a per-layer search
    # aims at): three islands between INT8 neighbours.
    scattered = [f"/model.0/m.{j}/conv/Conv" for j in (1, 3, 5)]
    assert sorted(isolated_float_layers(model, scattered)) == scattered
    write(with_activations(model, scattered), tmp_path / "scattered.onnx")
    scattered_db = 100 * sqnr_score(tmp_path / "scattered.onnx")
    uniform_db = 100 * sqnr_score(uniform)
    assert scattered_db > uniform_db + 3  # it does fix the accuracy...

    regions = float_regions(model)
    assert [r.name for r in regions] == ["model.0", "model.1"]
    budget = 60.0 - (uniform_db + scattered_db) / 2  # "delta" = 60 dB - SQNR: met by the scattered choice
    # no latency cap: whether INT8 beats FP32 at all on a model this small depends on the machine
    search = search_regions(Target("onnxruntime", "ort", write), regions, [], uniform, uniform_db / 100,
                            tmp_path / "chain.onnx", 0.60, sqnr_score, budget, tmp_path, reference, feeds, imgsz=SIZE,
                            rounds=3, cap_at_fp32=False)
    assert search.prices[0].region == "model.0" and search.prices[0].gain_db > 3
    assert all(p.region == "model.0" or p.gain_db < 3 for p in search.prices)
    for candidate in search.candidates:
        candidate.latency_ms = float(len(candidate.float_nodes))  # timing is the caller's; any order will do here
    best = choose(search)
    assert search.met and best.regions == ["model.0"] and best.delta <= budget
    assert isolated_float_layers(model, best.float_nodes) == []
    # ...but costs more INT8<->float passes at run time than the whole region, as ONNX Runtime optimizes each
    assert _standalone_qdq(tmp_path / "scattered.onnx", tmp_path) > _standalone_qdq(best.path, tmp_path)


def test_regions_that_gain_nothing_or_would_be_as_slow_as_fp32_are_never_tried() -> None:
    prices = [RegionPrice("a", 2, 5.0, 1.0), RegionPrice("b", 4, -2.0, 0.4), RegionPrice("c", 3, 20.0, 2.0),
              RegionPrice("d", 3, 1.0, -0.3), RegionPrice("e", 5, 30.0, 0.5)]
    # gain per ms, a cost under 1 % of 50 ms counting as 0.5 ms: b 0.8, a 0.2, c 0.1, e 0.017; d gains nothing
    ranked, left = rank_regions(prices, base_ms=50.0, fp32_ms=100.0)
    assert [p.region for p in ranked] == ["b", "a", "c"]  # + e would reach 50 + 0 + 5 + 20 + 30 = 105 ms
    assert left == {"no_gain": ["d"], "as_slow_as_fp32": ["e"]}
    assert [p.region for p in rank_regions(prices, 50.0, None)[0]] == ["b", "a", "c", "e"]


def test_recommend_prefers_a_uniform_row_that_beats_every_mixed_one() -> None:
    rows = [Measured("FP32", 0.0, 50.0), Measured("INT8-minmax", -0.7, 25.0),
            Measured("INT8-minmax-openvino", -0.3, 16.0), Measured("INT8-mixed", -0.4, 30.0)]
    verdict = recommend(rows, 0.5, {"INT8-mixed": ["model.2"]})
    assert verdict["variant"] == "INT8-minmax-openvino" and verdict["within_budget"]
    assert verdict["mixed"]["INT8-mixed"]["dominated_by"] == "INT8-minmax-openvino"
    assert "use INT8-minmax-openvino" in verdict["reason"]
    assert verdict["front"] == ["FP32", "INT8-minmax-openvino"]  # INT8-minmax: slower and less accurate
    faster_mixed = [*rows[:3], Measured("INT8-mixed", -0.4, 14.0)]
    verdict = recommend(faster_mixed, 0.5, {"INT8-mixed": ["model.2"]})
    assert verdict["variant"] == "INT8-mixed" and verdict["mixed"]["INT8-mixed"]["on_front"]
    # a candidate (not a row) can be on the front but is never recommended
    with_candidate = [*rows, Measured("ORT candidate 1", -0.1, 10.0, row=False)]
    assert recommend(with_candidate, 0.5, {"INT8-mixed": ["model.2"]})["variant"] == "INT8-minmax-openvino"
    nothing = recommend([Measured("FP32", 0.0, 50.0), Measured("INT8-mixed", -2.0, 20.0)], 0.5,
                        {"INT8-mixed": []})
    assert nothing["variant"] == "FP32"


@pytest.mark.parametrize("budget", [0.0])
def test_a_uniform_model_within_the_budget_needs_no_search(tmp_path: Path, budget: float) -> None:
    model = onnx.load(str(two_module_chain(tmp_path / "chain.onnx")))
    calls: list[Path] = []
    search = search_regions(Target("onnxruntime", "ort", lambda nodes, path: calls.append(path)),
                            float_regions(model), [], tmp_path / "uniform.onnx", 0.9, tmp_path / "chain.onnx", 0.9,
                            lambda p: 0.0, budget, tmp_path, [], [])
    assert search.met and len(search.candidates) == 1 and calls == [] and choose(search).regions == []


def test_under_the_ci_rule_a_row_meets_the_budget_only_with_its_whole_interval() -> None:
    """INT8-minmax-openvino loses 0.3 points, but its interval reaches 0.8: under "ci" it is not within 0.5, the
    slower INT8-mixed (interval up to 0.45) is recommended; under "point" the faster row is."""
    rows = [Measured("FP32", 0.0, 50.0, loss_upper=0.0), Measured("INT8-minmax-openvino", -0.3, 16.0, loss_upper=0.8),
            Measured("INT8-mixed", -0.2, 30.0, loss_upper=0.45)]
    assert recommend(rows, 0.5, {"INT8-mixed": ["model.2"]}, "point")["variant"] == "INT8-minmax-openvino"
    verdict = recommend(rows, 0.5, {"INT8-mixed": ["model.2"]}, "ci")
    assert verdict["variant"] == "INT8-mixed" and verdict["rule"] == "ci"
