"""Webhook deliveries: fal's payloads POSTed to `fal_webhook` URLs, with retries, surviving restarts.

A completed job queues its delivery in the same database transaction that completes it; this sender
(an asyncio task, never in the worker's way) posts due deliveries, retrying failures with exponential
backoff up to `webhook_max_attempts` tries. A delivery interrupted by a shutdown runs after the restart.
Every try is signed like fal's (server/signing.py).

Every front-end runs a sender on the shared database: a sender claims a delivery (atomically, in the database)
before trying it, so one front-end posts each try. A claim lasts `webhook_claim_s`, longer than a try can take
(`webhook_timeout_s`); a sender releases it when the try ends or at shutdown, and one that died holding it leaves
it to expire, after which another sender delivers it: each webhook arrives at least once, and normally once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid

import httpx

from seedvr_local.server.db import Database
from seedvr_local.server.events import ANY, ChangeNotifier
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.netguard import BlockedURLError, NetGuard
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.signing import WebhookSigner
from seedvr_local.server.urls import absolute_urls

log = logging.getLogger("seedvr_local.server")

_SENDER = "webhook-sender"  # a key no job has: notifying it wakes only the sender (an ANY subscriber)

#: When a pending delivery may be tried: its next attempt, or the end of another sender's claim if that is later.
_READY_AT = "(CASE WHEN claim_expires_at > next_attempt THEN claim_expires_at ELSE next_attempt END)"


#: The most bytes of a receiver's answer read (and discarded): only its status counts. A longer answer is cut off
#: by closing the connection, so a receiver cannot make this process read (or hold) more.
ANSWER_BYTES_READ = 64 * 1024


async def _skim(response: httpx.Response) -> None:
    """Read and drop at most ANSWER_BYTES_READ of the answer (a short one leaves the connection reusable). Raw
    bytes: nothing is decompressed."""
    if response.is_stream_consumed:  # an answer already in memory (a transport that is not the network)
        return
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= ANSWER_BYTES_READ:
            return


def webhook_body(request_id: str, completion, base_url: str) -> str:
    """fal's webhook payload: status OK with the output (its files' URLs on `base_url`: `--public-url`, else the
    front-end that accepted the job), or ERROR with the error body."""
    body: dict = {"request_id": request_id, "gateway_request_id": request_id}
    if completion.outcome == "ok":
        body.update(status="OK", payload=absolute_urls(completion.body, base_url))
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
        if settings.webhook_claim_s <= settings.webhook_timeout_s:
            raise ValueError(
                f"webhook_claim_s ({settings.webhook_claim_s}) must be longer than a try (webhook_timeout_s,"
                f" {settings.webhook_timeout_s}): else another front-end may post a delivery still being tried"
            )
        self.signer = signer
        self.db = db
        self.guard = guard
        self.settings = settings
        self.metrics = metrics
        self.notifier = notifier
        self.transport = transport
        #: Names this sender's claims (several senders may run on one host, in one process in the tests).
        self.sender_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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
                        for row in await asyncio.to_thread(self.claim_due):
                            if row["id"] in self._in_flight:
                                continue  # still being tried here: the claim just taken only extends its own
                            task = asyncio.create_task(self._deliver(client, row))
                            self._in_flight[row["id"]] = task
                            task.add_done_callback(lambda _t, key=row["id"]: self._in_flight.pop(key, None))
                        await changes.wait(await asyncio.to_thread(self._seconds_to_next, now))
                finally:
                    in_flight = list(self._in_flight.values())
                    for task in in_flight:
                        task.cancel()  # not counted as a try: delivered after the restart, or by another front-end
                    if in_flight:
                        await asyncio.wait(in_flight, timeout=2)
                    await asyncio.to_thread(self._release_claims)

    def claim_due(self) -> list:
        """Claims the deliveries due now that no other sender holds (up to 50) for `webhook_claim_s`; returns
        them. Two senders never claim the same one: on PostgreSQL the rows are locked and skipped by the others,
        on SQLite the transaction holds the database."""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.is_postgres else ""

        def claim() -> list:
            now = time.time()  # read in the transaction: a claim lasts webhook_claim_s however long the wait for it
            with self.db.transaction() as conn:
                rows = conn.execute(
                    "SELECT id, job_id, url, body, attempts FROM webhooks WHERE state = 'pending' AND next_attempt <= ?"
                    f" AND {_READY_AT} <= ? ORDER BY next_attempt LIMIT 50{skip_locked}",
                    (now, now),
                ).fetchall()
                conn.executemany(
                    "UPDATE webhooks SET claimed_by = ?, claim_expires_at = ? WHERE id = ?",
                    [(self.sender_id, now + self.settings.webhook_claim_s, row["id"]) for row in rows],
                )
                return rows

        return self.db.retrying(claim)  # a transaction that failed did not commit: claiming again is harmless

    def _seconds_to_next(self, now: float) -> float:
        row = self.db.query_one(
            f"SELECT MIN({_READY_AT}) FROM webhooks WHERE state = 'pending' AND {_READY_AT} > ?", (now,)
        )
        if row is None or row[0] is None:
            return 5.0
        return min(max(row[0] - now, 0.01), 5.0)

    def _release_claims(self) -> None:
        """Frees what this sender still holds (at shutdown), for another front-end or the restart to deliver now."""
        self.db.execute(
            "UPDATE webhooks SET claimed_by = NULL, claim_expires_at = NULL"
            " WHERE claimed_by = ? AND state = 'pending'",
            (self.sender_id,),
        )

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
            # the whole try within webhook_timeout_s (httpx's timeout bounds each step, not their sum): it ends
            # while the claim holds
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                target = await asyncio.to_thread(self.guard.prepare, row["url"])
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "seedvr-local (webhook)",
                    **self.signer.headers(row["job_id"], row["body"].encode()),  # signed at each try, as fal does
                    **target.headers,
                }
                async with client.stream(
                    "POST", target.url, content=row["body"], headers=headers, extensions=target.extensions
                ) as response:
                    await _skim(response)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except BlockedURLError as exc:
            error, permanent = str(exc), True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        if error is None:
            outcome = "delivered"
            recorded = await self._record(
                "UPDATE webhooks SET state = 'delivered', attempts = ?, claim_expires_at = NULL", (attempt,), row
            )
        elif permanent or attempt >= self.settings.webhook_max_attempts:
            outcome = "failed"
            recorded = await self._record(
                "UPDATE webhooks SET state = 'failed', attempts = ?, last_error = ?, claim_expires_at = NULL",
                (attempt, error),
                row,
            )
            if recorded:
                log.error(
                    "webhook of job %s to %s failed for good after %d tries: %s",
                    row["job_id"],
                    row["url"],
                    attempt,
                    error,
                )
        else:
            outcome = "retried"
            delay = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), self.settings.webhook_backoff_max_s)
            recorded = await self._record(
                "UPDATE webhooks SET attempts = ?, next_attempt = ?, last_error = ?, claimed_by = NULL,"
                " claim_expires_at = NULL",
                (attempt, time.time() + delay, error),
                row,
            )
            if recorded:
                log.warning(
                    "webhook of job %s to %s: try %d failed (%s); next in %.1f s",
                    row["job_id"],
                    row["url"],
                    attempt,
                    error,
                    delay,
                )
        if recorded:
            await asyncio.to_thread(self.metrics.webhook, outcome)  # a database write: not on the event loop
        else:
            log.warning(
                "webhook of job %s to %s: try %d (%s) ended after its claim had passed to another sender; not recorded",
                row["job_id"],
                row["url"],
                attempt,
                error or "delivered",
            )

    async def _record(self, update: str, values: tuple, row) -> bool:
        """Records a try's outcome (`update`, without its WHERE) if this sender still holds the claim."""

        def write() -> bool:
            result = self.db.execute(
                f"{update} WHERE id = ? AND claimed_by = ?", (*values, row["id"], self.sender_id)
            )
            return result.rowcount == 1

        return await asyncio.to_thread(write)
