"""The size limit of a multipart upload, held across its parts however they arrive: in parallel, through several
front-ends, sent again.

Each part reserves its bytes in the job database as it streams in, with one conditional statement (atomic on both
engines), in steps so that a large part costs a few writes, not one per chunk. A pending multipart upload's row
keeps the bytes reserved by its parts in its `size` column (a complete file's size replaces it), so a part that
would take the upload past the limit is refused with a 413 before it is stored. `complete` checks the sum again.
"""

from __future__ import annotations

from seedvr_local.server.db import Database

#: Bytes reserved at a time while a part streams in (less when that is all the limit has left).
RESERVE_STEP = 4 * 1024 * 1024


class UploadBudget:
    """The reservation of one part of upload `file_id` against `max_bytes` for all its parts together."""

    def __init__(self, db: Database, file_id: str, max_bytes: int):
        self.db = db
        self.file_id = file_id
        self.max_bytes = max_bytes
        self.reserved = 0

    def reserve(self, size: int) -> bool:
        """Make sure `size` bytes of this part are reserved; False when the upload's parts would then exceed the
        limit."""
        if size <= self.reserved:
            return True
        needed = size - self.reserved
        for amount in dict.fromkeys((max(needed, RESERVE_STEP), needed)):  # a step, else just what is needed
            if self._add(amount):
                self.reserved += amount
                return True
        return False

    def release_unused(self, kept: int, replaced: int = 0) -> None:
        """This part ended with `kept` bytes stored (0 when it failed): give back the rest of its reservation, and
        the `replaced` bytes of the earlier part with its number that it replaced."""
        unused = self.reserved - kept + replaced
        if unused > 0:
            self.db.execute(
                "UPDATE files SET size = CASE WHEN size > ? THEN size - ? ELSE 0 END"
                " WHERE id = ? AND state = 'pending'",
                (unused, unused, self.file_id),
            )
        self.reserved = kept

    def _add(self, amount: int) -> bool:
        result = self.db.execute(
            "UPDATE files SET size = COALESCE(size, 0) + ? WHERE id = ? AND state = 'pending'"
            " AND COALESCE(size, 0) + ? <= ?",
            (amount, self.file_id, amount, self.max_bytes),
        )
        return result.rowcount == 1
