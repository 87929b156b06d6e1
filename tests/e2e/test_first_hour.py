"""The first hour of a new user, as the CLI shows it (issue 13, "The first hour"): each line there has a test
here, run against the real command, real Postgres and the fake Confluence/Ollama over HTTP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.config import Settings
from app.startup import confluence_problems, ollama_problem
from tests.conftest import make_settings
from tests.e2e.harness import REPO, cli_path, service_env
from tests.fakes import ollama
from tests.fakes.confluence import FakeConfluence


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli_path(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture()
def env(db_url: str, tmp_path: Path) -> Any:
    with FakeConfluence("cloud").start() as confluence, ollama.FakeOllama() as fake_ollama:
        confluence.add_space("ENG", "Engineering")
        confluence.add_space("OPS", "Operations")
        yield service_env(database_url=db_url, confluence=confluence, ollama=fake_ollama, data_dir=tmp_path / "data")


def test_make_run_takes_host_and_port() -> None:
    shown = subprocess.run(
        ["make", "-n", "run", "HOST=0.0.0.0", "PORT=9123"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "confluence-vectors serve --host 0.0.0.0 --port 9123" in shown
    default = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "serve --host 127.0.0.1 --port 8000" in default


def test_sync_of_an_unknown_space_is_an_error_naming_it(env: dict[str, str], tmp_path: Path) -> None:
    result = cli(["sync", "--space", "NOPE", "--space", "eng"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOPE" in result.stderr and "eng (did you mean ENG?)" in result.stderr
    assert "Enqueued" not in result.stdout


def test_cli_output_is_for_people(env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO cv_state (key, value) VALUES ('reconcile', %s::jsonb)""",
            (json.dumps({"finished_at": "2026-03-01T10:00:00+00:00", "modified_seen": 7, "queued_modified": 2}),),
        )
    result = cli(["status"], env | {"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no library INFO lines, no Python warnings
    assert "Last reconciliation: finished 2026-03-01T10:00:00, 7 pages modified, 2 queued" in result.stdout
    assert "{" not in result.stdout  # no raw dicts
    assert "data: DATABASE_URL" in result.stdout


def test_first_run_on_a_fresh_embedded_database_prints_no_json_and_a_one_line_heading(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A first `status` migrates a new embedded database: what it logs is short text for a person, not the
    service's JSON lines, and the heading is one line, not a table title wrapped to the table's width."""
    fresh = {k: v for k, v in env.items() if k != "DATABASE_URL"} | {
        "DATA_DIR": str(tmp_path / "fresh"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "COLUMNS": "80",
    }
    result = cli(["status"], fresh, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.lstrip().startswith("{")], result.stderr
    heading = result.stdout.splitlines()[0]
    assert heading.startswith("confluence-vectors: table ") and "bge-m3" in heading, result.stdout


def test_status_lists_failures_and_retry_failed_queues_them(env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO cv_pages (page_id, title, status, last_error, attempts, updated_at) VALUES
               ('501', 'Broken page', 'failed', 'ConfluenceAuthError: refused', 12, '2026-03-02 08:00:00+00'),
               ('502', 'Fine page', 'indexed', NULL, 0, now())"""
        )
        # The page's last job, failed for good (as the worker leaves it), an hour after the page's record.
        job = conn.execute(
            """INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
               VALUES ('pages', 'cv:index_page', '{"page_id": "501"}', 'failed', 1) RETURNING id"""
        ).fetchone()
        assert job is not None
        conn.execute(
            "INSERT INTO procrastinate_events (job_id, type, at) VALUES (%s, 'failed', '2026-03-02 07:00:00+00')",
            (job[0],),
        )
    shown = cli(["status"], env | {"COLUMNS": "200"}, tmp_path)
    assert "Failed jobs" in shown.stdout, shown.stdout
    assert shown.returncode == 0, shown.stderr
    failed = next(line for line in shown.stdout.splitlines() if "501" in line)
    assert "Broken page" in failed and "12" in failed and "2026-03-02 08:00:00" in failed
    assert "ConfluenceAuthError: refused" in failed
    assert "confluence-vectors retry-failed" in shown.stdout
    as_json = json.loads(cli(["status", "--json"], env, tmp_path).stdout)
    assert as_json["failed"][0]["page_id"] == "501" and as_json["failed"][0]["attempts"] == 12

    retried = cli(["retry-failed"], env, tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "Queued 1 failed page again: 501" in retried.stdout
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT status, attempts FROM cv_pages WHERE page_id = '501'").fetchone() == ("pending", 0)
        jobs = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE args ->> 'page_id' = '501' AND status = 'todo'"
        ).fetchone()
        assert jobs == (1,)
    # The failed job is history now: the page was queued again after it failed.
    after = cli(["status", "--json"], env, tmp_path)
    assert json.loads(after.stdout)["failed_jobs"] == [], after.stdout
    assert "No failed pages." in cli(["retry-failed"], env, tmp_path).stdout


def test_db_url_and_psql_reach_the_database(env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    printed = cli(["db-url"], env, tmp_path)
    assert printed.returncode == 0 and printed.stdout.strip() == db_url
    with psycopg.connect(printed.stdout.strip()) as conn:
        assert conn.execute("SELECT count(*) FROM cv_pages").fetchone() == (0,)
    counted = cli(["psql", "-At", "-c", "SELECT 40 + 2"], env, tmp_path)
    assert counted.returncode == 0 and counted.stdout.strip() == "42", counted.stderr


def test_embedded_database_is_found_from_any_directory(tmp_path: Path) -> None:
    """DATA_DIR defaults to the user's data directory, not `./.data`: two working directories, one database."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = cli(["db-url"], env, tmp_path / "a", timeout=180)
    assert first.returncode == 0, first.stderr
    assert str(tmp_path / "xdg-data" / "confluence-vectors") in first.stderr
    second = cli(["status"], env, tmp_path / "b", timeout=180)
    assert f"DATA_DIR={tmp_path / 'xdg-data' / 'confluence-vectors'}" in second.stdout.replace("\n", "")
    assert not (tmp_path / "a" / ".data").exists() and not (tmp_path / "b" / ".data").exists()


def test_env_file_is_read_from_the_user_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "xdg-config" / "confluence-vectors"
    config.mkdir(parents=True)
    (config / ".env").write_text("CONFLUENCE_BASE_URL=https://example.atlassian.net/wiki\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")}
    code = (
        "from app.config import Settings, env_files_in_use; print(Settings().confluence_base_url, env_files_in_use())"
    )
    shown = subprocess.run(
        [str(Path(cli_path()).parent / "python"), "-c", code],
        env=env | {"PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.startswith("https://example.atlassian.net/wiki") and str(config / ".env") in shown


def test_startup_names_what_is_missing() -> None:
    bare: Settings = make_settings(confluence_base_url="")
    problems = confluence_problems(bare)
    assert any("CONFLUENCE_BASE_URL" in p for p in problems)
    assert any("CONFLUENCE_EMAIL and CONFLUENCE_API_TOKEN" in p and "CONFLUENCE_PAT" in p for p in problems)
    assert confluence_problems(make_settings(confluence_pat="a-real-pat-value")) == []


async def test_startup_probe_of_ollama() -> None:
    assert "OLLAMA_BASE_URL=http://127.0.0.1:9" in (await ollama_problem(make_settings()) or "")
    with ollama.FakeOllama() as fake:
        assert await ollama_problem(make_settings(ollama_base_url=fake.base_url)) is None
        missing = await ollama_problem(make_settings(ollama_base_url=fake.base_url, embed_model="nomic-embed-text"))
        assert missing is not None and "ollama pull nomic-embed-text" in missing


def test_serve_says_once_what_is_missing(tmp_path: Path, db_url: str) -> None:
    """Started with no Confluence settings and no Ollama: one plain warning each, before anything else fails."""
    from tests.e2e.harness import Service, free_port, running, wait_until

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "DATABASE_URL": db_url,
        "OLLAMA_BASE_URL": "http://127.0.0.1:9",
        "LOG_FORMAT": "text",
    }
    log = tmp_path / "serve.log"
    with running(Service(env, ["serve", "--port", str(free_port())], log)):
        wait_until(lambda: "Application startup complete" in log.read_text(), timeout=90, what="serve up")
    text = log.read_text()
    assert text.count("configuration: CONFLUENCE_BASE_URL is not set") == 1
    assert text.count("configuration: no Confluence credentials") == 1
    assert text.count("configuration: Ollama does not answer at OLLAMA_BASE_URL=http://127.0.0.1:9") == 1
    assert "data: DATABASE_URL (external Postgres)" in text
    assert "Traceback" not in text


def test_worker_says_it_started(tmp_path: Path, db_url: str) -> None:
    from tests.e2e.harness import Service, running, wait_until

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "DATABASE_URL": db_url,
        "OLLAMA_BASE_URL": "http://127.0.0.1:9",
        "CONFLUENCE_BASE_URL": "https://wiki.example.com",
        "CONFLUENCE_PAT": "a-real-pat-value",
        "LOG_FORMAT": "text",
    }
    log = tmp_path / "worker.log"
    with running(Service(env, ["worker", "--concurrency", "3"], log)):
        wait_until(lambda: "worker (concurrency 3) starting" in log.read_text(), timeout=60, what="worker start")
    text = log.read_text()
    assert "data: DATABASE_URL (external Postgres)" in text
    assert "configuration: CONFLUENCE" not in text  # configured: nothing to warn about


async def test_unconfigured_client_names_the_base_url() -> None:
    from app.confluence import ConfluenceClient
    from app.errors import ConfluenceAuthError

    client = ConfluenceClient(make_settings(confluence_base_url=""))
    try:
        with pytest.raises(ConfluenceAuthError, match=r"set CONFLUENCE_BASE_URL and .*CONFLUENCE_PAT"):
            await client.list_space_keys()
    finally:
        await client.aclose()
