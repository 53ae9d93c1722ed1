"""A worker process for the drain test: `run_until_stopped` (what `seedvr-local worker` runs) with the fake engine,
whose "dit" phase takes `slow_s` seconds. Usage: python -m tests.server.drain_worker DATA_DIR DATABASE_URL|- SLOW_S"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.worker_process import open_worker, run_until_stopped
from tests.server.helpers import FakeEngine

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data_dir, database_url, slow_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    settings = ServerSettings(data_dir=data_dir, database_url=None if database_url == "-" else database_url)
    engine = FakeEngine(slow_seeds={7: slow_s})
    run_until_stopped(open_worker(settings, "cpu", lambda: engine, engine.description), grace_s=30)
