# ruff: noqa: F811  (the fixtures imported from test_search_standby are parameters here)
"""Fault injection against search on a hot standby (SEARCH_DATABASE_URL, app/replica.py, commit 3f2c464).

Reuses the real primary + pg_basebackup standby of tests/integration/test_search_standby.py. Tests that fail on
the current code demonstrate a bug (each says why); the others document ground that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app import access
from app.access import Restriction
from app.db import make_pool
from app.replica import BEAT_INTERVAL, BEAT_TIMEOUT, SearchDatabase
from tests.conftest import make_settings
from tests.integration.test_search_standby import (  # noqa: F401  (fixtures)
    Cluster,
    Embedder,
    Standby,
    _primary_lsn,
    _replayed,
    _searcher,
    _until_fresh,
    _until_standby,
    _world,
    cluster,
    pools,
    standby,
)


async def _until(condition: Any, timeout: float, what: str) -> None:
    """Poll `condition()` (sync or async) until true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"never reached: {what}"
        await asyncio.sleep(0.05)


def _standby_pids(s: Standby) -> list[int]:
    """The standby's postmaster and all its children (backends, startup, walreceiver...)."""
    postmaster = int((s.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class DelayProxy:
    """A Unix-socket TCP-like relay between the standby's WAL receiver and the primary that can delay the
    primary -> standby direction by `delay` seconds: a slow or congested link (cross-region standby, a WAL
    burst queued in the primary's send buffer). The connection stays up and keeps streaming, just late."""

    def __init__(self, directory: Path, upstream: str) -> None:
        self.directory = directory
        self.upstream = upstream
        self.delay = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.directory.mkdir(mode=0o777)
        self.directory.chmod(0o777)
        path = str(self.directory / ".s.PGSQL.5432")
        self.server = await asyncio.start_unix_server(self._handle, path=path)
        os.chmod(path, 0o777)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        self.writers += [writer, up_writer]

        async def plain(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        async def delayed(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def pump() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        due, data = await queue.get()
                        if not data:
                            break
                        # the simulated link latency, not a test synchronisation
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(Exception):
                    dst.close()

            out = asyncio.create_task(pump())
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    queue.put_nowait((time.monotonic() + self.delay, data))
            queue.put_nowait((0.0, b""))
            await out

        for coro in (plain(reader, up_writer), delayed(up_reader, writer)):
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


# --------------------------------------------------------------------------------------------------------------
# Finding 1: a standby whose WAL *receipt* lags (slow link) reports lag 0 and is searched with a permission
# change it has not even received.
# --------------------------------------------------------------------------------------------------------------


async def test_a_standby_receiving_late_is_not_searched_beyond_the_bound(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. The lag is 0 whenever everything the standby *received* is replayed (`pg_last_wal_receive_lsn() =
    pg_last_wal_replay_lsn()`), and nothing compares what it received with what the primary has written. On a
    link that delivers WAL late but keeps streaming (congested or long-distance network, a WAL burst queued on
    the primary: no wal_receiver_timeout ever fires), the standby always looks caught up. Here the link is 5 s
    late, SEARCH_REPLICA_MAX_LAG is 1 s and page 1 was restricted to the board on the
    primary: probes that started over a second after that commit still call the standby usable (lag 0), and
    Alice finds page 1 there. The docstring promises at most SEARCH_REPLICA_MAX_LAG + BEAT_INTERVAL (= 1 s)."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    proxy = DelayProxy(cluster.root / f"link{cluster.standbys}", str(Path(cluster.host) / ".s.PGSQL.5432"))
    await proxy.start()
    db: SearchDatabase | None = None
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f"ALTER SYSTEM SET primary_conninfo = 'host={proxy.directory} user=postgres'")
            await conn.execute("SELECT pg_reload_conf()")
        await _until_standby(
            url,
            "EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_host = %s)",
            (str(proxy.directory),),
            timeout=60,
        )
        await _replayed(primary, url)
        db = SearchDatabase(primary, replica, max_lag=1.0)
        await db.open()
        await _until_fresh(db)

        proxy.delay = 5.0  # from now on the standby hears of the primary's WAL 5 s late
        async with primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        committed = time.monotonic()
        restricted_at = await _primary_lsn(primary)

        # a probe that started more than BEAT_INTERVAL after the commit (beyond the bound with max_lag 1 s)
        await _until(
            lambda: db is not None and db.state is not None and db.state.at > committed + BEAT_INTERVAL + 0.2,
            timeout=4.0,
            what="a probe started 1.2 s after the restriction",
        )
        used: list[Any] = []
        hits = await db.run(_searcher(used))
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            row = await (
                await conn.execute("SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (restricted_at,))
            ).fetchone()
        assert "1" not in hits, (
            f"page 1, restricted on the primary {time.monotonic() - committed:.1f} s ago, found by Alice on "
            f"{'the standby' if used[0] == 'standby' else 'the primary'} (standby still before the restriction: "
            f"{row[0] if row else '?'}; last probe: {db.state})"
        )
    finally:
        proxy.delay = 0.0
        if db is not None:
            await db.close()
        await proxy.close()


# --------------------------------------------------------------------------------------------------------------
# Finding 2: a hung standby hangs searches forever.
# --------------------------------------------------------------------------------------------------------------


async def test_a_hung_standby_does_not_hang_a_search(pools: tuple[Any, Any], standby: Standby) -> None:
    """BUG. A standby that stops answering without closing its connections (its host freezes, a network
    partition that drops packets; simulated by SIGSTOP of all its processes) takes every search already routed
    to it down with it: the pool's connection check and the query wait on the socket with no bound (no
    statement/ connect timeout, no asyncio timeout around the standby attempt), although the primary is fine.
    `standby_pool` says "a standby that died costs one search 2 s"; here it costs the search forever (until
    the standby resumes). The test allows 10 s (5 x BEAT_TIMEOUT)."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    pids = _standby_pids(standby)
    try:
        assert db.usable(), db.state
        _signal_all(pids, signal.SIGSTOP)
        used: list[Any] = []
        started = time.monotonic()
        try:
            hits = await asyncio.wait_for(db.run(_searcher(used)), timeout=5 * BEAT_TIMEOUT)
        except TimeoutError:
            hits = None
        elapsed = time.monotonic() - started
        assert hits == ["1", "2"], (
            f"a search routed to the hung standby did not come back from the primary within "
            f"{5 * BEAT_TIMEOUT:.0f} s (gave up after {elapsed:.1f} s; pools tried: "
            f"{[p for p in used]})"
        )
    finally:
        _signal_all(pids, signal.SIGCONT)
        await db.close()


# --------------------------------------------------------------------------------------------------------------
# Finding 3: an error only the standby has (schema not yet replayed) is a 5xx, not a fallback.
# --------------------------------------------------------------------------------------------------------------


async def test_a_schema_change_the_standby_has_not_replayed_falls_back_to_the_primary(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. After a deploy, `migrate` changes the schema on the primary (a new function or table the search SQL
    uses); a standby within SEARCH_REPLICA_MAX_LAG has not replayed it yet and the search's SQL fails there
    with UndefinedFunction / UndefinedTable (ProgrammingError). Only OperationalError & co. are retried on the
    primary (`_STANDBY_FAILURES`), so the error escapes: /search answers 500 and MCP/CLI searches fail,
    although the primary, which has the schema, would answer. The docstring's own rule is to fall back
    "whenever a search on the standby fails for a reason the primary may not have".

    Simulated with the real search SQL: `cv_viewer_spaces` is renamed away on the primary and that replayed;
    replay is then paused and the rename undone on the primary (the "migration"), which the standby receives
    but does not replay (lag: the age of the last replayed commit, well under the bound)."""
    primary, replica = pools
    url = standby.url("cv_standby")
    async with primary.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc AS p WHERE p.proname = 'cv_viewer_spaces'"
            )
        ).fetchone()
    assert row is not None, "cv_viewer_spaces() not found: the search SQL changed, adapt the test"
    signature = row[0]
    async with primary.connection() as conn:
        await conn.execute(f"ALTER FUNCTION {signature} RENAME TO cv_viewer_spaces_pre_migration")
    renamed = signature.replace("cv_viewer_spaces", "cv_viewer_spaces_pre_migration", 1)
    await _replayed(primary, url)
    db = SearchDatabase(primary, replica, max_lag=30.0)
    try:
        await db.open()
        await _until_fresh(db)  # a recent heartbeat replayed; then replay stops
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_pause()")
        async with primary.connection() as conn:
            await conn.execute(f"ALTER FUNCTION {renamed} RENAME TO cv_viewer_spaces")
        await _until_standby(url, "pg_last_wal_receive_lsn() >= %s::pg_lsn", (await _primary_lsn(primary),))
        assert db.usable(), db.state  # within the bound: a legitimate standby
        used: list[Any] = []
        try:
            hits: Any = await db.run(_searcher(used))
        except psycopg.Error as exc:
            hits = exc
        assert hits == ["1", "2"], (
            f"the search failed with {type(hits).__name__}: {hits} on "
            f"{[p for p in used]} instead of falling back to the primary"
        )
    finally:
        await db.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_resume()")
        async with primary.connection() as conn:  # in case the rename back did not happen
            await conn.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'cv_viewer_spaces') THEN "
                f"ALTER FUNCTION {renamed} RENAME TO cv_viewer_spaces; END IF; END $$"
            )


# --------------------------------------------------------------------------------------------------------------
# Finding 4: a probe result is trusted for STATE_MAX_AGE (5 s), not BEAT_INTERVAL; a busy standby pool delays
# the probe but not the searches' choice of the standby.
# --------------------------------------------------------------------------------------------------------------


async def test_a_busy_standby_pool_does_not_stretch_the_lag_bound(pools: tuple[Any, Any], standby: Standby) -> None:
    """BUG. The docstring bounds what a search may miss by SEARCH_REPLICA_MAX_LAG + BEAT_INTERVAL. But the
    choice reads a state that `_usable` trusts for STATE_MAX_AGE = 3 * BEAT_INTERVAL + BEAT_TIMEOUT (5 s),
    and a probe only replaces it when it finishes. When the standby's pool is busy (all connections held by
    searches: exactly the load a standby is added for), the probe waits for a connection like everyone else,
    and meanwhile searches keep choosing the standby on the old "lag 0" verdict. Here, with
    SEARCH_REPLICA_MAX_LAG=1, the standby (replay paused, restriction on page 1 received but not replayed)
    is chosen and answers 2 s after the restriction was committed on the primary, and Alice sees page 1."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    db = SearchDatabase(primary, replica, max_lag=1.0)
    held: list[Any] = []
    try:
        await db.open()
        await _until_fresh(db)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_pause()")
        probed = db.state.at  # type: ignore[union-attr]
        held = [await replica.getconn(), await replica.getconn()]  # busy searches hold the whole pool (2)
        async with primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        committed = time.monotonic()
        await _until_standby(url, "pg_last_wal_receive_lsn() >= %s::pg_lsn", (await _primary_lsn(primary),))
        await _until(
            lambda: time.monotonic() - committed >= 2 * BEAT_INTERVAL,
            timeout=5,
            what="twice the probe interval after the restriction",
        )
        used: list[Any] = []
        search = asyncio.create_task(db.run(_searcher(used)))
        await _until(lambda: bool(used), timeout=5, what="the search chose a pool")
        for conn in held:
            await replica.putconn(conn)
        held = []
        hits = await asyncio.wait_for(search, timeout=30)
        answered = time.monotonic() - committed
        assert "1" not in hits, (
            f"page 1, restricted on the primary {answered:.1f} s before, found by Alice on "
            f"{'the standby' if used[0] == 'standby' else 'the primary'} with SEARCH_REPLICA_MAX_LAG=1 "
            f"(bound claimed: {BEAT_INTERVAL:g} s); verdict used was {time.monotonic() - probed:.1f} s old"
        )
    finally:
        for conn in held:
            await replica.putconn(conn)
        await db.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_resume()")


# --------------------------------------------------------------------------------------------------------------
# Ground that held.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "search_url",
    [
        "postgresql://postgres:wrong-password@127.0.0.1:1/cv_standby",  # nothing listens there
        "postgresql://postgres:s3cret@nonexistent-host.invalid:5432/cv_standby",  # no such host
    ],
)
async def test_an_unreachable_search_database_at_start_serves_from_the_primary(
    cluster: Cluster, search_url: str
) -> None:
    """Held: the service starts (within BEAT_TIMEOUT + a margin), searches run on the primary, and /status
    (also as a non-operator sees it) names neither the host nor the password."""
    from app.mcp_server import search_as
    from app.runtime import Runtime
    from app.search import SearchMode
    from app.status import status_report, without_page_details

    primary = make_pool(cluster.url("cv_standby"), max_size=1)
    await primary.open()
    try:
        await _world(primary)
    finally:
        await primary.close()
    settings = make_settings(
        database_url=cluster.url("cv_standby"),
        search_database_url=search_url,
        search_service_identity="service-account",
    )
    started = time.monotonic()
    rt = await Runtime.open(settings)
    opened = time.monotonic() - started
    embedder = rt.embedder
    try:
        assert opened < BEAT_TIMEOUT + 3.0, opened
        assert rt.search_db.state is not None and not rt.search_db.usable()
        rt.embedder = Embedder()  # type: ignore[assignment]
        hits = await search_as(rt, None, "salary", k=5, space=None, label=None, mode=SearchMode.HYBRID)
        assert {h.page_id for h in hits} == {"1", "2"}
        shown = repr(without_page_details(await status_report(rt)))
        for secret in ("wrong-password", "s3cret", "nonexistent-host", "127.0.0.1:1"):
            assert secret not in shown, shown
        assert set(rt.metrics.search_fallbacks._metrics) <= {("standby not usable",), ("search failed on the standby",)}
    finally:
        rt.embedder = embedder
        await rt.close()


async def test_a_standby_promoted_mid_service_stops_answering(pools: tuple[Any, Any], standby: Standby) -> None:
    """Held: after pg_promote() our heartbeats no longer reach it, and searches go to the primary once its last
    copy is SEARCH_REPLICA_MAX_LAG old (1 s here)."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    db = SearchDatabase(primary, replica, max_lag=1.0)
    await db.open()
    try:
        assert db.usable()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_promote(true, 30)")
        promoted = time.monotonic()
        await _until(
            lambda: db.state is not None and db.state.at > promoted and not db.usable(),
            timeout=BEAT_INTERVAL + BEAT_TIMEOUT + 2,
            what="a probe after the promotion saying not usable",
        )
        assert db.state is not None and not db.state.usable, db.state
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == ["primary"]
    finally:
        await db.close()


async def test_many_searches_while_the_standby_dies_all_answer_and_close_leaks_nothing(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """Held: 20 concurrent searches while the standby is stopped (immediate) all answer from the primary or
    the standby; after close the probe task is gone and the standby pool holds no connection."""
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    try:
        assert db.usable()
        used: list[Any] = []

        async def one() -> list[str]:
            return await db.run(_searcher(used))

        tasks = [asyncio.create_task(one()) for _ in range(20)]
        standby.stop()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert all(r == ["1", "2"] for r in results), results
    finally:
        task = db._task
        await db.close()
        standby.start()  # the fixture stops it again
    assert task is not None and task.done()
    assert replica.closed


async def test_close_leaves_no_standby_connection_and_no_probe_task(pools: tuple[Any, Any], standby: Standby) -> None:
    """Held: after searches on the standby, close() ends the probe task and every standby backend it opened."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    task = db._task
    used: list[Any] = []
    await asyncio.gather(*(db.run(_searcher(used)) for _ in range(4)))
    assert "standby" in used
    await db.close()
    assert task is not None and task.done()

    async def backends() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'confluence-vectors'"
                )
            ).fetchone()
        return int(row[0]) if row else -1

    async def none_left() -> bool:
        return await backends() == 0

    await _until(none_left, timeout=10, what="no confluence-vectors backend left on the standby")
