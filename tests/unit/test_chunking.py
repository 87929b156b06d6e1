"""Markdown → heading-aware chunks with content-derived ids."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from llama_index.core.schema import MetadataMode, NodeRelationship, TextNode

from app.chunking import (
    NAMESPACE,
    VERSION_KEYS,
    chunk_page,
    count_chunk_tokens,
    embed_text,
    page_document,
    page_metadata,
    version_metadata,
)
from app.models import Page
from app.tokens import count_tokens

SIZES: dict[str, int] = {"chunk_size": 512, "chunk_overlap": 64, "max_tokens": 8192}
VOCABULARY = (
    "deploy rollback cluster service database migration release pipeline config secret token node replica "
    "backup restore monitor alert latency request handler queue worker retry timeout schema index vector "
    "search page space label owner team runbook incident the a of to and in is for with on that by this be "
    "are from at as it or an will must should can when if then after before"
)
WORDS = tuple(VOCABULARY.split())


def make_page(**changes: Any) -> Page:
    page = Page(
        id="4242",
        title="Deploy guide",
        space_key="OPS",
        version=7,
        last_modified=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        url="https://wiki.example.com/wiki/spaces/OPS/pages/4242",
        body_storage="<p>unused</p>",
        space_name="Operations",
        author="Ada Lovelace",
        labels=("runbook", "prod"),
        ancestors=("Home", "Runbooks"),
    )
    return dataclasses.replace(page, **changes)


def chunks(markdown: str, page: Page | None = None, **sizes: int) -> list[TextNode]:
    return chunk_page(page or make_page(), markdown, **{**SIZES, **sizes})


def paragraph(rng: random.Random, words: tuple[int, int] = (15, 110)) -> str:
    sentences, left = [], rng.randint(*words)
    while left > 0:
        take = min(left, rng.randint(6, 20))
        left -= take
        text = " ".join(rng.choice(WORDS) for _ in range(take))
        sentences.append(text[0].upper() + text[1:] + ".")
    return " ".join(sentences)


def realistic_page(seed: int = 8) -> list[str]:
    """~40 chunks at 512 tokens: an intro, sections with subsections of many paragraphs, code and tables."""
    rng = random.Random(seed)
    blocks = [paragraph(rng)]
    for section in range(3):
        blocks.append(f"# Section {section}")
        for sub in range(2):
            blocks.append(f"## Part {section}.{sub}")
            for _ in range(rng.randint(10, 16)):
                roll = rng.random()
                if roll < 0.06:
                    code = "\n".join(f"# step {i}\nrun('{rng.choice(WORDS)}', {i})" for i in range(6))
                    blocks.append(f"```python\n{code}\n```")
                elif roll < 0.1:
                    rows = "\n".join(f"| {rng.choice(WORDS)} | {rng.randint(1, 999)} |" for _ in range(5))
                    blocks.append(f"| key | value |\n|---|---|\n{rows}")
                else:
                    blocks.append(paragraph(rng))
    return blocks


def changed_ids(before: list[str], after: list[str]) -> int:
    """Ids the new version needs embedded: those the old version did not have."""
    old = {node.node_id for node in chunks("\n\n".join(before))}
    return len({node.node_id for node in chunks("\n\n".join(after))} - old)


# --- Structure -------------------------------------------------------------------------------------------
def test_header_paths_follow_nested_headings() -> None:
    markdown = (
        "Intro.\n\n# Deploy\n\nHow to deploy.\n\n## Rollback ##\n\nUndo it.\n\n"
        "#### Deep\n\nSkipped a level.\n\n## Verify\n\nCheck it.\n\n# Appendix\n\nMore."
    )
    assert [node.metadata["header_path"] for node in chunks(markdown)] == [
        "",
        "Deploy",
        "Deploy > Rollback",
        "Deploy > Rollback > Deep",
        "Deploy > Verify",
        "Appendix",
    ]


def test_hash_lines_inside_fenced_code_are_not_headings() -> None:
    markdown = (
        "# Setup\n\n```bash\n# install\napt-get install foo\n## not a heading either\n```\n\n"
        "~~~\n# tilde fence\n~~~\n\n````md\n```\n# inside a four-backtick fence\n```\n````\n\n"
        "After.\n\n#hashtag is text"
    )
    nodes = chunks(markdown)
    assert {node.metadata["header_path"] for node in nodes} == {"Setup"}
    text = "\n".join(node.text for node in nodes)
    for line in ("# install", "## not a heading either", "# tilde fence", "# inside a four-backtick fence"):
        assert line in text
    assert "#hashtag is text" in text


def test_a_heading_opens_its_sections_first_chunk_and_empty_sections_yield_nothing() -> None:
    nodes = chunks("# Deploy\n\n## Rollback\n\nUndo it.")
    assert [node.text for node in nodes] == ["## Rollback\n\nUndo it."]
    assert nodes[0].metadata["header_path"] == "Deploy > Rollback"


def test_no_chunk_straddles_two_sections() -> None:
    rng = random.Random(5)
    sections = [
        f"# S{s}\n\n" + "\n\n".join(paragraph(rng).replace(" ", f" s{s}x ") for _ in range(12)) for s in range(4)
    ]
    nodes = chunks("\n\n".join(sections), chunk_size=128, chunk_overlap=24)
    assert len(nodes) > 8
    for node in nodes:
        markers = {word for word in node.text.split() if word.startswith("s") and word.endswith("x")}
        assert markers == {f"s{node.metadata['header_path'][1:]}x"}


@pytest.mark.parametrize(
    "block",
    [
        "```python\n" + "\n".join(f"# comment {i}\nvalue_{i} = compute({i}, 'x')" for i in range(8)) + "\n```",
        "| name | value | notes |\n|---|---|---|\n"
        + "\n".join(f"| row{i} | {i * 7} | some words here |" for i in range(8)),
    ],
    ids=["code", "table"],
)
def test_code_blocks_and_tables_stay_whole_when_they_fit(block: str) -> None:
    rng = random.Random(9)
    before = "\n\n".join(paragraph(rng, (20, 40)) for _ in range(4))
    after = "\n\n".join(paragraph(rng, (20, 40)) for _ in range(4))
    assert count_tokens(block) <= 256
    nodes = chunks(f"# H\n\n{before}\n\n{block}\n\n{after}", chunk_size=256, chunk_overlap=32)
    assert len(nodes) > 2
    assert sum(block in node.text for node in nodes) == 1


def test_a_code_block_larger_than_a_chunk_is_split_at_lines_and_refenced() -> None:
    lines = [f"result_{i} = service.call('endpoint-{i}', retries={i % 5})" for i in range(120)]
    nodes = chunks("# Code\n\n```python\n" + "\n".join(lines) + "\n```", chunk_size=128, chunk_overlap=16)
    assert len(nodes) > 3
    bodies = []
    for node in nodes:
        text = node.text.removeprefix("# Code\n\n")
        assert text.startswith("```python\n") and text.endswith("\n```"), text
        bodies.extend(text.splitlines()[1:-1])
    assert bodies == lines


def test_a_table_larger_than_a_chunk_repeats_its_header() -> None:
    rows = [f"| host-{i} | 10.0.0.{i} | active |" for i in range(80)]
    nodes = chunks("| host | ip | state |\n|---|---|---|\n" + "\n".join(rows), chunk_size=128, chunk_overlap=0)
    assert len(nodes) > 3
    seen = []
    for node in nodes:
        lines = node.text.splitlines()
        assert lines[:2] == ["| host | ip | state |", "|---|---|---|"]
        seen.extend(lines[2:])
    assert seen == rows


# --- Sizes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "markdown",
    [
        "\n\n".join(realistic_page()),
        "# 배포\n\n" + "\n\n".join("서비스를 배포하기 전에 데이터베이스 백업을 확인하세요. " * 30 for _ in range(6)),
        "# Blob\n\n" + "Q" * 50_000,
        "# Minified\n\n" + "var a=1;" * 6_000 + "\n\n" + "한" * 20_000,
        "# Code\n\n```\n" + "x" * 30_000 + "\n```",
    ],
    ids=["english", "korean", "no-space-line", "mixed", "huge-code-line"],
)
@pytest.mark.parametrize(("size", "overlap", "limit"), [(512, 64, 8192), (256, 32, 300), (64, 16, 64)])
def test_no_chunk_exceeds_its_size_or_the_embedder_limit(markdown: str, size: int, overlap: int, limit: int) -> None:
    nodes = chunks(markdown, chunk_size=size, chunk_overlap=overlap, max_tokens=limit)
    assert nodes
    for node in nodes:
        assert count_tokens(node.text) <= size
        assert count_chunk_tokens(node) <= limit
        assert node.text.strip()


def test_the_50k_character_line_is_kept_whole_across_chunks() -> None:
    nodes = chunks("Q" * 50_000, chunk_size=512, chunk_overlap=0)
    assert "".join(node.text for node in nodes) == "Q" * 50_000


def test_a_huge_title_and_heading_still_leave_room_for_text() -> None:
    page = make_page(title="Title " * 200)
    nodes = chunks("# " + "Heading " * 200 + "\n\nBody text.", page=page, chunk_size=64, max_tokens=128)
    assert all(count_chunk_tokens(node) <= 128 for node in nodes)
    assert "Body text." in "".join(node.text for node in nodes)


@pytest.mark.parametrize("markdown", ["", "   \n\n  ", "# Only\n\n## Headings"])
def test_a_page_without_text_still_yields_its_title(markdown: str) -> None:
    nodes = chunks(markdown)
    assert len(nodes) == 1
    assert nodes[0].text == "Deploy guide"
    assert "Deploy guide" in embed_text(nodes[0])


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    rng = random.Random(11)
    markdown = "# Long\n\n" + "\n\n".join(paragraph(rng) for _ in range(30))
    with_overlap = chunks(markdown, chunk_size=256, chunk_overlap=48)
    shared = [b.text.split("\n\n")[0] for a, b in itertools.pairwise(with_overlap) if b.text.split("\n\n")[0] in a.text]
    assert len(shared) >= len(with_overlap) // 2
    assert all(count_tokens(tail) <= 48 for tail in shared)
    without = chunks(markdown, chunk_size=256, chunk_overlap=0)
    assert "\n\n".join(node.text for node in without) == markdown


# --- Ids and metadata ------------------------------------------------------------------------------------
def test_ids_are_deterministic_and_derived_from_the_embedded_text() -> None:
    markdown = "\n\n".join(realistic_page())
    first, second = chunks(markdown), chunks(markdown)
    assert [n.node_id for n in first] == [n.node_id for n in second]
    assert [embed_text(n) for n in first] == [embed_text(n) for n in second]
    for node in first:
        digest = hashlib.sha256(embed_text(node).encode()).hexdigest()
        assert node.metadata["content_hash"] == digest
        assert node.node_id == str(uuid.uuid5(NAMESPACE, f"4242:{digest}:0"))


def test_identical_chunks_are_told_apart_by_occurrence() -> None:
    markdown = "# Notes\n\nSame words.\n\n# Other\n\nSomething.\n\n# Notes\n\nSame words."
    nodes = chunks(markdown)
    assert embed_text(nodes[0]) == embed_text(nodes[2])
    digest = nodes[0].metadata["content_hash"]
    assert nodes[0].node_id == str(uuid.uuid5(NAMESPACE, f"4242:{digest}:0"))
    assert nodes[2].node_id == str(uuid.uuid5(NAMESPACE, f"4242:{digest}:1"))
    assert len({node.node_id for node in nodes}) == 3


def test_inserting_a_paragraph_near_the_top_changes_at_most_three_ids() -> None:
    blocks = realistic_page()
    assert 35 <= len(chunks("\n\n".join(blocks))) <= 60
    for seed in range(10):
        inserted = [*blocks[:4], paragraph(random.Random(seed)), *blocks[4:]]
        assert changed_ids(blocks, inserted) <= 3


def test_editing_or_deleting_a_paragraph_in_the_middle_changes_at_most_three_ids() -> None:
    blocks = realistic_page()
    middle = [i for i, b in enumerate(blocks) if b[0].isupper() and i > len(blocks) // 2][:5]
    for i in middle:
        edited = [*blocks[:i], blocks[i] + " Also check the replica first.", *blocks[i + 1 :]]
        assert changed_ids(blocks, edited) <= 3
        assert changed_ids(blocks, [*blocks[:i], *blocks[i + 1 :]]) <= 3


def test_every_chunk_carries_the_page_metadata_and_no_position() -> None:
    node = chunks("# Deploy\n\n## Rollback\n\nUndo it.")[0]
    assert node.metadata == {
        **page_metadata(make_page()),
        "header_path": "Deploy > Rollback",
        "content_hash": node.metadata["content_hash"],
    }
    assert node.metadata["labels"] == ["runbook", "prod"]
    assert node.ref_doc_id == "4242"
    assert set(node.relationships) == {NodeRelationship.SOURCE}
    assert node.start_char_idx is None and node.end_char_idx is None


def test_a_new_version_by_another_editor_leaves_every_chunk_exactly_as_it_was() -> None:
    """Per-version fields are not in the chunks (they live in cv_pages), so an edit that leaves a chunk's text
    alone leaves its whole row alone: same id, same metadata, nothing to rewrite."""
    markdown = "\n\n".join(realistic_page())
    later = make_page(version=8, author="Grace Hopper", last_modified=datetime(2025, 1, 1, tzinfo=UTC))
    before, after = chunks(markdown), chunks(markdown, page=later)
    assert [(n.node_id, n.metadata) for n in before] == [(n.node_id, n.metadata) for n in after]
    assert not any(key in node.metadata for node in before for key in VERSION_KEYS)
    assert version_metadata(later) == {
        "version": 8,
        "last_modified": "2025-01-01T00:00:00+00:00",
        "author": "Grace Hopper",
    }


def test_embed_text_is_title_and_header_path_then_the_chunk() -> None:
    node = chunks("# Deploy\n\n## Rollback\n\nUndo it.")[0]
    assert embed_text(node) == "title: Deploy guide\nheader_path: Deploy > Rollback\n\n## Rollback\n\nUndo it."
    assert embed_text(node) == node.get_content(metadata_mode=MetadataMode.EMBED)
    for leaked in ("wiki.example.com", "Ada Lovelace", "OPS", "Operations", "runbook", "content_hash", "7"):
        assert leaked not in embed_text(node)
    llm = node.get_content(metadata_mode=MetadataMode.LLM)
    assert "url: https://wiki.example.com" in llm and "content_hash" not in llm


def test_a_move_changes_metadata_but_no_id_and_no_embedded_text() -> None:
    markdown = "\n\n".join(realistic_page())
    moved = make_page(
        space_key="ARCH",
        space_name="Archive",
        url="https://wiki.example.com/wiki/spaces/ARCH/pages/4242",
        ancestors=("Home", "Old"),
        labels=("archived",),
        version=8,
        author="Grace Hopper",
        last_modified=datetime(2025, 1, 1, tzinfo=UTC),
    )
    before, after = chunks(markdown), chunks(markdown, page=moved)
    assert [n.node_id for n in before] == [n.node_id for n in after]
    assert [embed_text(n) for n in before] == [embed_text(n) for n in after]
    assert page_metadata(moved) != page_metadata(make_page())
    assert after[0].metadata["ancestors"] == ["Home", "Old"]


def test_a_title_change_changes_every_id() -> None:
    markdown = "\n\n".join(realistic_page())
    before = {n.node_id for n in chunks(markdown)}
    after = {n.node_id for n in chunks(markdown, page=make_page(title="Deployment guide"))}
    assert not before & after


def test_page_document_is_the_whole_page() -> None:
    document = page_document(make_page(), "# Deploy\n\nText.")
    assert document.doc_id == "4242"
    assert document.text == "# Deploy\n\nText."
    assert document.metadata == {**page_metadata(make_page()), **version_metadata(make_page())}
    assert set(document.metadata) == {
        "page_id", "title", "url", "space_key", "space_name", "author", "version", "last_modified", "labels",
        "ancestors", "content_type",
    }  # fmt: skip
    assert document.get_content(metadata_mode=MetadataMode.EMBED).startswith("title: Deploy guide\n\n# Deploy")
