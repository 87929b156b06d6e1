"""Trying to break issue 11's attachment extraction with hostile files: each must come back as text or as a
skip reason within bounded time and memory, through the real child process (`app.attachments.extract`)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import Callable

import pytest

from app.attachments.extract import Extraction, extract, media_type_of
from tests.fakes import office_files as files

SKIP_REASONS = {"too much memory", "timed out", "corrupt", "extractor failed", "encrypted", "unsupported type"}


def run_extract(data: bytes, media_type: str, *, timeout: float = 30, memory_mb: int = 512) -> tuple[Extraction, float]:
    start = time.monotonic()
    result = asyncio.run(extract(data, media_type, max_chars=200_000, timeout=timeout, memory_mb=memory_mb))
    return result, time.monotonic() - start


def rewrite(source: bytes, part_prefix: str, replace: Callable[[bytes], bytes]) -> bytes:
    """The OOXML package `source` with the parts whose names start with `part_prefix` replaced, deflated."""
    original = zipfile.ZipFile(io.BytesIO(source))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
        for item in original.infolist():
            data = original.read(item.filename)
            package.writestr(item, replace(data) if item.filename.startswith(part_prefix) else data)
    return out.getvalue()


SHEET_NS = b"http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def sheet(dimension: str, rows: bytes) -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="' + SHEET_NS + b'">'
        b'<dimension ref="' + dimension.encode() + b'"/><sheetData>' + rows + b"</sheetData></worksheet>"
    )


def cell(ref: str, text: str) -> bytes:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'.encode()


def test_an_xlsx_whose_dimension_claims_the_whole_grid_is_read_in_bounded_time() -> None:
    """A 1 KB workbook whose sheet declares `A1:XFD1048576` (Excel's whole grid) with two cells: openpyxl's
    read-only `iter_rows` pads every row to the declared width and yields every missing row, 1,048,576 rows
    of 16,384 cells. Before the fix this burnt the whole extraction timeout (60 s by default) of a worker per
    tiny file and indexed nothing; the declared dimension is now ignored (`reset_dimensions`)."""
    rows = b'<row r="1">' + cell("A1", "Kumquat ledger") + b'</row><row r="1048576">' + cell("B1048576", "Okapi")
    data = rewrite(files.xlsx([["a"]]), "xl/worksheets/sheet1", lambda _: sheet("A1:XFD1048576", rows + b"</row>"))
    assert len(data) < 10_000
    result, took = run_extract(data, files.XLSX, timeout=20)
    assert result.reason is None, result
    assert result.markdown is not None and "Kumquat ledger" in result.markdown and "Okapi" in result.markdown
    assert took < 10, f"{took:.1f} s for a {len(data)}-byte workbook"


def test_an_xlsx_with_a_cell_in_the_last_column_stays_a_bounded_table() -> None:
    """One cell in column XFD makes a 16,384-column row: the character cap (padding cells count) stops it."""
    rows = b"".join(
        b'<row r="%d">' % i + cell(f"A{i}", f"row {i}") + cell(f"XFD{i}", "far") + b"</row>" for i in range(1, 2000)
    )
    data = rewrite(files.xlsx([["a"]]), "xl/worksheets/sheet1", lambda _: sheet("A1:XFD1999", rows))
    result, took = run_extract(data, files.XLSX)
    assert result.markdown is not None and "row 1" in result.markdown, result
    assert len(result.markdown) < 400_000
    assert took < 20, f"{took:.1f} s"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("report.pdf", files.PDF), ("report.pdf", "application/octet-stream"), ("deck.pptx", files.PPTX)],
)
def test_a_file_whose_media_type_lies_is_skipped_as_corrupt(name: str, media_type: str) -> None:
    """A .docx (a ZIP) served as a PDF or a deck: a skip reason, never a crash or garbage text."""
    data = files.docx("Lies", ["Tapir"])
    result, _ = run_extract(data, media_type_of(media_type, name))
    assert result.markdown is None and result.reason in SKIP_REASONS, result


def test_a_pptx_bomb_is_skipped_with_a_reason() -> None:
    """A deck whose first slide inflates to ~300 MB of XML under a 300 MiB limit."""
    filler = b"<!--" + b"y" * 1000 + b"-->"

    def bloat(xml: bytes) -> bytes:
        head, sep, tail = xml.partition(b"?>")
        return head + sep + filler * 300_000 + tail if sep else filler * 300_000 + xml

    data = rewrite(files.pptx([("Slide", "Capybara")]), "ppt/slides/slide1.xml", bloat)
    assert len(data) < 3_000_000
    result, took = run_extract(data, files.PPTX, memory_mb=300, timeout=30)
    assert result.reason in SKIP_REASONS or (result.markdown is not None and "Capybara" in result.markdown), result
    assert took < 40
