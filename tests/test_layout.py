"""The package's shape: the runtime never imports docs tooling, benchmarks or tests, and has no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llm"
OUTSIDE = ("tools", "bench", "tests")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function bodies too), outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for imported in imports(path):
            # `from llm.x import y`: y is a module of package llm.x, or a name defined in module llm.x
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def test_the_runtime_package_imports_no_docs_tooling_benchmarks_or_tests():
    offenders = {
        module_name(p): sorted(i for i in imports(p) if i.split(".")[0] in OUTSIDE) for p in PACKAGE.rglob("*.py")
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    return cycles


def test_the_runtime_package_has_no_import_cycle_between_modules():
    edges = graph()
    assert len(edges) > 20 and "llm.resume" in edges["llm.train"]  # the walk sees the package
    assert find_cycles(edges) == []


def test_the_pipeline_stages_depend_one_way():
    """Collapsed to llm.data, llm.sampler, llm.training and the top-level modules: still no cycle."""

    def stage(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2])

    collapsed: dict[str, set[str]] = {}
    for name, targets in graph().items():
        collapsed.setdefault(stage(name), set()).update(stage(t) for t in targets if stage(t) != stage(name))
    assert find_cycles(collapsed) == []


def test_training_imports_no_ingestion_stack():
    """The LightningModule (and the checkpoint format it writes) load without the readers of documents."""
    code = (
        "import sys, llm.training.module\n"
        "print(sorted(m for m in sys.modules if m in ('llm.data.pipeline', 'llm.data.reader', 'llm.data.tokens')"
        " or m.split('.')[0] == 'unstructured'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
