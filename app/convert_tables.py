"""Table layout for the converter: where each cell lands once its spans apply, within bounds.

The converter repeats a spanned cell's text in every slot it covers (colspan across, rowspan down), so each
Markdown row reads on its own. That repetition is the one place where output can outgrow input: HTML lets a
cell claim up to 1,000 columns and 65,534 rows (WHATWG HTML, "Tables" processing model, `colspan`/`rowspan`
limits), and in issue 10 a 10 KB body of 200 one-cell rows spanning 999 rows and 64 columns became 21.8 MB
of Markdown in 22 s and 234 MB. Here the grid is bounded before anything is rendered:

- a rowspan stops at the table's last row (HTML clips it at the end of its row group) and at `MAX_ROWSPAN`;
- a colspan stops at the table's real width (the most cells any row holds, counting cells carried down into
  it by a rowspan once each, whatever their colspan) and at `MAX_COLSPAN`;
- past a budget relative to the table's own cells (slots in the grid, slots filled by copies, characters
  copied), the table is not laid out at all: `plain_rows` gives each cell's text once, row by row;
- a cell that holds a table of its own (`Cell.copy` False) is never repeated: its text stays in its first
  slot and the other slots it covers are left empty. Otherwise each level of tables nested in spanned cells
  multiplied the one inside it, and the budgets above, measured against cell text that already held the
  rendered inner table, grew with it: 12 levels of a `colspan="3"` cell holding the next table turned a
  1 KB body into 21 MB of Markdown in 5-13 s. Now every character is copied by one table at most.

Every budget is linear in the number of cells and characters the table itself carries, so Markdown length
stays within a constant factor of the body's (the property in tests/unit/test_convert_property.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_COLSPAN = 64
MAX_ROWSPAN = 1000
#: Grid slots (rows x columns) allowed per real cell or row, plus a floor for small tables. A real table is
#: at most as wide as its fullest row, so only a ragged, hostile one comes near this.
SLOTS_PER_CELL = 8
SLOTS_FLOOR = 1_000
#: Slots filled by copies of a spanned cell, per real cell, plus a floor: merged headers and grouped rows
#: (a category cell spanning its group) copy far less than one slot per cell.
COPIES_PER_CELL = 2
COPIES_FLOOR = 64
#: Characters written by those copies, per character of real cell text, plus a floor.
COPIED_CHARS_PER_CHAR = 2
COPIED_CHARS_FLOOR = 4_096
#: Longest column name a record-form table repeats before every value; longer ones are cut and given once.
MAX_KEY_CHARS = 60

Lines = list[str]
Grid = list[list[Lines]]


@dataclass(frozen=True, slots=True)
class Cell:
    """One `td`/`th` as the converter rendered it: its text lines, its (already clamped) spans, and whether
    a span may repeat it (False when it holds a nested table, see the module docstring)."""

    lines: Lines
    colspan: int = 1
    rowspan: int = 1
    copy: bool = True

    @property
    def chars(self) -> int:
        return sum(len(line) for line in self.lines)


def span(value: str | None, cap: int) -> int:
    """A `colspan`/`rowspan` attribute as an int in 1..`cap`; missing, non-numeric or < 1 counts as 1.

    (HTML's `rowspan="0"`, "to the end of the row group", is read as 1: Confluence never writes it, and a
    span nobody asked for is the costly direction to guess.) Never raises, and never converts more than a
    few digits: `"9" * 5000` is simply the cap.
    """
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit():
        return 1
    if len(text) > len(str(cap)):
        return cap
    return min(max(int(text), 1), cap)


def layout(rows: Sequence[Sequence[Cell]]) -> Grid | None:
    """The table as a grid of cell lines, spans repeated into every slot they cover; None past a budget.

    Shape: one list per source row, all of one length (the widest placed row); an empty list is an empty
    slot. Rowspans are clipped to the rows below, colspans to the real width (see the module docstring).
    None means the caller should render `plain_rows(rows)` instead.
    """
    height = len(rows)
    width = _real_width(rows)
    real = sum(len(row) for row in rows)
    if height * width > SLOTS_PER_CELL * (real + height) + SLOTS_FLOOR:
        return None
    max_copies = COPIES_PER_CELL * real + COPIES_FLOOR
    max_copied = COPIED_CHARS_PER_CHAR * sum(cell.chars for row in rows for cell in row) + COPIED_CHARS_FLOOR
    copies = copied = 0
    taken: dict[tuple[int, int], Lines] = {}
    for y, cells in enumerate(rows):
        x = 0
        for cell in cells:
            while (y, x) in taken:
                x += 1
            across = max(1, min(cell.colspan, width - x))
            down = min(cell.rowspan, height - y)
            extra = across * down - 1 if cell.copy else 0
            copies += extra
            copied += extra * cell.chars
            if copies > max_copies or copied > max_copied:
                return None
            for dy in range(down):
                for dx in range(across):
                    taken[(y + dy, x + dx)] = cell.lines if cell.copy or dx == dy == 0 else []
            x += across
    columns = max((x + 1 for _, x in taken), default=0)
    return [[taken.get((y, x), []) for x in range(columns)] for y in range(height)]


def _real_width(rows: Sequence[Sequence[Cell]]) -> int:
    """The most cells occupying any one row: its own plus those carried into it by rowspans from above,
    each counted once whatever its colspan. O(cells + rows): a difference array, not a walk of each span."""
    height = len(rows)
    ending = [0] * (height + 1)
    carried = width = 0
    for y, cells in enumerate(rows):
        carried -= ending[y]
        width = max(width, len(cells) + carried)
        for cell in cells:
            down = min(cell.rowspan, height - y)
            if down > 1:
                carried += 1  # counted from the next row on: this row already counts the cell itself
                ending[y + down] += 1
    return max(width, 1)


def plain_rows(rows: Sequence[Sequence[Cell]]) -> list[str]:
    """The fallback past a budget: one list item per row, its cells' text once each, `|`-separated."""
    lines = [" | ".join(" ".join(line.strip() for line in cell.lines) for cell in row if cell.lines) for row in rows]
    items = [f"- {line}" for line in lines if line.strip()]
    return ["\n".join(items)] if items else []


def short_keys(grid: Grid) -> tuple[Grid, list[str]]:
    """`grid` with header cells longer than `MAX_KEY_CHARS` cut (record form repeats each header before every
    value, so a long one multiplies), and a block giving the full column names once when any was cut."""
    full = [" ".join(line.strip() for line in cell) for cell in grid[0]]
    if all(len(name) <= MAX_KEY_CHARS for name in full):
        return grid, []
    cut = [[name[: MAX_KEY_CHARS - 1].rstrip() + "…"] if len(name) > MAX_KEY_CHARS else cell
           for name, cell in zip(full, grid[0], strict=True)]  # fmt: skip
    return [cut, *grid[1:]], ["Columns: " + " | ".join(name for name in full if name)]
