"""The house (issue 22): the package's modules import one another one way only, and train.py stays readable.

Every `import` of a reptile_exp module counts, at module level or inside a function: an import moved into a
function to dodge a circle is still an edge of that circle.
"""

import ast
from pathlib import Path

from conftest import LONGEST_FIRST, ROOT

PACKAGE = ROOT / "reptile_exp"


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules that path (module `name`) imports, anywhere in the file; `from . import x` names x."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the reptile_exp modules it imports, for the package under root."""
    paths = sorted((root / "reptile_exp").rglob("*.py"))
    modules = {_module(p, root) for p in paths}
    return {_module(p, root): _imports(p, _module(p, root), modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of more than one module (or a module importing itself)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert "reptile_exp.errors" in graph and graph["reptile_exp.errors"] == set()  # the ground floor
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    """The check itself, on a planted package: a function-level import that closes a circle is found."""
    (tmp_path / "reptile_exp").mkdir()
    (tmp_path / "reptile_exp" / "__init__.py").write_text("")
    (tmp_path / "reptile_exp" / "a.py").write_text("from .b import f\n")
    (tmp_path / "reptile_exp" / "b.py").write_text("def f():\n    from . import a\n")
    assert cycles(import_graph(tmp_path)) == [["reptile_exp.a", "reptile_exp.b", "reptile_exp.a"]]


def test_the_errors_are_on_the_ground_floor_and_the_entry_point_on_top():
    graph = import_graph()
    assert not graph["reptile_exp.config"] - {"reptile_exp.errors"}  # the schema builds on the errors only
    importers_of_train = [m for m, imported in graph.items() if "reptile_exp.train" in imported]
    assert importers_of_train == []  # nothing in the package imports the entry point
    assert {"reptile_exp.cli", "reptile_exp.config_checks"} <= graph["reptile_exp.train"]


def test_train_py_tells_algorithm_2_in_under_300_lines():
    assert len((PACKAGE / "train.py").read_text().splitlines()) < 300


def test_the_files_run_first_exist():
    """conftest.LONGEST_FIRST names test files (a renamed one would silently lose its place at the front)."""
    missing = [name for name in LONGEST_FIRST if not (ROOT / "tests" / name).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"
