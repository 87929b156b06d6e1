"""A page's comments: fetched from Confluence, and turned into chunks stored with the page's rows.

Footer comments and open inline comments are indexed (each its own document, `app.subdocuments`); an inline
comment carries the page passage it is anchored to, so a search for that passage finds the discussion.
Resolved (and dangling: the anchor text is gone) inline comments are left out: the thread is closed and its
advice usually no longer applies. Sources:

- Cloud REST v2 "Comment": `GET /pages/{id}/footer-comments` and `/pages/{id}/inline-comments` (also under
  `/blogposts/{id}/`) return the *root* comments only; replies come from `GET /footer-comments/{comment-id}/
  children` and `/inline-comments/{comment-id}/children` (one list per comment, and a reply can have replies),
  each with `parentCommentId`. `body-format=storage`, cursor pagination through `_links.next`; an inline
  comment has `resolutionStatus` (open, reopened, resolved, dangling) and `properties.inlineOriginalSelection`;
  authors and dates are on `version` (`authorId`, `createdAt`). One comment, with its container (`pageId` or
  `blogPostId`): `GET /footer-comments/{comment-id}`, `/inline-comments/{comment-id}`.
- Data Center REST "Content - children and descendants": `GET /rest/api/content/{id}/child/comment` with
  `expand=body.storage,version,history,extensions.inlineProperties,extensions.resolution` and `depth=all`
  (replies included); `extensions.location` is `inline` or `footer`, `extensions.resolution.status` is
  `open`/`resolved`/`reopened`, `extensions.inlineProperties.originalSelection` the anchored text. One comment,
  with the page or blog post it is on: `GET /rest/api/content/{id}?expand=container` ("Content - Get content
  by ID"; `container` is the comment's page).

A reply belongs to its thread: it is indexed while the thread is (a reply under a resolved inline comment is
left out with it) and carries the passage the thread is anchored to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from llama_index.core.schema import TextNode
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.confluence import CQL_BATCH, CQL_TZ_SLACK, ConfluenceClient
from app.convert import storage_to_markdown, user_refs
from app.convert_macros import escape_line_starts, quote
from app.errors import PageNotFound
from app.models import Comment, Page
from app.subdocuments import subdocument_nodes

_OPEN = {"open", "reopened", ""}
_PAGE_SIZE = "100"  # v2 comment lists: limit 1-250 (default 25); v1 child lists: at most 100 per answer
#: Reply levels followed below a root comment. Each level costs one call per comment of the level above (v2 has
#: no "replies included" list); Confluence's own UI nests replies a few levels deep, and a cycle in a broken
#: answer must not loop.
MAX_REPLY_DEPTH = 16


async def fetch_comments(client: ConfluenceClient, page: Page) -> list[Comment]:
    """Every comment on `page` (footer and inline, open and resolved), in the order Confluence lists them.

    Raises the client's errors (ConfluenceUnavailable, ConfluenceAuthError...); PageNotFound if the page
    went away between the two calls, which the job's retry resolves."""
    comments: list[Comment] = []
    if client.is_cloud:
        collection = "blogposts" if page.content_type == "blogpost" else "pages"
        for kind in ("footer", "inline"):
            roots = await _cloud_list(client, f"{collection}/{page.id}/{kind}-comments", kind)
            comments += roots + await _cloud_replies(client, roots, kind)
        authors = await client.resolve_users(c.author for c in comments if c.author)
        return [_named(c, authors) for c in comments]
    params = {
        "expand": "body.storage,version,history,ancestors,extensions.inlineProperties,extensions.resolution",
        "depth": "all",
        "limit": _PAGE_SIZE,
    }
    async for data in client.paginate("v1", f"content/{page.id}/child/comment", params):
        comments += [parse_dc_comment(item) for item in _results(data)]
    return threaded(comments)


def threaded(comments: Sequence[Comment]) -> list[Comment]:
    """`comments` (a flat list naming each reply's `parent_id`, as Data Center's `depth=all` gives it) with
    every reply made part of its thread: the kind and anchored passage of its inline root, and closed when an
    inline comment above it is resolved. Order kept; a parent not in the list (or a cycle) ends the walk."""
    by_id = {c.id: c for c in comments}
    out: list[Comment] = []
    for comment in comments:
        thread = comment
        chain: list[Comment] = []
        parent = by_id.get(comment.parent_id or "")
        while parent is not None and len(chain) < MAX_REPLY_DEPTH and parent.id != comment.id:
            chain.append(parent)
            parent = by_id.get(parent.parent_id or "")
        for above in chain:  # nearest first
            thread = _in_thread(thread, above)
        if chain and chain[-1].kind == "inline":
            thread = Comment(**{**_fields(thread), "kind": "inline"})
        out.append(thread)
    return out


async def _cloud_list(client: ConfluenceClient, path: str, kind: str) -> list[Comment]:
    """Every comment of one v2 list (root comments of a page, or one comment's replies), all pages of it."""
    found: list[Comment] = []
    async for data in client.paginate("v2", path, {"body-format": "storage", "limit": _PAGE_SIZE}):
        found += [parse_cloud_comment(item, kind) for item in _results(data)]
    return found


async def _cloud_replies(client: ConfluenceClient, roots: Sequence[Comment], kind: str) -> list[Comment]:
    """The replies below `roots`, level by level (each level's lists fetched together; the client's
    concurrency gate bounds them), in thread order. Replies inherit their thread's anchored passage and,
    for inline threads, its resolution: Cloud marks the root comment resolved, the thread is what closes."""
    replies: list[Comment] = []
    seen = {c.id for c in roots}
    level = list(roots)
    for _ in range(MAX_REPLY_DEPTH):
        if not level:
            break
        lists = await asyncio.gather(*(_cloud_list(client, f"{kind}-comments/{c.id}/children", kind) for c in level))
        below: list[Comment] = []
        for parent, children in zip(level, lists, strict=True):
            for child in children:
                if child.id and child.id not in seen:
                    seen.add(child.id)
                    below.append(_in_thread(child, parent))
        replies += below
        level = below
    return replies


def _in_thread(reply: Comment, parent: Comment) -> Comment:
    return Comment(**{
        **_fields(reply),
        "parent_id": reply.parent_id or parent.id,
        "highlighted": reply.highlighted or parent.highlighted,
        "resolved": reply.resolved or parent.resolved,
    })  # fmt: skip


async def comment_container(client: ConfluenceClient, comment_id: str) -> tuple[str, str] | None:
    """The (content id, "page" | "blogpost") a comment is on, or None when Confluence shows no such comment
    (removed, or never visible to us). For webhooks that name only the comment.

    Data Center: `GET /rest/api/content/{id}?expand=container`. Cloud: `GET /footer-comments/{id}`, then
    `/inline-comments/{id}` (v2 has no kind-free comment read), `pageId` or `blogPostId`; a comment on an
    attachment or custom content has neither and gives None. Raises the client's errors
    (ConfluenceUnavailable, ConfluenceAuthError...) other than not-found."""
    if client.is_cloud:
        for kind in ("footer", "inline"):
            try:
                data = await client.get_json("v2", f"{kind}-comments/{comment_id}")
            except PageNotFound:
                continue
            for key, content_type in (("pageId", "page"), ("blogPostId", "blogpost")):
                if _text(data.get(key)):
                    return str(data[key]).strip(), content_type
            return None
        return None
    try:
        data = await client.get_json("v1", f"content/{comment_id}", {"expand": "container"})
    except PageNotFound:
        return None
    container = _object(data.get("container"))
    kind = str(container.get("type") or "")
    if kind in ("page", "blogpost") and _text(container.get("id")):
        return str(container["id"]).strip(), kind
    return None


async def pages_with_changed_children(client: ConfluenceClient, since: datetime) -> list[tuple[str, str]]:
    """(content id, "page" | "blogpost") of every page or blog post with a comment or attachment created or
    edited at or after `since`, each once, for reconciliation: neither changes its page's version, so the
    page listing (which skips versions we hold) cannot see them, and Cloud does not retry a lost webhook.

    One v1 CQL search (both products: "Search content by CQL", `type in (comment, attachment)` and
    `lastmodified`, `expand=container,version`): CQL compares dates in the searching user's time zone, so the
    query starts `CQL_TZ_SLACK` early and `version.when` is checked here. Removed comments and attachments are
    in no list; the page's next job (any event, or the sync's rotating existence check) drops their rows."""
    start = (since - CQL_TZ_SLACK).astimezone(UTC)
    cql = f'type in (comment, attachment) and lastmodified >= "{start:%Y-%m-%d %H:%M}" order by created asc'
    params = {"cql": cql, "expand": "container,version", "limit": str(CQL_BATCH)}
    cut = since if since.tzinfo else since.replace(tzinfo=UTC)
    found: dict[str, str] = {}
    async for data in client.paginate("v1", "content/search", params):
        for item in _results(data):
            when = _when(_object(item.get("version")).get("when"))
            container = _object(item.get("container"))
            kind = str(container.get("type") or "")
            if (when is None or when >= cut) and kind in ("page", "blogpost") and _text(container.get("id")):
                found.setdefault(str(container["id"]).strip(), kind)
    return list(found.items())


async def indexed_comment_page(pool: AsyncConnectionPool, table: str, comment_id: str) -> tuple[str, str] | None:
    """The (page id, content type) whose rows in `table` (the physical vector table, `data_<name>`) hold
    comment `comment_id`, or None. For a comment Confluence no longer shows (removed): its page's next job
    drops its rows. A scan of `metadata_` (no index on `comment_id`): only an id-only comment webhook whose
    comment is gone pays it."""
    query = sql.SQL(
        "SELECT metadata_ ->> 'page_id', metadata_ ->> 'content_type' FROM {t}"
        " WHERE metadata_ ->> 'comment_id' = %s LIMIT 1"
    ).format(t=sql.Identifier(table))
    async with pool.connection() as conn:
        row = await (await conn.execute(query, (comment_id,))).fetchone()
    if row is None or not row[0]:
        return None
    return str(row[0]), "blogpost" if row[1] == "blogpost" else "page"


def parse_cloud_comment(item: Mapping[str, Any], kind: str) -> Comment:
    """One v2 footer/inline comment object. `author` is the account id until `fetch_comments` names it."""
    version = _object(item.get("version"))
    properties = _object(item.get("properties"))
    status = str(item.get("resolutionStatus") or "").lower()
    return Comment(
        id=str(item.get("id", "")),
        kind="inline" if kind == "inline" else "footer",
        body_storage=str(_object(_object(item.get("body")).get("storage")).get("value") or ""),
        version=_int(version.get("number")),
        author=_text(version.get("authorId")),
        created=_when(version.get("createdAt")),
        highlighted=_text(properties.get("inlineOriginalSelection") or properties.get("inline-original-selection")),
        resolved=kind == "inline" and status not in _OPEN,
        parent_id=_text(item.get("parentCommentId")),
    )


def parse_dc_comment(item: Mapping[str, Any]) -> Comment:
    """One v1 comment (`child/comment` with the expansions `fetch_comments` asks for)."""
    extensions = _object(item.get("extensions"))
    history = _object(item.get("history"))
    creator = _object(history.get("createdBy"))
    inline = str(extensions.get("location") or "").lower() == "inline"
    status = str(_object(extensions.get("resolution")).get("status") or "").lower()
    # `ancestors` (root first) of a reply are the comments it answers; the page is the `container`, but a
    # non-comment ancestor is skipped rather than taken for a parent comment.
    ancestors = item.get("ancestors")
    comments_above = (
        [a for a in ancestors if _object(a).get("type", "comment") == "comment"] if isinstance(ancestors, list) else []
    )
    parent = comments_above[-1] if comments_above else None
    return Comment(
        id=str(item.get("id", "")),
        kind="inline" if inline else "footer",
        body_storage=str(_object(_object(item.get("body")).get("storage")).get("value") or ""),
        version=_int(_object(item.get("version")).get("number")),
        author=_text(creator.get("displayName") or creator.get("username")),
        created=_when(history.get("createdDate")),
        highlighted=_text(_object(extensions.get("inlineProperties")).get("originalSelection")),
        resolved=inline and status not in _OPEN,
        parent_id=_text(_object(parent).get("id")) if parent else None,
    )


def indexed(comments: Sequence[Comment]) -> list[Comment]:
    """The comments we index: all footer comments and the inline ones still open."""
    return [c for c in comments if not c.resolved and c.id]


async def comment_nodes(client: ConfluenceClient, settings: Settings, page: Page) -> list[TextNode]:
    """The chunks of every indexed comment of `page` ([] when INDEX_COMMENTS is off)."""
    if not settings.index_comments:
        return []
    comments = indexed(await fetch_comments(client, page))
    users = await client.resolve_users({ref for c in comments for ref in user_refs(c.body_storage)})
    return [node for c in comments for node in nodes_for_comment(page, settings, c, users)]


def nodes_for_comment(page: Page, settings: Settings, comment: Comment, users: Mapping[str, str]) -> list[TextNode]:
    """One comment as chunks under `page title > <kind> comment by <author> on <date>`."""
    body = storage_to_markdown(comment.body_storage, users=users)
    blocks = []
    if comment.kind == "inline" and comment.highlighted:
        blocks.append(quote([escape_line_starts(" ".join(comment.highlighted.split()))]))
    blocks.append(body)
    label = "Reply" if comment.parent_id else "Inline comment" if comment.kind == "inline" else "Comment"
    author = comment.author or "unknown author"
    when = f" on {comment.created.date().isoformat()}" if comment.created else ""
    metadata: dict[str, Any] = {
        "comment_id": comment.id,
        "comment_type": comment.kind,
        "comment_author": comment.author,
        "comment_created": comment.created.isoformat() if comment.created else None,
        "comment_version": comment.version,
        "highlighted_text": comment.highlighted if comment.kind == "inline" else None,
    }
    return subdocument_nodes(
        page,
        settings,
        doc_id=f"{page.id}/comment/{comment.id}",
        doc_type="comment",
        path=[page.title, f"{label} by {author}{when}"],
        markdown="\n\n".join(block for block in blocks if block.strip()),
        metadata=metadata,
    )


def _named(comment: Comment, authors: Mapping[str, str]) -> Comment:
    if comment.author and comment.author in authors:
        return Comment(**{**_fields(comment), "author": authors[comment.author]})
    return comment


def _fields(comment: Comment) -> dict[str, Any]:
    return {name: getattr(comment, name) for name in Comment.__slots__}


def _results(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = data.get("results")
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _when(value: Any) -> datetime | None:
    """ISO 8601 (v2 `createdAt`, v1 `createdDate`), `Z` accepted; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
