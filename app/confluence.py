"""The one way the service talks to Confluence: Cloud (v2 API + a little v1) and Data Center (v1 API).

Everything the pipeline needs from Confluence goes through `ConfluenceClient`, so timeouts, the concurrency
limit, retries with `Retry-After` and the translation of HTTP failures into our error tree happen in exactly
one place. Response shapes are read by `app.confluence_parse`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from app.config import Deployment, Settings
from app.confluence_parse import (
    JSON,
    CloudContent,
    SpaceInfo,
    as_object,
    build_cloud_page,
    dc_ancestor_ids,
    has_read_restrictions,
    next_url,
    parse_ancestor_ids,
    parse_cloud_content,
    parse_cloud_refs,
    parse_cloud_space,
    parse_cloud_users,
    parse_dc_page,
    parse_dc_space_keys,
    parse_dc_user,
    parse_label_names,
    parse_search_refs,
    parse_titles,
    results,
)
from app.errors import ConfluenceAuthError, ConfluenceProtocolError, ConfluenceUnavailable, PageNotFound
from app.models import ContentType, Page, PageRef
from app.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

Params = dict[str, str] | list[tuple[str, str | int | float | bool | None]]
RetryHook = Callable[[int, float], None]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

#: v2 lists accept at most 250 ids or results per request; v1 search and user bulk are kept smaller so the
#: URL stays well below proxy limits.
V2_BATCH = 250
CQL_BATCH = 100
SPACE_BATCH = 100
USER_BATCH = 100
KINDS: tuple[tuple[str, ContentType], ...] = (("pages", "page"), ("blogposts", "blogpost"))
#: Statuses asked for when fetching one page, so a trashed or archived page comes back (and is deleted from
#: the index) instead of looking like a 404.
ANY_STATUS = "current,archived,trashed,deleted"
#: CQL dates are read in the calling user's profile time zone, which we cannot know: the query is widened
#: by a day (more than any UTC offset) and the exact cut is made on our side.
CQL_TZ_SLACK = timedelta(days=1)


class _TtlCache(Generic[T]):
    """A dict whose entries expire: space names and ancestor titles change rarely, but do change."""

    def __init__(self, ttl: float = 600.0) -> None:
        self._ttl = ttl
        self._items: dict[str, tuple[float, T]] = {}

    def get(self, key: str) -> T | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, value: T) -> None:
        self._items[key] = (time.monotonic() + self._ttl, value)


class _BearerAuth(httpx.Auth):
    """Data Center personal access token; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"


class _Transient(Exception):
    """One failed attempt that may succeed if repeated (internal to the retry loop)."""

    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.retry_after, self.detail = status, retry_after, detail


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _cql_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class ConfluenceClient:
    """An async client for one Confluence site; use one per worker and close it (`async with`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: RetryHook | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self._cloud = settings.deployment == Deployment.CLOUD
        self._base = settings.confluence_base_url
        self._max_retries = settings.confluence_max_retries
        self._backoff = backoff or Backoff(base=0.5, cap=settings.confluence_max_backoff)
        self._on_retry, self._sleep = on_retry, sleep
        self._gate = asyncio.Semaphore(settings.confluence_max_concurrency)
        self._fix = "CONFLUENCE_EMAIL and CONFLUENCE_API_TOKEN" if self._cloud else "CONFLUENCE_PAT"
        self._http = httpx.AsyncClient(
            auth=self._auth(settings),
            timeout=httpx.Timeout(settings.confluence_timeout),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._users: dict[str, str | None] = {}
        self._spaces: _TtlCache[SpaceInfo] = _TtlCache()
        self._titles: _TtlCache[str] = _TtlCache()

    def _auth(self, settings: Settings) -> httpx.Auth | None:
        if self._cloud and settings.confluence_email and settings.confluence_api_token:
            return httpx.BasicAuth(settings.confluence_email, settings.confluence_api_token.get_secret_value())
        if not self._cloud and settings.confluence_pat:
            return _BearerAuth(settings.confluence_pat.get_secret_value())
        return None

    def __repr__(self) -> str:
        kind = "cloud" if self._cloud else "datacenter"
        return f"ConfluenceClient({self._base!r}, {kind})"

    async def __aenter__(self) -> ConfluenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- public API ---------------------------------------------------------------------------------------
    async def get_page(self, page_id: str, content_type: ContentType | None = None) -> Page:
        """The page or blog post as Confluence has it now, in whatever status (trashed pages included).

        Raises PageNotFound when it is gone (purged) or invisible to us. Without `content_type` a Cloud
        lookup tries pages, then blog posts, because webhooks do not always say which one changed.
        """
        if not self._cloud:
            return await self._dc_page(page_id)
        if content_type is not None:
            return await self._cloud_page(page_id, content_type)
        try:
            return await self._cloud_page(page_id, "page")
        except PageNotFound:
            return await self._cloud_page(page_id, "blogpost")

    async def resolve_users(self, ids: Iterable[str]) -> dict[str, str]:
        """Display names for Cloud account ids / Data Center user keys (or usernames); unknown ids omitted.

        Answers, misses included, are cached for the client's life, so a backfill asks once per author.
        """
        wanted = sorted({i for i in ids if i} - self._users.keys())
        if wanted and self._cloud:
            for batch in _batches(wanted, USER_BATCH):
                found = await self._cloud_users(batch)
                self._users.update({i: found.get(i) for i in batch})
        elif wanted:
            names = await asyncio.gather(*(self._dc_user(i) for i in wanted))
            self._users.update(zip(wanted, names, strict=True))
        return {i: name for i in ids if (name := self._users.get(i)) is not None}

    async def iter_pages(
        self, space_keys: Sequence[str] | None = None, *, since: datetime | None = None
    ) -> AsyncIterator[PageRef]:
        """Every current page and blog post (of these spaces; all when None), yielded as each page arrives.

        `since` keeps only content modified at or after it; that needs CQL (v1 search, both products).
        """
        if space_keys is not None and not space_keys:
            return
        if since is None and self._cloud:
            async for ref in self._cloud_refs(space_keys):
                yield ref
            return
        cut = _aware(since) if since is not None else None
        async for ref in self._cql_refs(self._listing_cql(space_keys, cut)):
            if cut is None or ref.last_modified is None or ref.last_modified >= cut:
                yield ref

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are current pages or blog posts we can still see (for deletes without a webhook)."""
        unique = sorted(set(ids))
        found: set[str] = set()
        if self._cloud:
            for batch in _batches(unique, V2_BATCH):
                params = {"id": ",".join(batch), "status": "current", "limit": str(V2_BATCH)}
                for kind in ("pages", "blogposts"):
                    async for data in self._paginate(self._v2(kind), params):
                        found.update(str(item.get("id")) for item in results(data))
        else:
            for batch in _batches(unique, CQL_BATCH):
                cql = f"type in (page, blogpost) and id in ({', '.join(map(_cql_quote, batch))})"
                async for ref in self._cql_refs(cql):
                    found.add(ref.id)
        return found & set(unique)

    async def check_credentials(self) -> None:
        """Fail fast at startup: ConfluenceAuthError if our credentials are refused (or we are anonymous)."""
        data = await self._get_json(self._v1("user/current"))
        if data.get("type") == "anonymous":
            raise ConfluenceAuthError(f"Confluence treats us as anonymous: check {self._fix}")

    async def list_space_keys(self) -> list[str]:
        """Keys of every current space we can see."""
        if self._cloud:
            return [space.key for space in await self._cloud_spaces(None)]
        keys: list[str] = []
        async for data in self._paginate(self._v1("space"), {"limit": "100", "status": "current"}):
            keys.extend(parse_dc_space_keys(data))
        return keys

    # --- Cloud --------------------------------------------------------------------------------------------
    async def _cloud_page(self, page_id: str, content_type: ContentType) -> Page:
        kind = "pages" if content_type == "page" else "blogposts"
        params = {"body-format": "storage", "include-labels": "true", "status": ANY_STATUS}
        data = await self._get_json(self._v2(f"{kind}/{quote(page_id, safe='')}"), params)
        content = parse_cloud_content(data, content_type)
        if content.status != "current":  # the caller only deletes it: skip the lookups that would 404
            space = await self._cloud_space(content.space_id)
            return build_cloud_page(content, space=space, base_url=self._base)
        try:
            return await self._complete_cloud_page(content, kind)
        except PageNotFound as exc:
            raise ConfluenceUnavailable(f"page {page_id} changed while being read; try again") from exc

    async def _complete_cloud_page(self, content: CloudContent, kind: str) -> Page:
        """Space, breadcrumb, author name, restrictions and all labels: v2 gives only ids for these."""
        ancestor_ids: list[str] = []
        if content.content_type == "page":
            ancestor_ids = parse_ancestor_ids(await self._get_json(self._v2(f"pages/{content.id}/ancestors")))
        space, titles, users, restricted, labels = await asyncio.gather(
            self._cloud_space(content.space_id),
            self._page_titles(ancestor_ids),
            self.resolve_users([content.author_id] if content.author_id else []),
            self._any_restricted([content.id, *ancestor_ids]),
            self._all_labels(content, kind),
        )
        return build_cloud_page(
            content,
            space=space,
            base_url=self._base,
            ancestors=[titles[i] for i in ancestor_ids if i in titles],
            author=users.get(content.author_id or ""),
            restricted=restricted,
            labels=labels,
        )

    async def _all_labels(self, content: CloudContent, kind: str) -> list[str]:
        """`include-labels` stops at 50; a page with more is listed in full."""
        if content.labels_complete:
            return list(content.labels)
        labels: list[str] = []
        async for data in self._paginate(self._v2(f"{kind}/{content.id}/labels"), {"limit": "250"}):
            labels.extend(parse_label_names(data))
        return labels

    async def _cloud_space(self, space_id: str) -> SpaceInfo:
        space = self._spaces.get(space_id)
        if space is None:
            space = parse_cloud_space(await self._get_json(self._v2(f"spaces/{quote(space_id, safe='')}")))
            self._spaces.put(space_id, space)
        return space

    async def _cloud_spaces(self, keys: Sequence[str] | None) -> list[SpaceInfo]:
        """Current spaces (with these keys), cached by id for naming the spaces of listed pages."""
        spaces: list[SpaceInfo] = []
        for batch in [None] if keys is None else _batches(list(keys), SPACE_BATCH):
            params = {"limit": str(V2_BATCH), "status": "current"}
            if batch is not None:
                params["keys"] = ",".join(batch)
            async for data in self._paginate(self._v2("spaces"), params):
                spaces.extend(parse_cloud_space(item) for item in results(data))
        for space in spaces:
            self._spaces.put(space.id, space)
        return spaces

    async def _page_titles(self, page_ids: Sequence[str]) -> dict[str, str]:
        missing = [i for i in page_ids if self._titles.get(i) is None]
        for batch in _batches(missing, V2_BATCH):
            params = {"id": ",".join(batch), "limit": str(V2_BATCH)}
            async for data in self._paginate(self._v2("pages"), params):
                for page_id, title in parse_titles(data).items():
                    self._titles.put(page_id, title)
        return {i: cached for i in page_ids if (cached := self._titles.get(i)) is not None}

    async def _any_restricted(self, content_ids: Sequence[str]) -> bool:
        """Read restrictions anywhere on the path from the root: they are inherited by every descendant."""
        answers = await asyncio.gather(*(self._restricted(i) for i in content_ids))
        return any(answers)

    async def _restricted(self, content_id: str) -> bool:
        path = f"content/{quote(content_id, safe='')}/restriction/byOperation/read"
        return has_read_restrictions(await self._get_json(self._v1(path)))

    async def _cloud_users(self, account_ids: Sequence[str]) -> dict[str, str]:
        params: Params = [*(("accountId", i) for i in account_ids), ("limit", str(USER_BATCH))]
        return parse_cloud_users(await self._get_json(self._v1("user/bulk"), params))

    async def _cloud_refs(self, space_keys: Sequence[str] | None) -> AsyncIterator[PageRef]:
        spaces = await self._cloud_spaces(space_keys)
        keys_by_id = {space.id: space.key for space in spaces}
        if not spaces:
            return
        id_batches: list[Sequence[str] | None] = [None]
        if space_keys is not None:
            id_batches = list(_batches(sorted(keys_by_id), SPACE_BATCH))
        for kind, content_type in KINDS:
            for batch in id_batches:
                params = {"status": "current", "limit": str(V2_BATCH)}
                if batch is not None:
                    params["space-id"] = ",".join(batch)
                async for data in self._paginate(self._v2(kind), params):
                    for ref in parse_cloud_refs(data, content_type, keys_by_id):
                        yield ref

    # --- Data Center --------------------------------------------------------------------------------------
    async def _dc_page(self, page_id: str) -> Page:
        expand = (
            "body.storage,version,space,history,ancestors,metadata.labels,"
            "restrictions.read.restrictions.user,restrictions.read.restrictions.group"
        )
        url = self._v1(f"content/{quote(page_id, safe='')}")
        data = await self._get_json(url, {"expand": expand, "status": "any"})
        ancestors_restricted = False
        if data.get("status") == "current":
            try:
                ancestors_restricted = await self._any_restricted(dc_ancestor_ids(data))
            except PageNotFound as exc:
                raise ConfluenceUnavailable(f"page {page_id} changed while being read; try again") from exc
        return parse_dc_page(data, base_url=self._base, ancestors_restricted=ancestors_restricted)

    async def _dc_user(self, user_id: str) -> str | None:
        """Data Center names a user by key or by username; try the key first, as page versions carry it."""
        for field in ("key", "username"):
            try:
                return parse_dc_user(await self._get_json(self._v1("user"), {field: user_id}))
            except PageNotFound:
                continue
        return None

    # --- CQL (v1 search, both products) --------------------------------------------------------------------
    @staticmethod
    def _listing_cql(space_keys: Sequence[str] | None, since: datetime | None) -> str:
        """Ordered by creation so that offset pagination (Data Center) is stable while pages are edited."""
        clauses = ["type in (page, blogpost)"]
        if space_keys:
            clauses.append(f"space in ({', '.join(map(_cql_quote, space_keys))})")
        if since is not None:
            start = (since - CQL_TZ_SLACK).astimezone(UTC)
            clauses.append(f'lastmodified >= "{start:%Y-%m-%d %H:%M}"')
        return " and ".join(clauses) + " order by created asc"

    async def _cql_refs(self, cql: str) -> AsyncIterator[PageRef]:
        params = {"cql": cql, "expand": "version,space", "limit": str(CQL_BATCH)}
        async for data in self._paginate(self._v1("content/search"), params):
            for ref in parse_search_refs(data):
                yield ref

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _v2(self, path: str) -> str:
        return f"{self._base}/api/v2/{path}"

    def _v1(self, path: str) -> str:
        return f"{self._base}/rest/api/{path}"

    async def _paginate(self, url: str, params: Params | None) -> AsyncIterator[JSON]:
        """Each page of a list, following `_links.next` (a v2 cursor, or v1 `start`/`limit`)."""
        seen: set[str] = set()
        next_page: str | None = url
        while next_page is not None and next_page not in seen:
            seen.add(next_page)
            data = await self._get_json(next_page, params)
            yield data
            next_page, params = next_url(data, self._base), None

    async def _get_json(self, url: str, params: Params | None = None) -> JSON:
        """GET with the concurrency limit, retrying transient failures with backoff, as a JSON object.

        A `Retry-After` longer than our backoff cap is not slept through: the error goes up with that
        delay so the job queue, not a worker slot, does the waiting.
        """
        path = urlsplit(url).path
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(url, params, path)
            except _Transient as failure:
                too_long = failure.retry_after is not None and failure.retry_after > self._backoff.cap
                if attempt > self._max_retries or too_long:
                    raise ConfluenceUnavailable(
                        f"Confluence {failure.detail} for GET {path} (after {attempt} attempts)",
                        retry_after=failure.retry_after,
                    ) from failure.__cause__
                await self._wait(attempt, failure, path)

    async def _wait(self, attempt: int, failure: _Transient, path: str) -> None:
        wait = self._backoff.delay(attempt, failure.retry_after)
        log.warning(
            "confluence request failed; retrying",
            extra={"event": "confluence_retry", "status": failure.status, "wait": wait, "path": path},
        )
        if self._on_retry is not None:
            self._on_retry(failure.status, wait)
        await self._sleep(wait)

    async def _attempt(self, url: str, params: Params | None, path: str) -> JSON:
        if self._http.auth is None:
            raise ConfluenceAuthError(f"no Confluence credentials configured: set {self._fix}")
        try:
            async with self._gate:
                response = await self._http.get(url, params=params)
        except httpx.TimeoutException as exc:
            raise _Transient(0, None, "timed out") from exc
        except httpx.TransportError as exc:
            raise _Transient(0, None, f"unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            self._raise_for_status(response, path)
        try:
            return as_object(response.json(), "a JSON object")
        except ValueError as exc:
            raise ConfluenceProtocolError(f"Confluence sent non-JSON for GET {path}") from exc

    def _raise_for_status(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Transient(status, retry_after, f"answered {status}")
        if status == 401:
            raise ConfluenceAuthError(f"Confluence refused our credentials (401) for GET {path}: check {self._fix}")
        if status == 403:
            raise ConfluenceAuthError(f"Confluence forbade GET {path} (403): the user of {self._fix} lacks permission")
        if status == 404:
            raise PageNotFound(f"Confluence has nothing visible to us at {path} (404)")
        raise ConfluenceProtocolError(f"Confluence answered {status} for GET {path}: {response.text[:200]!r}")
