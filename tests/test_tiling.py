"""Exact VAE tiling: tiled encode/decode equals the untiled one (1e-4 in float32) with the built-in tiny VAE (and
with a reference case's weights in the `reference` run), for ragged tile grids, every store scale, images and
clips, and through the restore pipeline."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from seedvr_local import kernels
from seedvr_local.models import vae_blocks, vae_tiling
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.models.vae_tiling import VAETiling, attention_in_place_, required_regions, segments, tile_grid
from seedvr_local.weights.tiny import build_tiny_models
from tests.parity.restore import run_restore_case
from tests.parity.vae import build_case_model
from tests.reference_data import REPO_ROOT as REPO
from tests.reference_data import assert_matches_expected, case_params, discover_cases, first_case

ATOL = 1e-4
# Any case set in the reference format: the tests pick cases by kind, never by name.
VAE_CASES = [case for case in discover_cases() if case.kind in ("vae_encode", "vae_decode")]
RESTORE_CASES = [case for case in discover_cases() if case.kind == "restore"]


def _reference_vae() -> VideoAutoencoder:
    """The tiny VAE of a VAE reference case, with its (trained-like) weights."""
    return build_case_model(first_case(VAE_CASES, "vae_encode/vae_decode reference case"))


def _frames(case) -> int:
    """Input frames of a restore case (its `video` is `[3, T, H, W]`)."""
    return case.inputs["video"].shape[1]


def _seedvr2_vae() -> VideoAutoencoder:
    """The full-size SeedVR2 VAE architecture without weights: enough for the tiling geometry."""
    with torch.device("meta"):
        return VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())


def _tiny_vae() -> VideoAutoencoder:
    """The VAE of the built-in tiny model (`--model tiny`)."""
    return build_tiny_models().vae


@pytest.fixture(scope="module", params=[pytest.param("vae_case", marks=pytest.mark.reference), "tiny_model"])
def vae(request) -> VideoAutoencoder:
    if request.param == "vae_case":
        return _reference_vae()
    return _tiny_vae()


def _video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1


def _latent(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, frames, height, width, generator=generator)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def untiled(vae) -> dict[str, torch.Tensor]:
    """Untiled results for a 48 x 64 image (a 6 x 8 latent)."""
    with torch.no_grad():
        x, z = _video(1, 48, 64), _latent(1, 6, 8)
        mean, logvar = vae.encode(x)
        return {"x": x, "z": z, "mean": mean, "logvar": logvar, "sample": vae.decode(z)}


# 48 x 64 pixels: tiles of 24 split the 8 latent columns 3 + 3 + 2, tiles of 16 give a 3 x 4 grid.
# The deep-recomputation tilings (store_scale 4 and 8) take minutes on 2 CPU cores: slow, out of the default run.
SLOW = pytest.mark.slow
GRIDS = [
    pytest.param(VAETiling(16, 1), id="tile16_s1"),
    pytest.param(VAETiling(24, 8), id="tile24_s8", marks=SLOW),
    pytest.param(VAETiling(32, 2), id="tile32_s2"),
    pytest.param(VAETiling(24, 4), id="tile24_s4", marks=SLOW),
]


@torch.no_grad()
@pytest.mark.parametrize("tiling", GRIDS)
def test_tiled_image_encode_and_decode_equal_untiled(vae, untiled, tiling):
    assert len(tile_grid((48, 64), tiling.core)) > 1
    mean, logvar = vae.encode(untiled["x"], tiling)
    assert _max_err(mean, untiled["mean"]) < ATOL and _max_err(logvar, untiled["logvar"]) < ATOL
    assert _max_err(vae.decode(untiled["z"], tiling), untiled["sample"]) < ATOL


@torch.no_grad()
@pytest.mark.parametrize(
    "tiling", [pytest.param(VAETiling(16, 1), id="tile16_s1"), pytest.param(VAETiling(16, 8), id="tile16_s8", marks=SLOW)]
)
def test_tiled_clips_equal_untiled(vae, tiling):
    # 9 frames -> 3 latent frames; the untiled VAE slices them in time, the tiles take all frames at once.
    x, z = _video(9, 40, 24), _latent(3, 5, 3)
    mean, logvar = vae.encode(x)
    tiled_mean, tiled_logvar = vae.encode(x, tiling)
    assert tiled_mean.shape == (1, 16, 3, 5, 3)
    assert _max_err(tiled_mean, mean) < ATOL and _max_err(tiled_logvar, logvar) < ATOL
    decoded = vae.decode(z, tiling)
    assert decoded.shape == (1, 3, 9, 40, 24)
    assert _max_err(decoded, vae.decode(z)) < ATOL


@torch.no_grad()
def test_offloaded_cuts_and_a_single_tile_give_the_same_result():
    vae = _tiny_vae()
    z = _latent(2, 6, 5)
    expected = vae.decode(z)
    assert _max_err(vae.decode(z, VAETiling(16, 1, offload=True)), expected) < ATOL
    assert _max_err(vae.decode(z, VAETiling(64, 1)), expected) < ATOL  # one tile: the blocks run whole


@pytest.mark.slow  # bf16 convolutions are slow on most CPUs
@torch.no_grad()
def test_tiling_in_bfloat16_is_as_accurate_as_untiled():
    """In bf16 the tiles round at other places than the untiled run: both must stay as close to float32."""
    vae = _tiny_vae()
    x, z = _video(1, 32, 32), _latent(1, 4, 4)
    reference = vae.encode(x)[0], vae.decode(z)
    half = _tiny_vae().to(torch.bfloat16)
    untiled = [_max_err(half.encode(x)[0].float(), reference[0]), _max_err(half.decode(z).float(), reference[1])]
    for tiling in (VAETiling(16, 1), VAETiling(16, 8)):
        tiled = [_max_err(half.encode(x, tiling)[0].float(), reference[0]),
                 _max_err(half.decode(z, tiling).float(), reference[1])]  # fmt: skip
        assert all(t <= 2 * u for t, u in zip(tiled, untiled)), (tiling, tiled, untiled)


@pytest.mark.parametrize("case", case_params(VAE_CASES, "vae_encode/vae_decode reference case"))
def test_tiled_vae_matches_the_official_reference(case, monkeypatch):
    """The reference cases themselves, run tiled: the same tolerance as the untiled parity test."""
    _tile_every_vae_call(case, monkeypatch)
    _check_vae_case(case)


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("case", case_params(VAE_CASES, "vae_encode/vae_decode reference case"))
def test_channels_last_vae_matches_the_official_reference(case, tiled, monkeypatch):
    """The reference cases on channels-last activations (`vae.channels_last`, for cuDNN): the same tolerance."""
    prepare = VideoAutoencoder._prepare
    monkeypatch.setattr(
        VideoAutoencoder, "_prepare", lambda self, x: prepare(self, x).contiguous(memory_format=torch.channels_last_3d)
    )
    if tiled:
        _tile_every_vae_call(case, monkeypatch)
    _check_vae_case(case)


def _tile_every_vae_call(case, monkeypatch) -> None:
    tiling = VAETiling(16, 8) if case.kind == "vae_encode" else VAETiling(24, 1)
    monkeypatch.setattr(VideoAutoencoder, "encode", _with_tiling(VideoAutoencoder.encode, tiling))
    monkeypatch.setattr(VideoAutoencoder, "decode", _with_tiling(VideoAutoencoder.decode, tiling))


def _check_vae_case(case) -> None:
    from tests.parity.vae import run_decode_case, run_encode_case

    with torch.no_grad():
        out = (run_encode_case if case.kind == "vae_encode" else run_decode_case)(case)
    assert_matches_expected(case, out)


def _with_tiling(method, tiling):
    def call(self, x, tiling_arg=None):
        return method(self, x, tiling)

    return call


@pytest.mark.parametrize(
    "case", case_params(RESTORE_CASES, "restore reference case", marks=lambda c: [SLOW] if _frames(c) > 1 else [])
)
def test_tiled_restore_matches_the_official_reference(case, monkeypatch):
    """The whole restore with a tiled VAE lands on the reference outputs, as the untiled one does."""
    from seedvr_local.pipeline import RestorationPipeline

    original = RestorationPipeline.restore
    tiling = VAETiling(24, 1) if _frames(case) == 1 else VAETiling(24, 8)

    def tiled_restore(self, *args, **kwargs):
        return original(self, *args, **kwargs, vae_tiling=tiling)

    monkeypatch.setattr(RestorationPipeline, "restore", tiled_restore)
    with torch.no_grad():
        out = run_restore_case(case)
    assert_matches_expected(case, out)


# ---------------------------------------------------------------------------------- the test can fail


@torch.no_grad()
def test_per_tile_statistics_or_missing_halos_would_be_caught(monkeypatch):
    """The two mistakes exact tiling avoids make errors far above the tolerance with these weights."""
    vae = _tiny_vae()
    z, tiling = _latent(1, 6, 8), VAETiling(24, 1)
    expected = vae.decode(z)

    with monkeypatch.context() as patch:  # each norm sees one tile's statistics, as naive tiling does
        patch.setattr(kernels, "merge_moments", lambda parts: parts[-1])
        assert _max_err(vae.decode(z, tiling), expected) > 1e-2

    original_region = vae_tiling._input_region

    def no_halo(op, need, size_in):
        region = original_region(op, need, size_in)
        return need if op.kind == "conv" else region

    with monkeypatch.context() as patch:
        patch.setattr(vae_tiling, "_input_region", no_halo)
        with pytest.raises(AssertionError, match="does not cover"):
            vae.decode(z, tiling)


# ------------------------------------------------------------------------------------ through the kernels


def _vae_outputs() -> dict[str, torch.Tensor]:
    vae = _tiny_vae()
    x = torch.rand(1, 3, 1, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tiling = VAETiling(16, 1)
    with torch.no_grad():
        mean, _ = vae.encode(x)
        tiled_mean, _ = vae.encode(x, tiling=tiling)
        return {"mean": mean, "tiled_mean": tiled_mean, "decoded": vae.decode(mean),
                "tiled_decoded": vae.decode(mean, tiling=tiling)}  # fmt: skip


def run_vae_with_triton(path: str) -> None:
    """Subprocess body (TRITON_INTERPRET=1): `_vae_outputs` through the Triton kernels, and which ran."""
    from seedvr_local.kernels import ops

    os.environ[kernels.backend.ENV_VAR] = "triton"  # the models built here run the Triton kernels
    launched: set[str] = set()
    real_module = ops._triton_module
    ops._triton_module = lambda name: launched.add(name) or real_module(name)
    torch.save({**_vae_outputs(), "launched": sorted(launched)}, path)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (optional)")
def test_tiled_vae_through_the_triton_kernels(tmp_path):
    """On a GPU the norms of the tiled VAE run the Triton GroupNorm kernels with whole-frame statistics: run here
    by Triton's CPU interpreter in a subprocess (TRITON_INTERPRET must be set before triton is imported)."""
    out = tmp_path / "triton.pt"
    code = "import sys; from tests.test_tiling import run_vae_with_triton as r; r(sys.argv[1])"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    triton_out = torch.load(out)
    assert triton_out.pop("launched") == ["groupnorm"]
    for name, expected in _vae_outputs().items():
        assert _max_err(triton_out[name], expected) < ATOL, name


# -------------------------------------------------------------------------------------------- attention


@torch.no_grad()
def test_attention_in_query_chunks_is_exact(monkeypatch):
    torch.manual_seed(0)
    attention = vae_blocks.FrameAttention(16, 4).eval()
    for param in attention.parameters():
        param.add_(0.3 * torch.randn_like(param))
    x = torch.randn(1, 16, 2, 6, 7) * 3 + 1
    tokens = attention.group_norm(x).permute(0, 2, 3, 4, 1).reshape(2, 1, 42, 16)
    full = torch.nn.functional.scaled_dot_product_attention(
        attention.to_q(tokens), attention.to_k(tokens), attention.to_v(tokens)
    )
    expected = x + attention.to_out[0](full).reshape(1, 2, 6, 7, 16).permute(0, 4, 1, 2, 3)
    monkeypatch.setattr(vae_blocks, "ATTENTION_CHUNK_BYTES", 3 * 2 * 4 * 2 * 42)  # 3 queries at a time
    assert len(vae_blocks.query_chunks(42, torch.empty(2, 1, 42, 16))) == 14
    assert _max_err(attention(x), expected) < 1e-5
    assert _max_err(attention_in_place_(attention, x.clone(), torch.device("cpu")), expected) < 1e-5


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size, core", [((72, 104), 16), ((64, 48), 64), ((520, 1040), 512), ((8, 8), 8)])
def test_tile_grid_partitions_the_image_into_balanced_aligned_tiles(size, core):
    tiles = tile_grid(size, core)
    covered = torch.zeros(size, dtype=torch.int32)
    for r0, r1, c0, c1 in tiles:
        assert all(v % 8 == 0 for v in (r0, r1, c0, c1))
        assert 0 < r1 - r0 <= core and 0 < c1 - c0 <= core
        covered[r0:r1, c0:c1] += 1
    assert bool((covered == 1).all())
    heights = {r1 - r0 for r0, r1, _, _ in tiles}
    assert max(heights) - min(heights) <= 8  # no thin edge tile


def test_regions_grow_by_the_receptive_field_and_stop_at_the_border():
    vae = _seedvr2_vae()
    (segment,) = [s for s in segments(vae.tile_blocks("decode"), (8, 8), (64, 64), 1) if len(s.ops) == 6][:1]
    # one ResNet at 1/8 scale: two 3x3 convs, so a 2-pixel halo on each inner side
    regions = required_regions(segment.ops, segment.sizes, (2, 4, 0, 3))
    assert regions[0] == (0, 6, 0, 5)
    assert regions[-1] == (2, 4, 0, 3)


def test_store_scale_decides_where_full_frame_tensors_are_kept():
    vae = _seedvr2_vae()
    blocks = vae.tile_blocks("decode")
    image = (64, 64)
    scales = {s: [image[0] // seg.sizes[-1][0] for seg in segments(blocks, (8, 8), image, s)] for s in (1, 8)}
    assert scales[8] == [8, 8, 8, 8, 8, 8, 1]  # conv_in+res0, attn, res1, up0 res x3, then the rest at once
    assert len(scales[1]) > len(scales[8]) and scales[1][-1] == 1
    assert min(scales[8][:-1]) == 8


def test_bad_tilings_are_refused():
    with pytest.raises(ValueError, match="at least 8"):
        VAETiling(4)
    with pytest.raises(ValueError, match="store_scale"):
        VAETiling(64, 3)
    assert VAETiling(100).core == 104


# ------------------------------------------------------------------------------------------------ structure


def _source_tree(module: str):
    import ast
    import importlib.util

    return ast.parse(open(importlib.util.find_spec(module).origin).read())


def test_the_tiling_helper_does_not_import_the_vae_model():
    """vae.py imports the tiling helper; the helper must not import it back (no cycle)."""
    import ast

    imported = set()
    for node in ast.walk(_source_tree("seedvr_local.models.vae_tiling")):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "seedvr_local.models.vae_blocks" in imported  # the check sees imports
    assert "seedvr_local.models.vae" not in imported


VAE_INTERNALS = {"encoder", "decoder", "down_blocks", "up_blocks", "mid_block", "resnets", "downsamplers",
                 "upsamplers", "quant_conv", "post_quant_conv", "temporal_ratio", "stride", "padding"}  # fmt: skip


@pytest.mark.parametrize(
    "module, asks",
    [("seedvr_local.pipeline", "latent_shape"), ("seedvr_local.memory_cost", "tile_blocks"),
     ("seedvr_local.memory_planner", "costs"), ("benchmarks.memory", "latent_shape")],
)  # fmt: skip
def test_only_the_vae_model_reads_its_internals(module, asks):
    """The pipeline and the memory model ask the VAE for its geometry and tile programs instead."""
    import ast

    read = {node.attr for node in ast.walk(_source_tree(module)) if isinstance(node, ast.Attribute)}
    assert asks in read  # the check sees attribute reads
    assert not read & VAE_INTERNALS, sorted(read & VAE_INTERNALS)
