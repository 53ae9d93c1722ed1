"""Data-driven parity against the official golden data: every case under the reference directory."""

from __future__ import annotations

import pytest
import torch

from tests.parity import RUNNERS, runner_for
from tests.reference_data import discover_cases, reference_dir

CASES = discover_cases()

pytestmark = pytest.mark.reference


def test_reference_cases_found():
    assert CASES, f"no reference case found under {reference_dir()} (set SEEDVR_REFERENCE_DIR)"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_case(case):
    assert case.kind in RUNNERS, f"case {case.name}: unknown case kind {case.kind!r}"
    run = runner_for(case.kind)
    torch.manual_seed(0)  # runners must not depend on it; this only makes a failure reproducible
    with torch.no_grad():
        actual = run(case)
    failures = []
    for name, expected in case.expected.items():
        assert name in actual, f"case {case.name}: runner produced no {name!r}"
        got = actual[name]
        assert tuple(got.shape) == tuple(expected.shape), f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
        ok, err = case.tolerance(name).check(got, expected)
        if not ok:
            tol = case.tolerance(name)
            failures.append(f"{name}: max abs error {err:.3g} > atol {tol.atol} (rtol {tol.rtol})")
    assert not failures, f"case {case.name}: " + "; ".join(failures)
