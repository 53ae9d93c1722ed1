"""The parity tests cannot pass with nothing compared: a case whose tensor files are missing, empty or short
of what its case.json lists fails, and so does `pytest -m reference` on a copy of the bundle with one
emptied expected file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.reference_data import (
    REPO_ROOT,
    ReferenceCase,
    ReferenceDataError,
    discover_cases,
    missing_reference_message,
    reference_dir,
)

pytestmark = pytest.mark.reference

CASES = discover_cases()


def _case_with_several_tensors() -> ReferenceCase:
    listed = lambda case, section: case.meta.get("tensors", {}).get(section, {})  # noqa: E731
    case = next((c for c in CASES if len(listed(c, "inputs")) > 1 and len(listed(c, "expected")) > 1), None)
    assert case is not None, missing_reference_message("reference case with several inputs and expected tensors")
    return case


def _linked_copy(root: Path, copy: Path) -> Path:
    """`copy`: a copy of the directory `root` made of symlinks (cheap), whose files can be replaced one by one."""
    for source in root.rglob("*"):
        target = copy / source.relative_to(root)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    return copy


def _replace(path: Path, write) -> None:
    path.unlink()
    write(path)


# Ways to spoil a tensor file: truncate it to nothing, leave a valid file with no tensor, drop one tensor.
SPOILERS = {
    "zero_bytes": lambda path, tensors: path.write_bytes(b""),
    "no_tensors": lambda path, tensors: save_file({}, str(path)),
    "one_tensor_missing": lambda path, tensors: save_file(dict(list(tensors.items())[1:]), str(path)),
    "file_missing": lambda path, tensors: None,
}


def test_every_case_directory_holds_a_case():
    """A directory under cases/ without case.json would be skipped by discovery, so it is an error."""
    cases_dir = reference_dir() / "cases"
    assert cases_dir.is_dir(), missing_reference_message("cases/ directory")
    strays = [p.name for p in cases_dir.iterdir() if p.is_dir() and not (p / "case.json").is_file()]
    assert not strays, f"case directories without case.json: {strays}"


@pytest.mark.parametrize("spoil", SPOILERS)
@pytest.mark.parametrize("file", ["inputs", "expected"])
def test_a_spoiled_tensor_file_is_an_error(tmp_path, spoil, file):
    case = _case_with_several_tensors()
    copy = _linked_copy(case.path, tmp_path / case.name)
    path = copy / f"{file}.safetensors"
    tensors = load_file(str(path))
    _replace(path, lambda p: SPOILERS[spoil](p, tensors))
    with pytest.raises(ReferenceDataError, match=case.name):
        getattr(ReferenceCase.load(copy), file)


def test_a_wrongly_shaped_tensor_is_an_error(tmp_path):
    case = _case_with_several_tensors()
    copy = _linked_copy(case.path, tmp_path / case.name)
    path = copy / "expected.safetensors"
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = tensors[name].flatten()[:-1].clone()
    _replace(path, lambda p: save_file(tensors, str(p)))
    with pytest.raises(ReferenceDataError, match=name):
        ReferenceCase.load(copy).expected


def test_the_intact_cases_load():
    assert CASES, missing_reference_message("reference case")
    for case in CASES:
        assert case.inputs and case.expected, case.name


def _parity_run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEEDVR_REFERENCE_DIR": str(root)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "reference", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_pytest_m_reference_fails_on_a_bundle_with_one_emptied_expected_file(tmp_path):
    """The parity suite run as a user would, on a copied bundle (only the spoiled case, to keep it quick: the
    other cases are the same files as the real bundle's)."""
    assert CASES, missing_reference_message("reference case")
    root = _linked_copy(reference_dir(), tmp_path / "reference")
    victim = CASES[len(CASES) // 2]
    path = root / "cases" / victim.name / "expected.safetensors"
    _replace(path, lambda p: p.write_bytes(b""))
    proc = _parity_run(root, "tests/test_reference_parity.py", "-k", victim.name)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"test_reference_case[{victim.name}]" in proc.stdout, proc.stdout[-3000:]
    assert "1 failed" in proc.stdout, proc.stdout[-3000:]


def test_assert_matches_expected_reports_wrong_and_missing_tensors():
    from tests.reference_data import assert_matches_expected

    case = _case_with_several_tensors()
    actual = {name: tensor.clone() for name, tensor in case.expected.items()}
    assert_matches_expected(case, actual)
    first = next(name for name, tensor in actual.items() if tensor.is_floating_point())
    second = next(name for name in actual if name != first)
    actual[first] = actual[first] + 2 * case.tolerance(first).atol
    del actual[second]
    with pytest.raises(AssertionError) as error:
        assert_matches_expected(case, actual)
    assert f"{first}: max abs error" in str(error.value) and f"{second}: not produced" in str(error.value)
