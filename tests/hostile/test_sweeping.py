"""What a SIGKILL leaves behind is swept: scratch files in files/tmp and stored blobs written before the row that
would have named them, once older than the bound; never what a live job or a row still uses."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from seedvr_local.server.jobs import Completion, JobStore
from seedvr_local.server.state import open_files
from seedvr_local.server.sweeper import Sweeper
from seedvr_local.server.video_processing import scratch_files
from tests.server.conftest import (  # noqa: F401 (fixtures)
    database_url,
    engine,
    file_store,
    make_client,
    postgres_admin_url,
    s3_bucket,
    s3_endpoint,
    settings,
    store,
)
from tests.server.helpers import wait_until

HOUR = 3600.0


@pytest.fixture(params=["local", "s3"])
def file_store(request) -> str:  # noqa: F811 (this module's stores: both)
    return request.param


def _scratch(path, age_s: float):
    """A scratch file as a killed process leaves it, last written `age_s` ago."""
    path.write_bytes(b"x" * 100)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def _leftovers(settings, db):
    """What killed processes leave in files/tmp: (files, what a sweep removes, what it must leave)."""
    files = open_files(settings, db)
    jobs = JobStore(db)
    tmp = files.tmp_dir
    running = jobs.create("queue", {}, "http://x")
    jobs.claim_next("w")
    finished = jobs.create("queue", {}, "http://x")
    jobs.claim_next("w")
    jobs.complete(finished.id, Completion.success({}, 0.0))
    swept = {
        "an old upload": _scratch(tmp / "0123456789abcdef01234567", 2 * HOUR),
        "an old video of a finished job": _scratch(scratch_files(tmp, finished.id)[0], 2 * HOUR),
    }
    kept = {
        "a fresh upload": _scratch(tmp / "fedcba9876543210fedcba98", 0),
        "an old video of a running job": _scratch(scratch_files(tmp, running.id)[1], 2 * HOUR),
    }
    return files, swept, kept


def _put_blob(files, key: str) -> None:
    tmp = files.tmp_dir / f"blob-{uuid.uuid4().hex}"
    tmp.write_bytes(b"y" * 50)
    files.blobs.put_file(key, tmp, "application/octet-stream")


def test_scratch_files_and_orphan_blobs_older_than_the_bound_are_swept(settings, file_store):
    from seedvr_local.server.db import Database

    db = Database(settings.database_url or settings.database_path)
    files, leftovers, keep = _leftovers(settings, db)
    stored = files.save(b"an output", "out.png", "image/png")  # its row written: stays
    _put_blob(files, "AAAAAAAAAAAAAAAAAAAAAA")  # an output whose row never came
    _put_blob(files, "clips/deadrun-0.task")  # a clip task whose row never came
    db.execute(
        "INSERT INTO clip_tasks (run_id, clip_index, job_id, coordinator, state, input_key, created_at)"
        " VALUES ('liverun', 0, 'j', 'w', 'queued', 'clips/liverun-0.task', ?)",
        (time.time(),),
    )
    _put_blob(files, "clips/liverun-0.task")

    sweeper = Sweeper(db, files, older_than_s=HOUR)
    assert sweeper.sweep().blobs == 0  # nothing is old yet: a blob may be waiting for its row
    swept = sweeper.sweep(now=time.time() + 2 * HOUR)  # an hour later, as far as the blobs go
    assert swept.blobs == 2
    assert files.blobs.get_bytes("AAAAAAAAAAAAAAAAAAAAAA") is None
    assert files.blobs.get_bytes("clips/deadrun-0.task") is None
    assert files.blobs.get_bytes("clips/liverun-0.task") == b"y" * 50  # its row names it
    assert files.read_bytes(stored) == b"an output"
    for name, path in leftovers.items():
        assert not path.exists(), name
    assert keep["an old video of a running job"].exists()  # however old: its job has not finished
    db.close()


@pytest.mark.parametrize("file_store", ["local"])
def test_the_server_sweeps_at_start(settings, make_client, file_store):
    from seedvr_local.server.db import Database

    db = Database(settings.database_url or settings.database_path)
    _, leftovers, keep = _leftovers(settings, db)
    db.close()
    with make_client(worker_in_process=False):  # an API front-end: no worker to finish the running job
        wait_until(lambda: not any(path.exists() for path in leftovers.values()), "the sweep at start")
    for name, path in keep.items():
        assert path.exists(), name
