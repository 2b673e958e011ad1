"""The package's import graph: no cycles, our own modules imported at the top, vision's stages layered, and the
optional NVIDIA runtimes never imported by merely importing our code."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vision", "llm_quant", "triton_backend", "quant_common")
# Python-backend model files are self-contained (they run inside Triton's stub, where our package may be absent).
SKIP_PARTS = {"models", "assets"}
# Function-level imports of our own code that are there on purpose, each with its reason.
LAZY_ALLOWED = {
    # the training recipe imports vision.data.synthetic in an environment that may lack rich
    ("vision.data.synthetic", "quant_common.progress"),
}
# vision's stage chain, lowest first: a module may import its own stage or one below it, never one above.
VISION_RANK = {"model": 0, "graph": 0, "regions": 0, "data": 1, "backends": 2, "calibration": 3, "artifacts": 4,
               "evaluation": 5, "serving": 6, "config": 7, "pipeline": 8, "cli": 9}


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


def _vision_stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if module.startswith("vision.") and parts[1] in VISION_RANK else None


def test_vision_stages_import_only_downwards():
    upward = []
    for module, edges in GRAPH.items():
        stage = _vision_stage(module)
        for target, _ in edges:
            other = _vision_stage(target)
            if stage and other and VISION_RANK[other] > VISION_RANK[stage]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_importing_everything_leaves_the_nvidia_runtimes_unimported():
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorrt', 'tensorrt_llm', 'tensorrt_bindings'})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
