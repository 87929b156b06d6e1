"""Search on a read replica (SEARCH_DATABASE_URL), never on one further behind the primary than a bound.

Why: search is read-only SQL, and at a million chunks it is what costs Postgres CPU and memory (bench/
search_scale.py). A PostgreSQL hot standby answers read-only queries ("Hot Standby", PostgreSQL docs 26.4), so
search can move to one or more standbys while webhooks, jobs and migrations stay on the primary
(DATABASE_URL).

A standby replays the primary's WAL with a delay, and what it has not replayed yet includes permission changes
(a restriction added, a page moved under a restricted parent). Answering from a standby that is far behind
could show a person a page they may no longer read, the worst thing this service can do. So a search goes to
the standby only while its last probe (every `PROBE_INTERVAL` seconds, in the background) found it:

* in recovery (`pg_is_in_recovery()`): a promoted standby no longer follows the primary;
* streaming from the primary (`pg_stat_wal_receiver.status = 'streaming'`; the view shows it only to
  superusers and members of `pg_read_all_stats`, so the search role needs that role; without it the state is
  unknown and every search goes to the primary);
* behind by at most SEARCH_REPLICA_MAX_LAG seconds: 0 when everything received is replayed
  (`pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()`), else the age of the last replayed transaction
  (`clock_timestamp() - pg_last_xact_replay_timestamp()`; the primary's commit time against the standby's
  clock, so clock skew between the machines adds to it). The formula is the usual one of the PostgreSQL
  wiki's "Streaming Replication" monitoring advice.

Otherwise, and whenever a search on the standby fails for a reason the primary may not have (connection lost,
a query cancelled by a recovery conflict, SQLSTATE 40001 / 57P04 / 57014 raised as psycopg's
OperationalError / SerializationFailure), the search runs on the primary. A search thus sees the primary's
state as of at most SEARCH_REPLICA_MAX_LAG + `PROBE_INTERVAL` seconds ago, plus the WAL receiver's own
timeout (`wal_receiver_timeout`, 60 s by default) if the standby loses the primary without noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.db import make_pool
from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two probes of the standby's lag.
PROBE_INTERVAL = 1.0
#: Seconds a probe may wait for a connection and its answer before the standby counts as unreachable.
PROBE_TIMEOUT = 2.0
#: A probe result older than this many seconds is not trusted (the probe loop stalled or died).
STATE_MAX_AGE = 3 * PROBE_INTERVAL + PROBE_TIMEOUT
#: Seconds between two log lines saying the standby is not used (the state is also in /status and /metrics).
WARN_EVERY = 60.0

_PROBE = """
SELECT pg_is_in_recovery() AS standby,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver,
       COALESCE(pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), false) AS replayed_all,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 AS since_replay
"""


def standby_pool(url: str, max_size: int) -> AsyncConnectionPool:
    """The standby's pool: a search waits at most `PROBE_TIMEOUT` seconds for one of its connections (then runs
    on the primary), not the primary pool's 10, so a standby that died costs one search 2 s, not 10."""
    return make_pool(url, max_size=max_size, timeout=PROBE_TIMEOUT)


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """The outcome of one probe. `usable`: searches may go to the standby; `reason`: why not (or `ok`);
    `lag_seconds`: how far behind it was found (None when it could not be told); `at`: `time.monotonic()`."""

    usable: bool
    reason: str
    lag_seconds: float | None
    at: float


def judge(
    *, standby: bool, receiver: str | None, replayed_all: bool, since_replay: float | None, max_lag: float, at: float
) -> ReplicaState:
    """The rule of the module docstring, on one probe's answer (a pure function, tested on its own)."""
    if not standby:
        return ReplicaState(False, "not a standby (not in recovery: promoted, or the primary itself)", None, at)
    if receiver is None:
        return ReplicaState(
            False,
            "replication state unknown: no WAL receiver visible (grant pg_read_all_stats to the search role, "
            "or the standby is not connected to its primary)",
            None,
            at,
        )
    if receiver != "streaming":
        return ReplicaState(False, f"not streaming from the primary (WAL receiver {receiver})", None, at)
    lag = 0.0 if replayed_all else max(0.0, since_replay if since_replay is not None else float("inf"))
    if lag > max_lag:
        return ReplicaState(False, f"{lag:.1f} s behind the primary (SEARCH_REPLICA_MAX_LAG={max_lag:g})", lag, at)
    return ReplicaState(True, "ok", lag, at)


#: Errors after which a search on the standby is retried on the primary: the standby went away or cancelled
#: the query over a recovery conflict (PostgreSQL docs 26.4.2, "Handling Query Conflicts").
_STANDBY_FAILURES = (psycopg.OperationalError, psycopg.errors.SerializationFailure, PoolTimeout, DatabaseUnavailable)


class SearchDatabase:
    """Where searches run: the primary pool, or a standby's pool while `judge` allows it.

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
        self._state = ReplicaState(False, "not probed yet", None, float("-inf"))
        self._task: asyncio.Task[None] | None = None
        self._last_warning = float("-inf")

    async def open(self) -> None:
        """Start probing the standby (its pool opens without waiting: an unreachable standby never delays a
        start, searches go to the primary until a probe finds it usable). First probe before returning."""
        if self.standby is None:
            return
        await self.standby.open(wait=False)
        await self.probe()
        self._task = asyncio.create_task(self._probe_forever(), name="search-standby-probe")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.standby is not None:
            await self.standby.close()

    @property
    def state(self) -> ReplicaState | None:
        """The last probe's result; None when no standby is configured."""
        return None if self.standby is None else self._state

    def report(self) -> dict[str, object] | None:
        """The standby's state for /status (None when none is configured)."""
        state = self.state
        if state is None:
            return None
        return {
            "used": self._usable(),
            "reason": state.reason,
            "lag_seconds": None if state.lag_seconds is None else round(state.lag_seconds, 3),
            "max_lag_seconds": self.max_lag,
        }

    async def probe(self) -> ReplicaState:
        """Ask the standby how far behind it is; never raises (an unreachable standby is a state)."""
        assert self.standby is not None
        now = time.monotonic()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with self.standby.connection(timeout=PROBE_TIMEOUT) as conn:
                    row = await (await conn.execute(_PROBE)).fetchone()
            assert row is not None
            state = judge(
                standby=bool(row[0]),
                receiver=row[1],
                replayed_all=bool(row[2]),
                since_replay=row[3],
                max_lag=self.max_lag,
                at=now,
            )
        except (TimeoutError, psycopg.Error, PoolTimeout) as exc:
            # The reason is shown in /status: the class only; the message (host names) goes to the log.
            state = ReplicaState(False, f"unreachable ({type(exc).__name__})", None, now)
            if time.monotonic() - self._last_warning >= WARN_EVERY:
                log.warning("SEARCH_DATABASE_URL unreachable", extra={"error": str(exc)})
        self._state = state
        if not state.usable:
            self._warn(state.reason)
        return state

    async def run(self, fn: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
        """`fn` on the standby when it may answer, else (or after it failed) on the primary."""
        if self.standby is None or not self._usable():
            if self.standby is not None:
                self._on_fallback("standby not usable")
            return await fn(self.primary)
        try:
            return await fn(self.standby)
        except _STANDBY_FAILURES as exc:
            # Not usable until a probe says so again: the next searches do not each pay for the failure.
            self._state = ReplicaState(
                False, f"a search failed on the standby ({type(exc).__name__})", None, time.monotonic()
            )
            log.warning("search failed on SEARCH_DATABASE_URL, run on the primary", extra={"error": str(exc)})
            self._on_fallback("search failed on the standby")
            return await fn(self.primary)

    def _usable(self) -> bool:
        state = self._state
        return state.usable and time.monotonic() - state.at <= STATE_MAX_AGE

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("searches go to the primary, not SEARCH_DATABASE_URL", extra={"reason": reason})

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.probe()
