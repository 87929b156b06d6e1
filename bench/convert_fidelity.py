"""How much of each corpus page survives conversion, next to what a naive text extraction keeps.

Run: `python -m bench.convert_fidelity [CORPUS_DIR]` (default: the `shared/corpus` folder beside the repo).
Columns: raw body size; lxml.html `text_content()` (what a naive converter embeds: no structure, CDATA code
bodies lost, ADF panels twice, macro parameters such as colours and ids mixed in); our Markdown; and the
share of the distinct words of lxml's text nodes that our Markdown still contains (the words we drop on
purpose are macro settings: toc levels, status colours, task ids, upper-cased status titles).
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from lxml import html

from app.convert import storage_to_markdown

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@dataclass(frozen=True)
class Row:
    page: str
    raw_chars: int
    naive_chars: int
    markdown_chars: int
    words_kept: float  # share of the distinct words of lxml's text nodes found in our Markdown


def naive_text(xhtml: str) -> tuple[str, set[str]]:
    """Plain lxml, parsed as HTML: text_content() with whitespace collapsed, and each text node's words."""
    try:
        root = html.fromstring(f"<div>{xhtml}</div>")
    except Exception:  # a naive baseline that fails keeps nothing
        return "", set()
    words = {unicodedata.normalize("NFC", word) for text in root.itertext() for word in text.split()}
    return unicodedata.normalize("NFC", " ".join(root.text_content().split())), words


def measure(corpus: Path) -> list[Row]:
    rows = []
    for path in sorted((corpus / "storage").glob("*.xml")):
        xhtml = path.read_text(encoding="utf-8")
        naive, words = naive_text(xhtml)
        markdown = storage_to_markdown(xhtml)
        kept = sum(word in markdown for word in words) / len(words) if words else 1.0
        rows.append(Row(path.stem, len(xhtml), len(naive), len(markdown), kept))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| page | raw body | lxml text_content | our markdown | md / text | text-node words kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = row.markdown_chars / row.naive_chars if row.naive_chars else 0.0
        lines.append(
            f"| {row.page} | {row.raw_chars:,} | {row.naive_chars:,} | {row.markdown_chars:,} | "
            f"{ratio:.2f} | {row.words_kept:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    corpus = Path(args[0]) if args else DEFAULT_CORPUS
    if not (corpus / "storage").is_dir():
        print(f"no corpus at {corpus}; pass its path as the first argument")
        return
    print(format_table(measure(corpus)))


if __name__ == "__main__":
    main()
