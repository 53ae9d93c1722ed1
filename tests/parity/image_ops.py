"""Runners for `colorfix` and `preprocess` cases: the colour fixes and the official input transform."""

from __future__ import annotations

import torch

from seedvr_local.colorfix import adain_color_fix, lab_color_fix, wavelet_reconstruction, wavelet_reconstruction_numz
from seedvr_local.preprocess import area_resize_hw, official_transform
from tests.reference_data import ReferenceCase


def run_colorfix_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    params = case.params
    method = params["method"]
    content, style = case.inputs["content"], case.inputs["style"]
    if method == "wavelet":
        out = wavelet_reconstruction(content, style, levels=params["levels"])
    elif method == "wavelet_numz":
        out = wavelet_reconstruction_numz(content, style, levels=params["levels"])
    elif method == "adain":
        out = adain_color_fix(content, style, eps=params["eps"])
    elif method == "lab":
        out = lab_color_fix(content, style, luminance_weight=params["luminance_weight"])
    else:
        raise ValueError(f"case {case.name}: unknown colour fix method {method!r}")
    return {"out": out}


def run_preprocess_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    params = case.params
    image = case.inputs["image_uint8"].permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]
    # The case records the sizes the official code chose; ours must agree before the pixels can.
    height, width = image.shape[-2:]
    resized_hw = area_resize_hw(height, width, params["res_h"], params["res_w"])
    expected_hw = tuple(params["resized_hw"])
    assert resized_hw == expected_hw, f"area resize gave {resized_hw}, the official code {expected_hw}"
    out = official_transform(image, params["res_h"], params["res_w"])
    assert list(out["cropped"].shape[-2:]) == list(params["cropped_hw"])
    return {"resized": out["resized"][0], "cropped": out["cropped"][0], "normalized": out["normalized"]}
