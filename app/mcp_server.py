"""The index as a Model Context Protocol server: assistants search the live wiki and read pages from it.

Built on the official MCP Python SDK's `MCPServer` (the SDK's high-level server; it derives each tool's JSON
schema from the function signature and reports anticipated failures as tool errors the model can read, per
the MCP specification's "Tools" page: `isError: true` results, not protocol errors). Chosen over the low-level
`Server` because every tool here is a plain function of typed arguments; nothing needs hand-written schemas.

Two transports, one server definition:

* stdio: `confluence-vectors mcp` (a desktop assistant starts it as a subprocess); the process opens its own
  `Runtime` (pool, embedder) in the server's lifespan.
* streamable HTTP: mounted in the API at `/mcp` (`mount_http`), behind the same bearer token as `/search`
  (`require_api_token`), sharing the API's `Runtime`.

Tools return bounded text: `search` stops at a caller-set character budget, `get_page` returns one slice of a
page at a time with a cursor for the next one, so a long runbook never floods the model's context.

Identity: every tool asks `caller_person()` who is asking (the `X-Confluence-User` header over HTTP, the
`--as` option on stdio) and hands it to `search_as()`, the one place where permission-aware search (issue 12)
plugs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from cachetools import LRUCache
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from app import __version__
from app.api_auth import is_loopback, require_api_token
from app.errors import ConfluenceVectorsError, EmbeddingError, RetryableError
from app.page_text import Chunk, PageText, assemble, slice_text
from app.runtime import Runtime
from app.search import SearchHit, SearchMode
from app.search_run import run_search
from app.viewer import HEADER as PERSON_HEADER  # the one name, shared with /search
from app.viewer import viewer_principals

MAX_QUERY_CHARS = 1000
MAX_FILTER_CHARS = 255
DEFAULT_SEARCH_CHARS = 8_000
DEFAULT_PAGE_CHARS = 12_000
#: Sections listed in an outline or an error: a 200-section runbook's full outline would itself flood the context.
MAX_OUTLINE = 60
MAX_CHARS = 100_000
_PAGE_ID_IN_URL = (re.compile(r"[?&]pageId=(\d+)"), re.compile(r"/(?:pages|blog/\d{4}/\d{2}/\d{2})/(\d+)(?:[/?#]|$)"))

INSTRUCTIONS = (
    "Search and read the company's Confluence wiki through a live, continuously updated index. Start with "
    "`search` (ranked passages with their page, section and URL); read a whole page with `get_page`, following "
    "`next_cursor` until it is null; `list_spaces` shows which spaces are indexed; `recent_changes` what changed "
    "lately. Cite page URLs when you answer from the wiki."
)


# --- result shapes (each becomes the tool's output schema) -------------------------------------------------
class Passage(BaseModel):
    score: float = Field(description="Relevance; higher is better. Comparable within one result list only.")
    page_id: str
    title: str
    url: str
    space_key: str
    section: str = Field(description="Heading path of the passage inside its page, e.g. 'Install > Linux'.")
    version: int | None = Field(description="Confluence version of the page the passage was indexed from.")
    last_modified: str | None = Field(description="When that version was made (ISO 8601).")
    text: str = Field(description="The passage, Markdown.")


class SearchResult(BaseModel):
    query: str
    passages: list[Passage]
    truncated: bool = Field(description="True when passages were cut or left out to stay within max_chars.")
    omitted: int = Field(description="How many found passages did not fit the character budget.")


class PageSection(BaseModel):
    section: str = Field(description="Heading path; pass it as `section` to get_page to read only that part.")
    chars: int


class PageSlice(BaseModel):
    page_id: str
    title: str
    url: str
    space_key: str
    version: int | None
    last_modified: str | None
    section: str | None = Field(description="The section returned, or null for the whole page.")
    offset: int = Field(description="Character offset of this slice within the page (or section).")
    total_chars: int = Field(description="Length of the whole page (or section) in characters.")
    text: str = Field(description="This slice of the page, Markdown.")
    next_cursor: str | None = Field(description="Pass to get_page as `cursor` for the next slice; null at the end.")
    outline: list[PageSection] = Field(
        description="The page's first sections in reading order (first slice only; at most 60 are listed)."
    )
    sections_total: int = Field(description="How many sections the page has.")


class Space(BaseModel):
    space_key: str
    name: str
    pages: int = Field(description="Indexed pages and blog posts.")
    last_modified: str | None = Field(description="Most recent change among them (ISO 8601).")


class Change(BaseModel):
    page_id: str
    title: str
    url: str
    space_key: str
    version: int | None
    last_modified: str


class RecentChanges(BaseModel):
    since: str
    changes: list[Change]


# --- identity -------------------------------------------------------------------------------------------------
def caller_person(ctx: Context | None, default: str | None) -> str | None:
    """Who the caller acts for: the `X-Confluence-User` header over HTTP (set by a client the API token
    authenticated), else `default` (stdio's `--as`, or None). Blank values count as absent."""
    headers = ctx.headers if ctx is not None else None
    if headers is not None:
        value = headers.get(PERSON_HEADER) or headers.get(PERSON_HEADER.lower())
        if value and value.strip():
            return value.strip()
    return default.strip() if default and default.strip() else None


async def search_as(
    rt: Runtime, person: str | None, query: str, *, k: int, space: str | None, label: str | None, mode: SearchMode
) -> list[SearchHit]:
    """Search on behalf of `person`: the single place where the caller's identity reaches `app.search`.

    Only pages `person` may read are ranked (`app.viewer`, `app.access`); without a person, the operator's
    SEARCH_SERVICE_IDENTITY applies, and without that the search is refused (`PersonRequired`).
    """
    principals = await viewer_principals(rt, person)
    return await run_search(rt, query, principals, k=k, space=space, label=label, mode=mode)


# --- the tools' work, independent of MCP (unit-testable) ------------------------------------------------------
def page_id_from(reference: str) -> str | None:
    """A page id from an id or a Confluence page URL (Cloud `/pages/<id>/…`, Data Center `?pageId=<id>`,
    blog posts `/blog/YYYY/MM/DD/<id>`); None when the reference carries no id (e.g. `/display/KEY/Title`)."""
    reference = reference.strip()
    if reference.isdigit():
        return reference
    for pattern in _PAGE_ID_IN_URL:
        found = pattern.search(reference)
        if found:
            return found[1]
    return None


def within_budget(hits: list[SearchHit], max_chars: int) -> tuple[list[Passage], int, bool]:
    """Passages in rank order while their texts fit `max_chars`; the first is cut to fit if it alone is longer,
    so an answer is never empty when something was found. Returns (passages, omitted, truncated)."""
    passages: list[Passage] = []
    used = 0
    truncated = False
    for hit in hits:
        text = hit.text
        if used + len(text) > max_chars:
            if passages:
                break
            text = text[:max_chars].rstrip() + " …"
            truncated = True
        used += len(text)
        passages.append(
            Passage(
                score=round(hit.score, 6),
                page_id=hit.page_id,
                title=hit.title,
                url=hit.url,
                space_key=hit.space_key,
                section=hit.header_path,
                version=hit.version,
                last_modified=hit.last_modified,
                text=text,
            )
        )
    omitted = len(hits) - len(passages)
    return passages, omitted, truncated or omitted > 0


#: Rebuilt pages by (table, page id, content hash, overlap): paging through a long page rebuilds it once, not
#: once per slice (measured in bench/mcp_context.py). The content hash digests the page's chunk ids, which
#: digest the chunk texts (app/vector_store.py), so an edit is a new key and a stale text is never served;
#: the readability check runs on every call, before the cache is looked at.
_rebuilt_pages: LRUCache[tuple[str, str, str, bool], PageText] = LRUCache(maxsize=32)

#: SQL condition: the page `page_id` is readable by the principal set bound as %(principals)s (NULL: the
#: service account, everything indexed). The rule itself is `cv_may_read` (app/sql/schema.sql, issue 12).
_READABLE = "(%(principals)s::text[] IS NULL OR cv_may_read(%(principals)s::text[], page_id))"


def _principals_param(principals: frozenset[str] | None) -> list[str] | None:
    return sorted(principals) if principals is not None else None


async def readers_principals(rt: Runtime, person: str | None) -> frozenset[str] | None:
    """The caller's principal set (None: the service account's unfiltered view, only when the operator chose
    it), as a tool error the model can read when the person is missing, unknown or cannot be resolved now."""

    try:
        return await viewer_principals(rt, person)
    except ConfluenceVectorsError as exc:
        raise ToolError(str(exc)) from exc


async def load_page(rt: Runtime, reference: str, principals: frozenset[str] | None) -> tuple[dict[str, Any], PageText]:
    """The indexed page `reference` names (id or URL) with its rebuilt Markdown, if `principals` may read it.
    Raises ToolError when the page is not in the index (never indexed, deleted, skipped) or not readable, with
    one message for both, so a caller cannot learn that a page they may not read exists."""
    page_id = page_id_from(reference)
    async with rt.pool.connection() as conn, conn.transaction():
        # One snapshot for the state row and the chunks, so a page written meanwhile is never half-read (and
        # never cached under the other version's content hash).
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = conn.cursor(row_factory=dict_row)
        where = "page_id = %(ref)s" if page_id is not None else "url = %(ref)s"
        await cur.execute(
            f"""SELECT page_id, title, url, space_key, version, last_modified, status, chunk_ids, content_hash
                FROM cv_pages WHERE {where} AND status = 'indexed' AND {_READABLE} LIMIT 1""",
            {"ref": page_id if page_id is not None else reference.strip(), "principals": _principals_param(principals)},
        )
        page = await cur.fetchone()
        if page is None:
            raise ToolError(
                f"page {reference!r} is not in the index, or not readable by you; use `search` to find pages"
            )
        overlap = rt.settings.chunk_overlap > 0
        key = (rt.settings.physical_table, page["page_id"], page["content_hash"], overlap)
        cached = _rebuilt_pages.get(key)
        if cached is not None:
            return page, cached
        await cur.execute(
            sql.SQL(
                """SELECT node_id, text, metadata_ ->> 'header_path' AS header_path FROM {t}
                   WHERE metadata_ ->> 'ref_doc_id' = %s ORDER BY id"""
            ).format(t=sql.Identifier(rt.settings.physical_table)),
            (page["page_id"],),
        )
        rows = await cur.fetchall()
    by_id = {row["node_id"]: row for row in rows}
    order: list[str] = [node for node in page["chunk_ids"] or [] if node in by_id]
    placed = set(order)
    order += [row["node_id"] for row in rows if row["node_id"] not in placed]  # rows written before chunk_ids
    text = assemble([Chunk(by_id[node]["text"], by_id[node]["header_path"] or "") for node in order], overlap=overlap)
    if page["content_hash"] is not None:
        _rebuilt_pages[key] = text
    return page, text


def _cursor_offset(cursor: str | None) -> int:
    if cursor is None or not cursor.strip():
        return 0
    if not cursor.strip().isdigit():
        raise ToolError(f"invalid cursor {cursor!r}: pass the `next_cursor` value of the previous get_page result")
    return int(cursor.strip())


def page_slice(
    page: dict[str, Any], text: PageText, section: str | None, cursor: str | None, max_chars: int
) -> PageSlice:
    """One slice of the page (or of one section) from `cursor`, at most `max_chars` characters."""
    body = text.text
    if section is not None:
        found = text.section(section)
        if found is None:
            paths = [s.header_path for s in text.sections if s.header_path]
            names = ", ".join(repr(p) for p in paths[:MAX_OUTLINE]) + (", …" if len(paths) > MAX_OUTLINE else "")
            raise ToolError(f"page {page['page_id']} has no section {section!r}; its sections: {names}")
        body = found
    offset = _cursor_offset(cursor)
    try:
        piece = slice_text(body, offset, max_chars)
    except ValueError as exc:
        raise ToolError(f"invalid cursor {cursor!r}: {exc}") from exc
    last_modified = page["last_modified"]
    return PageSlice(
        page_id=page["page_id"],
        title=page["title"] or "",
        url=page["url"] or "",
        space_key=page["space_key"] or "",
        version=page["version"],
        last_modified=last_modified.isoformat() if last_modified else None,
        section=section,
        offset=piece.offset,
        total_chars=len(body),
        text=piece.text,
        next_cursor=None if piece.next_offset is None else str(piece.next_offset),
        outline=[PageSection(section=s.header_path, chars=s.end - s.start) for s in text.sections[:MAX_OUTLINE]]
        if offset == 0
        else [],
        sections_total=len(text.sections),
    )


async def indexed_spaces(rt: Runtime, principals: frozenset[str] | None) -> list[Space]:
    """Spaces with indexed pages `principals` may read, counting only those; names come from one chunk per
    space (the space_key index finds it)."""
    async with rt.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            sql.SQL(
                """SELECT p.space_key, p.pages, p.last_modified,
                          (SELECT d.metadata_ ->> 'space_name' FROM {t} AS d
                           WHERE d.metadata_ ->> 'space_key' = p.space_key LIMIT 1) AS name
                   FROM (SELECT space_key, count(*) AS pages, max(last_modified) AS last_modified FROM cv_pages
                         WHERE status = 'indexed' AND space_key IS NOT NULL AND {readable}
                         GROUP BY space_key) AS p
                   ORDER BY p.space_key"""
            ).format(t=sql.Identifier(rt.settings.physical_table), readable=sql.SQL(_READABLE)),
            {"principals": _principals_param(principals)},
        )
        rows = await cur.fetchall()
    return [
        Space(
            space_key=row["space_key"],
            name=row["name"] or row["space_key"],
            pages=int(row["pages"]),
            last_modified=row["last_modified"].isoformat() if row["last_modified"] else None,
        )
        for row in rows
    ]


async def changes_since(
    rt: Runtime, since: datetime, space: str | None, limit: int, principals: frozenset[str] | None
) -> list[Change]:
    """Indexed pages `principals` may read whose current version was made at or after `since`, newest first
    (from `cv_pages`)."""
    async with rt.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"""SELECT page_id, title, url, space_key, version, last_modified FROM cv_pages
               WHERE status = 'indexed' AND last_modified >= %(since)s
                 AND (%(space)s::text IS NULL OR space_key = %(space)s) AND {_READABLE}
               ORDER BY last_modified DESC, page_id LIMIT %(limit)s""",
            {"since": since, "space": space, "limit": limit, "principals": _principals_param(principals)},
        )
        rows = await cur.fetchall()
    return [
        Change(
            page_id=row["page_id"],
            title=row["title"] or "",
            url=row["url"] or "",
            space_key=row["space_key"] or "",
            version=row["version"],
            last_modified=row["last_modified"].isoformat(),
        )
        for row in rows
    ]


def parse_since(value: str | None, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or a relative `7d` / `12h` / `30m`; default 7 days ago."""
    if value is None or not value.strip():
        return now - timedelta(days=7)
    value = value.strip()
    relative = re.fullmatch(r"(\d{1,5})\s*([dhm])", value)
    if relative:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[relative[2]]
        return now - timedelta(**{unit: int(relative[1])})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ToolError(f"since={value!r} is neither an ISO 8601 time nor a duration like '7d', '12h', '30m'") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- the server -----------------------------------------------------------------------------------------------
def build_server(
    runtime: Callable[[], Runtime],
    *,
    default_person: str | None = None,
    lifespan: Callable[[MCPServer[Any]], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> MCPServer[Any]:
    """The MCP server over the index. `runtime()` returns the open `Runtime` at call time (the API's, or the
    one the stdio `lifespan` opens); `default_person` is the identity used when a request names none."""
    server: MCPServer[Any] = MCPServer(
        "confluence-vectors",
        title="Confluence wiki (live index)",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=True)

    @server.tool(
        name="search",
        title="Search the wiki",
        annotations=read_only,
        description=(
            "Find passages of Confluence pages that answer a question or mention a term. Ranks by meaning and by "
            "exact words together (hybrid), so error codes, ticket keys and names are found too. Returns the best "
            "passages first, each with its page title, URL, section, version and last-modified time, trimmed to "
            "`max_chars` characters in total. Use `get_page` to read the surrounding page."
        ),
    )
    async def search_tool(
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for, in plain words.")
        ],
        spaces: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_FILTER_CHARS)]] | None,
            Field(max_length=10, description="Only these space keys (see list_spaces); omit for all spaces."),
        ] = None,
        label: Annotated[
            str | None, Field(min_length=1, max_length=MAX_FILTER_CHARS, description="Only pages with this label.")
        ] = None,
        k: Annotated[int, Field(ge=1, le=50, description="How many passages at most.")] = 8,
        mode: Annotated[
            Literal["hybrid", "vector"],
            Field(description="hybrid (meaning + exact words, default) or vector (meaning)."),
        ] = "hybrid",
        max_chars: Annotated[
            int, Field(ge=200, le=MAX_CHARS, description="Character budget for all passages together.")
        ] = DEFAULT_SEARCH_CHARS,
        ctx: Context | None = None,
    ) -> SearchResult:
        if not query.strip():
            raise ToolError("query must not be blank")
        if "\x00" in query or "\x00" in (label or "") or any("\x00" in s for s in spaces or []):
            raise ToolError("arguments must not contain NUL characters")
        rt = runtime()
        person = caller_person(ctx, default_person)
        try:
            if not spaces:
                hits = await search_as(rt, person, query, k=k, space=None, label=label, mode=SearchMode(mode))
            else:
                # One ranking per space, merged by score: `app.search` filters by one space at a time.
                found = await asyncio.gather(
                    *(
                        search_as(rt, person, query, k=k, space=s, label=label, mode=SearchMode(mode))
                        for s in dict.fromkeys(spaces)
                    )
                )
                hits = sorted((h for hs in found for h in hs), key=lambda h: h.score, reverse=True)[:k]
        except RetryableError as exc:
            raise ToolError(f"search is unavailable right now, try again shortly: {exc}") from exc
        except EmbeddingError as exc:
            raise ToolError(f"the embedding server failed: {exc}") from exc
        except ConfluenceVectorsError as exc:
            raise ToolError(str(exc)) from exc
        passages, omitted, truncated = within_budget(hits, max_chars)
        return SearchResult(query=query.strip(), passages=passages, truncated=truncated, omitted=omitted)

    @server.tool(
        name="get_page",
        title="Read a wiki page",
        annotations=read_only,
        description=(
            "Read one Confluence page from the index as Markdown (headings, tables, code kept), by page id or page "
            "URL. Long pages come in slices of at most `max_chars` characters: call again with `cursor` set to the "
            "previous result's `next_cursor` until it is null. The first slice lists the page's sections; pass one "
            "as `section` to read only that part."
        ),
    )
    async def get_page_tool(
        page: Annotated[
            str, Field(min_length=1, max_length=2000, description="Page id (e.g. '123456') or the page's URL.")
        ],
        section: Annotated[
            str | None, Field(min_length=1, max_length=1000, description="Only this section (a heading path).")
        ] = None,
        cursor: Annotated[str | None, Field(max_length=20, description="`next_cursor` of the previous slice.")] = None,
        max_chars: Annotated[
            int, Field(ge=500, le=MAX_CHARS, description="Most characters to return in this slice.")
        ] = DEFAULT_PAGE_CHARS,
        ctx: Context | None = None,
    ) -> PageSlice:
        rt = runtime()
        principals = await readers_principals(rt, caller_person(ctx, default_person))
        record, text = await load_page(rt, page, principals)
        return page_slice(record, text, section, cursor, max_chars)

    @server.tool(
        name="list_spaces",
        title="List indexed spaces",
        annotations=read_only,
        description="The Confluence spaces in the index: key, name, number of pages, and the latest change.",
    )
    async def list_spaces_tool(ctx: Context | None = None) -> list[Space]:
        rt = runtime()
        return await indexed_spaces(rt, await readers_principals(rt, caller_person(ctx, default_person)))

    @server.tool(
        name="recent_changes",
        title="Recently changed pages",
        annotations=read_only,
        description=(
            "Pages changed since a time, newest first: what was edited or created lately. `since` is an ISO 8601 "
            "time or a duration back from now such as '24h' or '7d' (default '7d')."
        ),
    )
    async def recent_changes_tool(
        since: Annotated[str | None, Field(max_length=64, description="ISO 8601 time, or '30m', '24h', '7d'.")] = None,
        space: Annotated[
            str | None, Field(min_length=1, max_length=MAX_FILTER_CHARS, description="Only this space.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="How many pages at most.")] = 50,
        ctx: Context | None = None,
    ) -> RecentChanges:
        rt = runtime()
        principals = await readers_principals(rt, caller_person(ctx, default_person))
        start = parse_since(since, datetime.now(UTC))
        changes = await changes_since(rt, start, space, limit, principals)
        return RecentChanges(since=start.isoformat(), changes=changes)

    @server.resource(
        "confluence://page/{page_id}",
        name="page",
        title="Confluence page",
        description="A whole indexed page as Markdown (for long pages prefer the get_page tool, which slices).",
        mime_type="text/markdown",
    )
    async def page_resource(page_id: str, ctx: Context) -> str:
        if not page_id.isdigit():
            raise ResourceNotFoundError(f"confluence://page/{page_id}: a page id is digits only")
        rt = runtime()
        try:
            principals = await readers_principals(rt, caller_person(ctx, default_person))
            _, text = await load_page(rt, page_id, principals)
        except ToolError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        return text.text

    return server


def stdio_server(settings: Any, *, person: str | None = None) -> MCPServer[Any]:
    """The server for `confluence-vectors mcp`: opens its own `Runtime` for the session's lifetime."""
    holder: dict[str, Runtime] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        holder["rt"] = await Runtime.open(settings)
        try:
            yield
        finally:
            await holder.pop("rt").close()

    return build_server(lambda: holder["rt"], default_person=person, lifespan=lifespan)


# --- HTTP: mounted in the API ---------------------------------------------------------------------------------
class _RequireApiToken:
    """ASGI guard in front of the MCP endpoint: the same check as `/search` (`require_api_token`), so a client
    without the bearer token learns nothing, not even whether the MCP session would start."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from fastapi import HTTPException
        from fastapi.responses import JSONResponse
        from starlette.requests import Request

        try:
            await require_api_token(Request(scope, receive))
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
            await response(scope, receive, send)
            return
        await self.inner(scope, receive, send)


def mount_http(
    app: Any, runtime: Callable[[], Runtime], *, bind_host: str, token_required: bool, path: str = "/mcp"
) -> Any:
    """Serve the MCP server at `path` of the FastAPI `app` (streamable HTTP), behind the API token.

    Stateless mode (no server-side session between requests): any API replica can answer any request, as for
    `/search`. Returns the SDK's session manager, whose `run()` the app's lifespan must enter (the SDK's
    documented way to mount the transport in another ASGI app).
    """
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Route

    server = build_server(runtime)
    # DNS rebinding lets a web page in the user's browser reach a loopback server under the page's own host
    # name; it matters when nothing else authenticates the caller (no API_TOKEN: loopback clients only), so
    # then the SDK's Host/Origin allow-list applies. With a token the browser never has it, and the Host is the
    # operator's name for the service (a reverse proxy in front of a loopback bind), which the list would refuse.
    protect = is_loopback(bind_host) and not token_required
    security = None if protect else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    transport = server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        json_response=True,
        transport_security=security,
        host="127.0.0.1" if protect else bind_host,
    )
    endpoint = next(r for r in transport.routes if isinstance(r, Route) and r.path == path).endpoint
    app.router.routes.append(Route(path, endpoint=_RequireApiToken(endpoint), methods=["GET", "POST", "DELETE"]))
    return server.session_manager
