"""Imports run one way, models <- pipeline <- upscaler <- server/CLI, without cycles.

The graph is read from the source (no module is imported): every `import` and `from ... import` anywhere in a
file, inside functions and `if TYPE_CHECKING:` blocks too, since a lazy import is still a dependency. Files map
to module names through pyproject's package-dir (kernels/ is seedvr_local.kernels, and so on).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "seedvr_local"

def _source_dirs() -> dict[str, Path]:
    """Package name -> folder, from pyproject (the package itself lives in its own folder)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {PACKAGE: ROOT / PACKAGE}
    dirs.update({name: ROOT / folder for name, folder in config.get("package-dir", {}).items()})
    return dirs


def module_files() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    dirs = _source_dirs()
    modules = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            dotted = ".".join((package, *parts))
            if parts and parts[-1] == "__init__":
                dotted = ".".join((package, *parts[:-1]))
            # a sub-folder that is mapped elsewhere (none today) would be listed twice: keep the mapped one
            modules.setdefault(dotted, path)
    return modules


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The module `name` refers to: itself, or the closest package above it that is a module of ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _lazy_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes that do not run when the module is imported: function bodies, `if TYPE_CHECKING:`."""
    lazy = set()
    for node in ast.walk(tree):
        type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or type_checking:
            lazy.update(id(inner) for inner in ast.walk(node) if inner is not node)
    return lazy


def _imports(module: str, path: Path, modules: set[str]) -> dict[str, bool]:
    """module -> whether it is imported when `module` is (True), or only later or for type checkers (False)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lazy = _lazy_nodes(tree)
    is_package = path.name == "__init__.py"
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules) if name.split(".")[0] == PACKAGE else None
            if target is not None and target != module:
                found[target] = found.get(target, False) or id(node) not in lazy
    return found


def import_graph(at_import_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules it imports (`at_import_only`: those that run when it is imported)."""
    files = module_files()
    modules = set(files)
    graph = {}
    for module, path in files.items():
        edges = _imports(module, path, modules)
        graph[module] = {target for target, eager in edges.items() if eager or not at_import_only}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _in(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


M = PACKAGE + "."
MODELS, KERNELS, WEIGHTS, SERVER = M + "models", M + "kernels", M + "weights", M + "server"
PIPELINE, UPSCALER, CLI, CLI_UPSCALE = M + "pipeline", M + "upscaler", M + "cli", M + "cli_upscale"
FRONT_ENDS = (SERVER, CLI, CLI_UPSCALE, M + "cli_video")

#: (what, modules it applies to, modules they must not reach, directly or through others)
LAYER_RULES = [
    ("the kernels", (KERNELS,), (MODELS, WEIGHTS, PIPELINE, UPSCALER, *FRONT_ENDS)),
    ("the models", (MODELS,), (WEIGHTS, PIPELINE, UPSCALER, M + "memory_planner", M + "compilation", *FRONT_ENDS)),
    ("weight loading", (WEIGHTS,), (PIPELINE, UPSCALER, M + "memory_planner", *FRONT_ENDS)),
    ("the pipeline", (PIPELINE,), (UPSCALER, WEIGHTS, *FRONT_ENDS)),
    ("the upscaler", (UPSCALER,), FRONT_ENDS),
    ("the server", (SERVER,), (CLI, CLI_UPSCALE, M + "cli_video")),
    ("the upscale command", (CLI_UPSCALE,), (SERVER, CLI)),
    ("the evaluation", (M + "evaluation",), (*FRONT_ENDS, M + "cli_eval")),
]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_every_folder_and_lazy_imports(graph):
    """The walk itself: mapped folders, function-level imports, `from pkg import module`."""
    assert {MODELS, KERNELS, WEIGHTS, SERVER, SERVER + ".routers.health"} <= set(graph)
    assert SERVER + ".cli" in graph[CLI]  # imported inside build_parser and main
    assert CLI_UPSCALE in graph[CLI]
    assert KERNELS in graph[MODELS + ".nadit"]  # `from seedvr_local import kernels`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


@pytest.mark.parametrize("what, sources, forbidden", LAYER_RULES, ids=[rule[0] for rule in LAYER_RULES])
def test_layers_import_downwards_only(graph, what, sources, forbidden):
    wrong = {
        module: sorted(target for target in reachable(graph, module) if _in(target, *forbidden))
        for module in graph
        if _in(module, *sources)
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}, f"{what} reach up"


def test_only_the_front_ends_import_the_server(graph):
    wrong = sorted(
        (module, target)
        for module, targets in graph.items()
        if not _in(module, *FRONT_ENDS)
        for target in targets
        if _in(target, SERVER)
    )
    assert wrong == []


def test_only_the_cli_knows_both_commands(graph):
    """seedvr_local.cli dispatches to `upscale` and `serve`; nothing else imports both, nor the CLI."""
    importers = {module for module, targets in graph.items() if CLI in targets}
    assert importers == set()
    both = [m for m, targets in graph.items() if CLI_UPSCALE in targets and _in(SERVER + ".cli", *targets)]
    assert both == [CLI]


def test_package_inits_load_only_their_own_package():
    """Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first: those must not load anything outside their
    package when imported (re-exports from elsewhere load lazily), or importing one light module (the server's
    request schema, say) drags in the app, torch and the model. A leaf module (one that imports nothing of this
    project, such as `seedvr_local.devices` for the kernels' GPU check) drags nothing in and is allowed."""
    eager = import_graph(at_import_only=True)
    leaves = {module for module, targets in eager.items() if not targets}
    wrong = {
        package: sorted(t for t in reachable(eager, package) if not _in(t, package) and t not in leaves)
        for package, path in module_files().items()
        if path.name == "__init__.py"
    }
    assert {package: targets for package, targets in wrong.items() if targets} == {}


def test_weights_import_the_models_at_module_top():
    """Loading weights depends on the models plainly (no import inside a function reaching back into the
    package), so the dependency is visible where the file starts."""
    late = []
    for module, path in module_files().items():
        if not _in(module, WEIGHTS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                    late.append(f"{module}: {node.module}")
    assert late == []
