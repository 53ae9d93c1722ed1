"""Reading checkpoints in every format, validating them, and loading weights directories (tiny bundle)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedvr_local.weights import bundle as bundle_module
from seedvr_local.weights.bundle import (
    MissingWeightsError,
    WeightsDirError,
    inspect_weights_dir,
    load_models,
    validate_dit_shapes,
)
from seedvr_local.weights.checkpoint import CheckpointFormatError, read_dtypes, read_shapes, read_state_dict
from seedvr_local.weights.manifest import CheckpointMismatchError, load_manifest, validate_state_dict

FP8 = torch.float8_e4m3fn
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": FP8}
PREFIX = "model.diffusion_model."
DEPRECATED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.fixture(scope="module")
def tiny_dit(tiny_bundle) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_bundle / "seedvr2_ema_3b.safetensors"))


@pytest.fixture(scope="module")
def tiny_vae(tiny_bundle) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_bundle / "ema_vae.safetensors"))


def _stored(state_dict: dict[str, torch.Tensor], dtype: torch.dtype, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + key: value.to(dtype).contiguous() for key, value in state_dict.items()}


def _write(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path


def _through(tensor: torch.Tensor, storage: torch.dtype, target: torch.dtype = torch.float32) -> torch.Tensor:
    return tensor.to(storage).to(target)


def _make_bundle(
    tiny_bundle: Path,
    root: Path,
    dit: dict[str, torch.Tensor],
    vae: dict[str, torch.Tensor],
    dit_name: str = "seedvr2_ema_3b.safetensors",
    vae_name: str = "ema_vae.safetensors",
) -> Path:
    """A copy of the tiny bundle whose DiT/VAE files are the given state dicts under the given names.

    Its config.json keeps the tiny architecture but not the file names, so the files are found by name.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = json.loads((tiny_bundle / "config.json").read_text())
    del config["files"]
    (root / "config.json").write_text(json.dumps(config))
    for name in ("pos_emb.pt", "neg_emb.pt"):
        shutil.copy(tiny_bundle / name, root / name)
    _write(root / dit_name, dit)
    _write(root / vae_name, vae)
    return root


# ---------------------------------------------------------------------------------------------- reading files


@pytest.mark.parametrize(
    "suffix, storage, prefix",
    [
        (".pth", "fp32", ""),
        (".pth", "fp16", PREFIX),
        (".safetensors", "fp32", ""),
        (".safetensors", "fp16", ""),
        (".safetensors", "bf16", PREFIX),
        (".safetensors", "fp8", ""),
        (".safetensors", "fp8", PREFIX),
    ],
)
def test_read_state_dict_every_format(tmp_path, tiny_dit, suffix, storage, prefix):
    dtype = STORAGE_DTYPES[storage]
    path = _write(tmp_path / f"dit{suffix}", _stored(tiny_dit, dtype, prefix))
    assert read_shapes(path) == {key: tuple(value.shape) for key, value in tiny_dit.items()}
    assert set(read_dtypes(path).values()) == {dtype}

    as_stored = read_state_dict(path)
    assert {value.dtype for value in as_stored.values()} == {dtype}
    for target in (torch.float32, torch.bfloat16):
        loaded = read_state_dict(path, target)
        assert list(loaded) == list(as_stored) and set(loaded) == set(tiny_dit)
        for key, value in tiny_dit.items():
            assert loaded[key].dtype == target
            assert torch.equal(loaded[key], _through(value, dtype, target)), key


def test_read_state_dict_strips_wrapper_prefixes_and_unwraps_nested_dicts(tmp_path, tiny_dit):
    nested = {"state_dict": _stored(tiny_dit, torch.float32, "module."), "epoch": 3}
    torch.save(nested, tmp_path / "wrapped.pth")
    loaded = read_state_dict(tmp_path / "wrapped.pth")
    assert set(loaded) == set(tiny_dit)
    # a key that merely starts like a prefix is kept when the other keys lack it
    mixed = {"module.extra": torch.zeros(1), **tiny_dit}
    assert "module.extra" in read_state_dict(_write(tmp_path / "mixed.safetensors", mixed))


def test_tensors_read_from_mixed_dtype_files_are_aligned(tmp_path, tiny_dit):
    # fp8 neighbours put fp32 data at odd offsets in the file; the reader must not hand out such views
    mixed = {key: value.to(FP8) if key.endswith("rope.rope.freqs") else value for key, value in tiny_dit.items()}
    loaded = read_state_dict(_write(tmp_path / "mixed.safetensors", mixed))
    assert all(tensor.data_ptr() % 64 == 0 for tensor in loaded.values())
    assert all(torch.equal(loaded[key], mixed[key].float()) for key in loaded if loaded[key].dtype == torch.float32)


def test_read_state_dict_skips_keys_unread(tmp_path, tiny_dit):
    path = _write(tmp_path / "dit.safetensors", tiny_dit)
    loaded = read_state_dict(path, skip=lambda key: key.endswith("rope.rope.freqs"))
    assert set(loaded) == {key for key in tiny_dit if not key.endswith("rope.rope.freqs")}


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    (tmp_path / "weird.onnx").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    for name, match in [
        ("junk.safetensors", "not a readable safetensors"),
        ("junk.pth", "not a readable PyTorch"),
        ("weird.onnx", "unknown checkpoint format"),
        ("list.pth", "not a state_dict"),
    ]:
        with pytest.raises(CheckpointFormatError, match=match) as info:
            read_state_dict(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_shapes(tmp_path / "missing.pth")


class Opaque:
    """An arbitrary Python object: `weights_only` loading must refuse to unpickle it."""


def test_pickled_python_objects_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "meta": Opaque()}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointFormatError, match="objects.pth: holds Python objects other than tensors"):
        read_state_dict(tmp_path / "objects.pth")
    torch.save({"weight": torch.zeros(1), "step": 3}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointFormatError, match="extra.pth: entries that are not tensors: step"):
        read_state_dict(tmp_path / "extra.pth")


def test_vae_deprecated_attention_names_are_renamed(tmp_path, tiny_vae):
    old = {}
    for key, value in tiny_vae.items():
        for new_name, old_name in DEPRECATED.items():
            if ".mid_block.attentions.0." in key and f".{new_name}." in key:
                key = key.replace(f".{new_name}.", f".{old_name}.")
        old[key] = value
    assert sum(".query." in key for key in old) == 4  # encoder and decoder, weight and bias
    for suffix in (".pth", ".safetensors"):
        path = _write(tmp_path / f"vae{suffix}", _stored(old, torch.float16))
        assert read_shapes(path) == {key: tuple(value.shape) for key, value in tiny_vae.items()}
        loaded = read_state_dict(path, torch.float32)
        assert set(loaded) == set(tiny_vae)
        for key, value in tiny_vae.items():
            assert torch.equal(loaded[key], _through(value, torch.float16)), key


# ------------------------------------------------------------------------------------------------ validation


def test_validation_names_missing_unexpected_and_misshaped_keys(tiny_dit):
    expected = {key: value.shape for key, value in tiny_dit.items()}
    broken = dict(tiny_dit)
    del broken["vid_in.proj.bias"]
    broken["blocks.0.attn.extra.weight"] = torch.zeros(3)
    broken["txt_in.weight"] = torch.zeros(40, 31)
    with pytest.raises(CheckpointMismatchError) as info:
        validate_state_dict(broken, expected, "DiT checkpoint x.pth")
    error = info.value
    assert isinstance(error, ValueError)
    assert error.missing == ["vid_in.proj.bias"]
    assert error.unexpected == ["blocks.0.attn.extra.weight"]
    assert error.mismatched == {"txt_in.weight": ((40, 31), (40, 32))}
    message = str(error)
    assert "\n" not in message and message.startswith("DiT checkpoint x.pth does not match")
    for part in ("1 missing key (vid_in.proj.bias)", "1 unexpected key (blocks.0.attn.extra.weight)",
                 "txt_in.weight [40, 31] instead of [40, 32]"):
        assert part in message, message
    validate_state_dict(tiny_dit, expected, "the same")  # passes


def test_validation_from_shapes_alone_against_the_full_size_manifests():
    manifest = load_manifest("3b")
    on_meta = {key: torch.empty(shape, device="meta") for key, shape in manifest.shapes.items()}
    validate_state_dict(on_meta, manifest, "meta tensors")
    validate_state_dict({key: list(shape) for key, shape in manifest.shapes.items()}, manifest, "plain shapes")
    without_rope = {key: shape for key, shape in manifest.shapes.items() if not key.endswith("rope.rope.freqs")}
    validate_state_dict(without_rope, manifest, "no rope buffers", optional=["rope.rope.freqs"])
    with pytest.raises(CheckpointMismatchError, match="32 missing keys"):
        validate_state_dict(without_rope, manifest, "no rope buffers")


def test_long_mismatch_lists_are_truncated_with_counts():
    seven = load_manifest("7b").shapes
    with pytest.raises(CheckpointMismatchError) as info:
        validate_state_dict(seven, load_manifest("3b"), "seedvr2_ema_3b.pth")
    message = str(info.value)
    assert "\n" not in message and len(message) < 2000
    assert f"{len(info.value.unexpected)} unexpected keys" in message and "more" in message
    assert len(info.value.missing) + len(info.value.mismatched) > 100


def test_a_dit_file_of_the_other_variant_is_named(tmp_path):
    with pytest.raises(WeightsDirError, match="holds the 7B model"):
        validate_dit_shapes(load_manifest("7b").shapes, "3b", "DiT checkpoint seedvr2_ema_3b.pth")
    with pytest.raises(CheckpointMismatchError):
        validate_dit_shapes({"foo": (1,)}, "3b", "DiT checkpoint seedvr2_ema_3b.pth")


# ------------------------------------------------------------------------------------------- weights layout


def test_inspect_the_tiny_bundle(tiny_bundle):
    info = inspect_weights_dir(tiny_bundle)
    assert info.variant == "3b" and not info.sharp
    assert info.dit_path == tiny_bundle / "seedvr2_ema_3b.safetensors"
    assert info.vae_path == tiny_bundle / "ema_vae.safetensors"
    assert info.pos_emb_path == tiny_bundle / "pos_emb.pt" and info.neg_emb_path == tiny_bundle / "neg_emb.pt"
    assert (info.scaling_factor, info.shifting_factor) == (0.9152, 0.0)
    assert info.custom_dit and info.custom_vae and info.dit_config_dict["vid_dim"] == 40
    assert info.dit_config.vid_dim == 40 and info.dit_config.variant == "3b"


def _touch(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")
    return directory


@pytest.mark.parametrize(
    "names, variant, dit, vae, sharp",
    [
        (["seedvr2_ema_3b.pth", "ema_vae.pth"], "3b", "seedvr2_ema_3b.pth", "ema_vae.pth", False),
        (["seedvr2_ema_7b_fp16.safetensors", "ema_vae_fp16.safetensors"], "7b",
         "seedvr2_ema_7b_fp16.safetensors", "ema_vae_fp16.safetensors", False),
        (["seedvr2_ema_7b_sharp_fp8_e4m3fn.safetensors", "ema_vae.safetensors"], "7b",
         "seedvr2_ema_7b_sharp_fp8_e4m3fn.safetensors", "ema_vae.safetensors", True),
        (["seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors", "seedvr2_ema_7b_fp8_e4m3fn.safetensors",
          "ema_vae.pth"], "7b", "seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors", "ema_vae.pth", False),
        (["seedvr2_ema_7b.pth", "seedvr2_ema_7b_sharp.pth", "seedvr2_ema_7b_fp16.safetensors",
          "ema_vae_fp16.safetensors", "ema_vae.pth"], "7b", "seedvr2_ema_7b.pth", "ema_vae.pth", False),
    ],
)
def test_inspect_official_file_names(tmp_path, names, variant, dit, vae, sharp):
    info = inspect_weights_dir(_touch(tmp_path, *names, "pos_emb.pt"))
    assert (info.variant, info.dit_path.name, info.vae_path.name, info.sharp) == (variant, dit, vae, sharp)
    assert info.neg_emb_path is None and info.config_path is None and not info.custom_dit
    assert info.dit_config_dict == load_manifest(variant).config
    assert info.vae_config_dict == load_manifest("ema_vae").config
    assert (info.scaling_factor, info.shifting_factor) == (0.9152, 0.0)


def test_incomplete_directories_say_what_is_missing_and_where(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist") as info:
        inspect_weights_dir(tmp_path / "nowhere")
    assert "nowhere" in str(info.value) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(MissingWeightsError) as info:
        inspect_weights_dir(_touch(tmp_path / "partial", "seedvr2_ema_3b.pth", "notes.txt"))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "partial") in message
    assert "ema_vae.pth" in message and "pos_emb.pt" in message and "seedvr2_ema_3b.pth or" not in message


def test_ambiguous_or_bad_directories(tmp_path):
    both = _touch(tmp_path / "both", "seedvr2_ema_3b.pth", "seedvr2_ema_7b.pth", "ema_vae.pth", "pos_emb.pt")
    with pytest.raises(WeightsDirError, match="both 3B and 7B"):
        inspect_weights_dir(both)
    (both / "config.json").write_text(json.dumps({"files": {"dit": "seedvr2_ema_7b.pth"}}))
    assert inspect_weights_dir(both).variant == "7b"

    custom = _touch(tmp_path / "custom", "my_dit.safetensors", "ema_vae.pth", "pos_emb.pt")
    (custom / "config.json").write_text(json.dumps({"files": {"dit": "my_dit.safetensors"}}))
    with pytest.raises(WeightsDirError, match="dit_variant"):
        inspect_weights_dir(custom)
    (custom / "config.json").write_text(json.dumps({"files": {"dit": "gone.pth"}}))
    with pytest.raises(MissingWeightsError, match="gone.pth"):
        inspect_weights_dir(custom)
    (custom / "config.json").write_text("\n")  # numz's repo ships an empty config.json: no overrides
    _touch(custom, "seedvr2_ema_3b_fp16.safetensors")
    assert inspect_weights_dir(custom).dit_path.name == "seedvr2_ema_3b_fp16.safetensors"
    (custom / "config.json").write_text(json.dumps({"dit_variant": "3b", "dit": {"vid_dim": 8, "colour": "red"}}))
    with pytest.raises(WeightsDirError, match=r'"dit" of .*config.json: .*colour'):
        inspect_weights_dir(custom).dit_config
    (custom / "config.json").write_text("{not json")
    with pytest.raises(WeightsDirError, match="not valid JSON"):
        inspect_weights_dir(custom)


# ----------------------------------------------------------------------------------------------- loading models


def _loaded_dtype(key: str, target: torch.dtype) -> torch.dtype:
    """The DiT's AdaSingle offsets load in float32 whatever the target: the official bf16 run adds them in
    float32 (spec 2.11). Everything else loads in the target dtype."""
    return torch.float32 if {"ada", "vid_out_ada"} & set(key.split(".")) else target


def _assert_loaded(models, dit: dict, vae: dict, storage: torch.dtype, target: torch.dtype) -> None:
    for model, source in ((models.dit, dit), (models.vae, vae)):
        assert not model.training
        state = model.state_dict()
        assert set(state) == set(source)
        for key, value in source.items():
            if key.endswith("rope.rope.freqs"):
                # computed by the model in fp32, equal to the official fp32 values whatever the file stores
                assert state[key].dtype == torch.float32 and torch.equal(state[key], value), key
            else:
                want = _loaded_dtype(key, target)
                assert state[key].dtype == want and torch.equal(state[key], _through(value, storage, want)), key
        assert all(not p.requires_grad for p in model.parameters())
        assert all(t.device.type == "cpu" for t in state.values())


def test_load_the_tiny_bundle(tiny_bundle, tiny_dit, tiny_vae):
    models = load_models(tiny_bundle)
    _assert_loaded(models, tiny_dit, tiny_vae, torch.float32, torch.float32)
    pos = torch.load(tiny_bundle / "pos_emb.pt", weights_only=True)
    assert models.pos_emb.dtype == torch.float32 and torch.equal(models.pos_emb, pos.float())
    assert models.neg_emb is not None and models.neg_emb.shape == (10, 32)
    assert models.weights_dir.variant == "3b"


@pytest.mark.parametrize(
    "storage, dit_name, vae_name, prefix",
    [
        ("fp32", "seedvr2_ema_3b.pth", "ema_vae.pth", ""),
        ("fp16", "seedvr2_ema_3b_fp16.safetensors", "ema_vae_fp16.safetensors", PREFIX),
        ("bf16", "seedvr2_ema_3b_bf16.safetensors", "ema_vae.safetensors", ""),
        ("fp8", "seedvr2_ema_3b_fp8_e4m3fn.safetensors", "ema_vae_fp16.safetensors", PREFIX),
    ],
)
@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_load_models_from_every_format(tmp_path, tiny_bundle, tiny_dit, tiny_vae, storage, dit_name, vae_name,
                                       prefix, target):
    dtype = STORAGE_DTYPES[storage]
    vae_dtype = torch.float16 if "fp16" in vae_name else (dtype if dtype != FP8 else torch.float32)
    root = _make_bundle(tiny_bundle, tmp_path / "w", _stored(tiny_dit, dtype, prefix),
                        _stored(tiny_vae, vae_dtype), dit_name, vae_name)
    models = load_models(root, dtype=target)
    for model, source, stored in ((models.dit, tiny_dit, dtype), (models.vae, tiny_vae, vae_dtype)):
        state = model.state_dict()
        assert set(state) == set(source)
        for key, value in source.items():
            if not key.endswith("rope.rope.freqs"):
                want = _loaded_dtype(key, target)
                assert state[key].dtype == want and torch.equal(state[key], _through(value, stored, want)), key
            else:
                assert torch.equal(state[key], value), key
    assert models.pos_emb.dtype == target


@pytest.mark.parametrize("broken_part", ["dit", "vae"])
def test_a_mismatched_checkpoint_fails_before_any_data_is_read(
    tmp_path, tiny_bundle, tiny_dit, tiny_vae, monkeypatch, broken_part
):
    dit, vae = dict(tiny_dit), dict(tiny_vae)
    if broken_part == "dit":
        del dit["vid_in.proj.bias"]
        dit["blocks.0.attn.extra.weight"] = torch.zeros(3)
        dit["txt_in.weight"] = torch.zeros(40, 31)
        file, keys = "seedvr2_ema_3b.safetensors", ("vid_in.proj.bias", "blocks.0.attn.extra.weight", "txt_in.weight")
    else:
        del vae["decoder.conv_out.bias"]
        vae["encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3, 2)
        file, keys = "ema_vae.safetensors", ("decoder.conv_out.bias", "encoder.conv_in.weight [4, 3, 3, 3, 2]")
    root = _make_bundle(tiny_bundle, tmp_path / "w", dit, vae)

    def no_reading(*args, **kwargs):
        raise AssertionError("tensor data read before validation")

    monkeypatch.setattr(bundle_module, "read_state_dict", no_reading)
    with pytest.raises(CheckpointMismatchError) as info:
        load_models(root)
    message = str(info.value)
    assert str(root / file) in message and "\n" not in message
    for key in keys:
        assert key in message, message


def test_a_text_embedding_of_the_wrong_width_is_refused(tmp_path, tiny_bundle, tiny_dit, tiny_vae):
    root = _make_bundle(tiny_bundle, tmp_path / "w", tiny_dit, tiny_vae)
    torch.save(torch.zeros(7, 5120, dtype=torch.bfloat16), root / "pos_emb.pt")
    with pytest.raises(CheckpointFormatError, match=r"\[L, 32\].*\[7, 5120\]"):
        load_models(root)


def test_fp8_stored_rope_frequencies_do_not_change_the_output(tmp_path, tiny_bundle, tiny_dit, tiny_vae):
    freqs = {key for key in tiny_dit if key.endswith("rope.rope.freqs")}
    lossy = {key: value.to(FP8) if key in freqs else value for key, value in tiny_dit.items()}
    assert any(not torch.equal(lossy[key].float(), tiny_dit[key]) for key in freqs)  # fp8 really is lossy here
    exact = load_models(_make_bundle(tiny_bundle, tmp_path / "exact", tiny_dit, tiny_vae)).dit
    rounded = load_models(_make_bundle(tiny_bundle, tmp_path / "fp8", lossy, tiny_vae)).dit

    generator = torch.Generator().manual_seed(0)
    vid = torch.randn(33, 2, 6, 8, generator=generator)
    txt = torch.randn(5, 32, generator=generator)
    with torch.no_grad():
        expected = exact.forward_samples([vid], [txt], 1000.0)[0]
        actual = rounded.forward_samples([vid], [txt], 1000.0)[0]
    assert torch.equal(actual, expected)
