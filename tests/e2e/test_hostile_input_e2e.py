"""Hostile or broken input costs bounded time and memory, and tells unauthenticated callers nothing (issue 10).

The real service as a subprocess over real HTTP, with the fake Confluence and fake Ollama and real Postgres:
delivery keys scoped by the URL's event, `/metrics` label values allow-listed and its scrape kept off the
vector table, `/readyz` failures without their text, and corrupt embedding vectors refused before any write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, running, wait_until
from tests.e2e.test_pipeline_e2e import indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


@pytest.fixture()
def service(env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    with running(Api({**env, "DEDUPE_WINDOW_SECONDS": "300"}, tmp_path / "hostile.log")) as api:
        yield api  # type: ignore[misc]


def test_the_same_body_under_another_url_event_is_another_delivery(service: Api, confluence: FakeConfluence) -> None:
    """Cloud REST hooks are registered one per event and their bodies do not name it: a page moved right
    after it was updated arrives as the same body under `?event=page_moved`. It must not be a duplicate."""
    confluence.put_page("7001", title="Moved", body=page_body(1, 1), space_key="ENG")
    body = b'{"page": {"id": "7001", "contentType": "page"}}'
    assert service.webhook(body, event="page_updated").status_code == 202
    again = service.webhook(body, event="page_updated")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # a true re-delivery
    moved = service.webhook(body, event="page_moved")
    assert moved.status_code == 202, moved.text
    assert moved.json()["event"] == "page_moved"


def test_metrics_label_values_are_allow_listed(service: Api) -> None:
    """Event names from the query string or body become label values only if Confluence sends them: 200
    invented names add one `other` series, not 200 series."""
    for i in range(100):
        service.webhook({"event": f"invented_{i}", "page": {"id": 1}})
        service.webhook(b"not json", event=f"from_url_{i}")
    service.webhook({"event": "page_updated", "page": {"id": 1}})
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    series = [line for line in text.splitlines() if line.startswith("cv_webhooks_total{")]
    assert not [line for line in series if "invented_" in line or "from_url_" in line], series[:5]
    counts = {
        (event, outcome): float(value)
        for event, outcome, value in re.findall(r'cv_webhooks_total\{event="([^"]*)",outcome="([^"]*)"\} (\S+)', text)
    }
    assert sum(n for (event, outcome), n in counts.items() if event == "other" and outcome != "rejected_400") == 100
    assert counts[("other", "rejected_400")] == 100
    assert 'event="page_updated"' in text
    assert len(series) <= 6


def test_a_scrape_never_reads_the_vector_table(service: Api, db_url: str) -> None:
    """`/metrics` used to run `count(*)` over every chunk row per scrape. With the vector table locked
    against all access, a scrape must still answer at once (it reads `cv_pages` and the job table only)."""
    with psycopg.connect(db_url) as conn:
        conn.execute("LOCK TABLE data_confluence IN ACCESS EXCLUSIVE MODE")
        response = httpx.get(f"{service.url}/metrics", timeout=10)
        conn.rollback()
    assert response.status_code == 200
    assert "cv_queue_jobs" in response.text or "cv_pages" in response.text


def test_readyz_says_unavailable_and_logs_the_reason(service: Api, ollama: FakeOllama) -> None:
    ollama.go_down()

    def not_ready() -> httpx.Response | None:
        response = httpx.get(f"{service.url}/readyz", timeout=30)
        return response if response.status_code == 503 else None

    response = wait_until(not_ready, timeout=30, what="/readyz notices Ollama is down")
    assert response.json()["checks"]["ollama"] == {"ok": False, "error": "unavailable"}
    assert response.json()["checks"]["postgres"] == {"ok": True}
    for detail in ("127.0.0.1", str(ollama.base_url.rsplit(":", 1)[1]), "Error", "unreachable"):
        assert detail not in response.text, response.text
    wait_until(lambda: "readiness check failed" in service.logs(), what="the reason in the log")
    assert "unreachable" in service.logs()


def test_a_corrupt_vector_is_never_written_and_the_page_recovers(
    service: Api, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """Ollama (or a proxy) answers 200 with NaN in a vector: the job fails with EmbeddingInvalid before any
    write, keeps the page's rows as they were, and the retry indexes the edit."""
    confluence.put_page("7101", title="Runbook", body=page_body(2, 2, seed="v1"), space_key="ENG")
    assert service.webhook({"event": "page_created", "page": {"id": 7101}}).status_code == 202
    wait_until(lambda: indexed(db, "7101"), what="first version indexed")
    before = db.rows("7101")

    ollama.corrupt_next(1, "nan")
    version = confluence.put_page("7101", title="Runbook", body=page_body(2, 2, seed="v2"), space_key="ENG")
    assert service.webhook({"event": "page_updated", "page": {"id": 7101}}).status_code == 202
    wait_until(lambda: "EmbeddingInvalid" in service.logs(), what="the corrupt vector refused")
    assert db.rows("7101") == before  # nothing of the failed attempt was written
    wait_until(lambda: indexed(db, "7101", version), timeout=60, what="the retry indexes the edit")
    assert all("v2" in text for text, _ in db.rows("7101") if "Paragraph" in text)
