"""A spreadsheet cell's value as the sheet shows it, shared by the .xlsx (openpyxl) and .xls (xlrd) readers.

Why: a stored number means little without its number format (0.125 is "12.5%", 42 is the id "00042", 1234.5
is "$1,234.50"); peers that drop the format lose the fact (issue 11, "spreadsheet values without meaning").
Only the parts of a format that change what a value means are applied; grouping and colours are not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, time

_ZERO_PAD = re.compile(r"^0+$")
_CURRENCIES = "$€£"


def show(value: object, number_format: str | None) -> str:
    """`value` (None, bool, int, float, str, date, datetime or time) as text under `number_format`
    (an Excel format code such as `0.0%`, `00000`, `$#,##0.00`; None or `General` for none)."""
    if value is None:
        return ""
    fmt = number_format or "General"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="minutes") if value.time() != time() else value.date().isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (int, float)):
        if fmt.endswith("%"):
            decimals = len(fmt.split(".")[1].rstrip("%")) if "." in fmt else 0
            return f"{value * 100:.{decimals}f}%"
        if _ZERO_PAD.match(fmt) and float(value).is_integer():
            return str(int(value)).zfill(len(fmt))
        if any(symbol in fmt for symbol in _CURRENCIES):
            symbol = next(s for s in _CURRENCIES if s in fmt)
            return f"{symbol}{value:,.2f}"
        # 15 significant digits, Excel's own precision: `:g` (6) turned 1234567.0 into "1.23457e+06", and
        # .xls stores every number as a float, so 7.0 must show as the 7 the sheet shows.
        return f"{value:.15g}" if isinstance(value, float) else str(value)
    return str(value)


def sheet_rows(rows: Iterable[list[str]], used: int, max_chars: int) -> tuple[list[list[str]], int]:
    """A sheet's non-empty rows (trailing blank cells dropped), read lazily from `rows` until the workbook's
    character budget is spent; returns them and the budget `used` so far (each cell counted with its `| `
    separator). Shared by the .xlsx and .xls readers, so both stream and stop the same way."""
    kept: list[list[str]] = []
    for cells in rows:
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            kept.append(cells)
            used += sum(len(c) + 3 for c in cells)
        if used >= max_chars:
            break
    return kept, used
