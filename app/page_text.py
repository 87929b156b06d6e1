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

from collections.abc import Sequence
from dataclasses import dataclass

HEADER_SEPARATOR = " > "  # app.chunking.HEADER_SEPARATOR, repeated to keep this module import-light


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
        joined = following[length:length + 1] in ("", "\n") or previous[-1].isspace()
        if joined and (start == 0 or previous[start - 1].isspace()) and following.startswith(previous[start:]):
            return length
        start += 1
    return 0


def assemble(chunks: Sequence[Chunk], *, overlap: bool) -> PageText:
    """The page's Markdown from its chunks in reading order. `overlap=False` (CHUNK_OVERLAP=0) keeps every
    chunk whole: with no overlap configured, a chunk that starts like its predecessor ends is content."""
    parts: list[str] = []
    sections: list[Section] = []
    length = 0
    previous: Chunk | None = None
    for chunk in chunks:
        same_section = previous is not None and previous.header_path == chunk.header_path
        text = chunk.text
        if same_section and previous is not None:
            cut = overlap_length(previous.text, text) if overlap else 0
            addition = text[cut:] if cut else "\n\n" + text
            parts.append(addition)
            length += len(addition)
            sections[-1] = Section(sections[-1].header_path, sections[-1].start, length)
        else:
            if chunk.header_path and not text.lstrip().startswith("#"):
                names = chunk.header_path.split(HEADER_SEPARATOR)
                text = f"{'#' * min(6, len(names))} {names[-1]}\n\n{text}"
            separator = "\n\n" if parts else ""
            parts.append(separator + text)
            start = length + len(separator)
            length += len(separator) + len(text)
            sections.append(Section(chunk.header_path, start, length))
        previous = chunk
    return PageText("".join(parts), tuple(sections))


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
