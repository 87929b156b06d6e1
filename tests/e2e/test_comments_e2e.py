"""Comments end to end on Data Center (v1 child comments, attachments and downloads), and the off switch."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Db
from tests.e2e.harness import Api, cli_path, running, service_env, wait_until
from tests.fakes import office_files as files
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import content_of
from tests.fakes.ollama import FakeOllama


def texts(db: Db, page_id: str) -> str:
    return json.dumps(db.rows(page_id), ensure_ascii=False)


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_data_center_comments_and_attachment_converge(api: Api, confluence: FakeConfluence, db: Db) -> None:
    content = content_of(confluence)
    confluence.put_page("4001", title="Release notes", body="<p>Release train leaves Friday.</p>", space_key="ENG")
    footer = content.add_comment("4001", "<p>Gooseberry sign-off given.</p>", author_id="acc-1")
    inline = content.add_comment("4001", "<p>Check the date.</p>", kind="inline", selection="leaves Friday")
    content.add_comment("4001", "<p>Stale quince note.</p>", kind="inline", selection="x", resolution="resolved")
    content.add_attachment("4001", "notes.pdf", files.PDF, files.pdf(["Chinchilla build 812 is the candidate."]))
    api.webhook({"event": "page_created", "page": {"id": 4001}})
    wait_until(lambda: "Chinchilla" in texts(db, "4001"), timeout=90, what="page, comments and file indexed")

    rows = db.rows("4001")
    by_comment = {m.get("comment_id"): m for _, m in rows if m.get("comment_id")}
    assert set(by_comment) == {footer, inline}, "the resolved inline comment is left out"
    assert by_comment[footer]["comment_author"] == "Ada Lovelace"
    assert by_comment[inline]["highlighted_text"] == "leaves Friday"
    assert "Quince" not in texts(db, "4001") and "quince" not in texts(db, "4001")

    content.remove_comment(footer)
    api.webhook({"event": "comment_removed", "comment": {"id": int(footer), "parent": {"id": 4001}}})
    wait_until(lambda: "Gooseberry" not in texts(db, "4001"), what="removed comment's rows gone")
    assert "Chinchilla" in texts(db, "4001") and "Release train" in texts(db, "4001")


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_data_center_comment_events_naming_only_the_comment(api: Api, confluence: FakeConfluence, db: Db) -> None:
    """Data Center can send `{"event": "comment_created", "comment": {"id": 789012}}` (no page): the page is
    looked up (content/{id}?expand=container), a removed comment by the rows that hold it, and an id nothing
    knows is logged, never dropped in silence. Every answer is the same 202 "accepted", naming no page (the
    lookup reads restricted pages too: app.webhook._COMMENT_ACCEPTED)."""
    content = content_of(confluence)
    confluence.put_page("4003", title="Pump runbook", body="<p>Restart the pump.</p>", space_key="ENG")
    api.webhook({"event": "page_created", "page": {"id": 4003}})
    wait_until(lambda: "Restart the pump" in texts(db, "4003"), what="page indexed")

    comment = content.add_comment("4003", "<p>Blueberry valve first.</p>")
    answer = api.webhook({"event": "comment_created", "comment": {"id": int(comment)}})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.text
    assert "4003" not in answer.text
    wait_until(lambda: "Blueberry" in texts(db, "4003"), what="comment indexed through its looked-up page")

    content.remove_comment(comment)  # Confluence no longer knows it: the rows holding it name the page
    answer = api.webhook({"event": "comment_removed", "comment": {"id": int(comment)}})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.text
    wait_until(lambda: "Blueberry" not in texts(db, "4003"), what="removed comment's rows gone")

    answer = api.webhook({"event": "comment_removed", "comment": {"id": 987654321}})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.text
    wait_until(lambda: "cannot resolve comment's page" in api.logs(), what="unresolved comment logged")


def test_cloud_comment_replies_are_searchable_and_follow_their_thread(
    api: Api, confluence: FakeConfluence, db: Db
) -> None:
    """Cloud lists only root comments per page; replies (and replies to replies) come from each comment's
    `/children` list. A reply in a resolved inline thread stays out with its thread."""
    content = content_of(confluence)
    confluence.put_page("4004", title="Cache design", body="<p>Entries live ten minutes.</p>", space_key="ENG")
    root = content.add_comment("4004", "<p>Why ten?</p>")
    reply = content.add_reply(root, "<p>The tapir dashboard refreshes every ten.</p>")
    content.add_reply(reply, "<p>Then the wallaby cache can follow it.</p>")
    closed = content.add_comment("4004", "<p>Typo.</p>", kind="inline", selection="ten", resolution="resolved")
    content.add_reply(closed, "<p>Fixed by the dingo.</p>")
    api.webhook({"event": "page_created", "page": {"id": "4004"}})
    wait_until(lambda: "wallaby" in texts(db, "4004"), timeout=90, what="replies indexed with the page")
    assert "tapir" in texts(db, "4004") and "dingo" not in texts(db, "4004")


def test_reconciliation_catches_comments_and_attachments_without_webhooks(
    env: dict[str, str], api: Api, confluence: FakeConfluence, db: Db
) -> None:
    """A comment or a new file changes no page version, so the page listing cannot see it; reconciliation
    asks CQL for comments and attachments modified since its checkpoint and re-reads their pages."""
    confluence.put_page("4005", title="Ops log", body="<p>Nothing happened.</p>", space_key="ENG")
    api.webhook({"event": "page_created", "page": {"id": "4005"}})
    wait_until(lambda: "Nothing happened" in texts(db, "4005"), what="page indexed")
    _reconcile(env)  # the first run sets the checkpoint

    content = content_of(confluence)
    content.add_comment("4005", "<p>The iguana alarm fired twice.</p>")  # no webhook for either
    content.add_attachment("4005", "notes.txt", "text/plain", b"The axolotl runbook moved to the wiki.")
    _reconcile(env)
    wait_until(lambda: "iguana" in texts(db, "4005") and "axolotl" in texts(db, "4005"), what="children indexed")


def _reconcile(env: dict[str, str]) -> None:
    result = subprocess.run([cli_path(), "reconcile"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture()
def no_comments_api(db_url: str, confluence: FakeConfluence, ollama: FakeOllama, tmp_path: Path) -> Iterator[Api]:
    env = service_env(
        database_url=db_url, confluence=confluence, ollama=ollama, data_dir=tmp_path / "data", INDEX_COMMENTS="false"
    )
    with running(Api(env, tmp_path / "api.log")) as service:
        yield service  # type: ignore[misc]


def test_index_comments_off(no_comments_api: Api, confluence: FakeConfluence, db: Db) -> None:
    confluence.put_page("4002", title="Quiet page", body="<p>Body text stays.</p>", space_key="ENG")
    content_of(confluence).add_comment("4002", "<p>Blackcurrant chatter.</p>")
    no_comments_api.webhook({"event": "page_created", "page": {"id": "4002"}})
    wait_until(lambda: "Body text stays" in texts(db, "4002"), what="page indexed")
    assert "Blackcurrant" not in texts(db, "4002")
    assert confluence.count("footer-comments") == 0, "comments are not even fetched when switched off"
