"""Runner for `dit3b` / `dit7b` cases: one NaDiT forward over a batch of samples."""

from __future__ import annotations

import torch

from seedvr_local.models.nadit import DiTConfig, NaDiT
from tests.reference_data import ReferenceCase


def build_case_model(case: ReferenceCase) -> NaDiT:
    """The case's tiny NaDiT with its weights loaded strictly by name."""
    variant = case.kind.removeprefix("dit")
    model = NaDiT.from_config(DiTConfig.from_dict(case.config, variant))
    model.load_state_dict(case.weights, strict=True)
    return model.eval()


def run_dit_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    model = build_case_model(case)
    vids = case.indexed(case.inputs, "vid")
    txts = case.indexed(case.inputs, "txt")
    outs = model.forward_samples(vids, txts, case.inputs["timestep"])
    return {f"out_{i}": out for i, out in enumerate(outs)}
