"""The package's import structure: no import circles, Ray only where a stage orchestrates with it, and the layers
(aemg_dist's foundation < preprocessing < the rest of aemg_dist < tuning) kept in one direction."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aemg_dist", "preprocessing", "tuning")
# the lowest layer: what preprocessing may use of aemg_dist; it imports nothing of the project above itself
FOUNDATION = {"aemg_dist", "aemg_dist.errors", "aemg_dist.storage", "aemg_dist.config", "aemg_dist.parallel",
              "aemg_dist.validate"}
RAY_FREE = ("aemg_dist.train", "aemg_dist.artifacts", "aemg_dist.shards")  # and every aemg_dist.evaluation module


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: source file} of every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules `name` imports when it is imported: module-level `import` / `from` statements (also
    inside module-level if/try blocks, TYPE_CHECKING included), not those inside functions or classes."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit([*node.body, *node.orelse, *getattr(node, "finalbody", []),
                       *(s for h in getattr(node, "handlers", []) for s in h.body)])

    visit(ast.parse(path.read_text()).body)
    resolved = set()
    for target in targets:  # the module itself, else its nearest enclosing project package
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: module_imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports():
    for name in project_modules():
        importlib.import_module(name)


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_point_one_way():
    graph = import_graph()
    for name, imports in graph.items():
        if name in FOUNDATION:
            assert imports <= FOUNDATION, f"{name} (foundation) imports {sorted(imports - FOUNDATION)}"
        elif name.startswith("preprocessing"):
            above = {m for m in imports if not m.startswith("preprocessing") and m not in FOUNDATION}
            assert not above, f"{name} imports {sorted(above)}, above preprocessing"
        elif name.startswith("aemg_dist"):
            assert not any(m.startswith("tuning") for m in imports), f"{name} imports tuning at module level"


def test_stages_import_no_ray():
    """Ray is imported by the functions that orchestrate with it, never by importing the stage: `--no-ray`
    pretraining and the evaluation core run without it. One fresh interpreter imports them in turn and names the
    first that brings Ray in."""
    modules = [*RAY_FREE, *(m for m in project_modules() if m.startswith("aemg_dist.evaluation"))]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'ray' in sys.modules:\n"
            "        sys.exit(f'importing {name} imports ray')\n")
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr.strip().splitlines()[-1:]
