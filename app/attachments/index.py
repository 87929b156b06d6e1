"""A page's attachments as chunks: list them, reuse what an unchanged version gave, read the rest.

Per attachment, on every job of its page:
- the same id and version as recorded: reuse the recorded Markdown (or the recorded skip) — no download,
  no extraction, and since chunk ids derive from the text, no embedding;
- otherwise: not a media type we take → "unsupported type"; larger than ATTACHMENT_MAX_BYTES by its listed
  size → "too large" without a download; else a streamed download capped at that size (the client's rate
  limit handling and concurrency gate apply), then the extraction in a limited child process.
The record (`cv_attachments`) is written after the page's rows (see `record`), and attachments no longer
listed are forgotten. A skipped attachment never fails the page: the page and its other files are indexed.

Listing sources: Cloud REST v2 "Attachment": `GET /pages/{id}/attachments` (`mediaType`, `fileSize`,
`version.number`, `downloadLink`), cursor pagination; Data Center REST "Content - attachments":
`GET /rest/api/content/{id}/child/attachment?expand=version,metadata,extensions` (`metadata.mediaType`,
`extensions.fileSize`, `_links.download` relative to the base URL).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import TextNode
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app.attachments.extract import LEGACY, LEGACY_REASON, Extraction, extract, media_type_of
from app.config import Settings
from app.confluence import ConfluenceClient, DownloadTooLarge, DownloadUndecodable
from app.models import Attachment, Page
from app.subdocuments import subdocument_nodes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """What we hold for one attachment (a row of `cv_attachments`)."""

    attachment: Attachment
    media_type: str
    status: str  # indexed | skipped
    reason: str | None = None
    detail: str | None = None
    markdown: str | None = None


@dataclass(frozen=True, slots=True)
class AttachmentResult:
    """The chunks of a page's attachments and the records to store once the page's rows are written."""

    nodes: list[TextNode]
    records: list[Record]
    downloaded: int = 0


async def list_attachments(client: ConfluenceClient, page: Page) -> list[Attachment]:
    """The page's current attachments (Cloud v2 or Data Center v1)."""
    found: list[Attachment] = []
    if client.is_cloud:
        collection = "blogposts" if page.content_type == "blogpost" else "pages"
        async for data in client.paginate("v2", f"{collection}/{page.id}/attachments", {"limit": "100"}):
            found += [a for item in _results(data) if (a := _cloud_attachment(client, item))]
        return found
    params = {"expand": "version,metadata,extensions", "limit": "100"}
    async for data in client.paginate("v1", f"content/{page.id}/child/attachment", params):
        found += [a for item in _results(data) if (a := _dc_attachment(client, item))]
    return found


async def attachment_nodes(
    client: ConfluenceClient, settings: Settings, pool: AsyncConnectionPool, page: Page
) -> AttachmentResult:
    """Chunks of every readable attachment of `page` (none when INDEX_ATTACHMENTS is off)."""
    if not settings.index_attachments:
        return AttachmentResult([], [])
    known = await _load(pool, page.id)
    records: list[Record] = []
    downloaded = 0
    for attachment in await list_attachments(client, page):
        previous = known.get(attachment.id)
        if previous is not None and previous.attachment.version == attachment.version:
            records.append(Record(attachment, previous.media_type, previous.status, previous.reason,
                                  previous.detail, previous.markdown))  # fmt: skip
            continue
        record, fetched = await _read(client, settings, attachment)
        downloaded += fetched
        records.append(record)
    nodes = [node for record in records if record.status == "indexed" for node in _nodes(settings, page, record)]
    return AttachmentResult(nodes, records, downloaded)


async def record(pool: AsyncConnectionPool, page_id: str, records: Sequence[Record]) -> None:
    """Store the page's attachment records, forgetting attachments it no longer has, in one transaction."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM cv_attachments WHERE page_id = %s AND NOT (attachment_id = ANY(%s))",
            (page_id, [r.attachment.id for r in records]),
        )
        for r in records:
            a = r.attachment
            await conn.execute(
                """INSERT INTO cv_attachments (page_id, attachment_id, version, file_name, media_type, size_bytes,
                                              status, reason, detail, markdown, updated_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
                   ON CONFLICT (page_id, attachment_id) DO UPDATE SET version = EXCLUDED.version,
                       file_name = EXCLUDED.file_name, media_type = EXCLUDED.media_type,
                       size_bytes = EXCLUDED.size_bytes, status = EXCLUDED.status, reason = EXCLUDED.reason,
                       detail = EXCLUDED.detail, markdown = EXCLUDED.markdown,
                       updated_at = CASE WHEN cv_attachments.version = EXCLUDED.version
                                         THEN cv_attachments.updated_at ELSE now() END""",
                (page_id, a.id, a.version, a.title, r.media_type, a.size, r.status, r.reason, r.detail, r.markdown),
            )


async def skipped(pool: AsyncConnectionPool, *, limit: int = 50) -> list[dict[str, Any]]:
    """Skipped attachments of pages we hold, newest first, for `status`."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT a.page_id, a.attachment_id, a.file_name, a.media_type, a.size_bytes, a.reason, a.detail,
                      a.updated_at::text AS updated_at
               FROM cv_attachments a JOIN cv_pages p USING (page_id)
               WHERE a.status = 'skipped' AND p.status = 'indexed'
               ORDER BY a.updated_at DESC, a.attachment_id LIMIT %s""",
            (limit,),
        )
        return list(await cur.fetchall())


async def _read(client: ConfluenceClient, settings: Settings, attachment: Attachment) -> tuple[Record, int]:
    media_type = media_type_of(attachment.media_type, attachment.title)
    taken = {t.lower() for t in settings.attachment_media_types}
    cap = settings.attachment_max_bytes
    if media_type in LEGACY:  # said before "unsupported type": the reason tells the owner what to do
        return Record(attachment, media_type, "skipped", LEGACY_REASON, LEGACY[media_type]), 0
    if media_type not in taken:
        return Record(attachment, media_type, "skipped", "unsupported type", media_type), 0
    if attachment.size is not None and attachment.size > cap:
        return Record(attachment, media_type, "skipped", "too large", f"{attachment.size} bytes > {cap}"), 0
    try:
        data = await client.download(attachment.download_url, cap)
    except DownloadTooLarge as exc:
        return Record(attachment, media_type, "skipped", "too large", str(exc)), 1
    except DownloadUndecodable as exc:
        return Record(attachment, media_type, "skipped", "corrupt", str(exc)), 1
    result: Extraction = await extract(
        data,
        media_type,
        max_chars=settings.attachment_max_chars,
        timeout=settings.attachment_timeout,
        memory_mb=settings.attachment_memory_mb,
    )
    if result.markdown is None or not result.markdown.strip():
        reason = result.reason or "no text"
        log.info("attachment skipped", extra={"attachment_id": attachment.id, "reason": reason})
        return Record(attachment, media_type, "skipped", reason, result.detail), 1
    return Record(attachment, media_type, "indexed", markdown=result.markdown), 1


def _nodes(settings: Settings, page: Page, record: Record) -> list[TextNode]:
    a = record.attachment
    metadata = {
        "file_name": a.title,
        "media_type": record.media_type,
        "attachment_id": a.id,
        "attachment_version": a.version,
        "download_url": a.download_url,
    }
    return subdocument_nodes(
        page,
        settings,
        doc_id=f"{page.id}/attachment/{a.id}",
        doc_type="attachment",
        path=[page.title, a.title],
        markdown=record.markdown or "",
        metadata=metadata,
        embedded_from=1,  # the page title is stored, not embedded: a rename re-embeds none of the file
    )


async def _load(pool: AsyncConnectionPool, page_id: str) -> dict[str, Record]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM cv_attachments WHERE page_id = %s", (page_id,))
        rows = await cur.fetchall()
    return {
        row["attachment_id"]: Record(
            Attachment(
                row["attachment_id"], row["file_name"], row["media_type"], row["version"], row["size_bytes"], ""
            ),
            row["media_type"],
            row["status"],
            row["reason"],
            row["detail"],
            row["markdown"],
        )
        for row in rows
    }


def _cloud_attachment(client: ConfluenceClient, item: Mapping[str, Any]) -> Attachment | None:
    links = _object(item.get("_links"))
    link = item.get("downloadLink") or links.get("download")
    if not item.get("id") or not isinstance(link, str):
        return None
    return Attachment(
        id=str(item["id"]),
        title=str(item.get("title") or ""),
        media_type=str(item.get("mediaType") or "application/octet-stream"),
        version=_int(_object(item.get("version")).get("number")),
        size=_size(item.get("fileSize")),
        download_url=client.absolute(link),
        comment=str(item["comment"]) if item.get("comment") else None,
    )


def _dc_attachment(client: ConfluenceClient, item: Mapping[str, Any]) -> Attachment | None:
    link = _object(item.get("_links")).get("download")
    if not item.get("id") or not isinstance(link, str):
        return None
    metadata = _object(item.get("metadata"))
    return Attachment(
        id=str(item["id"]),
        title=str(item.get("title") or ""),
        media_type=str(metadata.get("mediaType") or "application/octet-stream"),
        version=_int(_object(item.get("version")).get("number")),
        size=_size(_object(item.get("extensions")).get("fileSize")),
        download_url=client.absolute(link),
        comment=str(metadata["comment"]) if metadata.get("comment") else None,
    )


def _results(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = data.get("results")
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _size(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None
