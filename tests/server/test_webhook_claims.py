"""Several front-ends on one database each run a webhook sender: a claim per delivery makes one of them post each
try; a claim left by a sender that died expires and another delivers it; a sender stopping releases its claims."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter

import httpx
import pytest

from seedvr_local.server.db import Database
from seedvr_local.server.events import ChangeNotifier
from seedvr_local.server.jobs import Completion, JobStore
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.netguard import NetGuard
from seedvr_local.server.signing import WebhookSigner
from seedvr_local.server.webhooks import WebhookSender
from tests.server.helpers import wait_until

HOOK = "http://hooks.example/hook"  # never resolved: each sender's transport answers in the test


class Front:
    """What one front-end process has: its own connection pool, notifier and sender; its receiver records the
    request ids it was sent (`hang`: the receiver never answers)."""

    def __init__(self, settings, hang: bool = False):
        self.db = Database(settings.database_url or settings.database_path)
        self.notifier = ChangeNotifier()
        self.received: list[tuple[str, float]] = []
        self.answering = threading.Event()

        async def receive(request: httpx.Request) -> httpx.Response:
            self.received.append((request.headers["X-Fal-Webhook-Request-Id"], time.time()))
            if hang:
                self.answering.set()
                await asyncio.Event().wait()
            return httpx.Response(200)

        signer = WebhookSigner.from_database(self.db, settings.data_dir, settings.webhook_user_id)
        guard, transport = NetGuard(allow_private=True), httpx.MockTransport(receive)
        self.sender = WebhookSender(self.db, guard, settings, Metrics(self.db), self.notifier, signer, transport)

    def ids(self) -> list[str]:
        return [request_id for request_id, _ in self.received]


@contextlib.contextmanager
def running(*fronts: Front):
    """The fronts' senders running in an event loop of their own (as in their server) until the block ends."""
    stop = threading.Event()
    crashes: list[BaseException] = []

    async def main() -> None:
        tasks = [asyncio.create_task(front.sender.run()) for front in fronts]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        crashes.extend(r for r in results if not isinstance(r, asyncio.CancelledError))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not crashes, crashes


@pytest.fixture
def fronts(settings):
    made: list[Front] = []

    def make(**options) -> Front:
        made.append(Front(settings, **options))
        return made[-1]

    yield make
    for front in made:
        front.db.close()


def _complete_jobs(settings, count: int, fronts: list[Front]) -> list[str]:
    """`count` jobs completed with a webhook (each queues its delivery), every front told as LISTEN/NOTIFY would."""

    def tell_every_front(job_id: str | None) -> None:
        for front in fronts:
            front.notifier.notify(job_id)

    db = Database(settings.database_url or settings.database_path)
    try:
        jobs = JobStore(db, on_change=tell_every_front)
        done = Completion.success({"ok": True}, 0.1)
        return [jobs.create("queue", {}, "http://x", webhook_url=HOOK, completion=done).id for _ in range(count)]
    finally:
        db.close()


def _webhooks(db: Database) -> dict[str, tuple]:
    rows = db.query("SELECT job_id, state, attempts, claimed_by FROM webhooks")
    return {row["job_id"]: (row["state"], row["attempts"], row["claimed_by"]) for row in rows}


def test_two_senders_post_each_webhook_once(settings, fronts):
    first, second = fronts(), fronts()
    with running(first, second):
        request_ids = _complete_jobs(settings, 20, [first, second])
        wait_until(
            lambda: {state for state, _, _ in _webhooks(first.db).values()} == {"delivered"}, "every webhook delivered"
        )
    assert Counter(first.ids() + second.ids()) == Counter(request_ids)  # each exactly once
    senders = {first.sender.sender_id, second.sender.sender_id}
    assert all(attempts == 1 and by in senders for _, attempts, by in _webhooks(first.db).values())


def test_a_dead_sender_s_claim_expires_and_another_delivers(settings, fronts):
    settings.webhook_timeout_s, settings.webhook_claim_s = 0.2, 600
    dead, survivor = fronts(), fronts()
    [request_id] = _complete_jobs(settings, 1, [])
    [claimed] = dead.sender.claim_due()  # ... and its process is killed before it posts
    assert survivor.sender.claim_due() == []  # not while the claim holds
    with dead.db.transaction() as conn:  # the claim's time runs out (a clock moved on, not a test waiting)
        conn.execute("UPDATE webhooks SET claim_expires_at = ?", (time.time() - 1,))
    with running(survivor):
        wait_until(lambda: _webhooks(survivor.db)[request_id][0] == "delivered", "the webhook delivered")
    [(received_id, _)] = survivor.received
    assert claimed["job_id"] == received_id == request_id and not dead.received
    assert _webhooks(survivor.db)[request_id] == ("delivered", 1, survivor.sender.sender_id)


def test_a_stopping_sender_releases_its_claim_at_once(settings, fronts):
    stopping, other = fronts(hang=True), fronts()  # the default claim (30 s) outlasts the waits below
    [request_id] = _complete_jobs(settings, 1, [])
    with running(stopping):
        wait_until(stopping.answering.is_set, "the first try under way")
    assert _webhooks(stopping.db)[request_id] == ("pending", 0, None)  # the interrupted try is not counted
    with running(other):
        wait_until(lambda: _webhooks(other.db)[request_id][0] == "delivered", "the webhook delivered")
    assert other.ids() == [request_id]
