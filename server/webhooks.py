"""Webhook deliveries: fal's payloads POSTed to `fal_webhook` URLs, with retries, surviving restarts.

A completed job queues its delivery in the same database transaction that completes it; this sender
(an asyncio task, never in the worker's way) posts due deliveries, retrying failures with exponential
backoff up to `webhook_max_attempts` tries. A delivery interrupted by a shutdown runs after the restart.
Every try is signed like fal's (server/signing.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx

from seedvr_local.server.db import Database
from seedvr_local.server.events import ANY, ChangeNotifier
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.netguard import BlockedURLError, NetGuard
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.signing import WebhookSigner

log = logging.getLogger("seedvr_local.server")

_SENDER = "webhook-sender"  # a key no job has: notifying it wakes only the sender (an ANY subscriber)


def webhook_body(request_id: str, completion) -> str:
    """fal's webhook payload: status OK with the output, or ERROR with the error body."""
    body: dict = {"request_id": request_id, "gateway_request_id": request_id}
    if completion.outcome == "ok":
        body.update(status="OK", payload=completion.body)
    else:
        body.update(status="ERROR", error=f"Invalid status code: {completion.status_code}", payload=completion.body)
    return json.dumps(body)


class WebhookSender:
    def __init__(
        self,
        db: Database,
        guard: NetGuard,
        settings: ServerSettings,
        metrics: Metrics,
        notifier: ChangeNotifier,
        signer: WebhookSigner,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.signer = signer
        self.db = db
        self.guard = guard
        self.settings = settings
        self.metrics = metrics
        self.notifier = notifier
        self.transport = transport
        self._in_flight: dict[int, asyncio.Task] = {}

    async def run(self) -> None:
        timeout = httpx.Timeout(self.settings.webhook_timeout_s)
        async with httpx.AsyncClient(
            trust_env=False, follow_redirects=False, timeout=timeout, transport=self.transport
        ) as client:
            with self.notifier.subscribe(ANY) as changes:
                try:
                    while True:
                        now = time.time()
                        for row in self._due(now):
                            task = asyncio.create_task(self._deliver(client, row))
                            self._in_flight[row["id"]] = task
                            task.add_done_callback(lambda _t, key=row["id"]: self._in_flight.pop(key, None))
                        await changes.wait(self._seconds_to_next(now))
                finally:
                    in_flight = list(self._in_flight.values())
                    for task in in_flight:
                        task.cancel()  # not counted as a try: delivered after the restart
                    if in_flight:
                        await asyncio.wait(in_flight, timeout=2)

    def _due(self, now: float) -> list:
        rows = self.db.query(
            "SELECT id, job_id, url, body, attempts FROM webhooks WHERE state = 'pending' AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT 50",
            (now,),
        )
        return [row for row in rows if row["id"] not in self._in_flight]

    def _seconds_to_next(self, now: float) -> float:
        row = self.db.query_one(
            "SELECT MIN(next_attempt) FROM webhooks WHERE state = 'pending' AND next_attempt > ?", (now,)
        )
        if row is None or row[0] is None:
            return 5.0
        return min(max(row[0] - now, 0.01), 5.0)

    async def _deliver(self, client: httpx.AsyncClient, row) -> None:
        try:
            await self._attempt(client, row)
        finally:
            self.notifier.notify(_SENDER)  # wake the loop: it may have a retry to schedule

    async def _attempt(self, client: httpx.AsyncClient, row) -> None:
        attempt = row["attempts"] + 1
        error: str | None = None
        permanent = False
        try:
            target = await asyncio.to_thread(self.guard.prepare, row["url"])
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "seedvr-local (webhook)",
                **self.signer.headers(row["job_id"], row["body"].encode()),  # signed at each try, as fal does
                **target.headers,
            }
            response = await client.post(target.url, content=row["body"], headers=headers, extensions=target.extensions)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except BlockedURLError as exc:
            error, permanent = str(exc), True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if error is None:
            self.db.execute("UPDATE webhooks SET state = 'delivered', attempts = ? WHERE id = ?", (attempt, row["id"]))
            self.metrics.webhook("delivered")
            return
        if permanent or attempt >= self.settings.webhook_max_attempts:
            self.db.execute(
                "UPDATE webhooks SET state = 'failed', attempts = ?, last_error = ? WHERE id = ?",
                (attempt, error, row["id"]),
            )
            self.metrics.webhook("failed")
            log.error(
                "webhook of job %s to %s failed for good after %d tries: %s", row["job_id"], row["url"], attempt, error
            )
            return
        delay = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), self.settings.webhook_backoff_max_s)
        self.db.execute(
            "UPDATE webhooks SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
            (attempt, time.time() + delay, error, row["id"]),
        )
        self.metrics.webhook("retried")
        log.warning(
            "webhook of job %s to %s: try %d failed (%s); next in %.1f s",
            row["job_id"],
            row["url"],
            attempt,
            error,
            delay,
        )
