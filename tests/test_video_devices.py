"""Every device busy: a video's clips restored by several worker processes (two CPU workers here), handed back in
order, with the same frames as in one process; and the clip length the memory planner picks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seedvr_local.memory_planner import MemoryPlanError
from seedvr_local.upscaler import Upscaler
from seedvr_local.video import VideoOptions, VideoRestorer
from seedvr_local.video.clips import MAX_PLANNED_CLIP_FRAMES, ClipTask, LocalClips, longest_clip
from seedvr_local.video.pool import ClipPool, ModelSpec, WorkerError
from seedvr_local.video.samples import make_video
from tests.video_helpers import read_video

#: On the CPU the result depends on the number of threads: the pool's workers and the in-process reference use one.
THREADS = 1
OPTIONS = VideoOptions(upscale_factor=2, seed=11, clip_frames=5, overlap_frames=2)


@pytest.fixture(scope="module")
def pool():
    with ClipPool(ModelSpec(None), ["cpu", "cpu"], threads=THREADS) as pool:
        yield pool


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "in.mp4", 24, 20, frames=17, audio=None)


@pytest.fixture(scope="module")
def in_process_frames(source) -> np.ndarray:
    """The frames one process restores, one clip after the other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        restorer = VideoRestorer(Upscaler.tiny().pipeline)
        return np.stack([frame.pixels for frame in restorer.frames(restorer.prepare(source, OPTIONS))])
    finally:
        torch.set_num_threads(threads)


def test_two_workers_share_the_clips_and_give_the_frames_of_one_process(pool, source, in_process_frames):
    restorer = VideoRestorer(clips=pool)
    job = restorer.prepare(source, OPTIONS)
    assert len(job.clips) == 5
    workers: list[str] = []
    frames = np.stack([frame.pixels for frame in restorer.frames(job, workers=workers)])
    assert np.array_equal(frames, in_process_frames)
    assert len(workers) == 5 and set(workers) == {"cpu#0", "cpu#1"}


def test_the_result_records_the_worker_of_each_clip(pool, source, tmp_path):
    options = dataclasses.replace(OPTIONS, output_format="webm")
    result = VideoRestorer(clips=pool).restore(source, tmp_path / "out.webm", options)
    assert len(result.clip_workers) == 5 and set(result.clip_workers) == {"cpu#0", "cpu#1"}
    assert read_video(result.path)["frames"] == 17
    assert all(result.timings[phase] > 0 for phase in ("decode", "encode", "dit", "vae_decode", "encode_video"))


def test_an_abandoned_video_leaves_nothing_behind_for_the_next(pool, source, in_process_frames, tmp_path):
    def cancel(done, total, fps):
        raise KeyboardInterrupt

    restorer = VideoRestorer(clips=pool)
    with pytest.raises(KeyboardInterrupt):
        restorer.restore(source, tmp_path / "cancelled.mp4", OPTIONS, progress=cancel)
    assert not (tmp_path / "cancelled.mp4").exists()
    # the clips still queued for the cancelled video are dropped, not mistaken for this one's
    frames = np.stack([frame.pixels for frame in restorer.frames(restorer.prepare(source, OPTIONS))])
    assert np.array_equal(frames, in_process_frames)
    assert all(worker.assigned == 0 for worker in pool.workers)


def test_clips_in_flight_are_bounded_and_come_back_in_order(pool):
    pulled = []
    outstanding = []

    def tasks():
        for index in range(8):
            pulled.append(index)
            pixels = torch.full((5, 20, 24, 3), 20 * index, dtype=torch.uint8)
            yield ClipTask(index, pixels, 48, 40, index, 0.1, "wavelet", (1.0,) * 5, (0, 5))

    indices = []
    for restored in pool.run(tasks()):
        outstanding.append(len(pulled) - len(indices))
        indices.append(restored.index)
        assert restored.own.shape == (5, 40, 48, 3) and restored.shared_frames == ()
    assert indices == list(range(8))
    assert max(outstanding) == pool.in_flight == 4  # two per worker: one restoring, one waiting


def test_a_worker_that_dies_is_reported_not_waited_for():
    with ClipPool(ModelSpec(None), ["cpu"], threads=THREADS) as lone:
        lone.workers[0].process.kill()
        with pytest.raises(WorkerError, match="the video worker on cpu stopped"):
            lone.clip_frames(32, 32)


def test_the_pools_clip_length_is_what_fits_on_every_worker(pool):
    assert pool.clip_frames(48, 40) == longest_clip(Upscaler.tiny().planner, 48, 40)


def test_a_worker_that_cannot_load_the_model_fails_the_pool_in_one_line(tmp_path):
    with pytest.raises(WorkerError, match="video worker on cpu could not load the model: .*nowhere"):
        ClipPool(ModelSpec(tmp_path / "nowhere"), ["cpu"], threads=THREADS)


class _Planner:
    """Fits clips of at most `frames` frames (at any size); nothing when `frames` is 0."""

    def __init__(self, frames: int):
        self.frames = frames
        self.asked: list[int] = []

    def plan(self, width, height, frames=1, vae_tile="auto"):
        if frames > self.frames:
            raise MemoryPlanError("a 10x10 output needs about 9.0 GiB", 9, 1, None)

    def budget(self):
        return 1

    def fits(self, width, height, frames=1, vae_tile="auto", budget=None):
        self.asked.append(frames)
        return frames <= self.frames


@pytest.mark.parametrize(
    "fitting, longest", [(1, 1), (4, 1), (5, 5), (40, 37), (41, 41), (10_000, MAX_PLANNED_CLIP_FRAMES)]
)
def test_the_longest_clip_is_the_longest_4n_plus_1_that_fits(fitting, longest):
    planner = _Planner(fitting)
    assert longest_clip(planner, 64, 64) == longest
    assert all((frames - 1) % 4 == 0 for frames in planner.asked)


def test_no_clip_when_not_even_one_frame_fits():
    with pytest.raises(MemoryPlanError, match="needs about 9.0 GiB"):
        longest_clip(_Planner(0), 64, 64)


def test_local_clips_take_the_planners_tiling_for_each_clip_length(source):
    upscaler = Upscaler.tiny()
    asked = []
    plan = upscaler.planner.plan

    class Recording:
        def plan(self, width, height, frames=1, vae_tile="auto"):
            asked.append((width, height, frames, vae_tile))
            return plan(width, height, frames, vae_tile=vae_tile)

    restorer = VideoRestorer(clips=LocalClips(upscaler.pipeline, planner=Recording(), vae_tile=64))
    list(restorer.frames(restorer.prepare(source, OPTIONS)))
    assert asked == [(48, 40, 5, 64)] * 5


def test_the_benchmark_runs_on_two_workers(tmp_path, tiny_bundle, capsys):
    from benchmarks import video

    out = tmp_path / "video.json"
    argv = ["--weights-dir", str(tiny_bundle), "--input", "16x16", "--frames", "9", "--clip-frames", "5",
            "--factor", "1", "--devices", "cpu,cpu", "--json", str(out)]  # fmt: skip
    assert video.main(argv) == 0
    assert "clips per worker" in capsys.readouterr().out
    row = json.loads(out.read_text())["results"][0]
    assert row["devices"] == ["cpu", "cpu"] and row["frames"] == 9
    assert sorted(row["clips_by_worker"]) == ["cpu#0", "cpu#1"] and sum(row["clips_by_worker"].values()) == 3
