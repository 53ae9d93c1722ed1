"""Per-key quotas: what one API key may hold of the queue and of the workers, and the disk budget of stored files.

* `--max-queued-per-key N`: a key with N requests waiting in the queue gets 429 (fal's error shape, with a
  `Retry-After`) for the next one, until one of its requests starts.
* `--max-running-per-key N`: at most N of a key's requests run at once, fleet-wide; the others wait in the queue,
  in their place, while the workers take other keys' requests.
* `--max-storage-bytes N`: stored files (uploads and outputs) take at most N bytes together: an upload that would
  pass the budget is refused with 507 (413 when it alone is larger than the budget), and so is a request whose
  output would (server/storage.py).

Without API keys every client counts as the one key. The counts are taken in the transaction that adds the
request or starts it, serialized per key on PostgreSQL, so concurrent requests cannot slip past a limit.
"""

from __future__ import annotations

import argparse
import hashlib

#: The advisory lock (PostgreSQL) that serializes the workers' claims, so that a running cap is never passed by two
#: claims at once: "claim" in ASCII.
CLAIM_LOCK = 0x636C61696D


def add_quota_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-queued-per-key", type=int, default=None, metavar="N",
                        help="the most requests one API key may have waiting in the queue, 1 or more; one more is "
                        "429 with Retry-After (default: no limit; without keys, for all clients together)")
    parser.add_argument("--max-running-per-key", type=int, default=None, metavar="N",
                        help="the most requests of one API key that run at once, fleet-wide, 1 or more; the others "
                        "wait in the queue while other keys' requests run (default: no limit)")


def quota_settings(args: argparse.Namespace) -> dict:
    """The quota flags as ServerSettings fields; ValueError for a value below 1."""
    for flag, value in (("--max-queued-per-key", args.max_queued_per_key),
                        ("--max-running-per-key", args.max_running_per_key)):  # fmt: skip
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be 1 or more, got {value}")
    return {"max_queued_per_key": args.max_queued_per_key, "max_running_per_key": args.max_running_per_key}


def owner_lock_key(owner: str | None) -> int:
    """The advisory lock (PostgreSQL, a positive 63-bit key) that serializes one key's submits."""
    return int.from_bytes(hashlib.sha256(b"seedvr-queue:" + (owner or "").encode()).digest()[:8]) >> 1
