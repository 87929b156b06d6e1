"""Search on a read replica (SEARCH_DATABASE_URL), never on one further behind the primary than a bound.

Why: search is read-only SQL, and at a million chunks it is what costs Postgres CPU and memory (bench/
search_scale.py). A PostgreSQL hot standby answers read-only queries ("Hot Standby", PostgreSQL docs 26.4), so
search can move to one or more standbys while webhooks, jobs and migrations stay on the primary
(DATABASE_URL).

A standby replays the primary's WAL with a delay, and what it has not replayed yet includes permission changes
(a restriction added, a page moved under a restricted parent). Answering from a standby that is far behind
could show a person a page they may no longer read, the worst thing this service can do. So the bound is
measured against the primary itself, never against what the standby believes it was sent: every
`PROBE_INTERVAL` seconds a probe notes the time t, reads the primary's WAL insert position
(`pg_current_wal_insert_lsn()`: every commit visible before t, asynchronous ones included, lies before it),
then asks the standby whether it has replayed up to there (`pg_last_wal_replay_lsn()`). If so, the standby
holds everything the primary had at t ("fresh at t"). A search goes to the standby only while

    now - (the last t it was found fresh at) <= SEARCH_REPLICA_MAX_LAG

checked when the search starts, so a probe that is late (a busy or hung standby, a slow network) makes the
standby unusable rather than stretching the bound. The standby must also be in recovery (a promoted standby no
longer follows the primary) and a copy of the same cluster (`pg_control_system().system_identifier`). None of
these needs a privilege beyond connecting.

A search on the standby that fails in any database way (connection lost, a query cancelled by a recovery
conflict, a function or table a migration has created on the primary but the standby has not replayed yet) or
takes longer than `STANDBY_SEARCH_SECONDS` runs again on the primary, and the standby is left alone until a
probe finds it fresh again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.db import make_pool
from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two probes of the standby.
PROBE_INTERVAL = 1.0
#: Seconds a probe may take (both servers) before it counts as failed.
PROBE_TIMEOUT = 2.0
#: Seconds a search may take on the standby before it is run on the primary instead (a hung standby, a
#: partition: the standby's answer is abandoned, not awaited).
STANDBY_SEARCH_SECONDS = 5.0
#: Seconds between two log lines saying the standby is not used (the state is also in /status and /metrics).
WARN_EVERY = 60.0

_PRIMARY_PROBE = "SELECT pg_current_wal_insert_lsn()::text, (SELECT system_identifier FROM pg_control_system())"
_STANDBY_PROBE = """
SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()),
       COALESCE(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)
"""


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """The outcome of the probes so far. `reachable`: the last probe could ask the standby, and it is a standby
    of this primary; `reason`: why it is not used (or `ok`); `fresh_at`: `time.monotonic()` before reading the
    primary's position that the standby was last found to have replayed (-inf: never); `at`: last probe."""

    reachable: bool
    reason: str
    fresh_at: float
    at: float

    def lag_bound(self, now: float) -> float:
        """Seconds the standby may be behind the primary at `now`, at most."""
        return now - self.fresh_at

    def usable(self, now: float, max_lag: float) -> bool:
        return self.reachable and self.lag_bound(now) <= max_lag


def judge(
    *,
    in_recovery: bool,
    same_cluster: bool,
    caught_up: bool,
    probe_started: float,
    previous: ReplicaState,
    at: float,
) -> ReplicaState:
    """One probe's answer, on top of what was known (a pure function, tested on its own)."""
    if not in_recovery:
        return ReplicaState(
            False, "not a standby (not in recovery: promoted, or the primary itself)", float("-inf"), at
        )
    if not same_cluster:
        return ReplicaState(
            False, "not a standby of DATABASE_URL's server (another system identifier)", float("-inf"), at
        )
    fresh_at = probe_started if caught_up else previous.fresh_at
    return ReplicaState(True, "ok" if caught_up else "replaying behind the primary", fresh_at, at)


def standby_pool(url: str, max_size: int) -> AsyncConnectionPool:
    """The standby's pool: a search waits at most `PROBE_TIMEOUT` seconds for one of its connections (then runs
    on the primary), not the primary pool's 10."""
    return make_pool(url, max_size=max_size, timeout=PROBE_TIMEOUT)


#: Whatever a search on the standby may fail with that the primary may not: the standby went away, cancelled the
#: query over a recovery conflict (PostgreSQL docs 26.4.2), has not replayed a migration yet, or timed out.
_STANDBY_FAILURES = (psycopg.Error, PoolTimeout, DatabaseUnavailable, TimeoutError)


class SearchDatabase:
    """Where searches run: the primary pool, or the standby's while `ReplicaState.usable`.

    `run(fn)` calls `fn(pool)` on the chosen pool and, if that was the standby and it failed as above, once
    more on the primary. Without SEARCH_DATABASE_URL it is the primary pool, always, and nothing is probed.
    """

    def __init__(
        self,
        primary: AsyncConnectionPool,
        standby: AsyncConnectionPool | None,
        *,
        max_lag: float,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.primary = primary
        self.standby = standby
        self.max_lag = max_lag
        self._on_fallback = on_fallback or (lambda reason: None)
        self._state = ReplicaState(False, "not probed yet", float("-inf"), float("-inf"))
        self._probe_conn: psycopg.AsyncConnection[Any] | None = None
        self._standby_url = "" if standby is None or not isinstance(standby.conninfo, str) else standby.conninfo
        self._task: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._last_warning = float("-inf")

    async def open(self) -> None:
        """Start probing the standby; its pool opens without waiting for a connection. The first probe runs
        before this returns (at most `PROBE_TIMEOUT` seconds), so the first searches can use the standby."""
        if self.standby is None:
            return
        await self.standby.open(wait=False)
        await self.probe()
        self._task = asyncio.create_task(self._probe_forever(), name="search-standby-probe")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in self._abandoned:
            task.cancel()
        await self._drop_probe_connection()
        if self.standby is not None:
            await self.standby.close()

    @property
    def state(self) -> ReplicaState | None:
        """What the probes found; None when no standby is configured."""
        return None if self.standby is None else self._state

    def usable(self) -> bool:
        """Whether a search starting now may run on the standby."""
        return self.standby is not None and self._state.usable(time.monotonic(), self.max_lag)

    def report(self) -> dict[str, object] | None:
        """The standby's state for /status (None when none is configured). Never the standby's address."""
        if self.standby is None:
            return None
        state, now = self._state, time.monotonic()
        used = state.usable(now, self.max_lag)
        bound = state.lag_bound(now)
        reason = state.reason
        if state.reachable and not used:
            reason = (
                f"not found up to date with the primary for {bound:.1f} s (SEARCH_REPLICA_MAX_LAG={self.max_lag:g})"
            )
        return {
            "used": used,
            "reason": "ok" if used else reason,
            "lag_seconds_at_most": None if bound == float("inf") else round(bound, 3),
            "max_lag_seconds": self.max_lag,
        }

    async def probe(self) -> ReplicaState:
        """Compare the standby's replay position with the primary's; never raises (failing is a state)."""
        assert self.standby is not None
        started = time.monotonic()
        task = asyncio.ensure_future(self._probe_once(started))
        done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT)
        if task in done and task.exception() is None:
            state = task.result()
        else:
            if task not in done:  # hung: abandoned (its cancellation may itself wait on the network)
                self._abandon(task)
                self._probe_conn = None
                what = "TimeoutError"
            else:
                exc = task.exception()
                what = type(exc).__name__
                if not isinstance(exc, psycopg.Error | PoolTimeout | OSError):
                    log.error("search standby probe failed", exc_info=exc)
                await self._drop_probe_connection()
            # The class only: the reason is shown in /status; messages (addresses) go to the log.
            state = ReplicaState(False, f"unreachable ({what})", self._state.fresh_at, time.monotonic())
        self._state = state
        if not state.usable(time.monotonic(), self.max_lag):
            self._warn(state.reason)
        return state

    async def _probe_once(self, started: float) -> ReplicaState:
        async with self.primary.connection(timeout=PROBE_TIMEOUT) as conn:
            row = await (await conn.execute(_PRIMARY_PROBE)).fetchone()
        assert row is not None
        primary_lsn, primary_system = row
        if self._probe_conn is None or self._probe_conn.closed:
            # Its own connection: a probe never queues behind searches for one of the pool's.
            self._probe_conn = await psycopg.AsyncConnection.connect(
                self._standby_url,
                autocommit=True,
                connect_timeout=max(1, int(PROBE_TIMEOUT)),
                application_name="confluence-vectors-probe",
            )
        found = await (await self._probe_conn.execute(_STANDBY_PROBE, (primary_lsn,))).fetchone()
        assert found is not None
        return judge(
            in_recovery=bool(found[0]),
            same_cluster=found[1] == primary_system,
            caught_up=bool(found[2]),
            probe_started=started,
            previous=self._state,
            at=time.monotonic(),
        )

    async def run(self, fn: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
        """`fn` on the standby when it may answer, else (or after it failed) on the primary."""
        if self.standby is None:
            return await fn(self.primary)
        if not self.usable():
            self._on_fallback("standby not usable")
            return await fn(self.primary)
        attempt = asyncio.ensure_future(fn(self.standby))
        done, _ = await asyncio.wait({attempt}, timeout=STANDBY_SEARCH_SECONDS)
        if attempt in done:
            exc = attempt.exception()
            if exc is None:
                return attempt.result()
            if not isinstance(exc, _STANDBY_FAILURES):
                raise exc  # not the standby's doing (the embedding server, a bad request): the same on the primary
            error = f"{type(exc).__name__}: {exc}"
            what = type(exc).__name__
        else:
            self._abandon(attempt)
            error = what = "TimeoutError"
        # Not used again until a probe finds it fresh: the next searches do not each pay for the failure.
        self._state = ReplicaState(False, f"a search failed on the standby ({what})", float("-inf"), time.monotonic())
        log.warning("search failed on SEARCH_DATABASE_URL, run on the primary", extra={"error": error})
        self._on_fallback("search failed on the standby")
        return await fn(self.primary)

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Cancel `task` without waiting for it (a hung server may hold its cancellation for long)."""
        task.cancel()
        if isinstance(task, asyncio.Task):
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception never retrieved"

    async def _drop_probe_connection(self) -> None:
        conn, self._probe_conn = self._probe_conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await conn.close()

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("searches go to the primary, not SEARCH_DATABASE_URL", extra={"reason": reason})

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.probe()
