"""The memory planner: the model's shape, plan choice, up-front refusal, the out-of-memory retry, and the
`vae_tile` option through the Python API and the CLI."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local import memory_cost, memory_planner
from seedvr_local.cli import build_parser
from seedvr_local.device_memory import available_memory
from seedvr_local.memory_cost import VAEMemoryModel, calibration
from seedvr_local.memory_planner import GiB, MemoryPlanError, MemoryPlanner, RunOutOfMemoryError
from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.pipeline import RestorationPipeline
from seedvr_local.upscaler import UpscaleOptions


def _seedvr2_vae() -> VideoAutoencoder:
    """The full-size VAE without weights: its geometry is all the memory model reads."""
    with torch.device("meta"):
        return VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())


@pytest.fixture(scope="module")
def planner() -> MemoryPlanner:
    """SeedVR2 3B in bf16 (models on "meta"), planned for the CPU (the estimates do not depend on the device)."""
    with torch.device("meta"):
        dit = NaDiT.from_config(DiTConfig.seedvr2_3b())
    pipeline = RestorationPipeline(dit.to(torch.bfloat16), _seedvr2_vae().to(torch.bfloat16), torch.empty(0))
    return MemoryPlanner.for_pipeline(pipeline, "cpu")


def _decode_bytes(planner: MemoryPlanner, side: int, tiling: VAETiling | None) -> int:
    return planner.costs.estimate(side, side, 1, tiling)["decode"]


def _output_bytes(side: int) -> int:
    return 3 * side * side * 2  # the decoded image in bf16


def test_untiled_memory_grows_with_the_image_and_recomputation_keeps_it_flat(planner):
    untiled = [_decode_bytes(planner, s, None) for s in (1024, 2048, 4096)]
    assert untiled[1] > 3.5 * untiled[0] and untiled[2] > 3.5 * untiled[1]  # proportional to the pixels
    growth = {}
    for scale in (1, 8):
        sizes = [_decode_bytes(planner, s, VAETiling(512, scale)) for s in (1024, 4096)]
        growth[scale] = sizes[1] - sizes[0] - (_output_bytes(4096) - _output_bytes(1024))
    untiled_growth = untiled[2] - untiled[0]
    assert growth[1] < 0.6 * untiled_growth  # full-frame block outputs: about half of an untiled run
    assert growth[8] < 0.06 * untiled_growth  # only 1/8-resolution buffers grow
    # What still grows with store scale 8 is the exact whole-frame attention at 1/8 resolution: the cut, its keys
    # and values, 3 x 512 channels / 64 = 24 values per output pixel.
    per_pixel = growth[8] / (4096**2 - 1024**2) / 2
    assert per_pixel <= 24 + 1


def test_smaller_tiles_need_less_memory(planner):
    sizes = [_decode_bytes(planner, 4096, VAETiling(tile, 8)) for tile in (1024, 512, 256, 128)]
    assert sizes == sorted(sizes, reverse=True)


def test_plan_prefers_untiled_then_least_recomputation_then_the_largest_tile(planner):
    estimate = planner.costs.estimate(3840, 2160, 1, None)
    roomy = planner.plan(3840, 2160, available=_available_for(planner, max(estimate.values())))
    assert roomy.vae_tiling is None
    for fraction in (0.7, 0.4, 0.2):
        budget = int(fraction * max(estimate.values()))
        plan = planner.plan(3840, 2160, available=_available_for(planner, budget))
        assert plan.vae_tiling is not None and plan.peak_bytes <= budget
        earlier = planner.candidates("auto")[1 : planner.candidates("auto").index(plan.vae_tiling)]
        assert all(max(planner.costs.estimate(3840, 2160, 1, t).values()) > budget for t in earlier)


def test_a_fixed_tile_size_is_kept(planner):
    plan = planner.plan(4096, 4096, vae_tile=256, available=100 * GiB)
    assert plan.vae_tiling.core == 256


def test_an_impossible_request_is_refused_naming_the_largest_size_that_fits(planner):
    budget = planner.costs.estimate(2048, 1024, 1, VAETiling(128, 8))["dit"] * 3  # the DiT phase limits it
    with pytest.raises(MemoryPlanError) as info:
        planner.plan(8192, 4096, available=_available_for(planner, budget))
    message = str(info.value)
    assert "\n" not in message and "largest 2:1 output that fits is" in message
    width, height = info.value.largest
    assert f"{width}x{height}" in message and abs(width - 2 * height) <= 16
    assert planner.fits(width, height, budget=budget)
    assert not planner.fits(width + 32, height + 16, budget=budget)
    assert 2048 <= width < 8192


def test_a_huge_request_on_a_large_device_is_refused_at_once(planner, monkeypatch):
    # With 80 GB the largest output is tens of thousands of pixels a side: hundreds of tiles an axis to model.
    # This took minutes when every tiling was modelled (and every tile, not every tile row and column) even
    # though the DiT phase alone, which tiling cannot shrink, could never fit.
    walks = []
    real_walk = memory_cost._walk_bytes
    monkeypatch.setattr(memory_cost, "_walk_bytes", lambda *a, **k: walks.append(1) or real_walk(*a, **k))
    with pytest.raises(MemoryPlanError, match="for the dit phase") as info:
        planner.plan(200_000, 200_000, available=80 * GiB)
    # Counted, not timed (a shared machine): hundreds of layer walks; modelling every tile of a 200k-pixel side
    # would take tens of thousands.
    assert len(walks) < 2000
    width, height = info.value.largest
    assert planner.fits(width, height, budget=info.value.available)


def test_nothing_fits_in_no_memory(planner):
    with pytest.raises(MemoryPlanError, match="nothing fits") as info:
        planner.plan(1024, 1024, available=0)
    assert info.value.largest is None


def test_fallback_needs_at_most_half_or_is_the_most_frugal(planner):
    plan = planner.plan(2048, 2048, available=200 * GiB)
    retry = planner.fallback(plan)
    assert retry.vae_tiling is not None and retry.peak_bytes <= plan.peak_bytes // 2
    frugal = planner.candidates("auto")[-1]
    last = memory_planner.RunPlan(2048, 2048, 1, frugal, planner.costs.estimate(2048, 2048, 1, frugal), plan.budget)
    assert planner.fallback(last) is None


def test_available_memory_is_positive():
    assert available_memory("cpu") > 0


def _tiling(name: str) -> VAETiling | None:
    return None if name == "untiled" else VAETiling(*map(int, name.split("/")))


def test_calibration_measurements_are_reproduced():
    """Every measurement that backs the model is predicted within the stated error."""
    series = calibration()["cpu"]
    entries = series["measurements"]
    assert {(e["side"], e["tiling"]) for e in entries} >= {(s, t) for s in (512, 1024) for t in ("untiled", "512/1")}
    model = VAEMemoryModel(_seedvr2_vae())
    under, over = series["tolerance"]["under"], series["tolerance"]["over"]
    for e in entries:
        predicted = model.bytes(e["phase"], 1, e["side"], e["side"], _tiling(e["tiling"]), 4)
        assert (1 - under) * e["peak_bytes"] <= predicted <= (1 + over) * e["peak_bytes"], (e, predicted)


def test_cuda_measurements_are_never_under_predicted():
    """On a GPU the CPU-fitted model may waste memory but must not promise memory a run then exceeds."""
    series = calibration()["cuda"]
    assert series["measurements"]
    model = VAEMemoryModel(_seedvr2_vae(), "cuda")
    for e in series["measurements"]:
        predicted = model.bytes(e["phase"], 1, e["side"], e["side"], _tiling(e["tiling"]), 2)
        assert e["peak_bytes"] <= predicted <= series["at_most"] * e["peak_bytes"], (e, predicted)


# ------------------------------------------------------------------------------------- through the API


def _image(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _available_for(planner: MemoryPlanner, budget: int) -> int:
    """The available memory that gives `planner` exactly `budget`."""
    return int((budget + planner.reserve) / (1 - planner.margin)) + 1


def test_upscale_with_vae_tiles_equals_untiled(tiny_upscaler):
    image = _image(40, 28)
    untiled = tiny_upscaler.upscale(image, UpscaleOptions(seed=3))
    tiled = tiny_upscaler.upscale(image, UpscaleOptions(seed=3, vae_tile=24))
    assert untiled.plan.vae_tiling is None
    assert tiled.plan.vae_tiling.core == 24
    assert (tiled.rgb - untiled.rgb).abs().max().item() < 1e-4


def test_too_large_a_request_is_refused_before_any_work(tiny_upscaler, monkeypatch):
    monkeypatch.setattr(memory_planner, "available_memory", lambda device: tiny_upscaler.planner.reserve)
    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", _must_not_run)
    with pytest.raises(MemoryPlanError, match="nothing fits") as info:
        tiny_upscaler.upscale(_image(40, 28), UpscaleOptions(seed=3))
    assert "\n" not in str(info.value)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the pipeline ran although the plan refused the request")


def test_out_of_memory_is_retried_once_with_a_more_frugal_plan(tiny_upscaler, monkeypatch):
    restore = tiny_upscaler.pipeline.restore
    calls = []

    def fail_first(*args, **kwargs):
        calls.append(kwargs["vae_tiling"])
        if len(calls) == 1:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return restore(*args, **kwargs)

    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", fail_first)
    # 200 x 160 pixels: larger than the smallest automatic tile, so tiling can shrink the VAE's memory
    options = UpscaleOptions(seed=3, upscale_factor=4)
    result = tiny_upscaler.upscale(_image(50, 40), options)
    assert calls[0] is None and calls[1] is not None and result.plan.vae_tiling == calls[1]
    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", restore)
    expected = tiny_upscaler.upscale(_image(50, 40), options)
    assert (result.rgb - expected.rgb).abs().max().item() < 1e-4


def test_out_of_memory_twice_fails_cleanly_and_the_next_job_runs(tiny_upscaler, monkeypatch):
    restore = tiny_upscaler.pipeline.restore

    def always_fail(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", always_fail)
    with pytest.raises(RunOutOfMemoryError, match="ran out of memory") as info:
        tiny_upscaler.upscale(_image(50, 40), UpscaleOptions(seed=3, upscale_factor=4))
    assert "\n" not in str(info.value)
    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", restore)
    assert tiny_upscaler.upscale(_image(40, 28), UpscaleOptions(seed=3)).size == (80, 56)


def test_vae_tile_option_is_validated():
    with pytest.raises(ValueError, match="vae_tile"):
        UpscaleOptions(vae_tile=4).validate()
    with pytest.raises(ValueError, match="vae_tile"):
        UpscaleOptions(vae_tile="big").validate()
    UpscaleOptions(vae_tile=256).validate()


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("256", 256)])
def test_cli_vae_tile(value, expected):
    args = build_parser().parse_args(["upscale", "in.png", "-o", "out.png", "--vae-tile", value])
    assert args.vae_tile == expected


@pytest.mark.parametrize("value", ["4", "big"])
def test_cli_rejects_a_bad_vae_tile(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "in.png", "-o", "out.png", "--vae-tile", value])
    assert "--vae-tile" in capsys.readouterr().err


def test_sizes_are_padded_as_the_pipeline_pads_them(planner):
    assert planner.costs.size_multiple == planner.costs.pipeline.size_multiple == 16  # VAE 8 x DiT patch 2
    assert planner.costs.estimate(1000, 700, 6) == planner.costs.estimate(1008, 704, 9)  # 4n + 1 frames
    assert planner.costs.estimate(1000, 700) != planner.costs.estimate(1024, 704)


def test_a_dropped_planner_is_freed(planner):
    """Estimates are cached per planner: the cache must not keep a planner (and its models) alive."""
    import gc
    import weakref

    dropped = MemoryPlanner.for_pipeline(planner.costs.pipeline, "cpu")
    dropped.costs.estimate(512, 512)
    ref = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert ref() is None


def small_device_memory(planner: MemoryPlanner, budget: int) -> int:
    """What `available_memory` would report on a device where `planner` has `budget` bytes to plan with: the real
    planner then refuses at sizes the tiny model reaches in a second, on any machine."""
    return int((budget + planner.reserve) / (1 - planner.margin)) + 1


def test_the_cli_refuses_in_one_line_what_does_not_fit_and_the_size_it_names_runs(
    tiny_upscaler, tiny_bundle, tmp_path, capsys, monkeypatch
):
    from seedvr_local.cli import main

    memory = small_device_memory(tiny_upscaler.planner, 12 * 2**20)
    monkeypatch.setattr(memory_planner, "available_memory", lambda device: memory)
    source = tmp_path / "in.png"
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(source)
    run = ["upscale", str(source), "--weights-dir", str(tiny_bundle), "--device", "cpu", "--seed", "1"]
    assert main([*run, "-o", str(tmp_path / "big.png"), "--upscale-factor", "4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # "loaded ...", then the one-line error
    line = lines[-1]
    assert [entry for entry in lines if "error" in entry] == [line] and "Traceback" not in "".join(lines)
    assert line.startswith("seedvr-local: error: a 400x400 output needs about") and "the largest 1:1 output that fits is" in line
    assert not (tmp_path / "big.png").exists()

    width, height = map(int, line.rsplit(" ", 1)[1].split("x"))
    assert width == height and 16 <= width < 400 and width % 16 == 0
    Image.fromarray(np.full((height // 4, width // 4, 3), 90, np.uint8)).save(source)
    assert main([*run, "-o", str(tmp_path / "fits.png"), "--upscale-factor", "4", "--overwrite"]) == 0
    assert Image.open(tmp_path / "fits.png").size == (width, height)
