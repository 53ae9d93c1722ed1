from __future__ import annotations

from pathlib import Path

import pytest

from tests.reference_data import reference_dir


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The complete tiny SeedVR2 bundle of the reference data (a real weights directory)."""
    path = reference_dir() / "tiny_model"
    assert path.is_dir(), f"tiny model bundle not found at {path} (set SEEDVR_REFERENCE_DIR)"
    return path


@pytest.fixture(scope="session")
def tiny_upscaler(tiny_bundle):
    from seedvr_local.upscaler import Upscaler

    return Upscaler.from_weights_dir(tiny_bundle, device="cpu")
