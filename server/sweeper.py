"""Sweeping what a killed process leaves behind: files no record names, older than a bound.

A process killed with SIGKILL (or by the OOM killer) runs no cleanup: the scratch files of its uploads and video
jobs stay in `<data dir>/files/tmp`, and a blob it stored just before the row that would name it (an output, an
input kept out of line, a clip of a shared video) stays in the file store with nothing pointing at it. Retention
(server/retention.py) deletes only what the database names, so these are swept here: at start, then with every
retention sweep. Only what is older than `older_than_s` (one hour by default: far longer than a file waits for its
row) and not in use: a scratch file of a video job that has not finished is left alone, however old (its source is
written once and read for as long as the job runs), and so is every blob a row names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from seedvr_local.server.db import Database
from seedvr_local.server.jobs import COMPLETED
from seedvr_local.server.storage import CLIP_BLOB_PREFIX, FileStore
from seedvr_local.server.video_processing import SCRATCH_FILE

log = logging.getLogger("seedvr_local.server")

@dataclass(frozen=True)
class Swept:
    tmp_files: int
    blobs: int
    bytes: int


class Sweeper:
    def __init__(self, db: Database, files: FileStore, older_than_s: float):
        self.db = db
        self.files = files
        self.older_than_s = older_than_s

    def sweep(self, now: float | None = None) -> Swept:
        cutoff = (time.time() if now is None else now) - self.older_than_s
        tmp_files, freed = self._sweep_tmp(cutoff)
        orphans = self._orphan_clips(cutoff) + self._orphan_files(cutoff)
        self.files.blobs.delete(orphans)
        if tmp_files or orphans:
            log.info(
                "swept %d scratch file(s) (%s bytes) and %d stored blob(s) no record names, left by stopped processes",
                tmp_files, freed, len(orphans),
            )  # fmt: skip
        return Swept(tmp_files, len(orphans), freed)

    def _sweep_tmp(self, cutoff: float) -> tuple[int, int]:
        count = freed = 0
        for path in self.files.tmp_dir.iterdir():
            try:
                stat = path.stat()
                if not path.is_file() or stat.st_mtime >= cutoff or self._in_use(path.name):
                    continue
                path.unlink()
            except FileNotFoundError:  # its writer finished with it meanwhile
                continue
            count, freed = count + 1, freed + stat.st_size
        return count, freed

    def _in_use(self, name: str) -> bool:
        """A scratch file of a video job that has not finished."""
        match = SCRATCH_FILE.match(name)
        if match is None:
            return False
        row = self.db.query_one("SELECT status FROM jobs WHERE id = ?", (match["job_id"],))
        return row is not None and row[0] != COMPLETED

    def _orphan_clips(self, cutoff: float) -> list[str]:
        old = [key for key, written in self.files.blobs.modified(CLIP_BLOB_PREFIX).items() if written < cutoff]
        if not old:
            return []
        named = {
            key
            for row in self.db.query("SELECT input_key, output_key FROM clip_tasks")
            for key in (row[0], row[1])
            if key is not None
        }
        return [key for key in old if key not in named]

    def _orphan_files(self, cutoff: float) -> list[str]:
        old = [key for key, written in self.files.blobs.modified("").items() if written < cutoff]
        orphans = []
        for start in range(0, len(old), 500):
            batch = old[start : start + 500]
            marks = ", ".join("?" for _ in batch)
            known = {row[0] for row in self.db.query(f"SELECT id FROM files WHERE id IN ({marks})", batch)}
            orphans += [key for key in batch if key not in known]
        return orphans
