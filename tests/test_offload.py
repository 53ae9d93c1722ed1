"""Block swap and offload on the CPU path: the same pixels at every level, and each block's weights on the device
only while it is in use (the CPU's "device" copies are real copies, so the bookkeeping is the CUDA one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.cli import build_parser, main
from seedvr_local.memory_planner import MemoryPlanError
from seedvr_local.offload_levels import FULL_OFFLOAD, OffloadLevel, parse_offload
from seedvr_local.pipeline import RestoreNoises
from seedvr_local.upscaler import UpscaleOptions, Upscaler

LEVELS = ("blocks:1", "blocks:2", "full", "auto")


def _image(width=24, height=20) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def resident_pixels() -> torch.Tensor:
    return Upscaler.tiny(device="cpu", offload="none").upscale(_image(), UpscaleOptions(seed=5)).pixels


@pytest.mark.parametrize("offload", LEVELS)
def test_python_api_restores_the_same_pixels_at_every_offload_level(offload, resident_pixels):
    upscaler = Upscaler.tiny(device="cpu", offload=offload)
    result = upscaler.upscale(_image(), UpscaleOptions(seed=5))
    assert torch.equal(result.pixels, resident_pixels)
    expected = "none" if offload == "auto" else offload  # on the CPU offloading saves nothing: auto keeps it all
    assert str(result.plan.offload) == expected


def test_each_streamed_block_is_on_the_device_only_while_it_runs():
    upscaler = Upscaler.tiny(device="cpu", offload="blocks:2")
    pipeline = upscaler.pipeline
    placement = pipeline.offload
    blocks = list(pipeline.dit.blocks)
    assert len(blocks) == 3  # blocks 1 and 2 are streamed, block 0 stays
    first = [next(block.parameters()) for block in blocks]
    at_rest = [p.data_ptr() for p in first]  # streamed blocks point at their host copies between uses
    seen = []

    def record(i):
        def hook(module, args):
            seen.append((i, placement.resident_blocks(), [p.data_ptr() for p in first], placement.resident()["vae"]))
        return hook

    handles = [block.register_forward_pre_hook(record(i)) for i, block in enumerate(blocks)]
    try:
        upscaler.upscale(_image(), UpscaleOptions(seed=5))
    finally:
        for handle in handles:
            handle.remove()
    assert [i for i, *_ in seen] == [0, 1, 2]
    # While block 0 runs, block 1 is being copied in; while 1 runs, 2 is; block 1 is gone when 2 runs.
    assert [resident for _, resident, _, _ in seen] == [[0, 1], [0, 1, 2], [0, 2]]
    for i, _, pointers, vae_resident in seen:
        assert pointers[0] == at_rest[0]  # the kept block never moves
        assert pointers[i] != at_rest[i] or i == 0  # a running streamed block reads its device copy
        assert all(pointers[j] == at_rest[j] for j in (1, 2) if j < i)  # used ones are back on the host copy
        assert vae_resident  # blocks:N keeps the VAE on the device
    assert placement.resident_blocks() == [0]
    assert [p.data_ptr() for p in first] == at_rest


def test_full_offload_puts_each_model_on_the_device_only_for_its_phases():
    upscaler = Upscaler.tiny(device="cpu", offload="full")
    placement = upscaler.pipeline.offload
    phases = []

    def progress(phase):
        phases.append((phase, placement.resident()))

    block_views = []
    handle = upscaler.pipeline.dit.blocks[1].register_forward_pre_hook(
        lambda module, args: block_views.append(placement.resident())
    )
    try:
        upscaler.upscale(_image(), UpscaleOptions(seed=5), progress=progress)
    finally:
        handle.remove()
    (during_dit,) = block_views
    assert during_dit["dit"] and not during_dit["vae"] and not during_dit["blocks.0"]  # block 0 done and gone
    assert during_dit["blocks.1"] and during_dit["blocks.2"]  # running, and the next one on its way
    at_rest = {name: resident for name, resident in placement.resident().items()}
    assert not any(at_rest.values())  # between jobs nothing is on the device
    assert [name for name, _ in phases] == ["resize", "encode", "dit", "vae_decode", "color_fix", "finish"]


def test_restore_at_a_level_leaves_the_pipeline_placed_for_it_and_back():
    upscaler = Upscaler.tiny(device="cpu", offload="none")
    pipeline = upscaler.pipeline
    video = torch.rand(3, 1, 32, 32) * 2 - 1
    noises = RestoreNoises.draw(pipeline.latent_shape(1, 32, 32), 1)
    reference = pipeline.restore(video, noises).colorfixed
    for level in (OffloadLevel(3), FULL_OFFLOAD, OffloadLevel(0)):
        assert torch.equal(pipeline.restore(video, noises, offload=level).colorfixed, reference)
        assert pipeline.offload.level == level
    assert pipeline.offload.resident_blocks() == [0, 1, 2]


def test_offload_arguments_are_checked():
    assert parse_offload("blocks:4") == OffloadLevel(4)
    for bad in ("blocks:0", "blocks:", "blocks:x", "some", "Full"):
        with pytest.raises(ValueError, match="offload must be auto, none, blocks:N"):
            parse_offload(bad)
    with pytest.raises(ValueError, match="offload blocks:9 but the DiT has 3 blocks"):
        Upscaler.tiny(device="cpu", offload="blocks:9")


def test_a_refusal_names_the_offload_it_tried():
    upscaler = Upscaler.tiny(device="cpu", offload="full")
    with pytest.raises(MemoryPlanError, match=r"phase with offload full but only 0\.0 GiB"):
        upscaler.planner.plan(512, 512, available=1)


@pytest.mark.parametrize("offload", ["full", "blocks:2"])
def test_cli_upscale_with_offload_writes_the_resident_image(tmp_path, offload, capsys):
    source = tmp_path / "in.png"
    _image().save(source)
    outputs = {}
    for level in ("none", offload):
        target = tmp_path / f"{level.replace(':', '_')}.png"
        assert main(["upscale", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu", "--seed", "4",
                     "--offload", level]) == 0  # fmt: skip
        outputs[level] = target.read_bytes()
    assert outputs["none"] == outputs[offload]


def test_cli_rejects_a_bad_offload_in_one_line(tmp_path, capsys):
    source = tmp_path / "in.png"
    _image().save(source)
    with pytest.raises(SystemExit) as exit:
        main(["upscale", str(source), "--model", "tiny", "--offload", "blocks:-1"])
    assert exit.value.code == 2
    assert "argument --offload: must be auto, none, blocks:N" in capsys.readouterr().err
    assert main(["upscale", str(source), "-o", str(tmp_path / "o.png"), "--model", "tiny", "--offload", "blocks:7"]) == 2
    assert capsys.readouterr().err.strip() == "seedvr-local: error: offload blocks:7 but the DiT has 3 blocks"


def test_cli_video_with_full_offload_writes_the_resident_frames(tmp_path):
    from seedvr_local.video.samples import make_video

    source = make_video(tmp_path / "in.mp4", 24, 20, frames=5, audio=None)
    outputs = {}
    for level in ("none", "full"):
        target = tmp_path / f"{level}.mov"
        assert main(["upscale", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu", "--seed", "2",
                     "--clip-frames", "5", "--offload", level]) == 0  # fmt: skip
        outputs[level] = target.read_bytes()
    assert outputs["none"] == outputs["full"]
