"""Real attachment files for tests, written with the formats' own writer libraries (fpdf2, python-docx,
python-pptx, openpyxl), each with its facts where extractors tend to lose them."""

from __future__ import annotations

import io
from collections.abc import Sequence

from docx import Document
from fpdf import FPDF
from openpyxl import Workbook
from pptx import Presentation
from pptx.util import Inches


def pdf(lines: Sequence[str], *, password: str | None = None) -> bytes:
    """A PDF with one line of text per entry (Helvetica, Latin-1), optionally needing a user password."""
    document = FPDF()
    if password is not None:
        document.set_encryption(owner_password=password + "-owner", user_password=password)
    document.add_page()
    document.set_font("helvetica", size=11)
    for line in lines:
        document.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(document.output())


def scanned_pdf() -> bytes:
    """A PDF whose page has no text layer (a drawn rectangle standing in for a scanned image)."""
    document = FPDF()
    document.add_page()
    document.rect(20, 20, 100, 60, style="F")
    return bytes(document.output())


def docx(heading: str, paragraphs: Sequence[str], table: Sequence[Sequence[str]] = (), header: str = "") -> bytes:
    """A Word file: a heading, paragraphs, a table (first row header) and, if given, a page header."""
    document = Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    if header:
        document.sections[0].header.paragraphs[0].text = header
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx(slides: Sequence[tuple[str, str]], *, hidden: Sequence[int] = ()) -> bytes:
    """A deck of (title, body) slides; slide numbers (1-based) in `hidden` are hidden."""
    deck = Presentation()
    for number, (title, body) in enumerate(slides, start=1):
        slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
        slide.shapes.title.text = title
        box = slide.shapes.add_textbox(Inches(1), Inches(2), Inches(8), Inches(2))
        box.text_frame.text = body
        if number in hidden:
            slide._element.set("show", "0")
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx(rows: Sequence[Sequence[object]], *, formats: dict[str, str] | None = None, hidden_sheet: str = "") -> bytes:
    """A workbook: `rows` on the first sheet (cell number formats by coordinate), plus a hidden sheet."""
    book = Workbook()
    sheet = book.active
    sheet.title = "Data"
    for row in rows:
        sheet.append(list(row))
    for coordinate, fmt in (formats or {}).items():
        sheet[coordinate].number_format = fmt
    if hidden_sheet:
        secret = book.create_sheet("Hidden")
        secret.append([hidden_sheet])
        secret.sheet_state = "hidden"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
