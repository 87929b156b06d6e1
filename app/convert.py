"""Confluence storage format (XHTML) → Markdown, keeping the page's structure for retrieval.

What we embed is only as good as this text, so the page is parsed with lxml (never regexes) and walked
element by element; every construct that carries text keeps it. Choices the tests pin:

- `<br/>` is a plain newline (no trailing-space hard breaks: the output has no trailing whitespace).
- Text is not Markdown-escaped, except `|` inside table cells and a line's first character when it would
  otherwise open a block (`# of requests` stays a paragraph, not an H1 that would become the heading path
  of every chunk below it): readers and embedders see the words verbatim.
- Code and noformat macros become fenced blocks with the language as info string; a `title` parameter is a
  bold line directly above the fence. The fence is longer than any backtick run in the code.
- Tables are GFM tables (first row is the header; colspan repeats a value across columns, rowspan carries it
  down). A table with more than 8 columns, a rendered row longer than 300 characters, or a table nested in
  a table instead becomes one `header: value` line per cell, rows separated by a blank line: a row that
  long is unreadable as a table line and embeds badly as one. Spans are clipped to the real grid and a
  table past a size budget is one line per row, each cell once (app/convert_tables.py): output stays
  linear in the body, whatever spans an editor typed. A cell holding a nested table is never repeated.
- Quotes, panels, lists, task lists and tables prefix or indent their lines only to a nesting depth of
  `MAX_NESTING` (8); deeper ones keep their text at that column, so depth cannot multiply the output.
- Images are `![alt or filename]` with the caption in italics on the next line.
- Panels (info/note/warning/tip/panel macros, ADF panels) are block quotes led by `**Label:**`.
- Output is NFC-normalised: macOS-made names arrive as decomposed Hangul jamo, which neither keyword search
  nor tokenizers match against the composed text users type.
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from lxml import etree
from lxml import html as lxml_html

from app import convert_macros as ac
from app import convert_tables as tables
from app.convert_macros import (
    Element,
    Rendered,
    attr,
    child,
    escape_line_starts,
    fence,
    list_item,
    quote,
    raw_text,
    tag,
)

__all__ = ["storage_to_markdown", "user_refs"]

_ROOT = "cv-root"
_NS_DECLS = f'xmlns:ac="{ac.AC_NS}" xmlns:ri="{ac.RI_NS}" xmlns:at="{ac.AT_NS}"'
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENTITY = re.compile(r"&(#[0-9]{1,8};|#[xX][0-9a-fA-F]{1,8};|[A-Za-z][A-Za-z0-9]{0,31};?)?")
_XML_ENTITIES = {"amp;", "lt;", "gt;", "quot;", "apos;"}
_WS = re.compile(r"\s+")
_SPACES = re.compile(r" {2,}")
_SPACE_AROUND_NL = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_IMAGE_MD = re.compile(r"!\[(?:\\.|[^\]])*\]")
_MAX_DEPTH = 80  # deeper markup is flattened to its text, far below Python's recursion limit
_MAX_COLUMNS = 8
_MAX_ROW_CHARS = 300

_Handler = Callable[["_Renderer", Element], Rendered]


def storage_to_markdown(xhtml: str, *, users: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """Markdown for a storage-format body. `users` maps an account id / username / userkey to a display name.

    When the body yields no text at all (only macros/images), return the title (if given) so the page is
    still findable. Never raises: a body we cannot render degrades to its plain text.
    """
    try:
        root = _parse(xhtml)
        markdown = _Renderer(users or {}).document(root) if root is not None else ""
    except Exception:  # the contract is "never raise"; the worker must not lose a page to odd markup
        markdown = _plain_text(xhtml)
    if title and title.strip() and not _has_text(markdown):
        return escape_line_starts(title.strip())
    return markdown


def user_refs(xhtml: str) -> set[str]:
    """Every `ri:user` reference in the body (ri:account-id, ri:username or ri:userkey values),
    so the caller can resolve display names (async, cached) before converting."""
    keys = ("ri:account-id", "ri:username", "ri:userkey")
    try:
        root = _parse(xhtml)
        users = [el for el in (root.iter() if root is not None else []) if tag(el) == "ri:user"]
        return {value for el in users for key in keys if (value := attr(el, key).strip())}
    except Exception:  # same contract as storage_to_markdown: unresolved names beat a failed job
        return set()


# --- parsing


def _parse(xhtml: str) -> Element | None:
    """The body as one tree under a root that declares `ac`/`ri`/`at`.

    XML first (CDATA and namespaces survive); when the recovering XML parser reports errors the lenient
    HTML parser is tried as well and whichever tree kept more text wins, since recovery can drop the rest
    of a page after one bad tag.
    """
    if isinstance(xhtml, bytes):
        xhtml = xhtml.decode("utf-8", "replace")
    if not isinstance(xhtml, str) or not xhtml.strip():
        return None
    parser = etree.XMLParser(
        recover=True, huge_tree=True, resolve_entities=False, no_network=True,
        remove_comments=True, remove_pis=True, encoding="utf-8",
    )  # fmt: skip
    document = f"<{_ROOT} {_NS_DECLS}>{_prepare(xhtml, keep_cdata=True)}</{_ROOT}>".encode()
    try:
        root = etree.fromstring(document, parser)
    except etree.LxmlError:
        root = None
    if root is not None and not parser.error_log:
        return root
    candidates = [tree for tree in (_parse_html(_prepare(xhtml, keep_cdata=False)), root) if tree is not None]
    return max(candidates, key=_text_size, default=None)  # on a tie the HTML parser's recovery wins


def _parse_html(source: str) -> Element | None:
    try:
        return lxml_html.fragment_fromstring(source, create_parent=_ROOT)
    except (etree.LxmlError, ValueError):
        return None


def _text_size(root: Element) -> int:
    return sum(len(text.strip()) for text in root.itertext() if isinstance(text, str))


def _prepare(xhtml: str, *, keep_cdata: bool) -> str:
    """Make the fragment parsable without touching code: drop characters XML forbids, turn HTML named
    entities (`&nbsp;`, `&rarr;`) into numeric references, escape stray ampersands, close a CDATA section
    left open. The HTML parser does not know CDATA, so for it the sections become escaped text."""
    text = _INVALID_XML.sub("", xhtml)
    if text.lstrip().startswith("<?xml"):
        text = text[text.find("?>") + 2 :] if "?>" in text else ""
    parts, pos = [], 0
    while (start := text.find("<![CDATA[", pos)) != -1:
        end = text.find("]]>", start)
        end = len(text) if end == -1 else end + 3
        body = text[start + 9 : end - 3 if text.endswith("]]>", 0, end) else end]
        cdata = f"<![CDATA[{body}]]>" if keep_cdata else html.escape(body, quote=False)
        parts += [_ENTITY.sub(_entity, text[pos:start]), cdata]
        pos = end
    parts.append(_ENTITY.sub(_entity, text[pos:]))
    return "".join(parts)


def _entity(match: re.Match[str]) -> str:
    ref = match.group(1)
    if ref is None:
        return "&amp;"
    if ref.startswith("#"):
        code = int(ref[2:-1], 16) if ref[1] in "xX" else int(ref[1:-1])
        legal = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0x10FFFF
        return match.group(0) if legal and code not in (0xFFFE, 0xFFFF) else ""
    if ref in _XML_ENTITIES:
        return match.group(0)
    value = html.entities.html5.get(ref)  # also the legacy names browsers accept without ";" (`&amp `)
    return "".join(f"&#{ord(ch)};" for ch in value) if value else f"&amp;{ref}"


def _plain_text(xhtml: str) -> str:
    try:
        text = lxml_html.fromstring(_prepare(xhtml, keep_cdata=False)).text_content()
        return escape_line_starts(_paragraph(_WS.sub(" ", text)))
    except Exception:  # last resort of the never-raise contract
        return ""


def _has_text(markdown: str) -> bool:
    return any(ch.isalnum() for ch in _IMAGE_MD.sub("", markdown))


# --- the walk


class _Renderer:
    """Walks the tree; every handler returns an inline run (str) or finished blocks (list of str)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = users
        self.table_depth = 0
        self.tables_rendered = 0  # lets a table cell tell whether it holds a table (then it is never copied)
        self._depth = 0
        self._nesting = 0

    @contextmanager
    def nest(self) -> Iterator[bool]:
        """One level of quote/panel/list/table nesting around rendering its children; yields whether the level
        may still prefix or indent its lines (`ac.MAX_NESTING`, whose docstring says why)."""
        self._nesting += 1
        try:
            yield self._nesting <= ac.MAX_NESTING
        finally:
            self._nesting -= 1

    def document(self, root: Element) -> str:
        return unicodedata.normalize("NFC", _tidy("\n\n".join(self.blocks(root))))

    def render(self, el: Element) -> Rendered:
        name = tag(el)
        if not name or name in _DROP:
            return ""
        if self._depth >= _MAX_DEPTH:
            return _WS.sub(" ", raw_text(el))
        handler = _HANDLERS.get(name) or ac.HANDLERS.get(name) or _transparent
        self._depth += 1
        try:
            return handler(self, el)
        finally:
            self._depth -= 1

    def pieces(self, el: Element) -> list[Rendered]:
        out: list[Rendered] = [_text(el.text)]
        for c in el:
            out += [self.render(c), _text(c.tail)]
        return out

    def blocks(self, el: Element) -> list[str]:
        """Children as blocks: inline runs between block elements become paragraphs (escaped so their text
        stays text, except in table cells, where no line starts a block)."""
        return _group(self.pieces(el), escape=self.table_depth == 0)

    def inline(self, el: Element) -> str:
        """Children as one inline run (blocks inside, which are rare here, are joined by newlines)."""
        return _join(self.pieces(el))


#: A `<` that would open a CommonMark autolink (spec 0.31 §6.5: `<scheme:...>`, scheme 2-32 characters, or
#: `<user@host>`): page text such as `<p0:>` rendered as a link reading "p0:" (found by hypothesis). Escaped in
#: text nodes only; the converter's own autolinks (a link whose text is its URL) are written elsewhere.
_AUTOLINK_START = re.compile(r"<(?=(?:[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*|[^\s<>@]+@[^\s<>]+)>)")


def _text(text: str | None) -> str:
    return _AUTOLINK_START.sub(r"\\<", _WS.sub(" ", text)) if text else ""


def _join(pieces: list[Rendered]) -> str:
    return "".join(p if isinstance(p, str) else "\n" + "\n".join(p) + "\n" for p in pieces)


def _group(pieces: list[Rendered], *, escape: bool = True) -> list[str]:
    blocks: list[str] = []
    run: list[str] = []
    for piece in [*pieces, []]:
        if isinstance(piece, str):
            run.append(piece)
            continue
        if paragraph := _paragraph("".join(run)):
            blocks.append(escape_line_starts(paragraph) if escape else paragraph)
        run.clear()
        blocks += [block for block in piece if block.strip()]
    return blocks


def _paragraph(text: str) -> str:
    text = _SPACE_AROUND_NL.sub("\n", _SPACES.sub(" ", text))
    return _MANY_NL.sub("\n\n", text).strip()


def _tidy(markdown: str) -> str:
    """No trailing spaces, at most one blank line between blocks (two inside code)."""
    out: list[str] = []
    fence_marker = ""
    blanks = 0
    for line in markdown.split("\n"):
        line = line.rstrip()
        blanks = blanks + 1 if not line else 0
        if blanks > (2 if fence_marker else 1):
            continue
        found = _FENCE.match(line)
        if found and not fence_marker:
            fence_marker = found.group(1)
        elif found and line.strip() == fence_marker:
            fence_marker = ""
        out.append(line)
    return "\n".join(out).strip("\n")


# --- HTML elements


def _transparent(r: _Renderer, el: Element) -> Rendered:
    """Unknown or purely presentational elements: their content, inline unless it holds blocks."""
    pieces = r.pieces(el)
    return _group(pieces, escape=r.table_depth == 0) if any(isinstance(p, list) for p in pieces) else _join(pieces)


def _heading(r: _Renderer, el: Element) -> Rendered:
    text = _unbold(_paragraph(r.inline(el)).replace("\n", " "))
    return [f"{'#' * int(tag(el)[1])} {text}"] if text else []


def _unbold(text: str) -> str:
    """`**Title**` → `Title` where the emphasis covers everything (headings, table keys)."""
    inner = text[2:-2]
    if len(text) > 4 and text.startswith("**") and text.endswith("**") and "**" not in inner:
        return inner
    return text


def _around(raw: str, core: str) -> str:
    """`core` with the outer whitespace of `raw` kept outside, so `**word **` never happens."""
    lead = " " if raw[:1].isspace() else ""
    trail = " " if raw[-1:].isspace() else ""
    return f"{lead}{core}{trail}" if core else lead or trail


def _emphasis(mark: str) -> _Handler:
    def render(r: _Renderer, el: Element) -> Rendered:
        raw = r.inline(el)
        core = raw.strip()
        if core.startswith(mark) and core.endswith(mark) and len(core) > 2 * len(mark):
            return _around(raw, core)  # nested same emphasis: once is enough
        return _around(raw, f"{mark}{core}{mark}" if core else "")

    return render


def _code_span(r: _Renderer, el: Element) -> Rendered:
    raw = _text(raw_text(el))
    core = raw.strip()
    longest = max((len(run) for run in re.findall("`+", core)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if core.startswith("`") or core.endswith("`") else ""
    return _around(raw, f"{ticks}{pad}{core}{pad}{ticks}" if core else "")


def _anchor(r: _Renderer, el: Element) -> Rendered:
    raw = r.inline(el)
    text = _paragraph(raw)
    href = (el.get("href") or "").strip()
    if not href:
        return raw
    target = f"<{href}>" if any(ch.isspace() or ch in "()<>" for ch in href) else href
    return _around(raw, f"[{text}]({target})" if text and text != href else f"<{href}>")


def _img(r: _Renderer, el: Element) -> Rendered:
    alt = (el.get("alt") or el.get("title") or el.get("src") or "").strip().replace("]", "\\]")
    return (f"![{alt}]" if alt else "") + r.inline(el)


def _list(r: _Renderer, el: Element) -> Rendered:
    """Items one per line; nested lists indented to the parent item's text (2 for `-`, 3 for `1.`)."""
    entries: list[list[str]] = []
    loose = [_text(el.text)]
    with r.nest() as indent:
        for c in el:
            name = tag(c)
            if name == "li":
                entries.append(r.blocks(c))
            elif name in ("ul", "ol") and entries:
                entries[-1] += _as_blocks(r.render(c))  # a list right inside a list belongs to the item above
            elif name and (blocks := _as_blocks(r.render(c))):
                entries.append(blocks)
            loose.append(_text(c.tail))
    if stray := _paragraph("".join(loose)):
        entries.insert(0, [escape_line_starts(stray)])
    number = _int(el.get("start"), 1, 0, 10**9)
    ordered = tag(el) == "ol"
    width = None if indent else 0
    items = [list_item(f"{number + i}. " if ordered else "- ", blocks, width) for i, blocks in enumerate(entries)]
    return ["\n".join(items)] if items else []


def _lone_item(r: _Renderer, el: Element) -> Rendered:
    """An `li` outside any list: a one-item list."""
    with r.nest() as indent:
        blocks = r.blocks(el)
    return [list_item("- ", blocks, None if indent else 0)]


def _blockquote(r: _Renderer, el: Element) -> Rendered:
    with r.nest() as indent:
        blocks = r.blocks(el)
    return [quote(blocks, prefix=indent)] if blocks else []


def _as_blocks(piece: Rendered) -> list[str]:
    if isinstance(piece, list):
        return piece
    paragraph = _paragraph(piece)
    return [escape_line_starts(paragraph)] if paragraph else []


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(str(value).strip()), low), high)
    except ValueError:
        return default


# --- tables


def _table(r: _Renderer, el: Element) -> Rendered:
    caption_el = child(el, "caption")
    caption = r.blocks(caption_el) if caption_el is not None else []
    r.table_depth += 1
    try:
        with r.nest() as indent:
            cells = _cells(r, _rows(el))
    finally:
        r.table_depth -= 1
    r.tables_rendered += 1
    grid = tables.layout(cells)
    if grid is None:  # spans or shape past the budget: each cell's text once (app/convert_tables.py)
        return caption + tables.plain_rows(cells)
    if not any(cell for row in grid for cell in row):
        return caption
    lines = _markdown_table(grid)
    wide = len(grid[0]) > _MAX_COLUMNS or any(len(line) > _MAX_ROW_CHARS for line in lines)
    if wide or r.table_depth > 0:
        keyed, columns = tables.short_keys(grid)
        return caption + columns + _record_table(keyed, indent=indent)
    return [*caption, "\n".join(lines)]


def _rows(table: Element) -> list[list[Element]]:
    """Rows in document order (thead, tbody, tfoot or bare), not descending into nested tables."""
    rows = []
    for c in table:
        if tag(c) in ("thead", "tbody", "tfoot"):
            rows += [row for row in c if tag(row) == "tr"]
        elif tag(c) == "tr":
            rows.append(c)
    return [[cell for cell in row if tag(cell) in ("td", "th")] for row in rows]


def _cells(r: _Renderer, rows: list[list[Element]]) -> list[list[tables.Cell]]:
    """Each cell rendered once, with its spans read and capped; placing them is `tables.layout`'s job. A cell
    that rendered a table of its own is marked not to be copied (app/convert_tables.py says why)."""
    out: list[list[tables.Cell]] = []
    for cells in rows:
        row = []
        for cell in cells:
            before = r.tables_rendered
            lines = _cell_lines(r, cell)
            row.append(
                tables.Cell(
                    lines,
                    colspan=tables.span(cell.get("colspan"), tables.MAX_COLSPAN),
                    rowspan=tables.span(cell.get("rowspan"), tables.MAX_ROWSPAN),
                    copy=r.tables_rendered == before,
                )
            )
        out.append(row)
    return out


def _cell_lines(r: _Renderer, cell: Element) -> list[str]:
    return [line.rstrip() for block in r.blocks(cell) for line in block.split("\n") if line.strip()]


def _markdown_table(grid: list[list[list[str]]]) -> list[str]:
    def row(cells: list[list[str]]) -> str:
        return "| " + " | ".join("<br>".join(line.replace("|", "\\|") for line in c) for c in cells) + " |"

    return [row(grid[0]), "| " + " | ".join("---" for _ in grid[0]) + " |", *map(row, grid[1:])]


def _record_table(grid: list[list[list[str]]], *, indent: bool = True) -> list[str]:
    """Wide tables: `header: value` per non-empty cell, one paragraph per row (the header row alone if that
    is all there is). A value's further lines are indented two spaces unless `indent` is False (past
    `MAX_NESTING`: records nested in records would otherwise indent every line once per level).

    A header whose column is empty in every later row is given once, first: its text is page content (a
    nested table's first row, a merged cell holding a table that its spans do not copy), and dropping it
    took that text out of the index."""
    pad = "  " if indent else ""
    keys = [_unbold(" ".join(line.strip() for line in c)) or f"Column {i + 1}" for i, c in enumerate(grid[0])]
    used = {i for cells in grid[1:] for i, cell in enumerate(cells) if cell}
    unused = [key for i, (key, c) in enumerate(zip(keys, grid[0], strict=True)) if i not in used and c]
    records = [escape_line_starts("\n".join(unused))] if unused and len(grid) > 1 else []
    for cells in grid[1:]:
        lines: list[str] = []
        for key, cell in zip(keys, cells, strict=True):
            if cell:
                lines += [f"{key}: {cell[0].strip()}", *(pad + line for line in cell[1:])]
        records.append(escape_line_starts("\n".join(lines)))
    return [record for record in records if record] or [escape_line_starts("\n".join(keys))]


_DROP = {
    "colgroup", "col", "style", "script", "head", "title", "meta", "link", "caption",
    "ac:parameter", "ac:default-parameter", "ac:task-id", "ac:task-uuid", "ac:task-status",
    "ac:adf-attribute", "ac:adf-mark", "ac:caption", "at:declarations",
    "ac:placeholder",  # a template's hint to the editor ("Type a name"), never page content
}  # fmt: skip
_CONTAINERS = [
    "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "body", "html", "figure",
    "details", "summary", "center", "address", "dt", "dd", "td", "th", "tr", "tbody", "thead", "tfoot",
    "ac:layout", "ac:layout-section", "ac:layout-cell", "ac:adf-content", "ac:task-body", _ROOT,
]  # fmt: skip
_HANDLERS: dict[str, _Handler] = {
    **{name: lambda r, el: r.blocks(el) for name in _CONTAINERS},
    **{f"h{level}": _heading for level in range(1, 7)},
    **{name: _emphasis("**") for name in ("strong", "b")},
    **{name: _emphasis("_") for name in ("em", "i", "cite", "dfn")},
    **{name: _emphasis("~~") for name in ("s", "del", "strike")},
    **{name: _code_span for name in ("code", "kbd", "samp", "tt")},
    "ul": _list, "ol": _list, "table": _table, "a": _anchor, "img": _img,
    "li": _lone_item,
    "blockquote": _blockquote,
    "pre": lambda r, el: [fence(body)] if (body := raw_text(el)).strip() else [],
    "hr": lambda r, el: ["---", *r.blocks(el)],  # void tags: a recovering parser may nest text in them
    "br": lambda r, el: "\n" + r.inline(el),
    "time": lambda r, el: attr(el, "datetime") or r.inline(el),
}  # fmt: skip
