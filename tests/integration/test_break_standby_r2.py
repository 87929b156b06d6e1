# ruff: noqa: F811  (the fixtures imported from test_search_standby are parameters here)
"""Fault injection, second round, against search on a hot standby (SEARCH_DATABASE_URL, app/replica.py after
commit 7178c07: "fresh at t" = the standby replayed the primary's WAL insert position read at t).

Reuses the real primary + pg_basebackup standbys of tests/integration/test_search_standby.py and the helpers of
tests/integration/test_break_standby_1130.py. Tests that fail on the current code demonstrate a bug (each says
why); the others document ground that held. Synchronisation is on server state and task state, polled with
deadlines; the only sleeps are simulated latencies (a slow link, a slow embedding server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app import access
from app.access import Restriction
from app.db import make_pool
from app.replica import STANDBY_SEARCH_SECONDS, SearchDatabase, _OneConnection, precompute, standby_pool
from app.search import SearchMode, search
from tests.integration.test_break_standby_1130 import _signal_all, _standby_pids, _until
from tests.integration.test_search_standby import (  # noqa: F401  (fixtures)
    ALICE,
    Cluster,
    Embedder,
    Standby,
    _primary_lsn,
    _replayed,
    _searcher,
    _until_fresh,
    _until_standby,
    cluster,
    pools,
    standby,
)

PROBE_APP = "confluence-vectors-probe"


def _where(used: list[Any], replica: Any) -> list[str]:
    return [p for p in used]


async def _sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> Any:
    """One statement on `url` (autocommit), its first row's first column (None if no row)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(statement, params)
        if cur.description is None:
            return None
        row = await cur.fetchone()
    return None if row is None else row[0]


class RoutingProxy:
    """A connection-level load balancer (a unix-socket stand-in for an L4 balancer, a Kubernetes `-ro` Service or
    DNS round robin in front of several standbys): every new connection is sent to the upstream socket that
    `route(application_name)` names, then relayed byte for byte. `connect_delay`: seconds before the upstream is
    reached (a slow link / a balancer queueing new connections). `accepted`: (application_name, upstream) in
    arrival order."""

    def __init__(self, directory: Path, route: Callable[[str], str]) -> None:
        self.directory = directory
        self.route = route
        self.connect_delay = 0.0
        self.accepted: list[tuple[str, str]] = []
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.directory.mkdir(mode=0o777)
        self.directory.chmod(0o777)
        path = str(self.directory / ".s.PGSQL.5432")
        self.server = await asyncio.start_unix_server(self._handle, path=path)
        os.chmod(path, 0o777)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres:@/{dbname}?host={self.directory}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            header = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(header, "big") - 4)
        except Exception:
            writer.close()
            return
        fields = body[4:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2], strict=False))
        app = params.get(b"application_name", b"").decode()
        upstream = self.route(app)
        self.accepted.append((app, upstream))
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)  # the simulated link latency, not a test synchronisation
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(upstream)
        except Exception:
            writer.close()
            return
        self.writers.append(up_writer)
        up_writer.write(header + body)

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        for coro in (relay(reader, up_writer), relay(up_reader, writer)):
            task = asyncio.create_task(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _socket(s: Standby) -> str:
    return str(s.sockets / ".s.PGSQL.5432")


# --------------------------------------------------------------------------------------------------------------
# Finding 1: after a failover, a standby that is ahead on the old timeline is "fresh" against the new primary.
# --------------------------------------------------------------------------------------------------------------


async def test_a_standby_ahead_on_the_old_timeline_is_not_searched_after_a_failover(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. "Fresh at t" compares bare LSNs: the standby's replay position >= the primary's insert position. LSNs
    of two timelines are not comparable. With asynchronous replication the standbys of a primary receive its WAL
    at different speeds; when the primary fails, the one promoted (here S1) may be behind another (S2, the search
    standby): S2 replayed WAL of the old timeline past the fork point, which S1 never had. S2 can no longer
    follow S1 ("forked off ... before current recovery point") and stays in recovery, same system identifier,
    with a replay position beyond S1's insert position for as long as S1 has written less WAL than the gap (here
    ~5 MB; a WAL burst on the old primary makes it any size). Every probe finds it "caught up", so every permission
    change made on the new primary is searched on a standby that will never have it. Here page 1 is restricted on
    the new primary S1, SEARCH_REPLICA_MAX_LAG=2, and 3.5 s later Alice still finds page 1 on S2.
    A fix: compare timelines too (the primary's `pg_control_checkpoint().timeline_id` / the standby's received
    timeline), or treat a standby whose replay position is beyond the primary's insert position as not a standby
    of this primary."""
    old_primary, s2_pool = pools
    s2_url = standby.url("cv_standby")
    s1 = cluster.start_standby()  # the standby that will be promoted
    s1_url = s1.url("cv_standby")
    maintenance = cluster.url("postgres")
    new_primary = make_pool(s1_url, max_size=2)
    db: SearchDatabase | None = None
    try:
        await _replayed(old_primary, s1_url)
        await _replayed(old_primary, s2_url)
        # S1 stops receiving (its link to the old primary is slower / broken first) ...
        await _sql(s1_url, "ALTER SYSTEM SET primary_conninfo = 'host=/nonexistent-socket-dir user=postgres'")
        await _sql(s1_url, "SELECT pg_reload_conf()")
        await _until_standby(s1_url, "NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")
        # ... while the old primary writes a burst S2 still receives and replays,
        await _sql(maintenance, "DROP TABLE IF EXISTS r2_burst")
        await _sql(
            maintenance, "CREATE TABLE r2_burst AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 10000) g"
        )
        await _replayed(old_primary, s2_url)
        # ... then the old primary is gone: S1 is promoted and S2 is pointed at it (what a failover tool does).
        await _sql(s1_url, "SELECT pg_promote(true, 60)")
        await _sql(s2_url, f"ALTER SYSTEM SET primary_conninfo = 'host={s1.sockets} user=postgres'")
        await _sql(s2_url, "SELECT pg_reload_conf()")

        await new_primary.open()
        async with new_primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        committed = time.monotonic()
        assert await _searcher([])(new_primary) == ["2"], "the restriction is in force on the new primary"
        s1_insert = await _sql(s1_url, "SELECT pg_current_wal_insert_lsn()::text")
        s2_replay = await _sql(s2_url, "SELECT pg_last_wal_replay_lsn()::text")
        assert await _sql(s2_url, "SELECT pg_is_in_recovery()") is True

        db = SearchDatabase(new_primary, s2_pool, max_lag=2.0)
        await db.open()
        await _until(lambda: time.monotonic() > committed + 3.5, timeout=6, what="3.5 s after the restriction")
        used: list[Any] = []
        hits = await db.run(_searcher(used))
        assert "1" not in hits, (
            f"page 1, restricted on the new primary {time.monotonic() - committed:.1f} s before "
            f"(SEARCH_REPLICA_MAX_LAG=2), found by Alice on {_where(used, s2_pool)}: S2 replayed the old "
            f"timeline to {s2_replay}, past the new primary's insert position {s1_insert}; state {db.state}"
        )
    finally:
        if db is not None:
            await db.close()
        await new_primary.close()
        s1.stop()
        with contextlib.suppress(Exception):
            await _sql(maintenance, "DROP TABLE IF EXISTS r2_burst")


# --------------------------------------------------------------------------------------------------------------
# Finding 2: the probe checks the server its own connection landed on, not the ones searches land on.
# --------------------------------------------------------------------------------------------------------------


async def test_a_load_balanced_search_url_is_checked_where_the_searches_run(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. README ("Scaling out") documents SEARCH_DATABASE_URL as "a streaming replica (or a load balancer in
    front of several; libpq's target_session_attrs=standby picks standbys from a host list)". Then each
    connection lands on some standby, chosen per connection. The probe keeps one long-lived connection of its
    own and vouches for the standby *that* connection reached; the pool's connections, which run the searches,
    may be on another standby that is far behind. Here the balancer put the probe on a standby that is up to
    date and the pool on one whose replay is paused before a restriction of page 1 (one assignment a random or
    least-connections balancer makes; fixed here so that the test is deterministic). With SEARCH_REPLICA_MAX_LAG
    =2, 3.5 s after the restriction Alice finds page 1. A fix must check freshness on the connection the search
    runs on (e.g. compare pg_last_wal_replay_lsn() there with the position the probe vouched for, in the search's
    own transaction) or refuse URLs that may reach several servers."""
    primary, _ = pools
    fresh_url = standby.url("cv_standby")
    stale = cluster.start_standby()
    stale_url = stale.url("cv_standby")
    proxy = RoutingProxy(cluster.root / "lb-r2", lambda app: _socket(standby) if app == PROBE_APP else _socket(stale))
    replica = standby_pool(proxy.url("cv_standby"), 2)
    db: SearchDatabase | None = None
    try:
        await proxy.start()
        await _replayed(primary, fresh_url)
        await _replayed(primary, stale_url)
        await _sql(stale_url, "SELECT pg_wal_replay_pause()")
        async with primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        committed = time.monotonic()
        await _replayed(primary, fresh_url)

        db = SearchDatabase(primary, replica, max_lag=2.0)
        await db.open()
        await _until(lambda: time.monotonic() > committed + 3.5, timeout=6, what="3.5 s after the restriction")
        used: list[Any] = []
        hits = await db.run(_searcher(used))
        assert "1" not in hits, (
            f"page 1, restricted {time.monotonic() - committed:.1f} s before (SEARCH_REPLICA_MAX_LAG=2), found by "
            f"Alice on {_where(used, replica)}; connections by application: {proxy.accepted}; state {db.state}"
        )
    finally:
        if db is not None:
            await db.close()
        await replica.close()
        await proxy.close()
        with contextlib.suppress(Exception):
            await _sql(stale_url, "SELECT pg_wal_replay_resume()")
        stale.stop()


# --------------------------------------------------------------------------------------------------------------
# Finding 3: the 5 s standby budget includes the embedding server's time.
# --------------------------------------------------------------------------------------------------------------


class SlowEmbedder(Embedder):
    """An embedding server that takes `seconds` per query (Ollama loading the model after its keep-alive
    expired, a CPU host under indexing load)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    async def aget_query_embedding(self, query: str) -> list[float]:
        self.calls += 1
        await asyncio.sleep(self.seconds)  # the simulated embedding latency, not a test synchronisation
        return await super().aget_query_embedding(query)


async def test_a_slow_embedding_server_is_not_blamed_on_a_healthy_standby(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. `run(fn)` times `fn(standby)` against STANDBY_SEARCH_SECONDS, but every caller's `fn` is
    `app.search.search`, which first asks the embedding server for the query vector and only then touches the
    database. When embedding takes over 5 s (Ollama reloading bge-m3 after its keep-alive, a loaded CPU host) the
    healthy standby's attempt is abandoned mid-embedding, the standby is marked failed ("a search failed on the
    standby (TimeoutError)" in /status, cv_search_standby_fallbacks_total{reason="search failed on the
    standby"}), and the whole search including the embedding runs again on the primary: the search takes twice
    the embedding time (here ~12 s instead of ~6 s; past a 10 s client timeout it fails). Without
    SEARCH_DATABASE_URL the same search takes ~6 s. The standby never ran a query."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=30.0)
    await db.open()
    try:
        assert db.usable(), db.state
        embedder = SlowEmbedder(STANDBY_SEARCH_SECONDS + 1.0)
        used: list[Any] = []

        vector = await precompute(embedder, "salary")  # as the service's callers do, before `run`

        async def fn(pool: Any) -> list[str]:
            used.append("standby" if isinstance(pool, _OneConnection) else "primary")
            hits = await search(pool, vector, "confluence", "salary", k=5, mode=SearchMode.HYBRID, principals=ALICE)
            return sorted({h.page_id for h in hits})

        started = time.monotonic()
        hits = await db.run(fn)
        elapsed = time.monotonic() - started
        assert hits == ["1", "2"]
        assert elapsed < embedder.seconds + 2.5 and used == ["standby"], (
            f"a search whose embedding takes {embedder.seconds:.0f} s took {elapsed:.1f} s with a healthy standby "
            f"(pools: {_where(used, replica)}, {embedder.calls} embeddings); the standby is now: {db.state}"
        )
    finally:
        await db.close()


# --------------------------------------------------------------------------------------------------------------
# Finding 4: a search cancelled by its caller leaves its standby attempt running forever on a hung standby.
# --------------------------------------------------------------------------------------------------------------


async def test_a_cancelled_search_does_not_leave_its_standby_attempt_running(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. `run` starts the standby attempt as a separate task and waits for it with `asyncio.wait`. When the
    caller cancels the search (an MCP client's notifications/cancelled, a client or gateway timeout, a
    `wait_for` around it), the cancellation stops `asyncio.wait` but not the attempt: it is neither cancelled
    nor recorded in `_abandoned` (so `close()` does not cancel it either). On a hung standby (SIGSTOP: a frozen
    host, a partition dropping packets) such attempts wait on their socket with no bound, each holding a standby
    pool connection or waiting for one, for as long as the standby hangs; a storm of impatient clients piles them
    up. The attempts the service itself abandons (after 5 s) are cancelled and end within psycopg's cancellation
    bound (5 s + 5 s); this test allows the caller-cancelled ones STANDBY_SEARCH_SECONDS + 15 s."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=30.0)
    await db.open()
    pids: list[int] = []
    try:
        assert db.usable(), db.state
        async with replica.connection():  # the pool holds an idle connection to the standby
            pass
        pids = _standby_pids(standby)  # after the pool's connections exist: their backends freeze too
        _signal_all(pids, signal.SIGSTOP)
        used: list[Any] = []
        before = set(asyncio.all_tasks())
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(db.run(_searcher(used)), timeout=1.0) for _ in range(3)), return_exceptions=True
        )
        # at least the search that got the pool's (now hung) connection was given up by its caller; the others may
        # have failed fast on the standby and been answered by the primary within the second
        assert any(isinstance(o, TimeoutError) for o in outcomes), outcomes
        attempts = [
            t for t in asyncio.all_tasks() - before if "_on_standby" in getattr(t.get_coro(), "__qualname__", "")
        ]
        assert attempts, "no standby attempt task found (the test no longer matches run())"
        deadline = STANDBY_SEARCH_SECONDS + 15.0
        with contextlib.suppress(AssertionError):
            await _until(
                lambda: all(t.done() for t in attempts), timeout=deadline, what="the cancelled searches' attempts end"
            )
        pending = [t for t in attempts if not t.done()]
        assert not pending, (
            f"{len(pending)} of {len(attempts)} standby attempts of searches their callers cancelled are still "
            f"running {time.monotonic() - started:.0f} s later on the hung standby (never cancelled; "
            f"in db._abandoned: {sum(t in db._abandoned for t in pending)})"
        )
    finally:
        _signal_all(pids, signal.SIGCONT)
        await db.close()


# --------------------------------------------------------------------------------------------------------------
# Finding 5: close() while a probe is connecting leaves the probe's new connection open.
# --------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------
# Finding 6: a probe that cannot get a *primary* connection in 2 s disables a standby still within the bound.
# --------------------------------------------------------------------------------------------------------------


async def test_a_busy_primary_pool_does_not_disable_a_fresh_standby(pools: tuple[Any, Any], standby: Standby) -> None:
    """BUG. The probe's standby side has its own connection ("a probe never queues behind searches"), but its
    primary side takes one from the primary pool, shared with webhooks, jobs and searches, with a 2 s timeout.
    When that pool is busy for over 2 s (a burst of jobs or of searches: the load a standby is added for), the
    probe times out and the standby becomes "unreachable (TimeoutError)" although nothing is wrong
    with it and its last verdict (fresh 1 s before, SEARCH_REPLICA_MAX_LAG=30) still holds: every search is then
    sent to the saturated primary and queues there (here: no answer within 5 s) instead of being answered by the
    idle standby. Failing to read the primary's position is no evidence against the standby; the state should
    keep the last `fresh_at` (usable until it ages out), or the probe should have its own primary connection."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=30.0)
    await db.open()
    held: list[Any] = []
    try:
        assert db.usable(), db.state
        held = [await primary.getconn(), await primary.getconn()]  # the whole primary pool (2) is busy
        busy_since = time.monotonic()
        await _until(
            lambda: db.state is not None and db.state.at > busy_since + 2.2,
            timeout=10,
            what="a probe that ran while the primary pool was busy",
        )
        state = db.state
        used: list[Any] = []
        try:
            hits: Any = await asyncio.wait_for(db.run(_searcher(used)), timeout=5.0)
        except TimeoutError:
            hits = "no answer within 5 s"
        assert hits == ["1", "2"] and used == ["standby"], (
            f"with the primary pool busy, a search got {hits!r} from {_where(used, replica)}; the standby, found "
            f"fresh {time.monotonic() - busy_since:.1f} s ago with SEARCH_REPLICA_MAX_LAG=30, was set to {state}"
        )
    finally:
        for conn in held:
            await primary.putconn(conn)
        await db.close()


# --------------------------------------------------------------------------------------------------------------
# Ground that held.
# --------------------------------------------------------------------------------------------------------------


async def test_an_attempt_the_service_abandons_on_a_hung_standby_ends(pools: tuple[Any, Any], standby: Standby) -> None:
    """Held (the control of the cancelled-search finding): a search nobody cancels is answered by the primary after
    STANDBY_SEARCH_SECONDS, and the standby attempt `run` abandoned is cancelled and ends within psycopg's
    cancellation bound, on the same hung standby and within the same deadline."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=30.0)
    await db.open()
    pids: list[int] = []
    try:
        assert db.usable(), db.state
        async with replica.connection():
            pass
        pids = _standby_pids(standby)
        _signal_all(pids, signal.SIGSTOP)
        used: list[Any] = []
        before = set(asyncio.all_tasks())
        search_task = asyncio.create_task(db.run(_searcher(used)))
        await _until(lambda: bool(used), timeout=5, what="the search chose a pool")
        attempts = [
            t for t in asyncio.all_tasks() - before if "_on_standby" in getattr(t.get_coro(), "__qualname__", "")
        ]
        assert await asyncio.wait_for(search_task, timeout=STANDBY_SEARCH_SECONDS + 5) == ["1", "2"]
        assert _where(used, replica)[-1:] == ["primary"]  # the standby attempt hung before or in the search
        await _until(lambda: all(t.done() for t in attempts), timeout=15.0, what="the abandoned standby attempt ends")
    finally:
        _signal_all(pids, signal.SIGCONT)
        await db.close()


@pytest.mark.parametrize(("password", "fragment"), [("s3cret-r2", "s3cret-r2"), ("pw@x7:Q9zz", "Q9zz")])
async def test_an_unparsable_or_refused_search_url_leaks_no_password(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, password: str, fragment: str
) -> None:
    """Held: a standby URL nobody answers, or whose password (an unescaped '@' in it) makes it unparsable:
    /status's report and the log records (the service's and psycopg's pool's) say nothing of the password."""
    primary = make_pool(cluster.url("cv_standby"), max_size=1)
    await primary.open()
    replica = standby_pool(f"postgresql://postgres:{password}@127.0.0.1:1/cv_standby", 1)
    db = SearchDatabase(primary, replica, max_lag=30.0)
    try:
        with caplog.at_level("DEBUG"):
            await db.open()

            async def one(pool: Any) -> int:
                async with pool.connection() as conn:
                    row = await (await conn.execute("SELECT 1")).fetchone()
                return int(row[0]) if row else 0

            assert await db.run(one) == 1
            shown = repr(db.report())
        logged = "\n".join(
            f"{r.getMessage()} {r.__dict__.get('error', '')} {r.__dict__.get('reason', '')} {r.exc_text or ''}"
            for r in caplog.records
        )
        assert fragment not in shown, shown
        assert fragment not in logged, logged
    finally:
        await db.close()
        await primary.close()
