"""A page's Markdown rebuilt from its indexed chunks, and cut into bounded slices for a model's context.

Why rebuild from the index rather than fetch from Confluence: the index is what search answered from, it needs
no Confluence round trip (nor credentials for the caller), and it is the same structure-preserving Markdown
(tables, code, panels) the chunks were cut from.

How (see app/chunking.py): chunks are cut inside one section (heading path) at a time, in reading order; the
reading order is the list of node ids recorded for the page at its last write (`cv_pages.chunk_ids`). Inside a
section a chunk that follows prose starts with the tail (whole sentences or words) of the chunk before it, the
*overlap*, so the overlap is removed: the longest start of a chunk that is also the end of the previous chunk
of the same section, beginning at a word boundary there. A section's first chunk starts with its heading line;
when the chunker had to leave the heading out (a heading too big to share a chunk), it is restored from the
heading path so the outline survives.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

HEADER_SEPARATOR = " > "  # app.chunking.HEADER_SEPARATOR, repeated to keep this module import-light
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")  # CommonMark fences, as app.chunking reads them
_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")  # a GFM table's delimiter row


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk: its text and its section's heading path (`A > B`, empty before the first heading)."""

    text: str
    header_path: str


@dataclass(frozen=True, slots=True)
class Section:
    """A section of the rebuilt page; `start`/`end` are character offsets into the whole page text."""

    header_path: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class PageText:
    """The rebuilt page: `text` (Markdown) and its sections in reading order."""

    text: str
    sections: tuple[Section, ...]

    def section(self, header_path: str) -> str | None:
        """The text of the section whose heading path is `header_path` (case-insensitive, trimmed), or its
        last heading alone when that is unique; None when no section matches."""
        wanted = header_path.strip().casefold()
        exact = [s for s in self.sections if s.header_path.casefold() == wanted]
        if not exact:
            exact = [s for s in self.sections if s.header_path.rsplit(HEADER_SEPARATOR, 1)[-1].casefold() == wanted]
        if not exact:
            return None
        return "\n\n".join(self.text[s.start : s.end] for s in exact)


def overlap_length(previous: str, following: str) -> int:
    """How many leading characters of `following` repeat the end of `previous` (0 when none).

    The overlap starts at a word boundary of `previous` (the chunker's tail is whole sentences or words) and is
    followed by the chunker's joiner (a line break, or nothing after a sentence that ends in a space), so a chunk
    that merely starts with the word or fence the previous one ends with is not trimmed.
    """
    if not following or not following[0].strip():
        return 0
    first = following[0]
    start = max(0, len(previous) - len(following))
    while (start := previous.find(first, start)) != -1:  # longest candidate first; each start checked once
        length = len(previous) - start
        joined = following[length : length + 1] in ("", "\n") or previous[-1].isspace()
        if joined and (start == 0 or previous[start - 1].isspace()) and following.startswith(previous[start:]):
            return length
        start += 1
    return 0


def assemble(chunks: Sequence[Chunk], *, overlap: bool) -> PageText:
    """The page's Markdown from its chunks in reading order. `overlap=False` (CHUNK_OVERLAP=0) keeps every
    chunk whole: with no overlap configured, a chunk that starts like its predecessor ends is content."""
    groups: list[tuple[str, list[str]]] = []  # (heading path, chunk texts) per run of one section
    for chunk in chunks:
        if groups and groups[-1][0] == chunk.header_path:
            groups[-1][1].append(chunk.text)
        else:
            groups.append((chunk.header_path, [chunk.text]))
    text = ""
    sections: list[Section] = []
    for header_path, texts in groups:
        body = texts[0]
        for previous, following in itertools.pairwise(texts):
            cut = overlap_length(previous, following) if overlap else 0
            body += following[cut:] if cut else "\n\n" + following
        body = rejoin_split_blocks(body)
        if header_path and not body.lstrip().startswith("#"):
            # The chunker leaves a heading out when it cannot share a chunk with the section's first block;
            # restore it from the path (its level is the path's depth: the original level is not stored).
            names = header_path.split(HEADER_SEPARATOR)
            body = f"{'#' * min(6, len(names))} {names[-1]}\n\n{body}"
        if text:
            text += "\n\n"
        sections.append(Section(header_path, len(text), len(text) + len(body)))
        text += body
    return PageText(text, tuple(sections))


def rejoin_split_blocks(text: str) -> str:
    """Undo the chunker's splitting of oversized blocks: it closes a code block's fence and re-opens it with the
    same info string for each piece, and repeats a table's header rows; pieces are separated by a blank line.
    A piece that resumes the block just closed is joined back to it. (Two genuinely separate, adjacent code
    blocks with the same info string, or tables with the same header, are joined too: their text is the same
    either way, only the boundary is lost.)"""
    lines = text.split("\n")
    out: list[str] = []
    opening: str | None = None  # the fence line of the code block being read
    table_head: list[str] = []  # header and delimiter row of the table being read
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if opening is None and fence:
            opening, table_head = line, []
            out.append(line)
        elif opening is not None and fence and not fence[2].strip() and line.strip()[0] == opening.strip()[0]:
            if lines[i + 1 : i + 3] == ["", opening]:  # closed, then re-opened identically: one block
                i += 3
                continue
            opening = None
            out.append(line)
        elif opening is None and line.lstrip().startswith("|"):
            if not _is_row(out) and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
                table_head = [line, lines[i + 1]]
            out.append(line)
            resumes = i + 4 < len(lines) and lines[i + 4].lstrip().startswith("|")
            if table_head and resumes and lines[i + 1 : i + 4] == ["", *table_head]:  # blank, header again
                i += 4
                continue
        else:
            if opening is None and not line.lstrip().startswith("|"):
                table_head = []
            out.append(line)
        i += 1
    return "\n".join(out)


def _is_row(out: list[str]) -> bool:
    return bool(out) and out[-1].lstrip().startswith("|")


@dataclass(frozen=True, slots=True)
class Slice:
    """`text[offset:end]`; `next_offset` is None at the end of the text."""

    text: str
    offset: int
    next_offset: int | None


def slice_text(text: str, offset: int, max_chars: int) -> Slice:
    """At most `max_chars` characters of `text` from `offset`, cut at a paragraph, else a line, else a word
    boundary in the slice's second half, so a slice rarely ends mid-sentence. Every character is in exactly one
    slice: following `next_offset` from 0 reproduces `text`.

    Raises ValueError for an offset outside the text or a `max_chars` below 1.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if offset < 0 or offset > len(text) or (offset == len(text) and text):
        raise ValueError(f"offset {offset} is outside the page ({len(text)} characters)")
    end = offset + max_chars
    if end >= len(text):
        return Slice(text[offset:], offset, None)
    floor = offset + max_chars // 2
    for boundary in ("\n\n", "\n", " "):
        cut = text.rfind(boundary, floor, end)
        if cut != -1:
            end = cut + len(boundary)
            break
    return Slice(text[offset:end], offset, end)
