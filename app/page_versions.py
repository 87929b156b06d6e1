"""The per-version fields of a page (`version`, `last_modified`, `author`) for readers of the vector table.

Why they are not in the chunk rows: they change on every edit, and a field in every row makes a one-paragraph
edit of a 40-chunk page rewrite all 40 rows (non-HOT updates, each a new HNSW entry) instead of the two or three
whose text changed. They are kept once per page in `cv_pages`, written in the same transaction as the page's
rows, so a reader that joins them in sees the version the rows were built from:

    SELECT d.text, d.metadata_, p.version, p.last_modified, p.author
    FROM data_<table> AS d LEFT JOIN cv_pages AS p ON p.page_id = d.metadata_ ->> 'ref_doc_id'

LlamaIndex readers (a stock `PGVectorStore` retriever) get them with `PageVersions`, a node postprocessor that
does that join for the nodes a retrieval returned, in one query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

#: One query for any number of pages; `page_id = ANY(...)` uses the primary key.
VERSIONS_SQL = "SELECT page_id, version, last_modified, author FROM cv_pages WHERE page_id = ANY(%s)"


def version_fields(version: int | None, last_modified: datetime | None, author: str | None) -> dict[str, Any]:
    """The fields as `app.chunking.version_metadata` shapes them (ISO 8601 in UTC), absent values left out."""
    fields: dict[str, Any] = {}
    if version is not None:
        fields["version"] = int(version)
    if last_modified is not None:
        fields["last_modified"] = last_modified.astimezone(UTC).isoformat()
    if author is not None:
        fields["author"] = author
    return fields


def page_versions(conn: psycopg.Connection[Any], page_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """page id -> its per-version fields, for the pages `cv_pages` knows; one round trip."""
    ids = sorted(set(page_ids))
    if not ids:
        return {}
    rows = conn.execute(VERSIONS_SQL, (ids,)).fetchall()
    return {row[0]: version_fields(row[1], row[2], row[3]) for row in rows}


def apply_versions(nodes: Sequence[NodeWithScore], versions: Mapping[str, Mapping[str, Any]]) -> None:
    """Set each node's per-version metadata from `versions`, keyed by the node's page (`ref_doc_id`)."""
    for hit in nodes:
        page_id = hit.node.ref_doc_id or hit.node.metadata.get("page_id")
        fields = versions.get(str(page_id)) if page_id is not None else None
        if fields:
            hit.node.metadata.update(fields)


class PageVersions(BaseNodePostprocessor):
    """Adds `version`, `last_modified` and `author` to retrieved nodes from `cv_pages`.

    `database_url`: a libpq URL (`postgresql://...`) of the database holding the vector table. Raises
    `psycopg.OperationalError` when it cannot connect (a retrieval without its versions is not silently
    returned as if it had them).
    """

    database_url: str = Field(description="libpq URL of the database holding cv_pages")

    @classmethod
    def class_name(cls) -> str:
        return "PageVersions"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        ids = [str(page) for n in nodes if (page := n.node.ref_doc_id or n.node.metadata.get("page_id"))]
        if not ids:
            return nodes
        with psycopg.connect(self.database_url) as conn:
            apply_versions(nodes, page_versions(conn, ids))
        return nodes
