"""Chunks of what hangs off a page (its comments, its attachments): one LlamaIndex document each, stored with
the page's rows.

Why with the page's rows: a page's rows are replaced, diffed and deleted as one set (`app.vector_store`), so
trashing, deleting or restricting the page removes its comments and attachments in the same transaction, and
a search filter on `page_id` (permissions) applies to them unchanged. Each sub-document still has its own
identity: `subdocument_id` and `subdocument_type` in the metadata (LlamaIndex owns `doc_id`), and node ids
derived from (page, sub-document, embedded text), so editing one comment or one file re-embeds only that
document's changed chunks, never another's.

The heading path starts with the names that locate the text (page title, then file name or comment), then the
document's own headings, demoted below them.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.schema import TextNode

from app.chunking import NAMESPACE, chunk_page
from app.config import Settings
from app.models import Page

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^( {0,3})(#{1,6})(?=[ \t]|$)")


def demote_headings(markdown: str, levels: int) -> str:
    """Every ATX heading outside fenced code `levels` deeper (at most `######`), so a sub-document's own
    headings nest under the path headings put above them."""
    out: list[str] = []
    fence = ""
    for line in markdown.split("\n"):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
        elif opened:
            fence = opened.group(1)
        elif found := _ATX.match(line):
            depth = min(6, len(found.group(2)) + levels)
            line = found.group(1) + "#" * depth + line[found.end() :]
        out.append(line)
    return "\n".join(out)


def subdocument_nodes(
    page: Page,
    settings: Settings,
    *,
    doc_id: str,
    doc_type: str,
    path: Sequence[str],
    markdown: str,
    metadata: Mapping[str, Any],
) -> list[TextNode]:
    """Chunks of one sub-document of `page`.

    `path` (1-5 names, e.g. page title and file name) becomes the leading headings; `markdown` is the
    document's text; `metadata` is added to every chunk (file name, media type, author...), none of it
    embedded, so it can change without a re-embed. Returns [] for a document without text.
    """
    if not markdown.strip():
        return []
    names = [" ".join(name.split()) or "untitled" for name in path][:5]
    heads = "\n\n".join(f"{'#' * (level + 1)} {name}" for level, name in enumerate(names))
    text = f"{heads}\n\n{demote_headings(markdown, len(names))}"
    nodes = chunk_page(
        page,
        text,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        max_tokens=settings.embed_max_tokens,
    )
    extra = {**metadata, "subdocument_id": doc_id, "subdocument_type": doc_type}
    seen: Counter[str] = Counter()
    for node in nodes:
        node.metadata.update(extra)
        for excluded in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
            excluded.extend(key for key in extra if key not in excluded)
        digest = str(node.metadata["content_hash"])
        node.id_ = str(uuid.uuid5(NAMESPACE, f"{page.id}:{doc_id}:{digest}:{seen[digest]}"))
        seen[digest] += 1
    return nodes
