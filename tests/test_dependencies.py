"""`pip install seedvr-local` without extras is enough to serve, upscale, run workers and download: every package
the shipped code imports is the standard library's, ours, or installed by the main `dependencies` (themselves or
what they require), and nothing imports what only the `test` extra installs. Read from the source, so an import
inside a function counts too; then every shipped module is imported with the test-only packages hidden."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_import_graph import PACKAGE, ROOT, import_graph, module_files

#: Packages the shipped code may import that `pip install seedvr-local` does not install, each with the
#: modules allowed to import it when they are imported (its other imports must sit inside functions), and why.
OPTIONAL_IMPORTS: dict[str, tuple[str, str]] = {
    "triton": (
        f"{PACKAGE}.kernels.triton_",  # the kernel modules, which kernels/ops.py imports only for the Triton backend
        "the `triton` extra: the fused GPU kernels, chosen only when it is installed",
    ),
    "flash_attn": ("", "an optional attention backend, used when installed"),
    "pyiqa": ("", "the `eval` extra: `seedvr-local eval`'s pretrained metrics, each skipped with its reason without it"),
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions `pip install` brings for `requirements`: them and what they require, recursively
    (the extras they name included, their other extras not)."""
    found: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            listed = requires(name) or []
        except PackageNotFoundError:
            continue  # not installed here: what it requires is unknown, and nothing can import it either
        for text in listed:
            inner = Requirement(text)
            extras = ["", *requirement.extras]
            if inner.marker is None or any(inner.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(inner)
    return found


@functools.cache
def _third_party_imports() -> dict[str, dict[str, bool]]:
    """Top-level package imported -> {module importing it: whether it does so when that module is imported}."""
    imports: dict[str, dict[str, bool]] = {}
    for module, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_functions = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - {PACKAGE} - set(sys.stdlib_module_names):
                by_module = imports.setdefault(top, {})
                by_module[module] = by_module.get(module, False) or id(node) not in in_functions
    return imports


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's file list: seconds


def _distributions(package: str) -> set[str]:
    return {canonicalize_name(name) for name in _packages_distributions().get(package, [])}


def test_every_import_is_installed_by_the_main_dependencies():
    installed = _installed_by(_project()["dependencies"])
    missing = []
    for package, modules in sorted(_third_party_imports().items()):
        if package in OPTIONAL_IMPORTS:
            continue
        distributions = _distributions(package)
        assert distributions, f"{package} (imported by {sorted(modules)}) is not installed here"
        if not distributions & installed:
            missing.append(f"{package} ({', '.join(sorted(distributions))}) imported by {', '.join(sorted(modules))}")
    assert not missing, "not installed by `pip install seedvr-local`: " + "; ".join(missing)


def test_optional_packages_are_imported_only_where_allowed():
    imports = _third_party_imports()
    eager = import_graph(at_import_only=True)
    for package, (allowed_prefix, _why) in OPTIONAL_IMPORTS.items():
        at_import = [module for module, eagerly in imports.get(package, {}).items() if eagerly]
        stray = [module for module in at_import if not (allowed_prefix and module.startswith(allowed_prefix))]
        assert not stray, f"{stray} import {package} when imported: import it inside the function that needs it"
        for module in at_import:  # and no module imports those when it is imported
            importers = [source for source, targets in eager.items() if module in targets]
            assert not importers, f"{importers} import {module} (which needs {package}) when imported"


def test_no_shipped_module_needs_a_test_only_package():
    """Every module of the package imports with the packages only the `test` extra installs hidden (as after
    `pip install seedvr-local`), and the hiding works: the check imports one of them first."""
    test_only = _installed_by(_project()["optional-dependencies"]["test"]) - _installed_by(_project()["dependencies"])
    hidden = sorted(
        {package for package, names in _packages_distributions().items() if test_only & set(map(canonicalize_name, names))}
    )
    assert {"moto", "schemathesis", "pytest", "fal_client"} <= set(hidden)
    # Not the modules that need an optional package: the source check above covers their other imports.
    optional = tuple(prefix for prefix, _why in OPTIONAL_IMPORTS.values() if prefix)
    modules = sorted(module for module in module_files() if not module.startswith(optional))
    code = f"""
import importlib, sys
for name in {hidden!r}:
    sys.modules[name] = None  # as if not installed: an import fails, importlib.util.find_spec says None
try:
    import pytest
except ImportError:
    pass
else:
    raise SystemExit("the hiding does not work")
for module in {modules!r}:
    importlib.import_module(module)
print("imported", len({modules!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"imported {len(modules)}"


@pytest.mark.parametrize("package", sorted(OPTIONAL_IMPORTS))
def test_each_optional_package_is_still_imported_somewhere(package):
    """An entry for a package nothing imports any more would allow it silently: remove it instead."""
    assert package in _third_party_imports()
