# ruff: noqa: F811  (the fixtures imported from test_search_standby are parameters here)
"""Fault injection, third round, against search on a hot standby (SEARCH_DATABASE_URL, app/replica.py after
commit 03b4535: freshness by heartbeat, "a standby connection showing beat k holds every commit the primary had
at t_k").

Reuses the real primary + pg_basebackup standbys of tests/integration/test_search_standby.py and the helpers of
the earlier rounds. Tests that fail on the current code demonstrate a bug (each says why); the others document
ground that held. Synchronisation is on server state and task state, polled with deadlines; the only sleeps are
simulated latencies (a slow link) inside the proxies.

Findings: (1) an unacknowledged but committed beat is written again under the same number and credited with
the later time; (2) the heartbeat read and the search are separate transactions, which a transaction pooler
may run on different standbys; (3) a beat given up after BEAT_TIMEOUT leaves its server backend running on the
primary (the connection is closed before psycopg can cancel the query), one more per beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from app import access
from app.access import Restriction
from app.replica import SearchDatabase, standby_pool
from tests.integration.test_break_standby_1130 import DelayProxy, _until
from tests.integration.test_break_standby_r2 import _socket, _sql
from tests.integration.test_search_standby import (  # noqa: F401  (fixtures)
    Cluster,
    Standby,
    _replayed,
    _searcher,
    _until_fresh,
    _until_standby,
    cluster,
    pools,
    standby,
)


async def _restrict_page_1(primary: Any) -> float:
    async with primary.connection() as conn:
        await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
    committed = time.monotonic()
    assert await _searcher([])(primary) == ["2"], "the restriction is in force on the primary"
    return committed


# --------------------------------------------------------------------------------------------------------------
# Finding 1: a beat whose write committed but whose answer was lost is written again, later, under the same number.
# --------------------------------------------------------------------------------------------------------------


async def test_a_beat_number_is_never_credited_with_a_later_write_than_the_one_the_standby_shows(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. `beat()` takes the number `self._beat + 1` and only advances `self._beat` (and records the number in
    `_beats`) when the write is *acknowledged* within BEAT_TIMEOUT. A write that committed on the primary but
    whose answer did not come back in 2 s (a stalled link or a stalled primary socket, a commit waiting on a
    synchronous standby and cancelled: "already committed locally", the primary crashing right after the commit)
    is counted as not written, and the next successful beat writes the SAME number k again, at a later time t'.
    `_beats[k] = t'` then vouches for every standby showing k, including one that replayed only the first write
    of k, at t_k, and nothing since. Everything committed between t_k and t' (here a restriction of page 1) is
    missing there, yet the standby counts as `now - t'` old. Here: the link to the primary stalls for a while
    (beats time out, the first one having committed), the search standby's replay stops right after that first
    write of k (a replay conflict, a slow disk), page 1 is restricted, the link recovers 4 s later: with
    SEARCH_REPLICA_MAX_LAG=3, ~5 s after the restriction, Alice finds page 1 on the standby.
    A fix: consume the number before writing (never write one number twice) and record every attempted beat
    with the time taken before the attempt (a standby showing it holds every commit made before that time,
    whether or not the answer arrived)."""
    primary, replica = pools
    standby_url = standby.url("cv_standby")
    proxy = DelayProxy(cluster.root / "beat-link-r3", f"{cluster.host}/.s.PGSQL.5432")
    await proxy.start()
    db = SearchDatabase(
        primary, replica, max_lag=3.0, primary_url=f"postgresql://postgres:@/cv_standby?host={proxy.directory}"
    )
    try:
        await replica.open(wait=False)  # what open() does, without the background loop: beats are driven here
        await _until_fresh(db)
        k = db._beat + 1

        # The link to the primary stalls: the write of beat k commits, its answer comes 3 s later (> BEAT_TIMEOUT).
        proxy.delay = 3.0
        await db.beat()
        assert db._beat == k, "beat k used up (its answer was lost, not its number)"
        row = await _sql(cluster.url("cv_standby"), "SELECT beat FROM cv_search_heartbeat WHERE probe_id = %s",
                         (db.probe_id,))  # fmt: skip
        assert row == k, f"the unacknowledged write of beat {k} committed on the primary (row shows {row})"
        # The search standby replays that write, then stops replaying.
        await _until_standby(
            standby_url, "(SELECT beat FROM cv_search_heartbeat WHERE probe_id = %s) = %s", (db.probe_id, k)
        )
        await _sql(standby_url, "SELECT pg_wal_replay_pause()")
        await _until_standby(standby_url, "pg_get_wal_replay_pause_state() = 'paused'")

        committed = await _restrict_page_1(primary)
        # The link stays bad for 4 s: the beats of this time fail (as the background loop's would).
        while time.monotonic() < committed + 4.0:
            await db.beat()
        stalled_at = db._beat  # the numbers of those beats are used up, acknowledged or not
        proxy.delay = 0.0
        await db.beat()  # the link is back: a new number (the first design wrote beat k again here)
        assert db._beat == stalled_at + 1 > k

        used: list[Any] = []
        hits = await db.run(_searcher(used))
        shown = await _sql(standby_url, "SELECT beat FROM cv_search_heartbeat WHERE probe_id = %s", (db.probe_id,))
        assert "1" not in hits, (
            f"page 1, restricted on the primary {time.monotonic() - committed:.1f} s before "
            f"(SEARCH_REPLICA_MAX_LAG=3), found by Alice on {used}: the standby shows beat {shown} from its first, "
            f"unacknowledged write, credited with the time of its second write; state {db.state}"
        )
    finally:
        await db.close()
        await proxy.close()
        with contextlib.suppress(Exception):
            await _sql(standby_url, "SELECT pg_wal_replay_resume()")


# --------------------------------------------------------------------------------------------------------------
# Finding 2: the heartbeat read and the search are two transactions; a transaction pooler may run them on two
# different standbys.
# --------------------------------------------------------------------------------------------------------------


class TransactionPooler:
    """A stand-in for PgBouncer in `pool_mode = transaction` in front of several standbys (PgBouncer >= 1.17 takes
    a comma-separated `host` list and spreads server connections over it; Odyssey, pgcat and RDS Proxy pool per
    transaction too): the client's session is relayed message by message, and each *transaction* (from the first
    message after an idle ReadyForQuery to the next one) runs on whichever server `route(first_message)` names.
    Prepared statements follow their Parse (as PgBouncer >= 1.21 does with max_prepared_statements). The routing is
    fixed by the test so that it is deterministic; a real pooler picks any idle server connection."""

    def __init__(self, directory: Path, route: Callable[[bytes], str], default: str) -> None:
        self.directory = directory
        self.route = route
        self.default = default
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.transactions: list[tuple[str, bytes]] = []  # (upstream, first message), in order

    async def start(self) -> None:
        self.directory.mkdir(mode=0o777)
        self.directory.chmod(0o777)
        path = str(self.directory / ".s.PGSQL.5432")
        self.server = await asyncio.start_unix_server(self._serve, path=path)
        os.chmod(path, 0o777)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres:@/{dbname}?host={self.directory}"

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(5)
        return head + await reader.readexactly(int.from_bytes(head[1:], "big") - 4)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(Exception):
            header = await reader.readexactly(4)
            startup = header + await reader.readexactly(int.from_bytes(header, "big") - 4)
            if startup[4:8] == (80877102).to_bytes(4, "big"):  # a cancel request: to the default server
                _, w = await asyncio.open_unix_connection(self.default)
                w.write(startup)
                await w.drain()
                w.close()
                return
            await self._session(reader, writer, startup)
        with contextlib.suppress(Exception):
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, startup: bytes) -> None:
        upstreams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        statements: dict[bytes, str] = {}
        state: dict[str, Any] = {"bound": None, "outstanding": 0}

        async def relay_back(name: str, up_reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(Exception):
                while True:
                    msg = await self._message(up_reader)
                    if msg[:1] == b"Z":
                        state["outstanding"] -= 1
                        if state["outstanding"] <= 0 and msg[5:6] == b"I":
                            state["bound"], state["outstanding"] = None, 0
                    writer.write(msg)
                    await writer.drain()

        async def upstream(name: str, forward_startup: bool) -> asyncio.StreamWriter:
            if name not in upstreams:
                up_reader, up_writer = await asyncio.open_unix_connection(name)
                self.writers.append(up_writer)
                up_writer.write(startup)
                while True:  # trust authentication: AuthenticationOk, ParameterStatus..., BackendKeyData, Z
                    msg = await self._message(up_reader)
                    if forward_startup:
                        writer.write(msg)
                    if msg[:1] == b"E":
                        raise ConnectionError(msg)
                    if msg[:1] == b"Z":
                        break
                upstreams[name] = (up_reader, up_writer)
                self._spawn(relay_back(name, up_reader))
            return upstreams[name][1]

        await upstream(self.default, forward_startup=True)
        try:
            while True:
                msg = await self._message(reader)
                kind = msg[:1]
                if kind == b"X":
                    return
                if state["bound"] is None:
                    target = self.route(msg)
                    if kind == b"B":  # Bind names its prepared statement after the portal name
                        portal_end = msg.index(b"\0", 5)
                        stmt = msg[portal_end + 1 : msg.index(b"\0", portal_end + 1)]
                        target = statements.get(stmt, target) if stmt else target
                    state["bound"] = target
                    self.transactions.append((target, msg[:80]))
                target = state["bound"]
                if kind == b"P":
                    stmt = msg[5 : msg.index(b"\0", 5)]
                    if stmt:
                        statements[stmt] = target
                if kind in (b"S", b"Q"):
                    state["outstanding"] += 1
                up = await upstream(target, forward_startup=False)
                up.write(msg)
                await up.drain()
        finally:
            for _, w in upstreams.values():
                with contextlib.suppress(Exception):
                    w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_transaction_pooler_cannot_run_the_search_on_another_standby_than_the_heartbeat_read(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. `_on_standby` reads the heartbeat with one autocommit statement, then `search()` opens its own
    transaction (BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; ...): two transactions on one client
    connection. The docstring's guarantee ("on the very standby connection that will run it") holds only if a
    client connection is one server session. Behind a transaction pooler (PgBouncer's pool_mode=transaction, the
    usual way to put many app processes in front of Postgres, with a host list of several standbys, or in front of
    a connection-level balancer such as a Kubernetes `-ro` Service, e.g. CloudNativePG's `Pooler` of type `ro`;
    Odyssey, pgcat, RDS Proxy's reader endpoint) each transaction may run on another server connection, so on
    another standby: the heartbeat is read
    on a standby that is up to date and the search runs on one whose replay is paused before a restriction of page
    1. With SEARCH_REPLICA_MAX_LAG=2, 3.5 s after the restriction, Alice finds page 1. (The REPEATABLE READ
    snapshot the search takes after the heartbeat read is then not on the server the read vouched for.)
    A fix: read the heartbeat inside the search's own transaction (first statement after SET TRANSACTION, so the
    snapshot that filters the search is the one that shows the beat), e.g. by passing the check into search()'s
    transaction; or document and refuse transaction poolers."""
    primary, _ = pools
    fresh_url = standby.url("cv_standby")
    stale = cluster.start_standby()
    stale_url = stale.url("cv_standby")
    pooler = TransactionPooler(
        cluster.root / "txpool-r3",
        lambda first: _socket(standby) if b"cv_search_heartbeat" in first else _socket(stale),
        default=_socket(stale),
    )
    replica = standby_pool(pooler.url("cv_standby"), 2)
    db: SearchDatabase | None = None
    try:
        await pooler.start()
        await _replayed(primary, fresh_url)
        await _replayed(primary, stale_url)
        await _sql(stale_url, "SELECT pg_wal_replay_pause()")
        await _until_standby(stale_url, "pg_get_wal_replay_pause_state() = 'paused'")
        committed = await _restrict_page_1(primary)
        await _replayed(primary, fresh_url)

        db = SearchDatabase(primary, replica, max_lag=2.0)
        await db.open()
        await _until_fresh(db)
        await _until(lambda: time.monotonic() > committed + 3.5, timeout=6, what="3.5 s after the restriction")
        used: list[Any] = []
        hits = await db.run(_searcher(used))
        assert "1" not in hits, (
            f"page 1, restricted {time.monotonic() - committed:.1f} s before (SEARCH_REPLICA_MAX_LAG=2), found by "
            f"Alice on {used}; transactions through the pooler: {pooler.transactions[-6:]}; state {db.state}"
        )
    finally:
        if db is not None:
            await db.close()
        await replica.close()
        await pooler.close()
        with contextlib.suppress(Exception):
            await _sql(stale_url, "SELECT pg_wal_replay_resume()")
        stale.stop()


# --------------------------------------------------------------------------------------------------------------
# Finding 3: a beat that times out leaves its backend running on the primary; one more per beat.
# --------------------------------------------------------------------------------------------------------------


async def _heartbeat_backends(url: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid, state, wait_event_type, left(query, 40) FROM pg_stat_activity"
            " WHERE application_name = 'confluence-vectors-heartbeat'"
        )
        return list(await cur.fetchall())


async def test_beats_that_time_out_do_not_pile_up_backends_on_the_primary(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """BUG. When a heartbeat write takes over BEAT_TIMEOUT, `_bounded` cancels its task *without awaiting it* and
    `beat()` at once closes the beat connection (`_drop_beat_connection`). psycopg reacts to a cancelled execute
    by sending the server a cancel request, but only if the connection is still ACTIVE when the task wakes up:
    the connection has been closed first, so nothing is cancelled. The server-side backend, blocked (here on a
    lock; likewise a commit waiting on a synchronous standby that is down), never reads the Terminate message and
    stays, holding a connection slot and its place in the lock queue. The next beat opens a NEW connection that
    blocks the same way: one more backend per beat (every ~3 s, per process) for as long as the write is blocked.
    Here a CREATE INDEX-like SHARE lock on cv_search_heartbeat (a DBA's REINDEX/CREATE INDEX, pg_repack, a
    migration) held while 4 beats run leaves 4 heartbeat backends waiting on the primary; with 20 processes and
    max_connections=100 that is the whole primary in about 15 s, webhooks and jobs refused with "too many clients".
    A fix: await the cancelled write (bounded) before closing, or cancel the query explicitly (conn.cancel_safe)
    before closing, or set statement_timeout/lock_timeout on the beat connection."""
    primary, replica = pools
    url = cluster.url("cv_standby")
    db = SearchDatabase(primary, replica, max_lag=30.0)
    locker: psycopg.AsyncConnection[Any] | None = None
    try:
        await replica.open(wait=False)
        await _until_fresh(db)
        locker = await psycopg.AsyncConnection.connect(url)
        await locker.execute("LOCK TABLE cv_search_heartbeat IN SHARE MODE")  # what CREATE INDEX takes
        before = db._beat
        for _ in range(4):
            await db.beat()  # each write waits on the lock and is given up after BEAT_TIMEOUT
        assert db._beat == before + 4, "four beats attempted"
        left: list[tuple[Any, ...]] = []

        async def at_most_one() -> bool:
            left[:] = await _heartbeat_backends(url)
            return len(left) <= 1

        with contextlib.suppress(AssertionError):
            await _until(at_most_one, timeout=8.0, what="the abandoned beats' backends end")
        assert len(left) <= 1, (
            f"{len(left)} heartbeat backends on the primary after 4 beats timed out (one connection per process "
            f"is the design): {left}"
        )
    finally:
        if locker is not None:
            await locker.rollback()
            await locker.close()
        await db.close()


# --------------------------------------------------------------------------------------------------------------
# Held: a standby that has not replayed a vector-type swap does not break searches the primary answers.
# --------------------------------------------------------------------------------------------------------------


async def test_a_lagging_standby_does_not_make_searches_on_the_primary_fail_after_a_type_swap(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """Held (suspected, not found). `app.search._VECTOR_TYPES` caches `data_<table>.embedding`'s type per process,
    filled by whichever database a search ran on. After a reindex swaps in a halfvec table, a standby within
    SEARCH_REPLICA_MAX_LAG that has not replayed the swap caches `vector`; the next search the primary answers (the
    standby pool busy) then casts its query to `vector` against the primary's halfvec column. pgvector's casts
    between the two types make that statement valid, so the search is answered (the suspected UndefinedFunction
    and 500 do not happen); only the index of the other type may go unused for the window."""
    primary, replica = pools
    standby_url = standby.url("cv_standby")
    url = cluster.url("cv_standby")
    db = SearchDatabase(primary, replica, max_lag=30.0)
    held: list[Any] = []
    swapped = False
    from app import search as search_module

    async def on_primary_while_the_standby_pool_is_busy() -> Any:
        held[:] = [await replica.getconn(), await replica.getconn()]  # a burst of searches holds the standby pool
        used: list[Any] = []
        try:
            return await db.run(_searcher(used)), used
        except psycopg.Error as exc:
            return exc, used
        finally:
            for conn in held:
                await replica.putconn(conn)
            held.clear()

    try:
        await replica.open(wait=False)
        await _until_fresh(db)
        assert await db.run(_searcher(used := [])) == ["1", "2"] and used == ["standby"]
        await _sql(standby_url, "SELECT pg_wal_replay_pause()")
        await _until_standby(standby_url, "pg_get_wal_replay_pause_state() = 'paused'")
        dim = await _sql(url, "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'data_confluence'::regclass"
                              " AND attname = 'embedding'")  # fmt: skip
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn, conn.transaction():
            # what `reindex` does in its last step: a table of the other type takes the name
            await conn.execute("ALTER TABLE data_confluence RENAME TO data_confluence_r3vec")
            await conn.execute("CREATE TABLE data_confluence (LIKE data_confluence_r3vec INCLUDING DEFAULTS"
                               " INCLUDING GENERATED)")  # fmt: skip
            await conn.execute(f"ALTER TABLE data_confluence ALTER COLUMN embedding TYPE halfvec({dim})")
            await conn.execute("ALTER TABLE data_confluence ADD PRIMARY KEY (id)")
            cols = await _columns(conn)
            await conn.execute(f"INSERT INTO data_confluence ({cols}) SELECT {cols} FROM data_confluence_r3vec")
        swapped = True
        search_module._VECTOR_TYPES.pop("confluence", None)

        first, where1 = await on_primary_while_the_standby_pool_is_busy()
        assert first == ["1", "2"] and where1 == ["primary"], (first, where1)  # the primary's type was looked up
        search_module._VECTOR_TYPES.pop("confluence", None)  # a process started now, or a look again
        on_standby = await db.run(_searcher(used := []))
        assert on_standby == ["1", "2"] and used == ["standby"], (on_standby, used)  # the standby's (old) type
        again, where2 = await on_primary_while_the_standby_pool_is_busy()
        assert again == ["1", "2"], (
            f"a search the primary answered ({where2}), 1 s after one the standby answered, failed: {again!r}; the "
            f"standby, within SEARCH_REPLICA_MAX_LAG and not yet past the swap, set the process's vector type for "
            f"both: {search_module._VECTOR_TYPES}"
        )
    finally:
        await db.close()
        with contextlib.suppress(Exception):
            await _sql(standby_url, "SELECT pg_wal_replay_resume()")
        if swapped:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn, conn.transaction():
                await conn.execute("DROP TABLE data_confluence")
                await conn.execute("ALTER TABLE data_confluence_r3vec RENAME TO data_confluence")
        search_module._VECTOR_TYPES.pop("confluence", None)


async def _columns(conn: psycopg.AsyncConnection[Any]) -> str:
    cur = await conn.execute(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = 'data_confluence'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
    )
    row = await cur.fetchone()
    return str(row[0]) if row else ""
