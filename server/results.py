"""A sync_mode output, inline in the result as a data URI: bounded, since the result is kept in the job row (and
in its webhook's), and a row past the database's field limit cannot be stored."""

from __future__ import annotations

import base64
from collections.abc import Callable

from seedvr_local.server.errors import model_error


def inline_output(read: Callable[[], bytes], size: int, content_type: str, limit: int) -> str:
    """The data URI of an output of `size` bytes (`read()` gives them); a 422 on `sync_mode`, before anything is
    encoded, when the output is over `limit` bytes (`--max-sync-result-bytes`)."""
    if size > limit:
        raise model_error(
            "sync_mode",
            f"the output is {size:,} bytes, more than the {limit:,} bytes a sync_mode result may hold inline; "
            "submit it without sync_mode to get a file URL",
            "output_too_large",
            {"max_bytes": limit},
        )
    return f"data:{content_type};base64,{base64.b64encode(read()).decode('ascii')}"
