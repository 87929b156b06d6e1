"""Real attachment files for tests, written with the formats' own writer libraries (fpdf2, python-docx,
python-pptx, openpyxl), each with its facts where extractors tend to lose them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

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


# --- the extraction fidelity set: facts planted where extractors are known to lose them ----------------------


@dataclass(frozen=True)
class Sample:
    """One generated file, the facts its text must keep, and what must not appear (hidden parts, junk)."""

    name: str
    media_type: str
    data: bytes
    facts: tuple[str, ...]
    absent: tuple[str, ...] = ()
    #: pairs that must stay on one line (a table row kept whole, not broken apart)
    together: tuple[tuple[str, str], ...] = ()


PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def pdf_table(rows: Sequence[Sequence[str]], *, lead: str = "") -> bytes:
    """A PDF with a line of text and a ruled table (fpdf2's table(): cells wrap inside their column)."""
    document = FPDF()
    document.add_page()
    document.set_font("helvetica", size=10)
    if lead:
        document.cell(text=lead, new_x="LMARGIN", new_y="NEXT")
    with document.table(col_widths=(30, 60, 30)) as table:
        for row in rows:
            cells = table.row()
            for value in row:
                cells.cell(value)
    return bytes(document.output())


def pdf_pages(pages: Sequence[Sequence[str]]) -> bytes:
    document = FPDF()
    document.set_font("helvetica", size=11)
    for lines in pages:
        document.add_page()
        for line in lines:
            document.multi_cell(w=0, text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(document.output())


def docx_parts() -> bytes:
    """Facts in a heading, a header, a footer, a table with a cell merged across columns, a list."""
    document = Document()
    document.add_heading("Escalation policy", level=1)
    document.add_paragraph("Pager rotation is weekly.")
    document.add_paragraph("Page the quartz desk first", style="List Bullet")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([["Tier", "Owner", "Minutes"], ["P1", "falcon squad", "15"], ["P2", "", ""]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    merged = table.cell(2, 1).merge(table.cell(2, 2))
    merged.text = "heron rota within 60"
    section = document.sections[0]
    section.header.paragraphs[0].text = "Owner: basalt team"
    section.footer.paragraphs[0].text = "Revision lichen-7"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_parts() -> bytes:
    """Facts in a title, a body, a table and speaker notes; a hidden slide whose text must stay out."""
    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Launch cobalt"
    slide.shapes.add_textbox(Inches(1), Inches(1.5), Inches(8), Inches(1)).text_frame.text = "Beta opens in May"
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(3), Inches(6), Inches(1)).table
    for r, row in enumerate([["Market", "Date"], ["Norway", "June 3"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    slide.notes_slide.notes_text_frame.text = "Mention the juniper discount"
    hidden = deck.slides.add_slide(deck.slide_layouts[5])
    hidden.shapes.title.text = "Draft walrus pricing"
    hidden._element.set("show", "0")
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_parts() -> bytes:
    """Values whose meaning is in the number format, a formula never calculated, a hidden sheet."""
    book = Workbook()
    sheet = book.active
    sheet.title = "Rates"
    sheet.append(["Account", "Share", "Fee", "Starts", "Total"])
    sheet.append([42, 0.125, 1234.5, datetime(2024, 7, 1), "=SUM(C2:C2)"])
    sheet["A2"].number_format = "00000"
    sheet["B2"].number_format = "0.0%"
    sheet["C2"].number_format = '"$"#,##0.00'
    secret = book.create_sheet("Internal")
    secret.append(["Do not index the mongoose margin"])
    secret.sheet_state = "hidden"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def fidelity_set() -> list[Sample]:
    """The files every extractor candidate is measured on (bench/attachment_extraction.py) and ours is held
    to (tests/unit/test_attachments.py)."""
    return [
        Sample("two-pages.pdf", PDF, pdf_pages([["Intro page."], ["The sable budget is 9,400 EUR."]]),
               facts=("sable budget is 9,400 EUR",)),
        Sample("wrapped-table.pdf", PDF,
               pdf_table([["Region", "Owner", "Limit"], ["EMEA", "ocelot team", "40"],
                          ["APAC", "a very long owner name that wraps inside its cell", "75"]], lead="Quotas"),
               facts=("ocelot team", "75"), together=(("EMEA", "ocelot team"), ("APAC", "75"))),
        Sample("parts.docx", DOCX, docx_parts(),
               facts=("Escalation policy", "quartz desk", "falcon squad", "heron rota within 60", "basalt team",
                      "lichen-7"),
               together=(("P1", "falcon squad"),)),
        Sample("deck.pptx", PPTX, pptx_parts(),
               facts=("Launch cobalt", "Beta opens in May", "Norway", "June 3", "juniper discount"),
               absent=("walrus",), together=(("Norway", "June 3"),)),
        Sample("rates.xlsx", XLSX, xlsx_parts(),
               facts=("00042", "12.5%", "$1,234.50", "2024-07-01"), absent=("mongoose", "=SUM")),
        Sample("latin1.csv", "text/csv", "Name;City\nRenée;Zürich\nJosé;Málaga\n".encode("cp1252"),
               facts=("Renée", "Zürich", "Málaga"), together=(("José", "Málaga"),)),
        Sample("utf16.txt", "text/plain", "\ufeffThe ptarmigan index is 7.".encode("utf-16-le"),
               facts=("ptarmigan index is 7",)),
    ]  # fmt: skip
