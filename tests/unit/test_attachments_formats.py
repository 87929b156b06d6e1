"""Attachment formats beyond the first set (issue 11): right-to-left PDF text comes out in logical order, a
legacy .xls is read with its number formats, and .doc/.ppt are skipped with a reason that says what to do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fpdf import FPDF
from fpdf.bidi import BidiParagraph
from fpdf.enums import TextDirection

from app.attachments.extract import KINDS, LEGACY_REASON, Extraction, extract, media_type_of, run
from tests.fakes import office_files as files

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Hebrew and Arabic glyphs (fonts-dejavu-core)
LEDGER = Path(__file__).parents[1] / "fixtures" / "ledger.xls"  # made by tests/fixtures/make_legacy_xls.py
XLS = "application/vnd.ms-excel"


def rtl_pdf(lines: list[str]) -> bytes:
    """A PDF whose right-to-left lines are stored the way real producers store them: glyphs in visual order
    (left to right on the page), placed by the Unicode Bidirectional Algorithm (UAX #9, fpdf2's own
    implementation). fpdf2 without a shaping engine (uharfbuzz, not installed) would draw the logical string
    left to right, a page no producer writes; Arabic letters stay unjoined (isolated forms) for the same
    reason, which changes the glyphs drawn but not the code points a ToUnicode map gives back."""
    document = FPDF()
    document.add_page()
    document.add_font("dejavu", fname=str(FONT))
    document.set_font("dejavu", size=12)
    for line in lines:
        visual = BidiParagraph(line, base_direction=TextDirection.RTL).get_reordered_string()
        document.cell(text=visual, new_x="LMARGIN", new_y="NEXT")
    return bytes(document.output())


@pytest.mark.skipif(not FONT.exists(), reason="DejaVu Sans (Hebrew and Arabic glyphs) not installed")
def test_right_to_left_pdf_text_comes_out_in_logical_order() -> None:
    hebrew = "המכסה היא 42 יחידות לכל צוות"  # "the quota is 42 units per team"
    arabic = "الحصة هي 42 وحدة لكل فريق"  # the same in Arabic
    data = rtl_pdf([hebrew, arabic])
    visual = BidiParagraph(hebrew, base_direction=TextDirection.RTL).get_reordered_string()
    assert visual != hebrew, "the file stores the visual order, so a naive reader would give it back reversed"
    text = run("pdf", data, 200_000)
    lines = text.splitlines()
    assert hebrew in lines and arabic in lines, text
    assert visual not in text


def test_legacy_xls_is_read_with_its_number_formats_and_hidden_sheets_out() -> None:
    assert media_type_of("application/octet-stream", "ledger.xls") == XLS and KINDS[XLS] == "xls"
    text = run("xls", LEDGER.read_bytes(), 200_000)
    row = next(line for line in text.splitlines() if "gazelle squad" in line)
    assert row == "| gazelle squad | 00042 | 12.5% | $1,234.50 | 2024-03-15 |", text
    assert text.startswith("## Quotas\n\n| Team | Quota id | Share | Budget | Review |")
    assert "wombat" not in text and "(1 hidden sheet(s) not indexed)" in text


def test_a_corrupt_xls_is_skipped_as_corrupt() -> None:
    answer = asyncio.run(extract(b"\xd0\xcf\x11\xe0 not an OLE2 file", XLS, max_chars=1000, timeout=60, memory_mb=1024))
    assert (answer.markdown, answer.reason) == (None, "corrupt")


@pytest.mark.parametrize(
    ("media_type", "name", "detail"),
    [
        ("application/msword", "minutes.doc", "Word 97-2003 (.doc): convert to .docx"),
        ("application/octet-stream", "deck.ppt", "PowerPoint 97-2003 (.ppt): convert to .pptx"),
    ],
)
def test_legacy_word_and_powerpoint_are_skipped_with_what_to_do(media_type: str, name: str, detail: str) -> None:
    answer = asyncio.run(
        extract(b"\xd0\xcf\x11\xe0", media_type_of(media_type, name), max_chars=1000, timeout=60, memory_mb=1024)
    )
    assert answer == Extraction(None, LEGACY_REASON, detail)


def test_spreadsheet_numbers_keep_their_digits() -> None:
    """`:g` kept 6 significant digits: an account number 1234567 became "1.23457e+06" and 123456.78 became
    "123457". Excel shows 15; so do we, in .xlsx and .xls alike (`app.attachments.cells`)."""
    data = files.xlsx([["Account", "Balance"], [1234567.0, 123456.78], [7.0, 0.5]])
    text = run("xlsx", data, 10_000)
    assert "| 1234567 | 123456.78 |" in text and "| 7 | 0.5 |" in text, text
