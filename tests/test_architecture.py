"""The package's shape: no import cycles, no module importing a later pipeline stage, short functions.

Read from the source with ``ast`` (nothing imported), so the test is fast and says which module or
function breaks the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "undesirable_jax"
#: The pipeline, earliest first: a module may import its own stage or an earlier one, never a later one.
STAGES = ("windows", "samplers", "evidence", "engine", "factors", "visualize", "evaluate")
#: Stage-free modules usable everywhere (leaves), and entry points (may import anything).
LEAVES = ("checks", "io", "classifiers", "black_boxes", "_onnx_box", "_torch_box", "models", "data",
          "conditional", "compile_cache", "distributed")
TOP = ("cli", "_cli_options", "_cli_report", "__main__", "throughput", "__init__", "adaptive")
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("undesirable_jax",) + parts)


def _imports(path: Path, top_level: bool = False) -> set[str]:
    """Intra-package modules ``path`` imports (relative imports resolved; ``from . import x`` as ``pkg.x``);
    ``top_level``: only the imports that run when the module is imported (not those inside functions)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            if target.startswith("undesirable_jax"):
                found.update([target] if node.module else [])
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("undesirable_jax"))
    return found


def _graph(top_level: bool = False) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in _imports(p, top_level) if t in files and t != m} for m, p in files.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles_among_modules():
    """Cycles at import time. Package ``__init__`` files re-export their children, so edges into an
    ``__init__`` are skipped; imports inside functions (optional dependencies loaded on use) too."""
    graph = _graph(top_level=True)
    inits = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    edges = {m: {t for t in ts if t not in inits} for m, ts in graph.items() if m not in inits}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path + [m, t])
            if t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_no_module_imports_a_later_stage():
    for module, targets in _graph().items():
        src = _top(module)
        if src in TOP or src not in STAGES + LEAVES:
            continue
        for t in targets:
            dst = _top(t)
            if dst in TOP:
                raise AssertionError(f"{module} imports the entry point {t}")
            if src in LEAVES and dst in STAGES:
                raise AssertionError(f"{module} (a leaf) imports the pipeline stage {t}")
            if src in STAGES and dst in STAGES:
                assert STAGES.index(dst) <= STAGES.index(src), f"{module} imports the later stage {t}"


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)
