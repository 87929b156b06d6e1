"""Attachment text: every fact of the fidelity set kept, each failure kind recorded as a skip with its reason,
and the child process's limits holding (a hung or bloated extractor is a skip, never a dead worker)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from datetime import UTC, datetime

import pytest

from app.attachments import quality
from app.attachments.errors import GarbageText
from app.attachments.extract import KINDS, Extraction, extract, media_type_of, run
from app.comments import indexed, nodes_for_comment, parse_cloud_comment, parse_dc_comment
from app.config import Settings
from app.models import Comment, Page
from app.subdocuments import demote_headings, subdocument_nodes
from tests.fakes import office_files as files

SAMPLES = files.fidelity_set()


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_fidelity_set_facts_kept_rows_whole_hidden_parts_out(sample: files.Sample) -> None:
    text = run(KINDS[sample.media_type], sample.data, 200_000)
    lines = text.splitlines()
    assert [fact for fact in sample.facts if fact not in text] == []
    assert [word for word in sample.absent if word in text] == []
    assert [pair for pair in sample.together if not any(pair[0] in line and pair[1] in line for line in lines)] == []


def test_hidden_sheets_and_slides_are_counted_not_dropped_silently() -> None:
    assert "(1 hidden sheet(s) not indexed)" in run("xlsx", files.xlsx_parts(), 200_000)
    assert "(1 hidden slide(s) not indexed)" in run("pptx", files.pptx_parts(), 200_000)


def test_character_cap_stops_a_big_workbook_early() -> None:
    rows = [["id", "name"], *([i, f"row {i}"] for i in range(20_000))]
    text = run("xlsx", files.xlsx(rows), 5_000)
    assert len(text) <= 5_000 and "row 1" in text and "row 19999" not in text


def test_text_that_would_be_markdown_stays_text() -> None:
    text = run("text", b"# of seats: 12\n- not a list\n", 1000)
    assert text == "\\# of seats: 12\n\\- not a list"


@pytest.mark.parametrize(
    "junk",
    ["(cid:12)(cid:7)(cid:33) (cid:4)(cid:9)", "\ufffd\ufffd\ufffd ab \ufffd\ufffd", "\ue000\ue001\ue002\ue003 x"],
    ids=["cid-tokens", "replacement-chars", "private-use"],
)
def test_garbage_text_is_refused(junk: str) -> None:
    with pytest.raises(GarbageText):
        quality.check_text(junk * 5)
    with pytest.raises(GarbageText):
        run("text", (junk * 5).encode(), 10_000)


def test_real_text_with_a_stray_symbol_passes() -> None:
    text = "The quota is 42 units per team.\ufffd Everything else is plain prose. " * 3
    assert quality.check_text(text) == text


def test_media_type_falls_back_to_the_extension() -> None:
    assert media_type_of("application/octet-stream", "Q3 Plan.DOCX") == files.DOCX
    assert media_type_of("application/pdf; charset=binary", "x.bin") == "application/pdf"
    assert media_type_of("application/zip", "x.zip") == "application/zip"


def run_extract(data: bytes, media_type: str, *, timeout: float = 60, memory_mb: int = 1024) -> Extraction:
    return asyncio.run(extract(data, media_type, max_chars=200_000, timeout=timeout, memory_mb=memory_mb))


@pytest.mark.parametrize(
    ("data", "media_type", "reason"),
    [
        pytest.param(files.pdf(["secret"], password="pw"), files.PDF, "encrypted", id="encrypted-pdf"),
        pytest.param(b"%PDF-1.7\n1 0 obj garbage", files.PDF, "corrupt", id="corrupt-pdf"),
        pytest.param(files.scanned_pdf(), files.PDF, "no text layer", id="scanned-pdf"),
        pytest.param(b"PK\x03\x04 not a zip", files.DOCX, "corrupt", id="corrupt-docx"),
        pytest.param(
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + "EncryptedPackage".encode("utf-16-le") + bytes(64),
            files.XLSX,
            "encrypted",
            id="encrypted-ooxml",
        ),
        pytest.param(b"\x00\x01\x02" * 100, "text/plain", "corrupt", id="binary-as-text"),
        pytest.param(b"MZ", "application/x-msdownload", "unsupported type", id="unsupported"),
    ],
)
def test_unreadable_files_are_skipped_with_a_reason(data: bytes, media_type: str, reason: str) -> None:
    result = run_extract(data, media_type)
    assert result.markdown is None and result.reason == reason, result


def test_a_hung_extraction_is_killed_and_recorded() -> None:
    started = time.monotonic()
    result = run_extract(files.xlsx([[i] for i in range(2000)]), files.XLSX, timeout=0.05)
    assert result == Extraction(None, "timed out", "extraction ran longer than 0.05 s")
    assert time.monotonic() - started < 10


def docx_bomb(paragraphs: int) -> bytes:
    """A valid .docx whose body XML inflates from ~1 MB to ~40 bytes per paragraph (a decompression bomb)."""
    source = zipfile.ZipFile(io.BytesIO(files.docx("Bomb", ["x"])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                head, _, tail = data.decode().partition("<w:body>")
                data = (head + "<w:body>" + "<w:p><w:r><w:t>x</w:t></w:r></w:p>" * paragraphs + tail).encode()
            bomb.writestr(item, data)
    return out.getvalue()


def test_a_bloated_extraction_hits_its_memory_limit_and_is_recorded() -> None:
    bomb = docx_bomb(3_000_000)  # ~120 MB of XML: lxml's tree of it needs several times that
    assert len(bomb) < 2_000_000
    result = run_extract(bomb, files.DOCX, memory_mb=400)
    assert result.markdown is None and result.reason in ("too much memory", "corrupt", "extractor failed"), result
    assert run_extract(files.pdf(["still fine"]), files.PDF).markdown is not None  # the parent is unharmed


# --- sub-documents and comments


def page() -> Page:
    return Page(
        id="55",
        title="Runbook",
        space_key="OPS",
        version=3,
        last_modified=datetime(2024, 5, 1, tzinfo=UTC),
        url="https://wiki.example.com/wiki/spaces/OPS/pages/55",
        body_storage="",
    )


SETTINGS = Settings(chunk_size=128, chunk_overlap=0)


def test_demote_headings_skips_fenced_code() -> None:
    assert demote_headings("# A\n```\n# not a heading\n```\n###### deep", 2) == (
        "### A\n```\n# not a heading\n```\n###### deep"
    )


def test_subdocument_heading_path_starts_with_page_and_file_and_ids_are_per_document() -> None:
    kwargs = {"doc_type": "attachment", "markdown": "## Sheet\n\nvalue 7", "metadata": {"file_name": "a.xlsx"}}
    one = subdocument_nodes(page(), SETTINGS, doc_id="55/attachment/1", path=["Runbook", "a.xlsx"], **kwargs)
    two = subdocument_nodes(page(), SETTINGS, doc_id="55/attachment/2", path=["Runbook", "a.xlsx"], **kwargs)
    assert [n.metadata["header_path"] for n in one] == ["Runbook > a.xlsx > Sheet"]
    assert one[0].metadata["file_name"] == "a.xlsx" and one[0].metadata["page_id"] == "55"
    assert one[0].node_id != two[0].node_id  # same text in two files: two documents, two rows
    assert "file_name" not in one[0].get_content(metadata_mode="embed")  # type: ignore[arg-type]


def comment(body: str, **kw: object) -> Comment:
    fields: dict[str, object] = {"id": "9", "kind": "footer", "body_storage": body, "author": "Ada"}
    return Comment(**{**fields, **kw})  # type: ignore[arg-type]


def test_editing_one_comment_changes_only_its_node_ids() -> None:
    a, b = comment("<p>Ship it.</p>"), comment("<p>Wait for QA.</p>", id="10")
    before = {n.node_id for c in (a, b) for n in nodes_for_comment(page(), SETTINGS, c, {})}
    edited = comment("<p>Ship it on Monday.</p>")
    after = {n.node_id for c in (edited, b) for n in nodes_for_comment(page(), SETTINGS, c, {})}
    assert len(before - after) == 1 and len(after - before) == 1


def test_inline_comment_carries_its_highlighted_passage() -> None:
    c = comment("<p>Too low.</p>", kind="inline", highlighted="# of retries is 3", created=datetime(2024, 6, 1))
    [node] = nodes_for_comment(page(), SETTINGS, c, {})
    assert node.metadata["header_path"] == "Runbook > Inline comment by Ada on 2024-06-01"
    assert "> \\# of retries is 3" in node.text and node.metadata["highlighted_text"] == "# of retries is 3"


def test_cloud_and_dc_comment_shapes() -> None:
    cloud = parse_cloud_comment(
        {
            "id": "77",
            "version": {"number": 2, "authorId": "acc-1", "createdAt": "2024-05-02T09:30:00.000Z"},
            "body": {"storage": {"value": "<p>x</p>"}},
            "resolutionStatus": "resolved",
            "properties": {"inlineOriginalSelection": "the passage"},
        },
        "inline",
    )
    assert (cloud.version, cloud.author, cloud.highlighted, cloud.resolved) == (2, "acc-1", "the passage", True)
    assert cloud.created == datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
    dc = parse_dc_comment(
        {
            "id": "88",
            "body": {"storage": {"value": "<p>y</p>"}},
            "history": {"createdBy": {"displayName": "Grace"}, "createdDate": "2024-05-03T10:00:00.000+02:00"},
            "extensions": {"location": "inline", "inlineProperties": {"originalSelection": "sel"},
                           "resolution": {"status": "reopened"}},
        }
    )  # fmt: skip
    assert (dc.kind, dc.author, dc.highlighted, dc.resolved) == ("inline", "Grace", "sel", False)
    assert [c.id for c in indexed([cloud, dc])] == ["88"]
