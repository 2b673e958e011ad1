"""The package's import graph: no cycles, our own modules imported at the top, the packages and vision's and
llm_quant's stages layered, and the optional NVIDIA runtimes never imported by merely importing our code."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from collections.abc import Callable

from tests.test_imports import HAS_TRITON, NEEDS_TRITON

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vision", "llm_quant", "triton_backend", "quant_common")
# Python-backend model files are self-contained (they run inside Triton's stub, where our package may be absent).
SKIP_PARTS = {"models", "assets"}
# Function-level imports of our own code that are there on purpose, each with its reason.
LAZY_ALLOWED = {
    # the training recipe imports vision.data.synthetic in an environment that may lack rich
    ("vision.data.synthetic", "quant_common.progress"),
    # the kernels module imports triton at module level; triton comes with CUDA builds of torch only
    ("llm_quant.runtime.cuda.kernels", "llm_quant.runtime.cuda.triton_kernels"),
}
# vision's stage chain, lowest first: a module may import its own stage or one below it, never one above.
VISION_RANK = {"model": 0, "graph": 0, "regions": 0, "data": 1, "backends": 2, "calibration": 3, "artifacts": 4,
               "evaluation": 5, "serving": 6, "config": 7, "pipeline": 8, "cli": 9}
# llm_quant's stage chain, lowest first. The fact tables (upstream) are read by every stage and the build
# configuration by model, data and export, so both sit at the bottom; the runtime restores calibration's
# per-token switch and SmoothQuant fold; tiny writes an embedded build, so it sits above the runtime.
LLM_RANK = {"upstream": 0, "config": 1, "model": 2, "data": 2, "calibration": 3, "export": 4, "runtime": 5,
            "evaluation": 6, "tiny": 7, "pipeline": 8, "cli": 9}
# The packages a package may import besides itself: triton_backend sits below llm_quant and never imports it.
PACKAGE_IMPORTS = {"quant_common": set(), "triton_backend": {"quant_common"},
                   "llm_quant": {"quant_common", "triton_backend"}, "vision": {"quant_common", "triton_backend"}}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not SKIP_PARTS & set(path.relative_to(ROOT).parts):
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module or ``module.attribute``) refers to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module of ours, imported at module level) for every import in ``module`` (TYPE_CHECKING aside)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((t, top) for a in child.names if (t := _resolve(a.name)))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                    if target:
                        found.append((target, top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return [(t, top) for t, top in found if t != module]


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), over every import edge."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in GRAPH:
        if module not in index:
            connect(module)
    return components


def test_the_graph_sees_our_imports():
    # guards the parser itself: a known top-level import must show up as an edge
    assert ("quant_common.errors", True) in GRAPH["quant_common.atomic"]


def test_no_import_cycles():
    assert _cycles() == []


def test_a_cycle_would_be_found():
    GRAPH["quant_common.errors"].append(("quant_common.atomic", False))
    try:
        assert any({"quant_common.atomic", "quant_common.errors"} <= set(c) for c in _cycles())
    finally:
        GRAPH["quant_common.errors"].pop()


def test_our_modules_are_imported_at_the_top():
    lazy = sorted((m, t) for m, edges in GRAPH.items() for t, top in edges
                  if not top and (m, t) not in LAZY_ALLOWED)
    assert lazy == [], "import these at module level (lazy imports are for optional runtimes only)"


def _stage(module: str, package: str, rank: dict[str, int]) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == package and len(parts) > 1 and parts[1] in rank else None


def _upward(package: str, rank: dict[str, int]) -> list[str]:
    """Edges from a stage of ``package`` to a stage ranked above it."""
    upward = []
    for module, edges in GRAPH.items():
        stage = _stage(module, package, rank)
        for target, _ in edges:
            other = _stage(target, package, rank)
            if stage and other and rank[other] > rank[stage]:
                upward.append(f"{module} -> {target}")
    return upward


def _foreign() -> list[str]:
    """Edges from one package into another that it may not import."""
    return [f"{module} -> {target}" for module, edges in GRAPH.items() for target, _ in edges
            if target.split(".")[0] != module.split(".")[0]
            and target.split(".")[0] not in PACKAGE_IMPORTS[module.split(".")[0]]]


def _with_edge(source: str, target: str, check: Callable[[], list[str]]) -> list[str]:
    """``check()`` run with one extra import edge in the graph (a synthetic violation)."""
    GRAPH[source].append((target, True))
    try:
        return check()
    finally:
        GRAPH[source].pop()


def test_vision_stages_import_only_downwards():
    assert _upward("vision", VISION_RANK) == []


def test_llm_quant_stages_import_only_downwards():
    assert _upward("llm_quant", LLM_RANK) == []


def test_every_llm_quant_module_has_a_stage():
    # a new top-level module or folder must be given its place in the chain, or the rule above would skip it
    unranked = sorted(m for m in MODULES if m.startswith("llm_quant.") and not _stage(m, "llm_quant", LLM_RANK))
    assert unranked == []


def test_packages_import_only_the_packages_below_them():
    assert _foreign() == []


def test_an_upward_import_would_be_found():
    def llm() -> list[str]:
        return _upward("llm_quant", LLM_RANK)

    assert _with_edge("llm_quant.export.verify", "llm_quant.pipeline", llm) == [
        "llm_quant.export.verify -> llm_quant.pipeline"]
    assert _with_edge("llm_quant.model.presets", "llm_quant.runtime.embedded", llm) == [
        "llm_quant.model.presets -> llm_quant.runtime.embedded"]
    assert _with_edge("vision.data.images", "vision.evaluation.evaluate",
                      lambda: _upward("vision", VISION_RANK)) == ["vision.data.images -> vision.evaluation.evaluate"]


def test_triton_backend_importing_llm_quant_would_be_found():
    edge = "triton_backend.llmapi_support -> llm_quant.runtime.embedded"
    assert _with_edge("triton_backend.llmapi_support", "llm_quant.runtime.embedded", _foreign) == [edge]


def _importable() -> set[str]:
    return set(MODULES) if HAS_TRITON else set(MODULES) - NEEDS_TRITON


def test_importing_everything_leaves_the_nvidia_runtimes_unimported():
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(_importable())!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorrt', 'tensorrt_llm', 'tensorrt_bindings'})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
