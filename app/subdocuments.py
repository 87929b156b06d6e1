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

What is embedded: for a comment, the page title and heading path, as for the page's own chunks (a comment
says little without its page, and is short, so a rename re-embeds little). For an attachment, the file name
and the file's own headings only (`embedded_from=1`, key `subdocument_path`): the page title stays in the
stored `title`, `header_path` and the full-text column (`app.db.SEARCH_DOCUMENT`, weights A and B), where
lexical search and readers see it, but not in the vectors. Why: a file is up to ATTACHMENT_MAX_CHARS of
text, a hundred chunks or more, and a page rename would otherwise re-embed every one of them; its own name and
headings are what the file's text is about, and a rename then changes rows' metadata only.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.schema import TextNode

from app.chunking import HEADER_SEPARATOR, NAMESPACE, chunk_page, embed_text
from app.config import Settings
from app.models import Page

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^( {0,3})(#{1,6})(?=[ \t]|$)")
#: The embedded heading path of a sub-document that leaves its locating names out (see `embedded_from`).
EMBED_PATH_KEY = "subdocument_path"


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
    embedded_from: int = 0,
) -> list[TextNode]:
    """Chunks of one sub-document of `page`.

    `path` (1-5 names, e.g. page title and file name) becomes the leading headings; `markdown` is the
    document's text; `metadata` is added to every chunk (file name, media type, author...), none of it
    embedded, so it can change without a re-embed. With `embedded_from` = n > 0 the first n names of `path`
    are stored (`header_path`, `title`) but not embedded: the embedded text is `subdocument_path: <the rest of
    the heading path>` and the chunk, so renaming what those names name re-embeds nothing. Returns [] for a
    document without text.
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
    located = HEADER_SEPARATOR.join(names[:embedded_from]) + HEADER_SEPARATOR if embedded_from > 0 else ""
    seen: Counter[str] = Counter()
    for node in nodes:
        node.metadata.update(extra)
        for excluded in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
            excluded.extend(key for key in extra if key not in excluded)
        if located:
            _embed_without(node, located)
        digest = str(node.metadata["content_hash"])
        node.id_ = str(uuid.uuid5(NAMESPACE, f"{page.id}:{doc_id}:{digest}:{seen[digest]}"))
        seen[digest] += 1
    return nodes


def _embed_without(node: TextNode, located: str) -> None:
    """Embed `node` under its heading path minus the leading `located` names (`subdocument_nodes`'s
    `embedded_from`), re-deriving its `content_hash` from the new embedded text. A heading path that does not
    start with them (clipped for length) is embedded whole: correct, only dearer on a rename."""
    header = str(node.metadata.get("header_path", ""))
    node.metadata[EMBED_PATH_KEY] = header[len(located) :] if header.startswith(located) else header
    node.excluded_embed_metadata_keys = [key for key in node.metadata if key != EMBED_PATH_KEY]
    if EMBED_PATH_KEY not in node.excluded_llm_metadata_keys:  # readers see `title` and `header_path`
        node.excluded_llm_metadata_keys.append(EMBED_PATH_KEY)
    node.metadata["content_hash"] = hashlib.sha256(embed_text(node).encode("utf-8", "surrogatepass")).hexdigest()
