"""The memory package's modules import one another without a circle, lazy (function-level) imports included:
state <- embedders <- index, config <- bank, and attach over all of them. Read from the source (an AST walk), so an
import hidden in a function body counts as much as one at the top."""

import ast
from pathlib import Path

import hf_seqmodels.memory as memory

PACKAGE = "hf_seqmodels.memory"


def _imports(path: Path) -> set[str]:
    """The sibling modules ``path`` imports, anywhere in it: ``from .x import``, ``from . import x``,
    ``import hf_seqmodels.memory.x``, ``from hf_seqmodels.memory.x import``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.startswith(PACKAGE + "."):
                names = [node.module[len(PACKAGE) + 1 :]]
            elif node.level == 0 and node.module == PACKAGE:
                names = [a.name for a in node.names]
            else:
                names = []
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name[len(PACKAGE) + 1 :].split(".")[0] for a in node.names if a.name.startswith(PACKAGE + ".")
            )
    return found


def _graph() -> dict[str, set[str]]:
    folder = Path(memory.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    return {m: _imports(folder / f"{m}.py") & modules for m in sorted(modules)}


def _cycle(graph):
    """A cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_lazy_import_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    src = Path(memory.__file__).parent / "embedders.py"
    assert "state" in _imports(src)  # the walk sees the package's own imports


def test_memory_modules_import_each_other_without_a_circle():
    graph = _graph()
    assert {"attach", "bank", "config", "embedders", "index", "state"} <= set(graph)
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    assert graph["state"] == set()  # the per-model state is the bottom of the package
