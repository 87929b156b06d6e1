"""A page's Markdown → LlamaIndex nodes: heading-aware, size-bounded chunks whose ids come from their content.

Re-embedding is the expensive step of a sync, so a chunk's id is a digest of exactly what the embedder sees
(title, heading path, text) and never of its position: an unchanged chunk keeps its id, its row and its vector
across edits elsewhere on the page and across moves. That only pays off if an edit leaves most chunk *texts*
unchanged, so boundaries are chosen by content too:

- headings cut first (a chunk never spans two sections), so boundaries resynchronise at every heading;
- inside a section, blocks (paragraphs, fenced code, tables) are packed in order and cut where a block's hash
  beats every other block within a fixed token distance (`REACH`) either side. Whether a cut is there depends
  only on nearby text, so an inserted paragraph moves the cuts near it and no others; a stretch between cuts
  that is too long for one chunk is packed greedily from its own content-defined start;
- a block larger than a chunk is split at line, then sentence, then word boundaries by the same rule; a fenced
  block re-opens its fence (with its info string) in every piece and a table repeats its header row.

The embedded text is `title: …\nheader_path: …\n\n<chunk>`: LlamaIndex's own `key: value` metadata template,
so a stored node embeds the same way wherever LlamaIndex re-embeds it. Nothing positional (index, character
offsets, prev/next links) is stored: positions move on every insert and would force row rewrites. For the
same reason a row carries no per-version field (version, last-modified time, last editor): those live once per
page in `cv_pages`, so an edit rewrites only the rows of the chunks it changed.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.schema import (
    BaseNode,
    Document,
    MetadataMode,
    NodeRelationship,
    ObjectType,
    RelatedNodeInfo,
    TextNode,
)

from app.models import Page
from app.tokens import SPECIAL_TOKENS, count_tokens, split_to_fit

#: uuid5(NAMESPACE_URL, "urn:confluence-vectors:chunk"); changing it re-embeds every page.
NAMESPACE = uuid.UUID("9ba0062e-349c-59c2-9cfe-56f677402d0f")
HEADER_SEPARATOR = " > "
EMBED_KEYS = ("title", "header_path")
LLM_KEYS = ("title", "header_path", "url", "space_name", "last_modified")
METADATA_TEMPLATE = "{key}: {value}"
METADATA_SEPARATOR = "\n"
TEXT_TEMPLATE = "{metadata_str}\n\n{content}"
#: How far, as a fraction of the chunk budget, a cut looks for a stronger candidate: cuts are at least
#: that far apart (chunks average ~70% of the budget) and an edit can move only the cuts that close to it.
REACH = 0.4

Kind = Literal["heading", "prose", "code", "table"]
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_ATX_CLOSE = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_SENTENCE_START = re.compile(r"(?<=[.!?:;。！？])\s+(?=\S)|(?<=[。！？])(?=\S)")
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


@dataclass(frozen=True, slots=True)
class _Block:
    kind: Kind
    lines: tuple[str, ...]
    level: int = 0
    heading: str = ""


@dataclass(frozen=True, slots=True)
class _Unit:
    """A piece that is never cut further; `joiner` goes before it when it follows another unit in a chunk."""

    text: str
    tokens: int
    kind: Kind
    joiner: str = "\n\n"


def count_chunk_tokens(node: BaseNode) -> int:
    """What `node` costs the embedder, special tokens included; `chunk_page` keeps it ≤ `max_tokens`."""
    return count_tokens(embed_text(node)) + SPECIAL_TOKENS


def page_metadata(page: Page) -> dict[str, Any]:
    """Page-level metadata stored in every chunk row: what a move, rename or relabel changes, never an edit.

    Shape: `page_id`, `title`, `url`, `space_key`, `space_name`, `labels` (list), `ancestors` (breadcrumb
    titles, root first), `content_type`. Readers filter on these (`PGVectorStore` metadata filters, SQL on
    `metadata_`), so they live in the row. The per-version fields (`version_metadata`) do not: they change on
    every edit, and in every row they would turn a one-chunk edit into a rewrite of all the page's rows.
    """
    return {
        "page_id": page.id,
        "title": page.title,
        "url": page.url,
        "space_key": page.space_key,
        "space_name": page.space_name,
        "labels": list(page.labels),
        "ancestors": list(page.ancestors),
        "content_type": page.content_type,
    }


def version_metadata(page: Page) -> dict[str, Any]:
    """What changes with every edit: `version` (int), `last_modified` (ISO 8601), `author` (last editor).

    Kept once per page in `cv_pages` (columns `version`, `last_modified`, `author`), written in the same
    transaction as the page's rows, and joined in by readers (`app.page_versions`, the service's search).
    """
    return {
        "version": page.version,
        "last_modified": page.last_modified.isoformat(),
        "author": page.author,
    }


#: The keys of `version_metadata`: never in a chunk row.
VERSION_KEYS = ("version", "last_modified", "author")


def page_document(page: Page, markdown: str) -> Document:
    """The whole page as one LlamaIndex document (never stored), its id the page id, templated like its chunks;
    its metadata is the row metadata plus the per-version fields."""
    metadata = {**page_metadata(page), **version_metadata(page)}
    return Document(id_=page.id, text=markdown, metadata=metadata, **_templates(metadata))


def embed_text(node: BaseNode) -> str:
    """Exactly what is sent to the embedder for `node` (and what its id and `content_hash` digest)."""
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def chunk_page(page: Page, markdown: str, *, chunk_size: int, chunk_overlap: int, max_tokens: int) -> list[TextNode]:
    """The page's chunks in reading order; the same input always gives the same nodes and ids.

    Sizes are in `count_tokens` tokens: a chunk's text stays within `chunk_size` and its embedded text
    (prefix and special tokens included) within `max_tokens`. An empty page still gives one chunk, its title,
    so it can be found by name.
    """
    base = page_metadata(page)
    room = max_tokens - SPECIAL_TOKENS
    title = _clip(page.title, max(2, room // 8))
    base["title"] = title
    texts: list[tuple[str, str]] = []
    for path, blocks in _sections(markdown):
        header_path = _clip(HEADER_SEPARATOR.join(path), max(2, room // 8))
        size = min(chunk_size, room - count_tokens(_prefix(base, header_path)))
        texts.extend((header_path, text) for text in _chunk_section(blocks, size, chunk_overlap))
    if not texts:
        texts.append(("", title))

    source = RelatedNodeInfo(node_id=page.id, node_type=ObjectType.DOCUMENT)
    nodes: list[TextNode] = []
    seen: Counter[str] = Counter()
    for header_path, text in texts:
        metadata = {**base, "header_path": header_path, "content_hash": ""}
        node = TextNode(
            text=text,
            metadata=metadata,
            relationships={NodeRelationship.SOURCE: source},
            **_templates(metadata),
        )
        digest = _sha256(embed_text(node))
        node.metadata["content_hash"] = digest
        node.id_ = str(uuid.uuid5(NAMESPACE, f"{page.id}:{digest}:{seen[digest]}"))
        seen[digest] += 1
        nodes.append(node)
    return nodes


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _templates(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "excluded_embed_metadata_keys": [key for key in metadata if key not in EMBED_KEYS],
        "excluded_llm_metadata_keys": [key for key in metadata if key not in LLM_KEYS],
        "metadata_template": METADATA_TEMPLATE,
        "metadata_separator": METADATA_SEPARATOR,
        "text_template": TEXT_TEMPLATE,
    }


def _prefix(base: dict[str, Any], header_path: str) -> str:
    """The embed text of an empty chunk: what every chunk of the section costs before its own text."""
    metadata = {**base, "header_path": header_path}
    return embed_text(TextNode(text="", metadata=metadata, **_templates(metadata)))


def _clip(text: str, limit: int) -> str:
    """Shorten a pathological title or heading path so the embed prefix leaves room for the chunk itself."""
    return text if count_tokens(text) <= limit else split_to_fit(text, limit)[0].rstrip()


# --- Markdown structure -----------------------------------------------------------------------------------
def _blocks(markdown: str) -> Iterator[_Block]:
    """Headings, paragraphs, fenced code and tables; a `#` line inside a fence is code, not a heading."""
    lines = markdown.splitlines()
    paragraph: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        heading = _ATX.match(line)
        table = line.lstrip().startswith("|")
        if paragraph and (fence or heading or table or not line.strip()):
            yield _Block("prose", tuple(paragraph))
            paragraph = []
        if fence and not (fence[1][0] == "`" and "`" in fence[2]):
            end = i + 1
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence[1][0])}{{{len(fence[1])},}}[ \t]*$")
            while end < len(lines) and not closing.match(lines[end]):
                end += 1
            yield _Block("code", tuple(lines[i : end + 1]))
            i = end + 1
            continue
        if heading:
            text = _ATX_CLOSE.sub("", (heading[2] or "").strip()).strip()
            yield _Block("heading", (line.strip(),), level=len(heading[1]), heading=text)
        elif table:
            end = i
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            yield _Block("table", tuple(lines[i:end]))
            i = end
            continue
        elif line.strip():
            paragraph.append(line)
        i += 1
    if paragraph:
        yield _Block("prose", tuple(paragraph))


def _sections(markdown: str) -> Iterator[tuple[tuple[str, ...], list[_Block]]]:
    """(heading path, blocks) per section that has a body; the heading line opens its section's blocks."""
    stack: list[tuple[int, str]] = []
    blocks: list[_Block] = []
    for block in _blocks(markdown):
        if block.kind == "heading":
            if any(b.kind != "heading" for b in blocks):
                yield tuple(name for _, name in stack if name), blocks
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.heading))
            blocks = [block]
        else:
            blocks.append(block)
    if any(b.kind != "heading" for b in blocks):
        yield tuple(name for _, name in stack if name), blocks


# --- Sizing ------------------------------------------------------------------------------------------------
def _chunk_section(blocks: list[_Block], size: int, overlap: int) -> list[str]:
    """Pack a section's blocks into chunk texts of at most `size` tokens, each after the last one's tail."""
    overlap = max(0, min(overlap, size // 2))
    units = [unit for block in blocks for unit in _units(block, size)]
    if len(units) > 1 and units[0].kind == "heading":
        # A heading alone is no chunk: it joins the first block, or when they cannot share a chunk it is
        # left to `header_path`, which carries it anyway.
        heading, first = units[0], units[1]
        if heading.tokens + first.tokens <= size:
            units[1] = _Unit(heading.text + "\n\n" + first.text, heading.tokens + first.tokens, first.kind)
        units = units[1:]
    chunks: list[str] = []
    previous: _Unit | None = None
    for group in _pack(units, size - overlap):
        text = group[0].text + "".join(unit.joiner + unit.text for unit in group[1:])
        used = count_tokens(text)
        if previous is not None and previous.kind == "prose":
            tail = _tail(previous.text, min(overlap, size - used))
            if tail:
                text, used = tail + group[0].joiner + text, count_tokens(tail + group[0].joiner + text)
        # Joining pieces never raises the estimate, so this split is a guarantee, not a path we expect.
        chunks.extend([text] if used <= size else [p for p in split_to_fit(text, size) if p.strip()])
        previous = group[-1]
    return chunks


def _units(block: _Block, size: int) -> list[_Unit]:
    """The block whole if it fits a chunk; else pieces cut at line, sentence and word boundaries."""
    text = "\n".join(block.lines)
    tokens = count_tokens(text)
    if tokens <= size:
        return [_Unit(text, tokens, block.kind)]
    if block.kind in ("code", "table") and len(block.lines) > 1:
        if block.kind == "code":
            head, body = [block.lines[0]], list(block.lines[1:])
            opening = _FENCE.match(head[0])
            closed = len(body) > 0 and _FENCE.match(body[-1]) is not None
            tail = [body.pop()] if closed else [opening[1] if opening else "```"]
        else:
            header = 2 if len(block.lines) > 2 and _TABLE_RULE.match(block.lines[1]) else 1
            head, body, tail = list(block.lines[:header]), list(block.lines[header:]), []
        frame = count_tokens("\n".join(head + tail))
        if frame <= size // 2:
            lines = [u for line in body for u in _pieces(line, size - frame, "\n", block.kind)]
            return [
                _Unit(t, count_tokens(t), block.kind)
                for g in _pack(lines, size - frame)
                for t in ["\n".join([*head, g[0].text + "".join(u.joiner + u.text for u in g[1:]), *tail])]
            ]
    pieces = [u for line in block.lines for u in _pieces(line, size, "\n", "prose")]
    return [_Unit(pieces[0].text, pieces[0].tokens, "prose"), *pieces[1:]]


def _pieces(line: str, size: int, joiner: str, kind: Kind) -> list[_Unit]:
    """One line as units: whole, else (prose) its sentences, else word or character cuts."""
    tokens = count_tokens(line)
    if tokens <= size:
        return [_Unit(line, tokens, kind, joiner)]
    parts = [line]
    if kind == "prose":
        starts = [0, *(m.end() for m in _SENTENCE_START.finditer(line)), len(line)]
        parts = [line[a:b] for a, b in itertools.pairwise(starts) if a < b]
    units: list[_Unit] = []
    for part in parts:
        for cut in split_to_fit(part, size) if count_tokens(part) > size else [part]:
            units.append(_Unit(cut, count_tokens(cut), kind, joiner if not units else ""))
    return units


def _pack(units: list[_Unit], budget: int) -> list[list[_Unit]]:
    """Content-defined packing: cut where a unit's hash beats every other within `reach` tokens either side.

    Each cut depends only on the text within `reach` of it, so an edit moves cuts near itself and no others;
    the edges are no-cut zones so no tiny first or last chunk appears. A stretch between cuts that exceeds the
    budget is packed greedily from its own (content-defined) start.
    """
    reach = max(1, int(budget * REACH))
    positions: list[int] = []
    total = 0
    for unit in units:
        positions.append(total)
        total += unit.tokens
    weights = [int(_sha256(unit.text)[:16], 16) for unit in units]
    cuts = [0]
    low = 1
    for i in range(1, len(units)):
        if positions[i] < reach or total - positions[i] < reach:
            continue
        while positions[low] < positions[i] - reach:
            low += 1
        high = i
        while high + 1 < len(units) and positions[high + 1] <= positions[i] + reach:
            high += 1
        if all(weights[i] > weights[j] for j in range(low, high + 1) if j != i):
            cuts.append(i)
    groups: list[list[_Unit]] = []
    for start, end in zip(cuts, [*cuts[1:], len(units)], strict=True):
        current: list[_Unit] = []
        used = 0
        for unit in units[start:end]:
            if current and used + unit.tokens > budget:
                groups.append(current)
                current, used = [], 0
            current.append(unit)
            used += unit.tokens
        if current:
            groups.append(current)
    return groups


def _tail(text: str, limit: int) -> str:
    """The longest run of whole sentences (else words) ending `text` within `limit` tokens, for overlap."""
    if limit <= 0:
        return ""
    for boundary in (_SENTENCE_START, _WORD_START):
        best = ""
        for start in sorted({0, *(m.end() for m in boundary.finditer(text))}, reverse=True):
            candidate = text[start:]
            if count_tokens(candidate) > limit:
                break
            best = candidate
        if best:
            return best
    return ""
