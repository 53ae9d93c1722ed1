"""Data-driven parity against the official golden data: every case under the reference directory."""

from __future__ import annotations

import pytest
import torch

from tests.parity import RUNNERS, runner_for
from tests.reference_data import assert_matches_expected, discover_cases, reference_dir

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
    assert_matches_expected(case, actual)
