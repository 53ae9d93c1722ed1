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
    """`$SEEDVR_REFERENCE_DIR`, else `../shared/reference` beside the repository."""
    env = os.environ.get("SEEDVR_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


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
        path = self.path / file
        return load_file(str(path)) if path.exists() and path.stat().st_size > 0 else {}

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        return self._load("weights.safetensors")

    @cached_property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self._load("inputs.safetensors")

    @cached_property
    def expected(self) -> dict[str, torch.Tensor]:
        return self._load("expected.safetensors")

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
