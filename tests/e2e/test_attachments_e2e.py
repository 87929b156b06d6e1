"""Attachments and comments end to end (issue 11): real files written by the formats' own libraries, served by
the fake Confluence, found through `/search`; edits re-embed only what changed; trash removes everything;
unreadable files are skipped with their reason in `/status` while the page is still indexed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Db
from tests.e2e.harness import Api, running, service_env, wait_until
from tests.fakes import office_files as files
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import ContentStore, content_of
from tests.fakes.ollama import FakeOllama

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_BYTES = 200_000


@pytest.fixture()
def small_cap_api(db_url: str, confluence: FakeConfluence, ollama: FakeOllama, tmp_path: Path) -> Iterator[Api]:
    env = service_env(
        database_url=db_url,
        confluence=confluence,
        ollama=ollama,
        data_dir=tmp_path / "data",
        ATTACHMENT_MAX_BYTES=str(MAX_BYTES),
    )
    with running(Api(env, tmp_path / "api.log")) as service:
        yield service  # type: ignore[misc]


def search(api: Api, query: str) -> str:
    """The `/search` answer for `query` as text (facts are checked in it)."""
    found = httpx.get(f"{api.url}/search", params={"q": query, "k": 20}, timeout=30)
    assert found.status_code == 200, found.text
    return json.dumps(found.json()["results"], ensure_ascii=False)


def status(api: Api) -> dict[str, Any]:
    answer = httpx.get(f"{api.url}/status", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def rows_by_doc(db: Db, page_id: str) -> dict[str, set[str]]:
    docs: dict[str, set[str]] = {}
    for text, meta in db.rows(page_id):
        docs.setdefault(str(meta.get("subdocument_id") or "page"), set()).add(text)
    return docs


def node_ids(db: Db, page_id: str, doc_id: str) -> set[str]:
    import psycopg

    with psycopg.connect(db.url) as conn:
        cur = conn.execute(
            "SELECT node_id FROM data_confluence"
            " WHERE metadata_->>'ref_doc_id' = %s AND metadata_->>'subdocument_id' = %s",
            (page_id, doc_id),
        )
        return {row[0] for row in cur.fetchall()}


def add_everything(content: ContentStore, page_id: str) -> dict[str, str]:
    return {
        "pdf": content.add_attachment(page_id, "limits.pdf", PDF, files.pdf(["The marzipan quota is 42 units."])),
        "docx": content.add_attachment(
            page_id,
            "plan.docx",
            DOCX,
            files.docx("Plan", ["Intro"], [["Region", "Owner"], ["EMEA", "ocelot team"]], header="Draft"),
        ),
        "pptx": content.add_attachment(page_id, "deck.pptx", PPTX, files.pptx([("Roadmap", "tangerine launch")])),
        "xlsx": content.add_attachment(page_id, "sheet.xlsx", XLSX, files.xlsx([["Item", "Cost"], ["xylophone", 7]])),
        "footer": content.add_comment(page_id, "<p>Periwinkle rollback approved.</p>", author_id="acc-1"),
        "inline": content.add_comment(
            page_id, "<p>Kumquat threshold is too low.</p>", kind="inline", selection="canary checks run first"
        ),
        "resolved": content.add_comment(
            page_id, "<p>Saffron remark no longer applies.</p>", kind="inline", selection="old", resolution="resolved"
        ),
    }


def test_attachments_and_comments_searchable_edited_and_trashed(
    small_cap_api: Api, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    api = small_cap_api
    content = content_of(confluence)
    confluence.put_page("3001", title="Limits", body="<h2>Canary</h2><p>canary checks run first.</p>", space_key="ENG")
    ids = add_everything(content, "3001")
    assert api.webhook({"event": "page_created", "page": {"id": "3001"}}).status_code == 202
    wait_until(lambda: len(rows_by_doc(db, "3001")) == 7, timeout=90, what="page, 4 files and 2 comments indexed")

    for fact in ("marzipan", "ocelot", "tangerine", "xylophone", "Periwinkle", "Kumquat"):
        assert fact in search(api, fact), fact
    assert "Saffron" not in json.dumps(db.rows("3001")), "a resolved inline comment is not indexed"
    inline = [m for _, m in db.rows("3001") if m.get("comment_id") == ids["inline"]]
    assert inline and inline[0]["highlighted_text"] == "canary checks run first"
    sheet = next(m for _, m in db.rows("3001") if m.get("attachment_id") == ids["xlsx"])
    assert sheet["file_name"] == "sheet.xlsx" and sheet["media_type"] == XLSX and sheet["page_id"] == "3001"
    assert sheet["header_path"].startswith("Limits > sheet.xlsx") and sheet["download_url"].startswith("http")

    # One attachment changes: only it is downloaded again, only its changed chunks are embedded.
    others = {kind: node_ids(db, "3001", f"3001/attachment/{ids[kind]}") for kind in ("pdf", "docx", "pptx")}
    ollama.reset()
    confluence.reset_counters()
    content.update_attachment(ids["xlsx"], files.xlsx([["Item", "Cost"], ["xylophone", 7], ["yodel", 9]]))
    api.webhook({"event": "attachment_updated", "attachment": {"id": ids["xlsx"], "container": {"id": "3001"}}})
    wait_until(lambda: "yodel" in json.dumps(db.rows("3001")), what="new sheet version indexed")
    assert confluence.count("/download/") == 1
    assert 1 <= ollama.inputs <= len(node_ids(db, "3001", f"3001/attachment/{ids['xlsx']}"))
    assert {kind: node_ids(db, "3001", f"3001/attachment/{ids[kind]}") for kind in others} == others

    # A comment edit re-embeds that comment's chunks only.
    ollama.reset()
    content.edit_comment(ids["footer"], "<p>Periwinkle rollback approved by ops.</p>")
    api.webhook({"event": "comment_updated", "comment": {"id": ids["footer"], "parent": {"id": "3001"}}})
    wait_until(lambda: "approved by ops" in json.dumps(db.rows("3001")), what="comment edit indexed")
    assert ollama.inputs == len(node_ids(db, "3001", f"3001/comment/{ids['footer']}"))

    # Removed comment and trashed attachment converge.
    content.remove_comment(ids["inline"])
    content.set_attachment_status(ids["pptx"], "trashed")
    api.webhook({"event": "attachment_trashed", "attachment": {"id": ids["pptx"], "container": {"id": "3001"}}})
    wait_until(lambda: "tangerine" not in json.dumps(db.rows("3001")), what="trashed attachment removed")
    assert "Kumquat" not in json.dumps(db.rows("3001"))

    confluence.set_status("3001", "trashed")
    api.webhook({"event": "page_trashed", "page": {"id": "3001"}})
    wait_until(lambda: db.rows("3001") == [], what="page and everything under it removed")


def test_unreadable_files_are_skipped_with_reasons_and_the_page_indexed(
    small_cap_api: Api, confluence: FakeConfluence, db: Db
) -> None:
    api = small_cap_api
    content = content_of(confluence)
    confluence.put_page("3002", title="Uploads", body="<p>Files for the audit.</p>", space_key="ENG")
    content.add_attachment("3002", "huge.txt", "text/plain", b"lorem ipsum " * (MAX_BYTES // 10))
    content.add_attachment("3002", "locked.pdf", PDF, files.pdf(["secret"], password="pw"))
    content.add_attachment("3002", "broken.docx", DOCX, b"PK\x03\x04 this is not a zip archive at all")
    content.add_attachment("3002", "scan.pdf", PDF, files.scanned_pdf())
    content.add_attachment("3002", "tool.exe", "application/x-msdownload", b"MZ\x90\x00")
    ole2_magic = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # how every Word 97-2003 file begins
    content.add_attachment("3002", "minutes.doc", "application/msword", ole2_magic)
    content.add_attachment("3002", "fine.txt", "text/plain", b"The walrus protocol is documented here.")
    api.webhook({"event": "page_created", "page": {"id": "3002"}})
    wait_until(lambda: "walrus" in json.dumps(db.rows("3002")), what="page and readable file indexed")
    wait_until(lambda: len(status(api)["skipped_attachments"]) == 6, what="skips visible in status")
    reasons = {row["file_name"]: row["reason"] for row in status(api)["skipped_attachments"]}
    assert reasons == {
        "huge.txt": "too large",
        "locked.pdf": "encrypted",
        "broken.docx": "corrupt",
        "scan.pdf": "no text layer",
        "tool.exe": "unsupported type",
        "minutes.doc": "legacy binary format",
    }
    assert db.state("3002")["status"] == "indexed"  # type: ignore[index]
    assert "Files for the audit" in json.dumps(db.rows("3002"))


def test_renaming_a_page_embeds_its_own_chunks_again_not_its_files(
    api: Api, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """The page title is in every body chunk's embedded text (it locates the text) but not in an attachment
    chunk's: the file's chunks embed the file name and its own headings, and keep the page title in their
    stored heading path, `title` and full-text column. A rename then costs the page's chunks, not its files'.
    Counted by the test Ollama server."""
    content = content_of(confluence)
    body = "<p>Pumps are checked weekly.</p>"
    confluence.put_page("3003", title="Pump handbook", body=body, space_key="ENG")
    lines = [f"Step {n}: the quokka valve needs {n} turns before the pressure settles." for n in range(120)]
    attachment = content.add_attachment("3003", "manual.pdf", PDF, files.pdf(lines))
    api.webhook({"event": "page_created", "page": {"id": "3003"}})
    doc = f"3003/attachment/{attachment}"
    wait_until(lambda: len(node_ids(db, "3003", doc)) > 2, timeout=90, what="page and its file indexed")
    file_ids = node_ids(db, "3003", doc)
    page_rows = len(rows_by_doc(db, "3003")["page"])

    ollama.reset()
    confluence.put_page("3003", title="Pump field guide", body=body, space_key="ENG")
    api.webhook({"event": "page_updated", "page": {"id": "3003"}})
    wait_until(lambda: '"title": "Pump field guide"' in json.dumps(db.rows("3003")), what="rename indexed")
    wait_until(lambda: (db.state("3003") or {}).get("version") == 2, what="the new version recorded")
    assert node_ids(db, "3003", doc) == file_ids, "the file's chunks are kept"
    assert ollama.inputs == page_rows, (ollama.inputs, page_rows, len(file_ids))
    stored = [m for _, m in db.rows("3003") if m.get("attachment_id") == attachment]
    assert {m["title"] for m in stored} == {"Pump field guide"}
    assert all(m["header_path"].startswith("Pump field guide > manual.pdf") for m in stored)
    assert '"page_id": "3003"' in search(api, "pump field guide quokka")
