"""How much of each corpus page survives conversion, next to a naive text extraction and a peer converter.

Run: `python -m bench.convert_fidelity [CORPUS_DIR]` (default: the `shared/corpus` folder beside the repo).
Columns: raw body size; lxml.html `text_content()` (what a naive converter embeds: no structure, CDATA code
bodies lost, ADF panels twice, macro parameters such as colours and ids mixed in); our Markdown; and recall
against lxml's text, for us and for `html2text` (the HTML-to-Markdown converter peers such as LlamaIndex's
and LangChain's Confluence readers use; the `bench` extra installs it):

- word recall: the share of the distinct words of lxml's text nodes found in the Markdown (the words we drop
  on purpose are macro settings: toc levels, status colours, task ids, upper-cased status titles);
- line recall: the share of the page's text blocks (each paragraph, list item, heading, cell, code line, as
  lxml reads it, whitespace collapsed) found whole in the Markdown once Markdown's escapes and emphasis
  markers are taken out (links read as their text), i.e. text that stayed one readable run instead of
  being broken or reordered.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import html

from app.convert import storage_to_markdown

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
_BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "pre", "blockquote", "dt", "dd"}
_MARKUP = re.compile(r"\\(?=[!-/:-@\[-`{-~])|\*\*|__|~~|`|<br>")
_LINK = re.compile(r"!?\[((?:\\.|[^\]])*)\]\((?:<[^>]*>|[^)\s]*)[^)]*\)|<(\w+://[^>\s]+)>")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Row:
    page: str
    raw_chars: int
    naive_chars: int
    markdown_chars: int
    words_kept: float  # share of the distinct words of lxml's text nodes found in our Markdown
    lines_kept: float  # share of lxml's text blocks found whole in our Markdown
    peer_words_kept: float | None  # the same two shares for html2text (None when it is not installed)
    peer_lines_kept: float | None


def naive_text(xhtml: str) -> tuple[str, set[str], list[str]]:
    """Plain lxml, parsed as HTML: text_content() with whitespace collapsed, each text node's words, and the
    text of each innermost block element."""
    try:
        root = html.fromstring(f"<div>{xhtml}</div>")
    except Exception:  # a naive baseline that fails keeps nothing
        return "", set(), []
    words = {unicodedata.normalize("NFC", word) for text in root.itertext() for word in text.split()}
    lines = []
    for el in root.iter():
        if not isinstance(el.tag, str) or el.tag.lower() not in _BLOCKS:
            continue
        if any(isinstance(c.tag, str) and c.tag.lower() in _BLOCKS for c in el.iterdescendants()):
            continue
        pieces = el.text_content().split("\n") if el.tag.lower() == "pre" else [el.text_content()]
        lines += [line for piece in pieces if (line := _normal(piece))]
    return unicodedata.normalize("NFC", " ".join(root.text_content().split())), words, lines


def _normal(text: str) -> str:
    return unicodedata.normalize("NFC", _WS.sub(" ", text)).strip()


def _plain(markdown: str) -> str:
    """Markdown as the words a reader sees: link and image syntax to their text, escapes and emphasis out."""
    text = _LINK.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), markdown)
    return _WS.sub(" ", _MARKUP.sub("", unicodedata.normalize("NFC", text))).strip()


def peer_converter() -> Callable[[str], str] | None:
    """html2text configured as the peers use it (no wrapping), or None when it is not installed."""
    try:
        import html2text
    except ImportError:
        return None

    def convert(xhtml: str) -> str:
        converter = html2text.HTML2Text()
        converter.body_width = 0
        return str(converter.handle(xhtml))

    return convert


def recall(markdown: str, words: set[str], lines: list[str]) -> tuple[float, float]:
    normal = unicodedata.normalize("NFC", markdown)
    plain = _plain(markdown)
    word_share = sum(word in normal for word in words) / len(words) if words else 1.0
    line_share = sum(_plain(line) in plain for line in lines) / len(lines) if lines else 1.0
    return word_share, line_share


def measure(corpus: Path) -> list[Row]:
    peer = peer_converter()
    rows = []
    for path in sorted((corpus / "storage").glob("*.xml")):
        xhtml = path.read_text(encoding="utf-8")
        naive, words, lines = naive_text(xhtml)
        markdown = storage_to_markdown(xhtml)
        ours = recall(markdown, words, lines)
        theirs = recall(peer(xhtml), words, lines) if peer else (None, None)
        rows.append(Row(path.stem, len(xhtml), len(naive), len(markdown), *ours, *theirs))
    return rows


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def format_table(rows: list[Row]) -> str:
    lines = [
        "| page | raw body | lxml text_content | our markdown | md / text | words kept | lines kept "
        "| html2text words | html2text lines |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = row.markdown_chars / row.naive_chars if row.naive_chars else 0.0
        lines.append(
            f"| {row.page} | {row.raw_chars:,} | {row.naive_chars:,} | {row.markdown_chars:,} | "
            f"{ratio:.2f} | {row.words_kept:.1%} | {row.lines_kept:.1%} | "
            f"{_share(row.peer_words_kept)} | {_share(row.peer_lines_kept)} |"
        )
    if rows:
        mean = [sum(values) / len(values) for values in zip(*((r.words_kept, r.lines_kept) for r in rows), strict=True)]
        peers = [r for r in rows if r.peer_words_kept is not None and r.peer_lines_kept is not None]
        peer_mean = (
            f"{sum(r.peer_words_kept or 0 for r in peers) / len(peers):.1%} | "
            f"{sum(r.peer_lines_kept or 0 for r in peers) / len(peers):.1%}"
            if peers
            else "n/a | n/a"
        )
        lines.append(f"| **mean** | | | | | {mean[0]:.1%} | {mean[1]:.1%} | {peer_mean} |")
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
