"""The state gauges `/metrics` reports (pages by status, jobs by status), refreshed cheaply and rarely.

`/metrics` answers anyone who can reach the port, and scrapers poll it every few seconds, so what a scrape
costs must not grow with the index. It used to run the whole `status` report, whose `count(*)` over the
vector table reads every chunk row (Postgres has no stored row count: a `count(*)` is a full scan or an
index-only scan of all of them). Here a scrape reads only `cv_pages` (one row per page) and the job table
grouped by status, and at most once per `REFRESH_SECONDS` per process: scrapes in between, or a flood of
them, are served from the gauges as they are.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from app.queue import queue_counts

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

#: Seconds between two refreshes of the gauges; a scrape in between costs no query at all.
REFRESH_SECONDS = 5.0


class StateGauges:
    """Refreshes `metrics.pages` and `metrics.queue_depth` from Postgres, rate-limited per process."""

    def __init__(self, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._refresh_seconds = refresh_seconds
        self._last = -float("inf")
        self._page_statuses: set[str] = set()
        self._job_statuses: set[str] = set()

    async def refresh(self, rt: Runtime) -> None:
        """Update the gauges if the last refresh is older than `refresh_seconds`. Never raises: metrics must
        answer with Postgres down (the gauges then keep their last values, and the failure is logged)."""
        now = time.monotonic()
        if now - self._last < self._refresh_seconds:
            return
        self._last = now  # taken before the queries: concurrent scrapes do not all refresh at once
        try:
            async with rt.pool.connection() as conn:
                cur = await conn.execute("SELECT status, count(*) FROM cv_pages GROUP BY status")
                pages = {str(status): int(n) for status, n in await cur.fetchall()}
            queue = await queue_counts(rt.queue)
        except Exception as exc:  # logged; a scrape must still be answered
            log.warning("metrics gauges not refreshed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self._set(rt.metrics.pages, pages, self._page_statuses)
        self._set(rt.metrics.queue_depth, queue, self._job_statuses)

    @staticmethod
    def _set(gauge: Gauge, counts: dict[str, int], seen: set[str]) -> None:
        """Set each status's count; a status seen before and now absent (its last page left it) reads 0
        rather than keeping its old value for ever."""
        seen.update(counts)
        for status in seen:
            gauge.labels(status).set(counts.get(status, 0))
