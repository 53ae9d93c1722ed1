"""Retention: finished requests and stored files older than `--retention-hours` are deleted.

fal keeps results for about an hour; a self-hosted server that kept everything would fill its disk with
output images. A request is removed with its logs once it finished longer ago than the retention (not while a
webhook for it is still being retried); its status and result then answer 404, as fal's do after expiry. A stored
file (an output, an upload, an unfinished upload) is removed once it is older than the retention, unless a
request that has not finished yet names it in an input URL (`image_url`, `video_url`, or a large data URI it
sent, which the server keeps as a stored file).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from seedvr_local.server.db import Database
from seedvr_local.server.fetch import own_file_id
from seedvr_local.server.storage import FileStore

log = logging.getLogger("seedvr_local.server")


@dataclass(frozen=True)
class Sweep:
    jobs: int
    files: int
    bytes: int


class Retention:
    def __init__(self, db: Database, files: FileStore, retention_s: float):
        self.db = db
        self.files = files
        self.retention_s = retention_s

    def sweep(self, now: float | None = None) -> Sweep:
        """Delete what expired before `now - retention`; returns what went."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self.db.transaction() as conn:
            expired = [
                row["id"]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE status = 'COMPLETED' AND finished_at < ?"
                    " AND id NOT IN (SELECT job_id FROM webhooks WHERE state = 'pending')",
                    (cutoff,),
                )
            ]
            for table, column in (("job_logs", "job_id"), ("webhooks", "job_id"), ("jobs", "id")):
                conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(job_id,) for job_id in expired])
            in_use = self._files_named_by_unfinished_jobs(conn)
            old_files = {
                row["id"]: row["size"] or 0
                for row in conn.execute("SELECT id, size FROM files WHERE created_at < ?", (cutoff,))
                if row["id"] not in in_use
            }
            conn.executemany("DELETE FROM files WHERE id = ?", [(file_id,) for file_id in old_files])
        # after the commit: a file is never listed without its bytes (local directory or bucket alike)
        self.files.delete(list(old_files))
        freed = sum(old_files.values())
        if expired or old_files:
            log.info("retention: removed %d request(s) and %d file(s) (%s bytes)", len(expired), len(old_files), freed)
        return Sweep(len(expired), len(old_files), freed)

    @staticmethod
    def _files_named_by_unfinished_jobs(conn) -> set[str]:
        names = set()
        for row in conn.execute("SELECT input FROM jobs WHERE status != 'COMPLETED'"):
            for name, value in json.loads(row["input"]).items():
                file_id = own_file_id(value) if name.endswith("_url") and isinstance(value, str) else None
                if file_id is not None:
                    names.add(file_id)
        return names
