"""Software a test needs: skipped where it is missing on a developer's machine, a failure in CI.

CI (`CI=true`, set by `.ci/run` and by the usual CI services) installs everything the suite uses, so a missing
tool there is a broken CI set-up, and a skip would let the suite go green without the test ever running. Use
these instead of `pytest.importorskip` / `pytest.skip` for any software requirement (hardware, such as a CUDA GPU,
stays a plain skip):

    fal_client = requires.module("fal_client", "pip install -e '.[test]'")
    node = requires.executable("node", "install node >= 18")
    av = requires.module("av", "pip install av")                          # PyAV
    url = requires.environment("SEEDVR_TEST_POSTGRES_URL", "a PostgreSQL server for the storage tests")
    url = requires.environment("SEEDVR_TEST_S3_URL", "an S3-compatible server (e.g. MinIO)")
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str, hint: str) -> NoReturn:
    """Skip the test, or fail it in CI, because `what` is not available (`hint`: how to get it)."""
    message = f"{what} is not available ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI=true: a test may not skip for missing software", pytrace=False)
    pytest.skip(message)


def module(name: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name!r}", hint)


def executable(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"the program {name!r}", hint)
    return path


def environment(variable: str, hint: str) -> str:
    """The value of `variable`, the address of an external service the test uses (a database, an object store)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        missing(f"${variable}", hint)
    return value
