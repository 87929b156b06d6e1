"""Legacy Excel (.xls, BIFF5/BIFF8 from Excel 97-2003) with xlrd, the maintained pure-Python reader of that
format (xlrd 2.x reads nothing else: .xlsx goes to `xlsx.py`).

Same output as `xlsx.py`: each visible sheet becomes `## Sheet name` and a table whose header is the first
non-empty row; values as their number format shows them (`app.attachments.cells`: percentages, zero-padded
ids, currency; date serials as dates, told apart by xlrd from their format); hidden and very hidden sheets
are left out and counted in a note. An .xls holds at most 65,536 rows by 256 columns and the download is
capped in bytes, so reading the whole workbook (xlrd has no streaming mode) stays bounded; `on_demand` loads
one sheet at a time and each is released after it is written.
"""

from __future__ import annotations

import xlrd

from app.attachments.cells import sheet_rows, show
from app.attachments.errors import Corrupt, Encrypted
from app.attachments.markdown import table


def to_markdown(data: bytes, max_chars: int) -> str:
    """Markdown of an .xls, stopping once `max_chars` are written. Raises Encrypted (xlrd refuses a
    workbook saved with a password to open) or Corrupt (not a BIFF workbook)."""
    try:
        book = xlrd.open_workbook(file_contents=data, formatting_info=True, on_demand=True)
    except xlrd.XLRDError as exc:
        if "encrypted" in str(exc).lower():
            raise Encrypted("password-protected Excel 97-2003 file") from exc
        raise Corrupt(f"not a readable .xls ({exc})") from exc
    sections: list[str] = []
    hidden = 0
    size = 0
    try:
        for index in range(book.nsheets):
            sheet = book.sheet_by_index(index)
            if sheet.visibility != 0:  # BOUNDSHEET state: 1 hidden, 2 very hidden
                hidden += 1
                book.unload_sheet(index)
                continue
            cells = ([_show(book, cell) for cell in sheet.row(number)] for number in range(sheet.nrows))
            rows, size = sheet_rows(cells, size, max_chars)
            if rows:
                sections.append(f"## {sheet.name}\n\n{table(rows)}")
            book.unload_sheet(index)
            if size >= max_chars:
                break
    finally:
        book.release_resources()
    if hidden:
        sections.append(f"({hidden} hidden sheet(s) not indexed)")
    return "\n\n".join(sections)


def _show(book: xlrd.Book, cell: xlrd.sheet.Cell) -> str:
    """One cell as the sheet shows it; error cells (`#DIV/0!`...) by their Excel text."""
    kind = cell.ctype
    if kind in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return ""
    if kind == xlrd.XL_CELL_ERROR:
        return str(xlrd.error_text_from_code.get(cell.value, "#ERROR"))
    if kind == xlrd.XL_CELL_BOOLEAN:
        return show(bool(cell.value), None)
    fmt = book.format_map.get(book.xf_list[cell.xf_index].format_key) if cell.xf_index is not None else None
    if kind == xlrd.XL_CELL_DATE:
        try:
            return show(xlrd.xldate.xldate_as_datetime(cell.value, book.datemode), None)
        except (xlrd.xldate.XLDateError, ValueError, OverflowError):
            return show(cell.value, None)
    return show(cell.value, fmt.format_str if fmt is not None else None)
