"""Discovery and loading of the golden reference cases (format: ../shared/reference/README.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_dir() -> Path:
    """`$SEEDVR_REFERENCE_DIR`, else `../shared/reference` beside the repository; absolute, so that tests which
    copy the bundle or run pytest in another directory find the same cases."""
    env = os.environ.get("SEEDVR_REFERENCE_DIR")
    return Path(env).resolve() if env else REPO_ROOT.parent / "shared" / "reference"


class ReferenceDataError(AssertionError):
    """A reference case whose files do not hold what its case.json lists (a test must fail on it, not pass
    with nothing compared)."""


@dataclass
class Tolerance:
    atol: float
    rtol: float

    def check(self, actual: torch.Tensor, expected: torch.Tensor) -> tuple[bool, float]:
        """torch.allclose semantics; uint8 is compared as integers. Returns (ok, max abs error)."""
        if expected.dtype == torch.uint8:
            actual, expected = actual.to(torch.int64), expected.to(torch.int64)
        else:
            actual, expected = actual.to(torch.float64), expected.to(torch.float64)
        err = (actual - expected).abs()
        ok = bool((err <= self.atol + self.rtol * expected.abs()).all())
        return ok, float(err.max()) if err.numel() else 0.0


@dataclass
class ReferenceCase:
    path: Path
    meta: dict = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> "ReferenceCase":
        return cls(path=path, meta=json.loads((path / "case.json").read_text()))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def params(self) -> dict:
        return self.meta.get("params", {})

    def tolerance(self, tensor_name: str) -> Tolerance:
        tol = self.meta["tolerance"]
        tol = tol.get("per_tensor", {}).get(tensor_name, tol)
        return Tolerance(atol=float(tol["atol"]), rtol=float(tol["rtol"]))

    def _load(self, file: str) -> dict[str, torch.Tensor]:
        """A tensor file that must exist and be a safetensors file (possibly holding no tensor)."""
        path = self.path / file
        if not path.is_file():
            raise ReferenceDataError(f"case {self.name}: {file} is missing")
        if path.stat().st_size == 0:
            raise ReferenceDataError(f"case {self.name}: {file} is empty (0 bytes)")
        return load_file(str(path))

    def _load_listed(self, file: str, section: str) -> dict[str, torch.Tensor]:
        """A tensor file whose names, shapes and dtypes must be exactly those `case.json` lists under
        `tensors.<section>`, and which must hold at least one tensor: a truncated or emptied file fails here
        instead of leaving a test with nothing to compare."""
        tensors = self._load(file)
        listed = self.meta.get("tensors", {}).get(section, {})
        if not listed:
            raise ReferenceDataError(f"case {self.name}: case.json lists no {section} tensors")
        missing, extra = sorted(set(listed) - set(tensors)), sorted(set(tensors) - set(listed))
        if missing or extra:
            raise ReferenceDataError(f"case {self.name}: {file} lacks {missing} and has unlisted {extra}")
        for name, spec in listed.items():
            shape, dtype = tuple(tensors[name].shape), str(tensors[name].dtype).removeprefix("torch.")
            if shape != tuple(spec["shape"]) or dtype != spec["dtype"]:
                raise ReferenceDataError(
                    f"case {self.name}: {file}:{name} is {dtype} {shape}, case.json says {spec['dtype']} {spec['shape']}"
                )
        return tensors

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        """The module's state_dict; holds no tensor for kinds without a module (colorfix, preprocess)."""
        return self._load("weights.safetensors")

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self._load_listed("inputs.safetensors", "inputs")

    @cached_property
    def expected(self) -> dict[str, torch.Tensor]:
        return self._load_listed("expected.safetensors", "expected")

    def indexed(self, tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
        """`prefix_0, prefix_1, ...` in index order (the per-sample tensors of batch cases)."""
        out = []
        while f"{prefix}_{len(out)}" in tensors:
            out.append(tensors[f"{prefix}_{len(out)}"])
        return out


def discover_cases(root: Path | None = None) -> list[ReferenceCase]:
    root = root or reference_dir()
    cases_dir = root / "cases"
    if not cases_dir.is_dir():
        return []
    return [ReferenceCase.load(p) for p in sorted(cases_dir.iterdir()) if (p / "case.json").is_file()]


def assert_matches_expected(case: ReferenceCase, actual: dict[str, torch.Tensor]) -> None:
    """Every expected tensor of `case` (there is at least one, see `ReferenceCase.expected`) is in `actual`,
    with its shape, within the case's tolerance. All mismatches are reported together."""
    failures = []
    for name, expected in case.expected.items():
        if name not in actual:
            failures.append(f"{name}: not produced")
            continue
        got = actual[name]
        if tuple(got.shape) != tuple(expected.shape):
            failures.append(f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
            continue
        tol = case.tolerance(name)
        ok, err = tol.check(got, expected)
        if not ok:
            failures.append(f"{name}: max abs error {err:.3g} > atol {tol.atol} (rtol {tol.rtol})")
    assert not failures, f"case {case.name}: " + "; ".join(failures)


class MissingReferenceCase:
    """The one parameter of a reference test that found no case: the test fails with this message
    (tests/conftest.py), it is not skipped for an empty parameter list."""

    def __init__(self, what: str, root: Path | None = None):
        self.message = missing_reference_message(what, root)

    def __str__(self) -> str:
        return self.message


def missing_reference_message(what: str, root: Path | None = None) -> str:
    """One line: what was looked for, where, and how to point the tests elsewhere."""
    root = root or reference_dir()
    return (
        f"no {what} found under {root}: set SEEDVR_REFERENCE_DIR to a directory in the reference format "
        "(cases/<name>/case.json, manifests/), or place it at ../shared/reference beside the repository"
    )


def case_params(cases: list[ReferenceCase], what: str, marks=lambda case: []) -> list:
    """`pytest.param`s of `cases` for a test parametrised over them, each marked `reference` and `marks(case)`,
    named by case; a single failing parameter (MissingReferenceCase) when there is none."""
    import pytest

    if not cases:
        return [pytest.param(MissingReferenceCase(what), id="no-reference-case", marks=pytest.mark.reference)]
    return [pytest.param(case, id=case.name, marks=[pytest.mark.reference, *marks(case)]) for case in cases]


def first_case(cases: list[ReferenceCase], what: str) -> ReferenceCase:
    """The first of `cases`, or a ReferenceDataError naming where none was found."""
    if not cases:
        raise ReferenceDataError(missing_reference_message(what))
    return cases[0]
