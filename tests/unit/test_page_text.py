"""A page rebuilt from its chunks (app/page_text.py) is the Markdown the chunker cut, and slices cover it."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from app.chunking import chunk_page
from app.models import Page
from app.page_text import Chunk, assemble, overlap_length, slice_text

WORDS = ["alpha", "beta", "gamma", "delta", "restart", "service", "database", "backup", "restore", "vpn", "token"]


def _page() -> Page:
    return Page(
        id="1",
        title="Runbook",
        space_key="OPS",
        version=1,
        last_modified=datetime(2026, 1, 1, tzinfo=UTC),
        url="https://wiki.example.com/spaces/OPS/pages/1",
        body_storage="",
        space_name="Ops",
        labels=(),
    )


def runbook(seed: int, sections: int = 12) -> str:
    """Markdown with nested headings, long prose, oversized code blocks and tables (split by the chunker)."""
    r = random.Random(seed)
    out: list[str] = []
    level = 0
    for s in range(sections):
        level = r.randint(1, min(3, level + 1))
        out.append(f"{'#' * level} Section {s}")
        for _ in range(r.randint(1, 8)):
            kind = r.random()
            if kind < 0.15:
                lines = "\n".join(" ".join(r.choices(WORDS, k=6)) for _ in range(r.randint(1, 30)))
                out.append(f"```sh-{len(out)}\n{lines}\n```")
            elif kind < 0.25:
                rows = "\n".join(f"| {r.choice(WORDS)} | {r.choice(WORDS)} |" for _ in range(r.randint(1, 40)))
                out.append(f"| a{len(out)} | b |\n| --- | --- |\n{rows}")
            else:
                sentences = (" ".join(r.choices(WORDS, k=r.randint(3, 15))).capitalize() + "." for _ in range(20))
                out.append(" ".join(list(sentences)[: r.randint(1, 20)]))
    return "\n\n".join(out)


def rebuilt(markdown: str, *, size: int, overlap: int) -> str:
    nodes = chunk_page(_page(), markdown, chunk_size=size, chunk_overlap=overlap, max_tokens=8192)
    assert len(nodes) > 1
    return assemble([Chunk(n.text, n.metadata["header_path"]) for n in nodes], overlap=overlap > 0).text


@pytest.mark.parametrize("seed", range(40))
def test_chunks_reassemble_into_the_page_without_overlap_or_split_markers(seed: int) -> None:
    markdown = runbook(seed)
    assert rebuilt(markdown, size=128, overlap=32) == markdown


@pytest.mark.parametrize("seed", range(5))
def test_no_overlap_configured_keeps_every_word(seed: int) -> None:
    markdown = runbook(seed)
    assert rebuilt(markdown, size=128, overlap=0).split() == markdown.split()


def test_overlap_needs_a_word_boundary_and_the_chunkers_joiner() -> None:
    assert overlap_length("Alpha beta. Gamma delta.", "Gamma delta.\n\nNext") == len("Gamma delta.")
    assert overlap_length("ends with the end", "end of line") == 0  # same word, no joiner after it
    assert overlap_length("x\n```", "```python\ncode") == 0  # a fence is not an overlap


def test_sections_are_addressable() -> None:
    page = assemble([Chunk("# A\n\none", "A"), Chunk("## B\n\ntwo", "A > B"), Chunk("three", "A > C")], overlap=True)
    assert page.text == "# A\n\none\n\n## B\n\ntwo\n\n## C\n\nthree"  # C's heading restored from its path
    assert page.section("a > b") == "## B\n\ntwo" and page.section("C") == "## C\n\nthree"
    assert page.section("nope") is None


@pytest.mark.parametrize("size", [1, 7, 100, 5000])
def test_slices_cover_the_text_exactly_once(size: int) -> None:
    text = runbook(3)
    pieces, offset = [], 0
    while True:
        piece = slice_text(text, offset, size)
        assert len(piece.text) <= size and piece.offset == offset
        pieces.append(piece.text)
        if piece.next_offset is None:
            break
        assert piece.next_offset > offset
        offset = piece.next_offset
    assert "".join(pieces) == text


def test_slice_refuses_offsets_outside_the_text() -> None:
    with pytest.raises(ValueError, match="outside"):
        slice_text("abc", 3, 10)
    with pytest.raises(ValueError, match="outside"):
        slice_text("abc", -1, 10)
    assert slice_text("", 0, 10).text == ""
