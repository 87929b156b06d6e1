"""Excel (.xlsx) with openpyxl in read-only mode: rows are streamed from the sheet XML, so memory stays flat
with the row count (a dataframe of a 50,000-row workbook took 40 s and 1 GB in the peers' bug reports).

Each visible sheet becomes `## Sheet name` and a table whose header is the first non-empty row. Values keep
their meaning: cached results of formulas (`data_only`; a formula never calculated has none and stays
empty rather than showing `=SUM(...)`), percentages, zero-padded ids and dates as their number format shows
them. Hidden sheets are left out (policy, as for slides) and counted in a note.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from lxml import etree
from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException

from app.attachments.cells import sheet_rows, show
from app.attachments.docx import is_encrypted_ooxml
from app.attachments.errors import Corrupt, Encrypted
from app.attachments.markdown import table


def to_markdown(data: bytes, max_chars: int) -> str:
    """Markdown of an .xlsx, stopping once `max_chars` are written. Raises Encrypted or Corrupt."""
    if is_encrypted_ooxml(data):
        raise Encrypted("password-protected Office file")
    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, etree.XMLSyntaxError) as exc:
        raise Corrupt(f"not a readable .xlsx ({type(exc).__name__})") from exc
    sections: list[str] = []
    hidden = 0
    size = 0
    try:
        for sheet in workbook.worksheets:
            if sheet.sheet_state != "visible":
                hidden += 1
                continue
            # The sheet's declared `<dimension>` is the writer's claim, not its cells: read-only `iter_rows`
            # pads every row to it and yields every row up to it, so a 1 KB file declaring `A1:XFD1048576`
            # made 17 billion empty cells (the whole extraction timeout, nothing indexed). Rows as stored.
            sheet.reset_dimensions()
            rows, size = sheet_rows(([_show(cell) for cell in row] for row in sheet.iter_rows()), size, max_chars)
            if rows:
                sections.append(f"## {sheet.title}\n\n{table(rows)}")
            if size >= max_chars:
                break
    finally:
        workbook.close()
    if hidden:
        sections.append(f"({hidden} hidden sheet(s) not indexed)")
    return "\n\n".join(sections)


def _show(cell: Any) -> str:
    """A cell's value as the sheet shows it (`app.attachments.cells`)."""
    return show(getattr(cell, "value", None), str(getattr(cell, "number_format", "General") or "General"))
