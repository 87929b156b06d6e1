"""Trying to leave stale or duplicate rows behind issue 11's lifecycle: an attachment trashed then restored, a
comment removed while its page is in the trash, a page trashed then restored, and the same events delivered
twice and out of order. After each step the page's rows are exactly what Confluence shows, once each.
"""

from __future__ import annotations

import json
from collections import Counter

from tests.e2e.conftest import Db
from tests.e2e.harness import Api, wait_until
from tests.fakes import office_files as files
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import content_of


def texts(db: Db, page_id: str) -> str:
    return json.dumps(db.rows(page_id), ensure_ascii=False)


def no_duplicate_nodes(db: Db, page_id: str) -> bool:
    """No chunk stored twice: the same (attachment or comment or page, chunk text) appears once."""
    keys = Counter(
        (meta.get("attachment_id") or meta.get("comment_id") or "page", text) for text, meta in db.rows(page_id)
    )
    return all(n == 1 for n in keys.values()) and db.duplicates() == 0


def test_trash_restore_and_removed_comment_converge_without_stale_or_duplicate_rows(
    api: Api, confluence: FakeConfluence, db: Db
) -> None:
    content = content_of(confluence)
    confluence.put_page("7201", title="Lifecycle", body="<p>Lifecycle body text.</p>", space_key="ENG")
    keep = content.add_comment("7201", "<p>Heron comment stays.</p>")
    gone = content.add_comment("7201", "<p>Ibis comment goes.</p>")
    pdf = content.add_attachment("7201", "heron.pdf", files.PDF, files.pdf(["Jackal figure is 41."]))
    assert api.webhook({"event": "page_created", "page": {"id": "7201"}}).status_code == 202
    wait_until(lambda: all(w in texts(db, "7201") for w in ("Heron", "Ibis", "Jackal")), timeout=90, what="indexed")
    assert no_duplicate_nodes(db, "7201")
    baseline = len(db.rows("7201"))

    # Attachment trashed, then restored (same id and version): its rows go, then come back once.
    content.set_attachment_status(pdf, "trashed")
    trashed = {"event": "attachment_trashed", "attachment": {"id": pdf, "container": {"id": "7201"}}}
    assert api.webhook(trashed).status_code == 202
    wait_until(lambda: "Jackal" not in texts(db, "7201"), what="trashed attachment's rows gone")
    content.set_attachment_status(pdf, "current")
    restored = {"event": "attachment_restored", "attachment": {"id": pdf, "container": {"id": "7201"}}}
    for _ in range(2):  # delivered twice
        assert api.webhook(restored).status_code in (200, 202)
    wait_until(lambda: "Jackal" in texts(db, "7201"), what="restored attachment indexed again")
    wait_until(lambda: len(db.rows("7201")) == baseline, what="same rows as before the trash")
    assert no_duplicate_nodes(db, "7201")

    # Page trashed; while in the trash a comment is removed; the page is restored: the removed comment must
    # not come back from anything held for the trashed page.
    confluence.set_status("7201", "trashed")
    assert api.webhook({"event": "page_trashed", "page": {"id": "7201"}}).status_code == 202
    wait_until(lambda: not db.rows("7201"), what="trashed page's rows (page, comments, files) gone")
    content.remove_comment(gone)
    removed = {"event": "comment_removed", "comment": {"id": int(gone), "container": {"id": "7201"}}}
    assert api.webhook(removed).status_code in (200, 202)
    confluence.set_status("7201", "current")
    assert api.webhook({"event": "page_restored", "page": {"id": "7201"}}).status_code == 202
    wait_until(lambda: "Heron" in texts(db, "7201") and "Jackal" in texts(db, "7201"), what="restored page")
    wait_until(lambda: len({m.get("comment_id") for _, m in db.rows("7201")} - {None}) == 1, what="one comment")
    assert "Ibis" not in texts(db, "7201"), "a comment removed while its page was in the trash came back"
    assert {m.get("comment_id") for _, m in db.rows("7201")} - {None} == {keep}
    assert no_duplicate_nodes(db, "7201")
