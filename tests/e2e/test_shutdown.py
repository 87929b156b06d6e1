"""Processes end cleanly (issue 10, part 5): SIGTERM and SIGINT drain in-flight jobs, stop the embedded
PostgreSQL, and exit 0; pids of processes that died without cleaning up do not keep it running.

Before: uvicorn re-raised the captured SIGTERM after its graceful shutdown, killing `serve` before pgserver's
`atexit` clean-up, so the embedded server kept running and the dead pid stayed in pgserver's list for good.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, Service, service_env, wait_until
from tests.e2e.test_job_lifecycle import job_doing
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def postmaster_pid(pgdata: Path) -> int:
    """The embedded server's pid: the first line of `postmaster.pid` (PostgreSQL docs, "Database File Layout")."""
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def registered_workers(pgdata: Path) -> int:
    """Workers registered in the embedded server (socket in `pgdata`, pgserver's layout); 0 until it answers."""
    try:
        port = (pgdata / "postmaster.pid").read_text().splitlines()[3]
        with psycopg.connect(f"postgresql://postgres@/postgres?host={pgdata}&port={port}", connect_timeout=2) as c:
            row = c.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
    except (OSError, IndexError, psycopg.Error):
        return 0
    return int(row[0]) if row else 0


def signal_and_wait(service: Service, sig: int, timeout: float = 60) -> int:
    """Send `sig` to the service process alone (not its group: an orchestrator signals the main process) and
    return its exit status."""
    assert service.proc is not None
    service.proc.send_signal(sig)
    return service.proc.wait(timeout)


def embedded_env(confluence: FakeConfluence, ollama: FakeOllama, data_dir: Path) -> dict[str, str]:
    env = service_env(database_url="", confluence=confluence, ollama=ollama, data_dir=data_dir)
    env.pop("DATABASE_URL")  # unset: the embedded PostgreSQL under DATA_DIR
    return env


@pytest.mark.parametrize("sig", SIGNALS)
def test_serve_stops_the_embedded_postgres_and_exits_0(
    sig: int, tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama
) -> None:
    """A previous `serve` died by SIGKILL (the embedded postgres outlives it, its pid stays registered with
    pgserver); the next `serve` joins that server and is stopped by `sig`: exit status 0, the embedded
    postgres gone, no pid left registered."""
    data_dir = tmp_path / "data"
    pgdata = data_dir / "pg"
    env = embedded_env(confluence, ollama, data_dir)
    crashed = Api(env, tmp_path / "crashed.log").start()
    assert crashed.proc is not None
    crashed.proc.kill()  # the process alone, as the OOM killer would: its postgres keeps running
    crashed.proc.wait(10)
    postmaster = postmaster_pid(pgdata)
    assert psutil.pid_exists(postmaster)
    assert crashed.proc.pid in json.loads((pgdata / ".handle_pids.json").read_text())

    api = Api(env, tmp_path / "api.log").start()
    try:
        assert postmaster_pid(pgdata) == postmaster, "the second run joins the running server"
        code = signal_and_wait(api, sig)
    finally:
        api.kill()
    assert code == 0, api.logs()[-3000:]
    wait_until(lambda: not psutil.pid_exists(postmaster), timeout=10, what="embedded postgres stopped")
    assert not (pgdata / "postmaster.pid").exists()
    assert json.loads((pgdata / ".handle_pids.json").read_text() or "[]") == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_stops_the_embedded_postgres_and_exits_0(
    sig: int, tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama
) -> None:
    data_dir = tmp_path / "data"
    worker = Service(embedded_env(confluence, ollama, data_dir), ["worker"], tmp_path / "worker.log").start()
    pgdata = data_dir / "pg"
    try:
        wait_until(lambda: registered_workers(pgdata) > 0, timeout=60, what="worker registered")
        postmaster = postmaster_pid(pgdata)
        code = signal_and_wait(worker, sig)
    finally:
        worker.kill()
    assert code == 0, worker.logs()[-3000:]
    wait_until(lambda: not psutil.pid_exists(postmaster), timeout=10, what="embedded postgres stopped")


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_drains_the_in_flight_job(
    sig: int, env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """`serve` signalled while a page is being embedded finishes that page before exiting 0."""
    pid = "5301"
    version = confluence.put_page(pid, title="Slow page", body=page_body(3, 2, seed="drain"), space_key="ENG")
    ollama.per_input_delay = 0.3  # the embed call lasts a couple of seconds
    api = Api(env, tmp_path / "api.log").start()
    try:
        assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
        wait_until(lambda: ollama.calls >= 1 and job_doing(db, pid), timeout=30, what="page mid-embedding")
        code = signal_and_wait(api, sig)
    finally:
        api.kill()
    assert code == 0, api.logs()[-3000:]
    assert indexed(db, pid, version), db.state(pid)
    assert api_queue_idle(db)

