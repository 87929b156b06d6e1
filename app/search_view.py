"""How `confluence-vectors search` shows hits in a terminal; the ranking itself is `app.search`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.search import SearchHit

SNIPPET_CHARS = 160


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The chunk on one line, cut at a word boundary: a table row is for recognising a hit, not reading it."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut + "…"


def print_results(hits: list[SearchHit], console: Console) -> None:
    """A table of hits, best first; wiki text is printed as plain text, never interpreted as rich markup."""
    if not hits:
        console.print("No results.")
        return
    table = Table(show_lines=True, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Score", justify="right", no_wrap=True)
    table.add_column("Title", ratio=2)
    table.add_column("Section", ratio=2)
    table.add_column("URL", ratio=2, overflow="fold")
    table.add_column("Snippet", ratio=4)
    for rank, hit in enumerate(hits, start=1):
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            Text(hit.title),
            Text(hit.header_path),
            Text(hit.url, style=f"link {hit.url}" if hit.url else ""),
            Text(snippet(hit.text)),
        )
    console.print(table)
