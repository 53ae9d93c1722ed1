"""The parity tests hold for any case set in the reference format, not only for the cases the public set happens
to hold: they run again, unchanged, on a second set of a different shape made here from the public one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.reference_data import REPO_ROOT, reference_dir


@pytest.mark.reference
@pytest.mark.timeout(3600)
def test_the_reference_tests_pass_on_another_case_set(tmp_path):
    source = reference_dir()
    cases = sorted(path for path in (source / "cases").iterdir() if (path / "case.json").is_file())
    # every other case: a set of another shape (some kinds lose their video or batch cases, some may lose every case)
    subset = cases[::2]
    assert subset and (len(subset) < len(cases) or len(cases) == 1), "a set to subset needs a case"
    other = tmp_path / "reference"
    kept = {path.name for path in subset}
    for path in source.rglob("*"):  # directories as they are, each file a link to the public one
        relative = path.relative_to(source)
        if relative.parts[0] == "cases" and len(relative.parts) > 1 and relative.parts[1] not in kept:
            continue
        target = other / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "reference",
         "--deselect", f"{__name__.replace('.', '/')}.py::{test_the_reference_tests_pass_on_another_case_set.__name__}"],
        cwd=REPO_ROOT, env={**os.environ, "SEEDVR_REFERENCE_DIR": str(other)}, capture_output=True, text=True,
        timeout=3500,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]
