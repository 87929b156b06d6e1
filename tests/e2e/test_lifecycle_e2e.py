"""The index mirrors the wiki: trash, restore, move, bursts, reconciliation, backfill, model changes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, PeakRss, cli_path, wait_until
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


def test_trash_restore_move(api: Api, confluence: FakeConfluence, ollama: FakeOllama, db: Db) -> None:
    confluence.put_page("3001", title="Lifecycle", body=page_body(3, 2), space_key="ENG")
    api.webhook({"event": "page_created", "page": {"id": 3001}})
    wait_until(lambda: indexed(db, "3001"), what="indexed")
    n_rows = len(db.rows("3001"))

    confluence.set_status("3001", "trashed")
    api.webhook({"event": "page_trashed", "page": {"id": 3001}})
    wait_until(lambda: db.rows("3001") == [], what="rows gone after trash")
    assert db.state("3001")["status"] == "deleted"  # type: ignore[index]

    confluence.set_status("3001", "current")
    api.webhook({"event": "page_restored", "page": {"id": 3001}})
    wait_until(lambda: indexed(db, "3001") and len(db.rows("3001")) == n_rows, what="restored")

    embedded = ollama.inputs
    confluence.move_page("3001", space_key="OPS")
    api.webhook({"event": "page_moved", "page": {"id": 3001}})
    wait_until(lambda: {m["space_key"] for _, m in db.rows("3001")} == {"OPS"}, what="metadata moved")
    assert ollama.inputs == embedded, "a move must not re-embed"
    assert len(db.rows("3001")) == n_rows


def test_burst_of_fifty_events_costs_at_most_two_cycles(api: Api, confluence: FakeConfluence, db: Db) -> None:
    confluence.put_page("3002", title="Busy page", body=page_body(2, 2), space_key="ENG")
    confluence.slowness = 0.3  # the first job is still fetching while the burst lands
    start = len(confluence.requests)
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for i in range(50):
            if i == 25:
                last = confluence.put_page(
                    "3002", title="Busy page", body=page_body(2, 2, seed="last"), space_key="ENG"
                )
            r = client.post(f"{api.url}/webhook/confluence", json={"event": "page_updated", "page": {"id": 3002}})
            assert r.status_code == 202
    assert time.monotonic() - started < 10
    wait_until(lambda: indexed(db, "3002", last) and api_queue_idle(db), timeout=60, what="settled")
    confluence.slowness = 0
    cycles = sum(1 for method, path in confluence.requests[start:] if "3002" in path and _is_page_fetch(path))
    assert cycles <= 2, f"{cycles} fetch cycles for 50 events"
    assert db.version_fields("3002")["version"] == last and db.duplicates() == 0
    assert all("last" in text for text, _ in db.rows("3002") if "Paragraph" in text), "rows are the last version's"


def _is_page_fetch(path: str) -> bool:
    return path.rstrip("/").endswith("3002") and ("/pages/" in path or "/content/" in path or "/blogposts/" in path)


def test_one_paragraph_edit_embeds_at_most_three(
    api: Api, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    body = page_body(11, 6)  # ~40 chunks at CHUNK_SIZE=128
    confluence.put_page("3003", title="Big page", body=body, space_key="ENG")
    api.webhook({"event": "page_created", "page": {"id": 3003}})
    wait_until(lambda: indexed(db, "3003"), timeout=60, what="indexed")
    chunks = len(db.rows("3003"))
    assert chunks >= 36, chunks
    before = ollama.inputs
    edited = body.replace("<h2>Section 1 </h2>", "<h2>Section 1 </h2><p>A new paragraph about rollbacks.</p>", 1)
    assert edited != body
    v2 = confluence.put_page("3003", title="Big page", body=edited, space_key="ENG")
    api.webhook({"event": "page_updated", "page": {"id": 3003}})
    wait_until(lambda: indexed(db, "3003", v2), timeout=60, what="edit indexed")
    assert ollama.inputs - before <= 3, (
        f"{ollama.inputs - before} chunks re-embedded for one paragraph ({chunks} chunks)"
    )


def test_reconcile_catches_missed_webhooks(env: dict[str, str], api: Api, confluence: FakeConfluence, db: Db) -> None:
    confluence.put_page("3004", title="Kept", body=page_body(1, 2), space_key="ENG")
    confluence.put_page("3005", title="Doomed", body=page_body(1, 2, seed="doomed"), space_key="ENG")
    for pid in ("3004", "3005"):
        api.webhook({"event": "page_created", "page": {"id": pid}})
    wait_until(lambda: indexed(db, "3004") and indexed(db, "3005"), what="both indexed")
    _reconcile(env)  # first run sets the checkpoint

    confluence.put_page("3006", title="Never announced", body=page_body(1, 2, seed="silent"), space_key="OPS")
    confluence.delete_page("3005")  # no webhook for either
    _reconcile(env)
    wait_until(lambda: indexed(db, "3006"), what="missed page indexed")
    wait_until(lambda: db.rows("3005") == [], what="vanished page removed")
    assert indexed(db, "3004")


def _reconcile(env: dict[str, str]) -> None:
    result = subprocess.run([cli_path(), "reconcile"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_change_is_refused_with_a_clear_message(env: dict[str, str], api: Api) -> None:
    result = subprocess.run(
        [cli_path(), "status"],
        env={**env, "EMBED_MODEL": "nomic-embed-text", "EMBED_DIM": "768"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "EMBED_MODEL=bge-m3" in out and "reindex" in out


def test_sync_backfills_a_space(
    env: dict[str, str], api: Api, confluence: FakeConfluence, db: Db, tmp_path: Path
) -> None:
    confluence.bulk_pages("BULK", 300)
    result = subprocess.run(
        [cli_path(), "sync", "--space", "BULK"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: api_queue_idle(db), timeout=240, what="backfill processed")
    with __import__("psycopg").connect(db.url) as conn:
        n = conn.execute("SELECT count(*) FROM cv_pages WHERE status = 'indexed' AND space_key = 'BULK'").fetchone()
    assert n is not None and n[0] == 300
    # A second sync over the unchanged space enqueues nothing.
    again = subprocess.run(
        [cli_path(), "sync", "--space", "BULK"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "Enqueued 0 pages" in again.stdout, again.stdout


def _sync_peak_rss_mb(env: dict[str, str], space: str) -> float:
    """Run `confluence-vectors sync --space` to completion; its own peak RSS in MB."""
    proc = subprocess.Popen(
        [cli_path(), "sync", "--space", space], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak = PeakRss(proc.pid)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode(errors="replace")
    return peak.result()


def test_sync_of_a_5000_page_space_enqueues_every_page_in_bounded_memory(
    env: dict[str, str], confluence: FakeConfluence, db: Db
) -> None:
    """Backfill memory must not grow with the space: the sync streams pages in batches. No worker runs, so the
    test measures enumeration and enqueueing only (bench/backfill.py measures indexing too)."""
    confluence.bulk_pages("SMALL", 500)
    confluence.bulk_pages("LARGE", 5000)
    small = _sync_peak_rss_mb(env, "SMALL")
    large = _sync_peak_rss_mb(env, "LARGE")
    with __import__("psycopg").connect(db.url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT queueing_lock) FROM procrastinate_jobs "
            "WHERE queue_name = 'pages' AND status = 'todo'"
        ).fetchone()
    assert row == (5500, 5500), row
    print(f"sync peak RSS: 500 pages {small:.0f} MB, 5,000 pages {large:.0f} MB")  # shown with `pytest -s`
    assert large - small < 25, f"peak RSS grew with the space: 500 pages {small:.0f} MB, 5,000 {large:.0f} MB"
    assert large < 400, f"sync peak RSS {large:.0f} MB"
