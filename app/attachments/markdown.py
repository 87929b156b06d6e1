"""Small Markdown writers shared by the format modules (tables and plain text lines)."""

from __future__ import annotations

from collections.abc import Sequence

from app.convert_macros import escape_line_starts


def paragraph(text: str) -> str:
    """Extracted text as a paragraph that stays text (no accidental headings, lists or tables)."""
    lines = [" ".join(line.split()) for line in text.replace("\r", "\n").split("\n")]
    return escape_line_starts("\n".join(line for line in lines if line))


def table(rows: Sequence[Sequence[str]]) -> str:
    """A GFM table, first row the header; `|` escaped, line breaks as `<br>`, rows padded to one width."""
    rows = [list(row) for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ""
    width = max(len(row) for row in rows)

    def line(cells: Sequence[str]) -> str:
        padded = [*cells, *([""] * (width - len(cells)))]
        shown = [
            "<br>".join(" ".join(p.split()) for p in c.splitlines() if p.strip()).replace("|", "\\|") for c in padded
        ]
        return "| " + " | ".join(shown) + " |"

    return "\n".join([line(rows[0]), "| " + " | ".join("---" for _ in range(width)) + " |", *map(line, rows[1:])])
