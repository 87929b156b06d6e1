"""A page rename and its attachments' chunks (issue 11 gap): the page title is stored with every attachment
chunk (title, heading path: readers and the full-text column) but not embedded, so the chunks' ids, which
digest the embedded text, survive a rename; comments keep the page title in what they embed."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from app.attachments.index import Record, _nodes
from app.chunking import embed_text
from app.comments import nodes_for_comment
from app.config import Settings
from app.models import Attachment, Comment, Page

SETTINGS = Settings(chunk_size=128, chunk_overlap=0)
PAGE = Page(
    id="55",
    title="Pump handbook",
    space_key="OPS",
    version=3,
    last_modified=datetime(2024, 5, 1, tzinfo=UTC),
    url="https://wiki.example.com/wiki/spaces/OPS/pages/55",
    body_storage="",
)
FILE = Attachment("att1", "manual.pdf", "application/pdf", 1, 100, "https://wiki.example.com/download/manual.pdf")
MARKDOWN = "\n\n".join(f"## Page {n}\n\nThe quokka valve needs {n} turns before it settles." for n in range(1, 30))


def test_a_rename_keeps_attachment_chunk_ids_and_stores_the_new_title() -> None:
    record = Record(FILE, "application/pdf", "indexed", markdown=MARKDOWN)
    before = _nodes(SETTINGS, PAGE, record)
    after = _nodes(SETTINGS, replace(PAGE, title="Pump field guide"), record)
    assert len(before) > 3
    assert [n.node_id for n in after] == [n.node_id for n in before]
    assert all(n.metadata["header_path"].startswith("Pump field guide > manual.pdf > ") for n in after)
    assert {n.metadata["title"] for n in after} == {"Pump field guide"}
    embedded = embed_text(after[0])
    assert embedded.startswith("subdocument_path: manual.pdf > Page 1\n\n") and "Pump" not in embedded
    assert after[0].metadata["content_hash"] == hashlib.sha256(embedded.encode()).hexdigest()


def test_comment_chunks_still_embed_the_page_title() -> None:
    comment = Comment(id="9", kind="footer", body_storage="<p>Ship it.</p>", author="Ada")
    [node] = nodes_for_comment(PAGE, SETTINGS, comment, {})
    [renamed] = nodes_for_comment(replace(PAGE, title="Pump field guide"), SETTINGS, comment, {})
    assert "Pump handbook" in embed_text(node) and renamed.node_id != node.node_id
