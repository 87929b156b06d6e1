"""Both products end to end, and restricted pages indexed with their restrictions recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, running, wait_until
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_data_center_page_lifecycle(api: Api, confluence: FakeConfluence, db: Db) -> None:
    """Data Center sends ids only and is read with a PAT through /rest/api/content."""
    confluence.put_page("5001", title="DC page", body=page_body(2, 2), space_key="ENG", labels=["dc"])
    body = {"timestamp": 1, "event": "page_created", "userKey": "k", "page": {"id": 5001}}
    assert api.webhook(body).status_code == 202
    wait_until(lambda: indexed(db, "5001"), what="DC page indexed")
    meta = db.rows("5001")[0][1]
    assert meta["space_key"] == "ENG" and meta["labels"] == ["dc"]
    assert db.version_fields("5001")["author"] == "Ada Lovelace"
    assert any("/rest/api/content/5001" in path for _, path in confluence.requests)

    v2 = confluence.put_page("5001", title="DC page", body="<p>Short now.</p>", space_key="ENG")
    api.webhook({"event": "page_updated", "page": {"id": 5001}})
    wait_until(lambda: indexed(db, "5001", v2), what="DC edit indexed")
    assert len(db.rows("5001")) == 1

    confluence.set_status("5001", "trashed")
    api.webhook({"event": "page_trashed", "page": {"id": 5001}})
    wait_until(lambda: db.rows("5001") == [], what="DC trash mirrored")


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_data_center_blogpost(api: Api, confluence: FakeConfluence, db: Db) -> None:
    confluence.put_page("5002", title="Release notes", body=page_body(1, 2), space_key="ENG", content_type="blogpost")
    assert api.webhook({"event": "blog_created", "blog": {"id": 5002}}).status_code == 202
    wait_until(lambda: indexed(db, "5002"), what="blog post indexed")
    assert db.rows("5002")[0][1]["content_type"] == "blogpost"


def test_restricted_pages_are_indexed_with_their_restriction_recorded(
    api: Api, confluence: FakeConfluence, db: Db, db_url: str
) -> None:
    """Issue 12: restricted pages are indexed, and who their restriction admits is recorded for the query-time
    filter (tests/e2e/test_permissions_e2e.py checks what each person then finds)."""
    confluence.put_page("5003", title="Salaries", body=page_body(1, 2, seed="secret"), space_key="ENG", restricted=True)
    api.webhook({"event": "page_created", "page": {"id": 5003}})
    wait_until(lambda: indexed(db, "5003"), what="restricted page indexed")
    assert db.rows("5003") != []
    assert _restriction(db_url, "5003") == (True, ["user:restricted-owner"])

    confluence.set_restricted("5003", False)
    api.webhook({"event": "page_updated", "page": {"id": 5003}})
    wait_until(lambda: _restriction(db_url, "5003") == (False, []), what="lifted restriction recorded")


def _restriction(db_url: str, content_id: str) -> tuple[bool | None, list[str]] | None:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT restricted, principals FROM cv_restrictions WHERE content_id = %s", (content_id,)
        ).fetchone()
    return (row[0], list(row[1])) if row else None


def test_bad_credentials_say_which_setting_and_never_end_the_page(
    env: dict[str, str], confluence: FakeConfluence, db: Db, tmp_path: Path
) -> None:
    """Refused service credentials are a service fault, not this page's: the error names the setting (never the
    secret), the page is not ended `failed` (that would delete its rows for good), and a follow-up job waits
    for the credentials to be fixed (tests/integration/test_lifecycle_service_faults.py shows the recovery)."""
    confluence.put_page("5005", title="Unreachable", body=page_body(1, 1), space_key="ENG")
    bad = {**env, "CONFLUENCE_API_TOKEN": "not-the-right-token"}
    with running(Api(bad, tmp_path / "bad.log")) as service:
        assert service.webhook({"event": "page_created", "page": {"id": 5005}}).status_code == 202  # type: ignore[attr-defined]
        wait_until(
            lambda: "CONFLUENCE_API_TOKEN" in ((db.state("5005") or {}).get("last_error") or ""),
            what="the failure recorded, naming the setting",
        )
        state = db.state("5005") or {}
        assert state["status"] != "failed", state
        assert not api_queue_idle(db), "a follow-up job waits for the credentials to be fixed"
        assert "not-the-right-token" not in state["last_error"]
        assert "not-the-right-token" not in service.logs()
