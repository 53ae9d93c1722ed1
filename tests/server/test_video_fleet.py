"""Every device busy on the server (server/clip_tasks.py): the clips of one video restored by every worker of the
fleet, the same bytes as on one worker; a clip whose worker vanished restored by another; a clip's failure or a
cancel ends the run and leaves no clip task behind. On both job stores (and both file stores where the clips'
blobs are read back)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.server import create_app
from seedvr_local.server.clip_tasks import (
    WORKERS_LOST,
    ClipHelper,
    ClipRun,
    ClipTaskQueue,
    FleetClips,
    clip_error,
    clip_from_bytes,
    clip_to_bytes,
    task_from_bytes,
    task_to_bytes,
)
from seedvr_local.server.db import Database
from seedvr_local.server.engine import EngineHolder
from seedvr_local.server.jobs import JobStore
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.processing import JobProcessor
from seedvr_local.server.state import open_files
from seedvr_local.server.video_processing import CLIPS_PREFIX
from seedvr_local.server.worker import Worker
from seedvr_local.video.clips import ClipTask, LocalClips, RestoredClip
from seedvr_local.video.samples import make_video
from tests.server.helpers import FILE_STORES, FakeEngine, data_uri, wait_status, wait_until

RUN = "/queue/fal-ai/seedvr/upscale/video"
COORDINATOR = "coordinator"
#: ProRes codes each frame alone: the same frames always give the same bytes (libx264 here does not promise that:
#: two encodes of the same frames can differ), so equal files mean equal restored frames.
SAME_BYTES_FORMAT = "PRORES4444 (.mov)"


@pytest.fixture(scope="module")
def tiny_models():
    """Two copies of the tiny model (fixed random weights): one per worker."""
    from seedvr_local.upscaler import Upscaler

    return Upscaler.tiny(device="cpu"), Upscaler.tiny(device="cpu")


@pytest.fixture
def fleet(settings):
    """(job store, clip task queue, a run of a video job claimed by COORDINATOR), on the test's store."""
    db = Database(settings.database_url or settings.database_path)
    jobs = JobStore(db, max_attempts=2)
    job = jobs.create("queue", {"video_url": "https://example.com/in.mp4"}, "http://testserver")
    assert jobs.claim_next(COORDINATOR, lease_s=60).id == job.id
    queue = ClipTaskQueue(db, open_files(settings, db), lease_s=60, max_attempts=2)
    yield jobs, queue, ClipRun.new(job.id, COORDINATOR)
    db.close()


def _task(index: int, frames: int = 5) -> ClipTask:
    generator = torch.Generator().manual_seed(index)
    pixels = torch.randint(0, 256, (frames, 24, 32, 3), dtype=torch.uint8, generator=generator)
    weights = tuple(torch.rand(frames, generator=generator).tolist())
    return ClipTask(index, pixels, 48, 32, 1000 + index, 0.1, "wavelet", weights, (1, frames - 1))


def _clip_blobs(queue: ClipTaskQueue) -> dict[str, int]:
    return queue.files.blobs.sizes("clips/")


def test_a_clip_crosses_workers_bit_for_bit():
    task, tiling = _task(3), VAETiling(tile=64, store_scale=2)
    back, back_tiling = task_from_bytes(task_to_bytes(task, tiling))
    assert torch.equal(back.pixels, task.pixels) and back_tiling == tiling
    assert (back.index, back.width, back.height, back.seed, back.weights, back.own) == (
        task.index, task.width, task.height, task.seed, task.weights, task.own,
    )  # fmt: skip
    assert task_from_bytes(task_to_bytes(task, None))[1] is None
    clip = RestoredClip(3, task.pixels[1:4], torch.randn(3, 2, 32, 48), (0, 4), "w1", {"dit": 0.25})
    back = clip_from_bytes(clip_to_bytes(clip))
    assert torch.equal(back.own, clip.own) and torch.equal(back.shared, clip.shared)
    assert (back.index, back.shared_frames, back.worker, back.timings) == (3, (0, 4), "w1", {"dit": 0.25})


def _restore(client: TestClient, body: dict) -> tuple[bytes, list[str]]:
    request_id = client.post(RUN, json=body).json()["request_id"]
    status = wait_status(client, request_id, timeout=120, logs=True)
    result = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}")
    assert result.status_code == 200, result.text
    video = client.get(httpx.URL(result.json()["video"]["url"]).path).content
    return video, [entry["message"] for entry in status["logs"]]


def test_the_clips_of_one_video_are_restored_on_both_workers(settings, tiny_models, tmp_path):
    settings.max_video_clip_frames = 5  # 13 frames: 4 clips
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=13, audio=None)
    video_url = data_uri(source.read_bytes(), "video/mp4")
    body = {"video_url": video_url, "seed": 7, "upscale_factor": 2, "output_format": SAME_BYTES_FORMAT}
    first, second = tiny_models
    with TestClient(create_app(settings, lambda: first)) as client:
        state = client.app.state.server
        # a second worker on the same job store and files, with a model of its own: another device's worker
        engines = EngineHolder(lambda: second, "second")
        processor = JobProcessor(state.jobs, state.files, state.worker.processor.fetcher, engines, settings, Metrics(state.db))
        other = Worker(state.jobs, processor, engines, state.registry, settings.lease_s, device="cpu")
        other.start()
        try:
            wait_until(lambda: sum(w.model_state == "ready" for w in state.registry.live(60)) == 2, "two workers")
            shared, shared_logs = _restore(client, body)
        finally:
            assert other.stop(30)
        alone, alone_logs = _restore(client, body)
        queue = state.worker.processor.clip_tasks
        assert queue.db.query("SELECT COUNT(*) FROM clip_tasks")[0][0] == 0
        assert _clip_blobs(queue) == {}
    spread = next(message for message in shared_logs if message.startswith(CLIPS_PREFIX))
    assert spread.startswith(f"{CLIPS_PREFIX}4 by 2 worker(s)") and state.worker.id in spread and other.id in spread
    assert next(message for message in alone_logs if message.startswith(CLIPS_PREFIX)) == (
        f"{CLIPS_PREFIX}4 by 1 worker(s) ({state.worker.id}: 4)"
    )
    assert shared == alone  # the same bytes, however the clips were shared out


@pytest.mark.parametrize("file_store", FILE_STORES)
def test_a_clip_whose_worker_vanished_is_restored_by_another(fleet):
    _, queue, run = fleet
    task = _task(0)
    queue.publish(run, task, None)
    vanished = queue.claim("vanished")
    assert vanished.index == 0 and queue.claim("other") is None  # leased
    queue.db.execute("UPDATE clip_tasks SET lease_expires_at = ?", (time.time() - 1,))  # its lease ran out
    engines = EngineHolder(FakeEngine)
    engines.get()
    assert ClipHelper(queue, "other", threading.Event()).restore_next(engines)
    state = queue.states(run.run_id)[0]
    assert (state.state, state.worker_id) == ("done", "other")
    late = RestoredClip(0, task.pixels, torch.zeros(3, 0, 32, 48), (), "vanished")
    assert not queue.finish(vanished, "vanished", late)  # the clip is no longer its: refused, nothing kept
    restored = queue.take(run.run_id, state)
    expected = LocalClips(FakeEngine().pipeline).restore(task)
    assert torch.equal(restored.own, expected.own) and torch.equal(restored.shared, expected.shared)
    assert restored.worker == "other"
    assert queue.states(run.run_id) == {} and _clip_blobs(queue) == {}


def test_a_clip_whose_workers_keep_dying_fails(fleet):
    _, queue, run = fleet
    queue.publish(run, _task(0), None)
    for worker in ("a", "b"):
        assert queue.claim(worker) is not None
        queue.db.execute("UPDATE clip_tasks SET lease_expires_at = ?", (time.time() - 1,))
    assert queue.claim("c") is None
    state = queue.states(run.run_id)[0]
    assert (state.state, state.error_type) == ("failed", WORKERS_LOST)
    error = clip_error(state)  # the job fails as one whose own worker kept dying: fal's 503
    assert (error.status_code, error.error_type) == (503, "runner_disconnected") and "stopped 2 times" in str(error)


def test_a_clip_that_fails_on_another_worker_fails_the_video_with_its_error(fleet):
    _, queue, run = fleet
    failing = EngineHolder(lambda: FakeEngine(fail=torch.OutOfMemoryError("out of memory: tried to allocate 2 GiB")))
    failing.get()
    helper = ClipHelper(queue, "helper", threading.Event())
    # the helper takes clip 0 (the first queued) while the coordinator checks for a stop, before it claims one
    clips = FleetClips(
        queue, run, LocalClips(FakeEngine().pipeline, name=COORDINATOR), helpers=lambda: 1,
        check=lambda: helper.restore_next(failing), refresh_s=60,
    )  # fmt: skip
    with pytest.raises(torch.OutOfMemoryError, match="tried to allocate 2 GiB"):
        list(clips.run(iter([_task(k) for k in range(6)])))
    assert queue.states(run.run_id) == {} and _clip_blobs(queue) == {}


def test_a_cancel_drops_the_queued_clips(fleet):
    _, queue, run = fleet

    class Cancelled(Exception):
        pass

    def cancel() -> None:
        assert len(queue.states(run.run_id)) == 4  # 2 clips for each of 2 workers were queued
        raise Cancelled()

    clips = FleetClips(
        queue, run, LocalClips(FakeEngine().pipeline, name=COORDINATOR), helpers=lambda: 1, check=cancel,
        refresh_s=60,
    )  # fmt: skip
    with pytest.raises(Cancelled):
        list(clips.run(iter([_task(k) for k in range(6)])))
    assert queue.states(run.run_id) == {} and _clip_blobs(queue) == {}


def test_the_clip_tasks_of_a_dead_coordinator_are_dropped(fleet):
    jobs, queue, run = fleet
    queue.publish(run, _task(0), None)
    assert queue.drop_orphans() == 0  # its coordinator still holds the job
    jobs.db.execute("UPDATE jobs SET lease_expires_at = ?", (time.time() - 1,))
    assert jobs.reclaim_expired()["requeued"] == [run.job_id]  # the coordinator died: the job runs again
    assert queue.claim("helper") is None  # void: nobody restores it
    assert queue.drop_orphans() == 1
    assert queue.states(run.run_id) == {} and _clip_blobs(queue) == {}


@pytest.mark.slow  # two worker processes restoring 81-frame clips of the tiny model: about a minute on two cores
@pytest.mark.parametrize("store", ["postgresql"])
def test_worker_processes_share_the_clips_of_one_video(settings, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    settings.worker_in_process = False
    settings.lease_s = 3.0
    # a worker's clips are of at most `max_video_clip_frames` (81) frames: 170 frames make 3 clips
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=170, audio=None)
    video_url = data_uri(source.read_bytes(), "video/mp4")
    body = {"video_url": video_url, "seed": 9, "upscale_factor": 1, "output_format": SAME_BYTES_FORMAT}
    log_path = tmp_path / "workers.log"
    command = [
        sys.executable, "-m", "seedvr_local.cli", "worker", "--model", "tiny", "--devices", "cpu", "--database-url",
        settings.database_url, "--data-dir", str(settings.data_dir), "--lease-seconds", str(settings.lease_s),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in each: the same sums, bit for bit
    workers = [subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env=env) for _ in "ab"]
    try:
        with TestClient(create_app(settings, lambda: None)) as client:
            registry = client.app.state.server.registry
            wait_until(lambda: sum(w.model_state == "ready" for w in registry.live(60)) == 2, "two workers", 120)
            shared, shared_logs = _restore(client, body)
            workers[1].send_signal(signal.SIGTERM)
            assert workers[1].wait(60) == 0
            alone, alone_logs = _restore(client, body)
    finally:
        for worker in workers:
            worker.kill()
    spread = next(message for message in shared_logs if message.startswith(CLIPS_PREFIX))
    assert spread.startswith(f"{CLIPS_PREFIX}3 by 2 worker(s)"), (spread, log_path.read_text()[-2000:])
    assert next(message for message in alone_logs if message.startswith(CLIPS_PREFIX)).startswith(
        f"{CLIPS_PREFIX}3 by 1 worker(s)"
    )
    assert shared == alone
