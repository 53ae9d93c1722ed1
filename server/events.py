"""Wake-ups from the worker thread to the coroutines waiting on a job (sync runs, SSE streams).

A waiter subscribes *before* reading the job's state, so a change between the read and the wait is
never missed; the worker thread wakes it with `notify(job_id)` through the waiter's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

ANY = "*"  # subscribers to every change (the webhook sender)


class Subscription:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when something changed since the last wait, False on timeout."""
        # anyio's scope, not asyncio.wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event fires, and a cancelled waiter (at shutdown) then waits forever.
        with anyio.move_on_after(timeout):
            await self.event.wait()
        if not self.event.is_set():
            return False
        self.event.clear()
        return True


class ChangeNotifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}

    @contextmanager
    def subscribe(self, key: str) -> Iterator[Subscription]:
        subscription = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.setdefault(key, set()).add(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                subscribers = self._subscribers.get(key)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del self._subscribers[key]

    def notify(self, key: str | None) -> None:
        """Wake the subscribers of `key` (None: everybody); callable from any thread."""
        with self._lock:
            if key is None:
                targets = [s for subscribers in self._subscribers.values() for s in subscribers]
            else:
                targets = list(self._subscribers.get(key, ())) + list(self._subscribers.get(ANY, ()))
        for subscription in targets:
            try:
                subscription.loop.call_soon_threadsafe(subscription.event.set)
            except RuntimeError:  # that loop has closed: its waiter is gone
                pass
