"""The package's floor plan: imports run one way. The engine (data, models, knowledge, teacher,
cache, trainer) never imports the decision layer (env, rewards, policies, agents), neither imports
the benchmark (tree, tables, oracle, table studies), nothing imports the programs
(``kdenv.commands``, the top floor; not even another program), the statistics and the error base
sit below everything, and no module imports, even lazily inside a function, one
that imports it back. The scripts in agents/ import only kdenv."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdenv"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kdenv_imports(path: Path) -> set[str]:
    """Every kdenv module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdenv"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules imported by name
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("kdenv"))
    return found


@pytest.fixture(scope="module")
def graph():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in kdenv_imports(path) if target in modules and target != name}
            for name, path in modules.items()}


@pytest.mark.parametrize("lower, higher", [
    ("kdenv.engine", ("kdenv.decision", "kdenv.benchmark", "kdenv.commands")),
    ("kdenv.decision", ("kdenv.benchmark", "kdenv.commands")),
    ("kdenv.benchmark", ("kdenv.commands",)),
    ("kdenv.config", ("kdenv.engine", "kdenv.decision", "kdenv.benchmark", "kdenv.commands")),
    ("kdenv.stats", ("kdenv.engine", "kdenv.decision", "kdenv.benchmark", "kdenv.commands")),
    ("kdenv.errors", ("kdenv.",)),
])
def test_lower_floors_never_import_higher_ones(graph, lower, higher):
    upward = {(name, target) for name, targets in graph.items() if name.startswith(lower)
              for target in targets if target.startswith(higher)}
    assert not upward


def test_no_program_imports_another(graph):
    """A program (``kdenv.commands.<name>``) calls the library, never another program: what two
    programs share lives in the package below them."""
    between = {(name, target) for name, targets in graph.items() if name.startswith("kdenv.commands.")
               for target in targets if target.startswith("kdenv.commands.")}
    assert not between


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path, node, target]
            if target not in state and (cycle := visit(target, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_imports_form_no_cycle(graph):
    # A package's __init__ may re-export its own modules: an edge from a member into its own
    # package is a re-export, not a loop between modules.
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    assert find_cycle(edges) is None


def test_the_cycle_check_can_fail():
    """A lazy import that closes a loop (as token_saliency's once did) is found."""
    assert find_cycle({"kdenv.engine.a": {"kdenv.engine.b"}, "kdenv.engine.b": {"kdenv.engine.a"}}) == [
        "kdenv.engine.a", "kdenv.engine.b", "kdenv.engine.a"]


def test_the_scripts_are_thin_and_import_only_kdenv():
    """agents/*.py hold no library code: no sys.path games, no sibling imports, only a kdenv program."""
    scripts = sorted((PACKAGE.parent / "agents").glob("*.py"))
    assert scripts
    for script in scripts:
        tree = ast.parse(script.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported <= {"sys", "kdenv"}, (script.name, imported)
        assert "sys.path" not in script.read_text(), script.name
        functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not functions, (script.name, [node.name for node in functions])
