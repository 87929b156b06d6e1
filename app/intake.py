"""Webhook intake: group commit of acknowledged deliveries, so a 202 costs a share of one transaction.

A 202 promises the job is in Postgres. Committing each webhook on its own costs several round trips and a WAL
flush per request; under a burst (a space import, a bulk label change) requests queue behind each other's
commits, and acknowledgement latency grows with the burst. Here every request hands its delivery to one
flusher and waits; the flusher cuts a batch of everything waiting and stores it in one transaction: the
dedupe check, the jobs (one insert) and the delivery digests. Up to `MAX_IN_FLIGHT` batches commit at once,
so requests keep being parsed while earlier ones commit; when every slot is busy, arrivals pile up and the
next batch is bigger. No request waits for a timer: alone, a delivery is committed at once.

Measured with bench/webhook_latency.py at 200 connections, worker busy: one commit per webhook acknowledged
~600 webhooks/s, this intake ~3,000/s.

Each request still gets its own answer: `queued`, `coalesced` (its page already has a waiting job) or
`duplicate` (a re-delivery inside the dedupe window), or DatabaseUnavailable, which the webhook turns into 503.
The outcome is only decided after the commit, so no 202 is ever sent for work that was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from app.deliveries import recently_seen, remember_deliveries
from app.metrics import Metrics
from app.queue import PageJobRequest, defer_pages, in_deferral_transaction

log = logging.getLogger(__name__)

IntakeOutcome = Literal["queued", "coalesced", "duplicate"]

#: Largest batch in one transaction: bounds the statement size and the blast radius of one failed commit.
MAX_BATCH = 500
#: Transactions in flight at once: enough to keep parsing requests while others commit, few enough to leave
#: the pool to search and status (DB_POOL_SIZE, default 10).
MAX_IN_FLIGHT = 3
#: Event-loop passes a batch may wait for more requests to join it (only while each pass brings new ones).
_GATHER_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class Delivery:
    """An authenticated page event to store: its job, and the digest that recognises its re-deliveries."""

    job: PageJobRequest
    digest: str


class WebhookIntake:
    """Stores deliveries in batches, one transaction per batch, a few batches at a time."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        dedupe_window_seconds: int,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._window = dedupe_window_seconds
        self._max_batch = max_batch
        self._metrics = metrics
        self._pending: list[tuple[Delivery, asyncio.Future[IntakeOutcome]]] = []
        self._arrived = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.batches = 0  #: transactions committed, for tests and the benchmark

    async def submit(self, delivery: Delivery) -> IntakeOutcome:
        """Wait until `delivery` is committed (or found to need nothing) and say what became of it."""
        future: asyncio.Future[IntakeOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((delivery, future))
        self._arrived.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._run(), name="webhook-intake")
        # shield: a client hanging up must not cancel the future the flusher will resolve
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Store what is pending, wait for the batches in flight, then stop the flusher."""
        while self._pending and self._flusher is not None and not self._flusher.done():
            await asyncio.sleep(0.01)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    async def _run(self) -> None:
        """Cut batches and commit them, up to `max_in_flight` transactions at once.

        A slot is taken *before* the batch is cut: while every slot is busy, arrivals pile up and the next
        batch is bigger, so the number of transactions adapts to the load. With several in flight, requests
        are parsed while earlier batches commit, instead of the whole process idling on each commit.
        """
        while True:
            await self._arrived.wait()
            await self._slots.acquire()
            await self._gather()
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            if not self._pending:
                self._arrived.clear()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._commit(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _commit(self, batch: list[tuple[Delivery, asyncio.Future[IntakeOutcome]]]) -> None:
        try:
            outcomes = await self._store([delivery for delivery, _ in batch])
        except Exception as exc:  # every waiter gets the failure: never a 202 for an unstored job
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _gather(self) -> None:
        """Let requests whose bytes have already arrived reach `submit` before the batch is cut.

        Without this, a burst's first request is committed alone and the rest wait for it: the batches
        alternate 1, 199, 1, 199. Each round is one pass of the event loop, so a lone webhook waits a few
        microseconds, not a timer.
        """
        for _ in range(_GATHER_ROUNDS):
            before = len(self._pending)
            if before >= self._max_batch:
                return
            await asyncio.sleep(0)
            if len(self._pending) == before:
                return

    async def _store(self, batch: list[Delivery]) -> list[IntakeOutcome]:
        started = time.perf_counter()
        outcomes = await in_deferral_transaction(self._pool, lambda conn: self._store_in(conn, batch))
        self.batches += 1
        if self._metrics is not None:
            self._metrics.webhook_batch.observe(len(batch))
            self._metrics.stage_seconds.labels("webhook_commit").observe(time.perf_counter() - started)
        return outcomes

    async def _store_in(self, conn: psycopg.AsyncConnection[Any], batch: list[Delivery]) -> list[IntakeOutcome]:
        """Check, defer and remember `batch` on `conn`, inside the caller's transaction."""
        seen = await recently_seen(conn, [d.digest for d in batch], self._window)
        fresh: list[int] = []
        for index, delivery in enumerate(batch):
            if not (self._window and delivery.digest in seen):
                seen.add(delivery.digest)  # the same delivery twice in one batch is a duplicate too
                fresh.append(index)
        deferred = await defer_pages(conn, [batch[i].job for i in fresh])
        if self._window:
            await remember_deliveries(conn, [batch[i].digest for i in fresh])
        outcomes: list[IntakeOutcome] = ["duplicate"] * len(batch)
        for index, outcome in zip(fresh, deferred, strict=True):
            outcomes[index] = outcome
        return outcomes
