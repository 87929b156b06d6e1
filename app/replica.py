"""Search on a read replica (SEARCH_DATABASE_URL), never on one further behind the primary than a bound.

Why: search is read-only SQL, and at a million chunks it is what costs Postgres CPU and memory (bench/
search_scale.py). A PostgreSQL hot standby answers read-only queries ("Hot Standby", PostgreSQL docs 26.4), so
search can move to one or more standbys while webhooks, jobs and migrations stay on the primary
(DATABASE_URL).

A standby replays the primary's WAL late, and what it has not replayed yet includes permission changes (a
restriction added, a page moved under a restricted parent). Answering from a standby that is far behind could
show a person a page they may no longer read, the worst thing this service can do. So freshness is measured the
way pt-heartbeat does it, with a write of our own rather than the servers' own bookkeeping (which a slow link,
a failover onto another timeline or a load balancer in front of several standbys can all mislead; found by
reviewers, tests/integration/test_break_standby_*.py):

* every `BEAT_INTERVAL` seconds this process notes the time t and writes its counter k to its row of
  `cv_search_heartbeat` on the primary, on a connection of its own (a busy pool never delays it);
* before each search, on the very standby connection that will run it, it reads its row back: a standby
  showing beat k has replayed that write, so it holds every commit the primary had at t_k;
* the search runs there only if `now - t_k <= SEARCH_REPLICA_MAX_LAG`; otherwise, or when the row is missing
  (another cluster, a standby promoted away from this primary: our beats never reach it), on the primary.

A search on the standby that fails in any database way (connection lost, a query cancelled by a recovery
conflict, a function a migration has created on the primary but the standby has not replayed yet) or takes
longer than `STANDBY_SEARCH_SECONDS` (the query embedding is computed before, and not counted) runs again on
the primary. The search role on the standby needs only to read the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.db import make_pool
from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two heartbeats written on the primary.
BEAT_INTERVAL = 1.0
#: Seconds a heartbeat write, or the read of it on a standby connection, may take.
BEAT_TIMEOUT = 2.0
#: Seconds a search may take on the standby before it is run on the primary instead (a hung standby, a
#: partition: the standby's attempt is abandoned, not awaited).
STANDBY_SEARCH_SECONDS = 5.0
#: Seconds between two log lines saying the standby is not used (the state is also in /status and /metrics).
WARN_EVERY = 60.0
#: Heartbeat rows of processes gone for this long are deleted (by any process's beat).
FORGET_BEATS_AFTER = "1 day"


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the last look at the standby found: `usable` (a search starting then would have run there),
    `reason` (why not, or `ok`), `lag_seconds` (how old the standby's copy of our latest beat was: an upper bound
    of how far behind it was; None when unknown), `at` (`time.monotonic()`)."""

    usable: bool
    reason: str
    lag_seconds: float | None
    at: float


class Precomputed:
    """A query embedder that returns a vector computed beforehand: the embedding is not part of the time a
    search may take on the standby, and a search run again on the primary does not embed twice."""

    def __init__(self, vector: Sequence[float]) -> None:
        self._vector = list(vector)

    async def aget_query_embedding(self, query: str) -> list[float]:
        return self._vector


async def precompute(embedder: Any, query: str) -> Precomputed:
    """`embedder`'s vector for `query`, once (raises what the embedder raises)."""
    return Precomputed(await embedder.aget_query_embedding(query))


class _OneConnection:
    """The `connection()` of a pool, always giving the one connection the heartbeat was read on, inside the
    REPEATABLE READ transaction that read it (`app.search.search` then takes no snapshot of its own)."""

    #: Read by `app.search.search`: the connection is already in a REPEATABLE READ transaction.
    in_repeatable_read = True

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        yield self._conn


def standby_pool(url: str, max_size: int) -> AsyncConnectionPool:
    """The standby's pool: a search waits at most `BEAT_TIMEOUT` seconds for one of its connections (then runs
    on the primary), not the primary pool's 10."""
    return make_pool(url, max_size=max_size, timeout=BEAT_TIMEOUT)


#: Whatever a search on the standby may fail with that the primary may not: the standby went away, cancelled the
#: query over a recovery conflict (PostgreSQL docs 26.4.2), has not replayed a migration yet, or timed out.
_STANDBY_FAILURES = (psycopg.Error, PoolTimeout, DatabaseUnavailable, TimeoutError, OSError)


class _NotFresh(Exception):
    """The standby connection's copy of our heartbeat is missing or too old."""


class SearchDatabase:
    """Where searches run: the primary pool, or a standby connection that shows a recent enough heartbeat.

    `run(fn)` calls `fn(pool)` with the primary pool or with a one-connection view of a standby connection, and,
    if the standby failed as above, once more on the primary. Without SEARCH_DATABASE_URL it is the primary pool,
    always, and nothing is written or probed.
    """

    def __init__(
        self,
        primary: AsyncConnectionPool,
        standby: AsyncConnectionPool | None,
        *,
        max_lag: float,
        on_fallback: Callable[[str], None] | None = None,
        primary_url: str | None = None,
    ) -> None:
        self.primary = primary
        self.standby = standby
        self.max_lag = max_lag
        self._on_fallback = on_fallback or (lambda reason: None)
        self._primary_url = primary_url or (primary.conninfo if isinstance(primary.conninfo, str) else "")
        self.probe_id = f"{secrets.token_hex(8)}"
        self._beat = 0
        #: beat number -> `time.monotonic()` just before it was written, for the beats within reach.
        self._beats: OrderedDict[int, float] = OrderedDict()
        self._beat_conn: psycopg.AsyncConnection[Any] | None = None
        self._state = ReplicaState(False, "not checked yet", None, float("-inf"))
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._last_warning = float("-inf")
        self._closed = False

    async def open(self) -> None:
        """Write a first heartbeat and start beating; the standby's pool opens without waiting for it. Searches
        use the standby once it has replayed a beat (usually within a second)."""
        if self.standby is None:
            return
        await self.standby.open(wait=False)
        await self.beat()
        self._task = asyncio.create_task(self._beat_forever(), name="search-standby-heartbeat")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for pending in list(self._pending):
            pending.cancel()
        conn, self._beat_conn = self._beat_conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BEAT_TIMEOUT):
                    await conn.close()
        if self.standby is not None:
            await self.standby.close()

    @property
    def state(self) -> ReplicaState | None:
        """What the last look at the standby found; None when no standby is configured."""
        return None if self.standby is None else self._state

    def usable(self) -> bool:
        """Whether the last look found the standby fresh enough (each search checks again on its connection)."""
        return self.standby is not None and self._state.usable

    def report(self) -> dict[str, object] | None:
        """The standby's state for /status (None when none is configured). Never the standby's address."""
        if self.standby is None:
            return None
        state = self._state
        return {
            "used": state.usable,
            "reason": state.reason,
            "lag_seconds_at_most": None if state.lag_seconds is None else round(state.lag_seconds, 3),
            "max_lag_seconds": self.max_lag,
        }

    # --- heartbeats ---------------------------------------------------------------------------------------

    async def beat(self) -> ReplicaState:
        """Write the next heartbeat on the primary, then look at the standby (for /status); returns what that
        look found. Never raises."""
        # The number is used up and its time noted BEFORE the write: a write whose answer is lost may still
        # commit, and a number written twice would let the second write's time vouch for a standby that only
        # replayed the first (found by a reviewer). A standby showing k holds every commit made before t_k,
        # whether or not we heard back.
        self._beat += 1
        beat, started = self._beat, time.monotonic()
        self._beats[beat] = started
        horizon = started - self.max_lag - 60
        while self._beats and next(iter(self._beats.values())) < horizon:
            self._beats.popitem(last=False)
        try:
            await self._bounded(self._write_beat(beat))
        except Exception as exc:  # a beat not written only makes the standby look older: safe
            if not isinstance(exc, _STANDBY_FAILURES):
                log.error("search standby heartbeat failed", exc_info=exc)
            await self._drop_beat_connection()
        await self._look()
        return self._state

    async def _write_beat(self, beat: int) -> None:
        if self._beat_conn is None or self._beat_conn.closed:
            # Its own connection: a busy primary pool never delays a beat (nor makes the standby look old).
            self._beat_conn = await psycopg.AsyncConnection.connect(
                self._primary_url,
                autocommit=True,
                connect_timeout=max(1, int(BEAT_TIMEOUT)),
                application_name="confluence-vectors-heartbeat",
                # The server ends a beat that waits (a lock held by a migration or an index build, a synchronous
                # standby down) by itself: closing our side does not cancel it, and each abandoned beat would
                # otherwise leave a backend behind (found by a reviewer).
                options=f"-c statement_timeout={int(BEAT_TIMEOUT * 1000) - 500} -c lock_timeout=1000",
            )
        await self._beat_conn.execute(
            """INSERT INTO cv_search_heartbeat (probe_id, beat, at) VALUES (%s, %s, now())
               ON CONFLICT (probe_id) DO UPDATE SET beat = EXCLUDED.beat, at = EXCLUDED.at""",
            (self.probe_id, beat),
        )
        if beat % 600 == 1:
            await self._beat_conn.execute(
                f"DELETE FROM cv_search_heartbeat WHERE at < now() - interval '{FORGET_BEATS_AFTER}'"
            )

    async def _look(self) -> None:
        """Read our heartbeat on one standby connection, for /status and the metrics; searches check their own."""
        assert self.standby is not None
        try:

            async def look() -> float:
                assert self.standby is not None
                async with self.standby.connection(timeout=BEAT_TIMEOUT) as conn:
                    return await self._age_of_copy(conn)

            age = await self._bounded(look())
            self._state = ReplicaState(True, "ok", age, time.monotonic())
        except _NotFresh as exc:
            self._state = ReplicaState(False, str(exc), None, time.monotonic())
        except Exception as exc:
            # The class only: the reason is shown in /status; messages (addresses) go to the log.
            self._state = ReplicaState(False, f"unreachable ({type(exc).__name__})", None, time.monotonic())
            if not isinstance(exc, _STANDBY_FAILURES):
                log.error("search standby check failed", exc_info=exc)
        if not self._state.usable:
            self._warn(self._state.reason)

    async def _age_of_copy(self, conn: psycopg.AsyncConnection[Any]) -> float:
        """Seconds since the beat this standby connection shows was written; raises _NotFresh beyond the bound."""
        row = await (
            await conn.execute("SELECT beat FROM cv_search_heartbeat WHERE probe_id = %s", (self.probe_id,))
        ).fetchone()
        written = self._beats.get(int(row[0])) if row is not None else None
        if written is None:
            raise _NotFresh("the standby has not replayed a recent heartbeat of this process")
        age = time.monotonic() - written
        if age > self.max_lag:
            raise _NotFresh(f"the standby's copy is {age:.1f} s old (SEARCH_REPLICA_MAX_LAG={self.max_lag:g})")
        return age

    async def _bounded(self, work: Awaitable[T], seconds: float = BEAT_TIMEOUT) -> T:
        """`work`, given up after `seconds` without waiting for its cancellation (a hung server may hold that)."""
        task = asyncio.ensure_future(work)
        self._track(task)
        try:
            done, _ = await asyncio.wait({task}, timeout=seconds)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            raise TimeoutError(f"no answer within {seconds:g} s")
        return task.result()

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception never retrieved"

    async def _drop_beat_connection(self) -> None:
        conn, self._beat_conn = self._beat_conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BEAT_TIMEOUT):
                    await conn.close()

    async def _beat_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(BEAT_INTERVAL)
            await self.beat()

    # --- searches -----------------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn` on a fresh enough standby connection, else (or after it failed there) on the primary.

        `fn` should not embed (pass a `Precomputed` embedder): its time on the standby is bounded."""
        if self.standby is None:
            return await fn(self.primary)
        try:
            return await self._bounded(self._on_standby(fn), STANDBY_SEARCH_SECONDS)
        except _NotFresh as exc:
            self._state = ReplicaState(False, str(exc), None, time.monotonic())
            self._warn(str(exc))
            self._on_fallback("standby not usable")
        except _STANDBY_FAILURES as exc:
            self._state = ReplicaState(
                False, f"a search failed on the standby ({type(exc).__name__})", None, time.monotonic()
            )
            log.warning("search failed on SEARCH_DATABASE_URL, run on the primary", extra={"error": str(exc)})
            self._on_fallback("search failed on the standby")
        return await fn(self.primary)

    async def _on_standby(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        assert self.standby is not None
        async with self.standby.connection(timeout=BEAT_TIMEOUT) as conn, conn.transaction():
            # One REPEATABLE READ transaction: the snapshot that shows the heartbeat is the one the search reads,
            # even through a proxy that hands each transaction to another server (pgbouncer pool_mode=transaction;
            # found by a reviewer). The search's own transaction nests in it (a savepoint).
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await self._age_of_copy(conn)  # raises _NotFresh: then the primary answers
            return await fn(_OneConnection(conn))

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("searches go to the primary, not SEARCH_DATABASE_URL", extra={"reason": reason})
