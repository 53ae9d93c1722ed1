"""The input model: fal's fields, defaults and validation errors in FastAPI's shape."""

from __future__ import annotations

import json

import pytest

from seedvr_local.server.schema import InputError, parse_input


def test_defaults_are_fal_defaults():
    params = parse_input(b'{"image_url": "https://example.com/a.png"}')
    assert params.model_dump() == {
        "image_url": "https://example.com/a.png",
        "upscale_mode": "factor",
        "upscale_factor": 2.0,
        "target_resolution": "1080p",
        "seed": None,
        "noise_scale": 0.1,
        "output_format": "jpg",
        "sync_mode": False,
    }


def test_unknown_fields_are_ignored():
    params = parse_input(b'{"image_url": "data:image/png;base64,AAAA", "prompt": "x", "color_fix": "lab"}')
    assert not hasattr(params, "prompt")


@pytest.mark.parametrize(
    "body, field, error_type",
    [
        ({}, "image_url", "missing"),
        ({"image_url": "ftp://example.com/a.png"}, "image_url", "value_error"),
        ({"image_url": "/etc/passwd"}, "image_url", "value_error"),
        ({"image_url": "https://x/a.png", "upscale_factor": 0.5}, "upscale_factor", "greater_than_equal"),
        ({"image_url": "https://x/a.png", "upscale_factor": 11}, "upscale_factor", "less_than_equal"),
        ({"image_url": "https://x/a.png", "upscale_mode": "zoom"}, "upscale_mode", "literal_error"),
        ({"image_url": "https://x/a.png", "target_resolution": "4k"}, "target_resolution", "literal_error"),
        ({"image_url": "https://x/a.png", "output_format": "jpeg"}, "output_format", "literal_error"),
        ({"image_url": "https://x/a.png", "seed": -1}, "seed", "greater_than_equal"),
        ({"image_url": "https://x/a.png", "seed": 2**31}, "seed", "less_than_equal"),
        ({"image_url": "https://x/a.png", "noise_scale": 1.5}, "noise_scale", "less_than_equal"),
        ({"image_url": "https://x/a.png", "sync_mode": "maybe"}, "sync_mode", "bool_parsing"),
        ({"image_url": 12}, "image_url", "string_type"),
    ],
)
def test_invalid_values_give_fastapi_style_errors(body, field, error_type):
    with pytest.raises(InputError) as info:
        parse_input(json.dumps(body).encode())
    errors = {tuple(item["loc"]): item for item in info.value.detail}
    assert ("body", field) in errors, info.value.detail
    assert errors[("body", field)]["type"] == error_type
    assert errors[("body", field)]["msg"]
    json.dumps(info.value.detail)  # always serialisable


def test_empty_body_is_an_empty_input():
    with pytest.raises(InputError) as info:
        parse_input(b"")
    assert info.value.detail[0]["loc"] == ["body", "image_url"]


@pytest.mark.parametrize(
    "raw", [b"{", b"[1, 2]", b"null", b'"text"', b"\xff\xfe", b'{"image_url": NaN}', b"[" * 100_000]
)
def test_garbage_bodies_are_422(raw):
    with pytest.raises(InputError) as info:
        parse_input(raw)
    assert info.value.detail and info.value.detail[0]["loc"][0] == "body"
    json.dumps(info.value.detail)


def test_non_finite_numbers_are_rejected_and_serialisable():
    with pytest.raises(InputError) as info:
        parse_input(b'{"image_url": "https://x/a.png", "upscale_factor": 1e400}')
    json.dumps(info.value.detail, allow_nan=False)


def test_echoed_data_uri_is_shortened():
    big = "data:image/png;base64," + "A" * 100_000
    with pytest.raises(InputError) as info:
        parse_input(json.dumps({"image_url": big, "upscale_factor": 99}).encode())
    assert len(json.dumps(info.value.detail)) < 2_000
