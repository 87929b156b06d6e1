"""Keeping the access records current: at index time, on permission events, and on a schedule.

No function here embeds anything: access lives in its own tables (`app.access`), so re-evaluating a page, a
subtree or a space rewrites a few small rows. A restriction change on a page is one `cv_restrictions` row that
every descendant's path already names, so the whole subtree follows at once.

Failures fail closed: whatever could not be read is recorded as not established (visible to nobody), and the
scheduled sync (`PERMISSION_SYNC_INTERVAL`) re-reads it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from procrastinate import exceptions as pexc
from psycopg_pool import PoolTimeout

from app import access
from app.access import PageAccess, Restriction, SpaceAccess
from app.errors import DatabaseUnavailable, RetryableError
from app.models import ContentType, Page
from app.permissions_client import AccessUnavailable, restriction_unknown, space_unknown
from app.queue import MAINTENANCE_QUEUE, PageJobRequest, defer_pages, in_deferral_transaction, task
from app.retry import Backoff

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

REFRESH_SPACE = "cv:refresh_space_access"
REFRESH_FOLDER = "cv:refresh_folder_access"
RECHECK_ACCESS = "cv:recheck_access"
PERMISSION_SYNC_STATE = "permission_sync"
#: A stored path element meaning "this page's path was not read in full". Its `cv_restrictions` row is never
#: established, so the rule (both SQL forms and `access.decide`) denies the page, and every descendant whose
#: path copies it, until the path itself is read again: a truncated or stale path must never let the
#: restrictions it no longer names be skipped (issue 12: "the path must be complete").
PATH_UNREAD_PREFIX = "path-unread:"
#: Paths the scheduled sync re-reads per run, beyond restrictions: pages whose path is not read in full or
#: names something not established first, then the least recently read. Bounds the sync's calls per run
#: (three or four per page: path, space, restrictions) while a move no event reported still converges within a
#: few runs.
PATH_RECHECKS_PER_SYNC = 500


def path_unread_marker(page_id: str) -> str:
    """The path element recording that `page_id`'s path could not be read completely."""
    return f"{PATH_UNREAD_PREFIX}{page_id}"


@dataclass(frozen=True, slots=True)
class AccessOutcome:
    """What recording a page's access found: `established` False means the page is hidden from everyone."""

    established: bool
    error: str | None = None
    path_changed: bool = False


@dataclass(frozen=True, slots=True)
class PageKey:
    """All `record_page_access` needs of a page (a `Page` has these too)."""

    id: str
    space_key: str
    content_type: ContentType


async def record_page_access(rt: Runtime, page: Page | PageKey) -> AccessOutcome:
    """Read and store who may read `page`: its space, its path, and the restriction of every id on the path.

    The page's own restriction is always read fresh (an edit or a permission event brought us here); an
    ancestor's or the space's is re-read when its record is older than `PERMISSION_SYNC_INTERVAL`, since
    events and the scheduled sync keep those current. When the path changed (a move), the stored paths of the
    page's descendants are rewritten to match, without any call to Confluence.

    Raises RetryableError after recording the page as not established, so the job is retried; other failures
    are recorded and reported in the outcome (the content is still indexed, and shown once access is known).
    """
    client = rt.permissions
    marker = path_unread_marker(page.id)
    # A page job's `Page` was just fetched, space included; a stored `PageKey` (the sync's re-reads) names the
    # space of the last page job, which a move to another space made wrong: read it with the path.
    known_space = page.space_key if isinstance(page, Page) else None
    async with rt.pool.connection() as conn:
        started = await access.read_started(conn)
    try:
        path = await client.path(page.id, page.content_type)
        space_key = known_space or await client.space_of(page.id, page.content_type)
    except (AccessUnavailable, RetryableError) as exc:
        # The path we hold (none, or the one before a move) may lack ancestors whose restrictions count: keep
        # it, but append the not-established marker, to the page and to its descendants' paths, so nothing
        # below is shown until a job or the sync reads the path in full (`sync_permissions`).
        error = f"{type(exc).__name__}: path not read in full: {exc}"
        async with rt.pool.connection() as conn, conn.transaction():
            previous = await _stored_path(conn, page.id)
            held = [i for i in (previous or [page.id]) if i != marker]
            unread = access.distinct_path([*held, page.id, marker])
            await access.save_restrictions(conn, [restriction_unknown(marker, error)])
            if await access.save_page_access(conn, PageAccess(page.id, page.space_key, unread), read_at=started):
                await _rewrite_descendant_paths(conn, page.id, unread, page.space_key)
        log.warning("page path not established; hidden from everyone", extra={"page_id": page.id, "error": error})
        if isinstance(exc, RetryableError):
            raise  # the page job retries itself
        await schedule_access_recheck(rt)
        return AccessOutcome(False, error)

    outcome = await _record_read_access(rt, page, path, space_key, started, check_ancestors=known_space is not None)
    if outcome is None:
        # An ancestor's record, read since, names another space than our fetch did: the subtree was being moved
        # to another space while this page was fetched. Read the space again, with the path's date.
        try:
            space_key = await client.space_of(page.id, page.content_type)
        except (AccessUnavailable, RetryableError) as exc:
            raise RetryableError(f"space of {page.id} moving, not read again: {exc}") from exc
        # The job goes on to write the page's rows from its fetch: if that named another space, one more job
        # (queued with the access, after this one) rewrites them from a fresh fetch.
        outcome = await _record_read_access(
            rt, page, path, space_key, started, check_ancestors=False, requeue_root=space_key != known_space
        )
        assert outcome is not None
    return outcome


async def _record_read_access(
    rt: Runtime,
    page: Page | PageKey,
    path: tuple[str, ...],
    space_key: str,
    started: datetime,
    *,
    check_ancestors: bool,
    requeue_root: bool = False,
) -> AccessOutcome | None:
    """`record_page_access` once the path and space are read: read the space's and restrictions' records that
    are stale, then store them with the page's access in one transaction. None (nothing written) when
    `check_ancestors` and an ancestor's stored record names another space than `space_key`.

    Why the check: the pages of a path are in one space, and a page job's space comes from its fetch, before
    `started`. A move of an ancestor to another space, recorded between the fetch and this write, rewrites the
    subtree's records, but not this page's if it had none yet (a new page): its fetched space would then be
    stored as newer than the move (found by a reviewer: a child created while its parent moved stayed readable
    by the old space). The ancestors' rows are locked (FOR SHARE) while checking, so a concurrent move either
    commits first (and is seen here) or waits for this write (and its subtree rewrite sees this row)."""
    client = rt.permissions
    marker = path_unread_marker(page.id)
    errors: list[str] = []
    transient: RetryableError | None = None
    space_stale, stale = await _stale_parts(rt, space_key, path[:-1])
    space_access: SpaceAccess | None = None
    if space_stale:
        asked = datetime.now(UTC)
        try:
            space_access = await client.space_access(space_key)
        except (AccessUnavailable, RetryableError) as exc:
            transient = exc if isinstance(exc, RetryableError) else transient
            errors.append(f"{type(exc).__name__}: {exc}")
            space_access = space_unknown(space_key, errors[-1], asked)
    restrictions: list[Restriction] = []
    for content_id in [*stale, page.id]:
        asked = datetime.now(UTC)
        try:
            restrictions.append(await client.restriction(content_id))
        except (AccessUnavailable, RetryableError) as exc:
            transient = exc if isinstance(exc, RetryableError) else transient
            errors.append(f"{type(exc).__name__}: {exc}")
            restrictions.append(restriction_unknown(content_id, errors[-1], asked))

    async def write(conn: Any) -> bool | None:
        await access.lock_path_restrictions(conn, [*path, *(r.content_id for r in restrictions)])
        if check_ancestors and len(path) > 1:
            ancestors = sorted(set(path[:-1]))
            cur = await conn.execute(
                """SELECT space_key FROM cv_page_access WHERE page_id = ANY (%s) ORDER BY page_id FOR SHARE""",
                (ancestors,),
            )
            spaces = [str(r[0]) for r in await cur.fetchall()]
            # An ancestor with no record (a folder, a page not indexed yet) cannot vouch for the fetched space.
            if len(spaces) < len(ancestors) or any(s != space_key for s in spaces):
                return None
        previous = await _stored_access(conn, page.id)
        if space_access is not None:
            await access.save_space(conn, space_access)
        await access.save_restrictions(conn, restrictions)
        written = await access.save_page_access(conn, PageAccess(page.id, space_key, path), read_at=started)
        # A move: the path changed (also when the previous one was not read in full: its marker leaves the
        # subtree's paths), or the space did (a top-level page moved to another space's top level keeps its
        # path `(itself,)`, and its subtree moved with it).
        moved = written and previous is not None and (tuple(previous[0]) != path or previous[1] != space_key)
        if moved or (written and previous is None):
            # Also without a previous record of this page (its first job ended failed, or has not run yet, while
            # pages below it were indexed): their stored paths name it, and follow it (a no-op when they agree).
            # An edit that moved nothing (the common job) skips both statements.
            await _rewrite_descendant_paths(conn, page.id, path, space_key)
            await _requeue_moved_rows(conn, page.id, space_key, include_root=not isinstance(page, Page))
        if written and requeue_root:
            await defer_pages(conn, [PageJobRequest(page.id, page.content_type, "page_moved")])
        await access.drop_unnamed_restrictions(conn, [marker])
        return moved

    moved = await in_deferral_transaction(rt.pool, write)
    if moved is None:
        return None
    if errors:
        log.warning("page access not established; hidden from everyone", extra={"page_id": page.id, "error": errors})
    if transient is not None:
        raise transient  # the page job retries itself
    if errors:
        await schedule_access_recheck(rt)
    return AccessOutcome(not errors, "; ".join(errors) or None, moved)


async def _stored_path(conn: Any, page_id: str) -> list[str] | None:
    stored = await _stored_access(conn, page_id)
    return stored[0] if stored else None


async def _stored_access(conn: Any, page_id: str) -> tuple[list[str], str] | None:
    """The stored path and space of `page_id`."""
    cur = await conn.execute("SELECT path, space_key FROM cv_page_access WHERE page_id = %s", (page_id,))
    row = await cur.fetchone()
    return (list(row[0]), str(row[1])) if row else None


async def _requeue_moved_rows(conn: Any, root_id: str, space_key: str, *, include_root: bool) -> int:
    """Queue a page job (event `page_moved`) for every indexed page at or below `root_id` whose rows still
    name another space than `space_key`, in the caller's transaction (with the access that moved them).

    Why: access follows a move at once (`_rewrite_descendant_paths`), but the rows' metadata (`space_key`,
    which `space` searches and MCP `list_spaces` read) comes from each page's own job, and Confluence sends
    `page_moved` for the moved page only. `include_root`: False when the caller is the root's own job (its
    rows are being rewritten already). Returns how many pages were queued."""
    cur = await conn.execute(
        """SELECT p.page_id, p.content_type FROM cv_pages AS p JOIN cv_page_access AS a USING (page_id)
           WHERE a.path @> ARRAY[%(root)s]::text[] AND (%(include_root)s OR p.page_id <> %(root)s)
             AND p.status = 'indexed' AND p.space_key IS DISTINCT FROM %(space)s
           ORDER BY p.page_id""",
        {"root": root_id, "space": space_key, "include_root": include_root},
    )
    requests = [PageJobRequest(str(r[0]), str(r[1] or "page"), "page_moved") for r in await cur.fetchall()]
    if requests:
        await defer_pages(conn, requests)
        log.info("pages moved to another space queued", extra={"page_id": root_id, "pages": len(requests)})
    return len(requests)


async def _rewrite_descendant_paths(conn: Any, page_id: str, path: tuple[str, ...], space_key: str) -> None:
    """Descendants keep their path below `page_id` and take its new path above (and its space). `page_id`'s
    own not-established marker sits right below it in their paths: it is dropped, and carried again only when
    the new path holds it (`record_page_access`)."""
    await conn.execute(
        """UPDATE cv_page_access
           SET path = %(path)s::text[] || array_remove(path[array_position(path, %(id)s) + 1:], %(marker)s),
               space_key = %(space)s, updated_at = now()
           WHERE path @> ARRAY[%(id)s]::text[] AND page_id <> %(id)s
             AND (path[1:array_position(path, %(id)s)] IS DISTINCT FROM %(path)s::text[]
                  OR space_key IS DISTINCT FROM %(space)s OR %(marker)s = ANY (path))""",
        {"path": list(path), "id": page_id, "space": space_key, "marker": path_unread_marker(page_id)},
    )


async def _stale_parts(rt: Runtime, space_key: str, ancestor_ids: tuple[str, ...]) -> tuple[bool, list[str]]:
    """Whether the space needs reading, and which ancestors' restrictions do (missing, unknown or old)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=rt.settings.permission_sync_interval)
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT 1 FROM cv_space_access WHERE space_key = %s AND principals IS NOT NULL AND checked_at >= %s",
            (space_key, cutoff),
        )
        space_fresh = await cur.fetchone() is not None
        cur = await conn.execute(
            """SELECT content_id FROM cv_restrictions
               WHERE content_id = ANY (%s) AND restricted IS NOT NULL AND checked_at >= %s""",
            (list(ancestor_ids), cutoff),
        )
        fresh = {str(r[0]) for r in await cur.fetchall()}
    return not space_fresh, [i for i in ancestor_ids if i not in fresh]


async def refresh_space(rt: Runtime, space_key: str) -> SpaceAccess:
    """Re-read one space's permissions now; recorded as not established (hiding the space) on failure."""
    asked = datetime.now(UTC)
    try:
        space = await rt.permissions.space_access(space_key)
    except (AccessUnavailable, RetryableError) as exc:
        space = space_unknown(space_key, f"{type(exc).__name__}: {exc}", asked)
    async with rt.pool.connection() as conn, conn.transaction():
        await access.save_space(conn, space)
    return space


async def refresh_restrictions(rt: Runtime, content_ids: list[str]) -> list[Restriction]:
    """Re-read these contents' own restrictions now; each unreadable one is recorded as not established."""
    client = rt.permissions
    found: list[Restriction] = []
    for content_id in content_ids:
        asked = datetime.now(UTC)
        try:
            found.append(await client.restriction(content_id))
        except (AccessUnavailable, RetryableError) as exc:
            found.append(restriction_unknown(content_id, f"{type(exc).__name__}: {exc}", asked))
    async with rt.pool.connection() as conn, conn.transaction():
        await access.save_restrictions(conn, found)
    return found


@dataclass
class SyncReport:
    spaces: int = 0
    restrictions: int = 0
    not_established: int = 0
    adopted: int = 0  # indexed pages that had no access record yet (indexed before issue 12)
    paths: int = 0  # paths re-read (PATH_RECHECKS_PER_SYNC at most)


async def sync_permissions(rt: Runtime) -> SyncReport:
    """Re-read every space permission and every restriction on an indexed path, then up to
    `PATH_RECHECKS_PER_SYNC` paths; drop cached membership.

    Catches what no event reports: membership changes (neither product sends an event), missed webhooks
    (a move, a folder moved under a restricted page), and anything left not established by an earlier
    failure. Paths come first where they decide most: not read in full, then naming content not established
    (a page the service account can no longer read hides its subtree until the subtree's paths are read
    again), then the least recently read, so every path is re-read in turn.
    """
    rt.permissions.forget_people()
    report = SyncReport()
    async with rt.pool.connection() as conn:  # indexed before access was recorded (an upgrade): adopt them
        cur = await conn.execute(
            """SELECT p.page_id, p.space_key, p.content_type FROM cv_pages AS p
               WHERE p.status = 'indexed' AND p.space_key IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.page_id = p.page_id)
               ORDER BY p.page_id"""
        )
        orphans = [
            PageKey(str(r[0]), str(r[1]), "blogpost" if r[2] == "blogpost" else "page") for r in await cur.fetchall()
        ]
    for key in orphans:
        try:
            await record_page_access(rt, key)
            report.adopted += 1
        except RetryableError as exc:
            log.warning("page access not recorded; retried next sync", extra={"page_id": key.id, "error": str(exc)})
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT space_key FROM cv_page_access UNION SELECT space_key FROM cv_space_access ORDER BY 1"
        )
        spaces = [str(r[0]) for r in await cur.fetchall()]
        cur = await conn.execute(
            """SELECT DISTINCT id FROM cv_page_access, unnest(path) AS u(id)
               WHERE NOT starts_with(id, %s) ORDER BY 1""",
            (PATH_UNREAD_PREFIX,),
        )
        contents = [str(r[0]) for r in await cur.fetchall()]
    report.spaces, report.restrictions = len(spaces), len(contents)
    for space_key in spaces:
        if (await refresh_space(rt, space_key)).principals is None:
            report.not_established += 1
    for start in range(0, len(contents), 100):
        batch = await refresh_restrictions(rt, contents[start : start + 100])
        report.not_established += sum(1 for r in batch if r.restricted is None)
    report.paths = await _recheck_paths(rt, PATH_RECHECKS_PER_SYNC)
    async with rt.pool.connection() as conn:
        async with conn.transaction():  # markers no stored path names any more (their paths were read since)
            cur = await conn.execute(
                "SELECT content_id FROM cv_restrictions WHERE starts_with(content_id, %s)", (PATH_UNREAD_PREFIX,)
            )
            await access.drop_unnamed_restrictions(conn, [str(r[0]) for r in await cur.fetchall()])
        await conn.execute(
            """INSERT INTO cv_state (key, value) VALUES (%s, jsonb_build_object('finished_at', now()))
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
            (PERMISSION_SYNC_STATE,),
        )
    log.info("permission sync", extra={"spaces": report.spaces, "restrictions": report.restrictions})
    if report.not_established:
        await schedule_access_recheck(rt)
    return report


async def _recheck_paths(rt: Runtime, limit: int, *, doubtful_only: bool = False) -> int:
    """Re-read the path (and so the access) of up to `limit` indexed pages, most doubtful first: paths not
    read in full, then paths naming content not established, then (unless `doubtful_only`) the least
    recently read."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT a.page_id, a.space_key, p.content_type FROM cv_page_access AS a
               LEFT JOIN cv_pages AS p ON p.page_id = a.page_id
               WHERE NOT %(doubtful_only)s
                  OR EXISTS (SELECT 1 FROM unnest(a.path) AS u(id) WHERE starts_with(u.id, %(prefix)s))
                  OR EXISTS (SELECT 1 FROM cv_restrictions AS r
                             WHERE r.content_id = ANY (a.path) AND r.restricted IS NULL)
               ORDER BY EXISTS (SELECT 1 FROM unnest(a.path) AS u(id) WHERE starts_with(u.id, %(prefix)s)) DESC,
                        EXISTS (SELECT 1 FROM cv_restrictions AS r
                                WHERE r.content_id = ANY (a.path) AND r.restricted IS NULL) DESC,
                        a.updated_at, a.page_id
               LIMIT %(limit)s""",
            {"prefix": PATH_UNREAD_PREFIX, "limit": limit, "doubtful_only": doubtful_only},
        )
        keys = [
            PageKey(str(r[0]), str(r[1]), "blogpost" if r[2] == "blogpost" else "page") for r in await cur.fetchall()
        ]
    for key in keys:
        try:
            await record_page_access(rt, key)
        except RetryableError as exc:  # recorded as not established; the next sync comes back to it first
            log.warning("page path not re-read; retried next sync", extra={"page_id": key.id, "error": str(exc)})
    return len(keys)


async def permission_sync_due(rt: Runtime) -> bool:
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (value ->> 'finished_at')::timestamptz FROM cv_state WHERE key = %s", (PERMISSION_SYNC_STATE,)
        )
        row = await cur.fetchone()
    if row is None or row[0] is None:
        return True
    finished: datetime = row[0]
    return datetime.now(UTC) - finished >= timedelta(seconds=rt.settings.permission_sync_interval)


async def _defer_coalesced(rt: Runtime, task: str, queueing_lock: str, **kwargs: str) -> bool:
    """Queue one maintenance job; False when one with the same `queueing_lock` already waits (it covers ours)."""
    try:
        await rt.queue.configure_task(task, queue=MAINTENANCE_QUEUE, queueing_lock=queueing_lock).defer_async(**kwargs)
    except pexc.AlreadyEnqueued:
        return False
    return True


async def defer_space_refresh(rt: Runtime, space_key: str) -> bool:
    """Queue a re-read of one space's permissions (coalesced with one already waiting)."""
    return await _defer_coalesced(rt, REFRESH_SPACE, f"space-access:{space_key}", space_key=space_key)


async def defer_folder_refresh(rt: Runtime, folder_id: str) -> bool:
    """Queue a re-read of one folder's restriction and path (coalesced with one already waiting)."""
    return await _defer_coalesced(rt, REFRESH_FOLDER, f"folder-access:{folder_id}", folder_id=folder_id)


async def refresh_folder(rt: Runtime, folder_id: str) -> bool:
    """A folder event: re-read the folder's own restriction and its path, and give every indexed page below
    it the folder's new path above it (no page is fetched, nothing re-embedded). Returns whether the path
    was read and what it newly names (a space, ancestors) established; when the path was not (the folder was
    removed, or refused us), the pages below carry the folder's not-established marker and stay hidden until
    the sync reads their own paths (`_recheck_paths`). False makes the job schedule an access re-check."""
    await refresh_restrictions(rt, [folder_id])
    marker = path_unread_marker(folder_id)
    try:
        path: tuple[str, ...] | None = await rt.permissions.folder_path(folder_id)
        # Moved to another space, the folder took its pages along: they answer to that space now.
        folder_space: str | None = await rt.permissions.space_of(folder_id, "folder")
        error = None
    except (AccessUnavailable, RetryableError) as exc:
        path, folder_space = None, None
        error = f"{type(exc).__name__}: folder path not read in full: {exc}"

    async def write(conn: Any) -> tuple[tuple[str, ...], str] | None:
        cur = await conn.execute(
            """SELECT path[1:array_position(path, %(id)s)], space_key FROM cv_page_access
               WHERE path @> ARRAY[%(id)s]::text[] AND page_id <> %(id)s LIMIT 1""",
            {"id": folder_id},
        )
        row = await cur.fetchone()
        if row is None:  # no indexed page below it: nothing to rewrite
            return None
        held, space_key = [str(i) for i in row[0]], folder_space or str(row[1])
        written = path
        if written is None:
            await access.save_restrictions(conn, [restriction_unknown(marker, error or "not read")])
            written = access.distinct_path([*held, marker])
        # Every id on a stored path needs a restriction row (`cv_page_visible` relies on it): new ones start
        # not established; taken in the same sorted order as every other access writer.
        await access.lock_path_restrictions(conn, written)
        await _rewrite_descendant_paths(conn, folder_id, written, space_key)
        await _requeue_moved_rows(conn, folder_id, space_key, include_root=False)
        return written, space_key

    rewritten = await in_deferral_transaction(rt.pool, write)
    if rewritten is None:
        return path is not None
    if error is not None:
        log.warning("folder path not established; its pages hidden", extra={"page_id": folder_id, "error": error})
        return False
    # The space (when new to the index) and ancestors new to these paths have no established record yet: read
    # them now, not at the next sync.
    space_stale, stale = await _stale_parts(rt, rewritten[1], rewritten[0][:-1])
    established = True
    if space_stale:
        established = (await refresh_space(rt, rewritten[1])).principals is not None
    established = all(r.restricted is not None for r in await refresh_restrictions(rt, stale)) and established
    return established


@task(name="refresh_folder_access", queue=MAINTENANCE_QUEUE)
async def refresh_folder_access_job(rt: Runtime, folder_id: str) -> dict[str, Any]:
    """A folder moved or its restriction changed: its pages' access follows (`refresh_folder`)."""
    established = await refresh_folder(rt, folder_id)
    if not established:
        await schedule_access_recheck(rt)
    return {"folder_id": folder_id, "established": established}


@task(name="refresh_space_access", queue=MAINTENANCE_QUEUE)
async def refresh_space_access_job(rt: Runtime, space_key: str) -> dict[str, Any]:
    """A space permission event: re-read that space now. Its pages follow through `cv_space_access`."""
    space = await refresh_space(rt, space_key)
    if space.principals is None:
        await schedule_access_recheck(rt)
    return {"space_key": space_key, "established": space.principals is not None}


#: Set while a re-check runs: what it fails to read again is its own follow-up's business (with a longer
#: backoff), not a fresh first attempt.
_RECHECKING: ContextVar[bool] = ContextVar("cv_access_rechecking", default=False)


def recheck_delay(rt: Runtime, attempt: int) -> float | None:
    """Seconds until re-check `attempt` (1-based), or None once `JOB_MAX_ATTEMPTS` re-checks have run: the
    scheduled sync takes over from there (and starts a new series if it still cannot read). Full-jitter
    backoff from RETRY_BASE_SECONDS, capped at RETRY_MAX_SECONDS and at PERMISSION_SYNC_INTERVAL (a re-check
    later than the next sync would be pointless)."""
    if attempt > rt.settings.job_max_attempts:
        return None
    cap = min(rt.settings.retry_max_seconds, float(rt.settings.permission_sync_interval))
    return max(Backoff(base=rt.settings.retry_base_seconds, cap=cap).delay(attempt), 0.05)


async def schedule_access_recheck(rt: Runtime, attempt: int = 1) -> bool:
    """Queue a re-read of what is recorded as not established, after a backoff (`recheck_delay`).

    Why: fail-closed hides a page from everyone while its access cannot be read (a 403 or an outage on the
    permission APIs). Waiting for the next scheduled sync (PERMISSION_SYNC_INTERVAL, 15 minutes by default)
    would leave pages missing from every search long after Confluence answers again. Coalesced: at most one
    re-check waits. Returns whether one was queued."""
    if _RECHECKING.get():
        return False
    delay = recheck_delay(rt, attempt)
    if delay is None:
        log.info("access re-checks exhausted; the scheduled permission sync takes over", extra={"attempt": attempt})
        return False
    try:
        await rt.queue.configure_task(
            RECHECK_ACCESS,
            queue=MAINTENANCE_QUEUE,
            queueing_lock="access-recheck",
            schedule_in={"seconds": delay},
        ).defer_async(attempt=attempt)
    except pexc.AlreadyEnqueued:
        return False
    return True


async def recheck_not_established(rt: Runtime) -> int:
    """Re-read every space permission and restriction recorded as not established that an indexed page's
    access depends on, then the paths not read in full or naming such content (up to PATH_RECHECKS_PER_SYNC);
    returns how many records are still not established."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT s.space_key FROM cv_space_access AS s WHERE s.principals IS NULL
                 AND EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.space_key = s.space_key)
               ORDER BY 1"""
        )
        spaces = [str(r[0]) for r in await cur.fetchall()]
        cur = await conn.execute(
            """SELECT r.content_id FROM cv_restrictions AS r
               WHERE r.restricted IS NULL AND NOT starts_with(r.content_id, %s)
                 AND EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.path @> ARRAY[r.content_id])
               ORDER BY 1""",
            (PATH_UNREAD_PREFIX,),
        )
        contents = [str(r[0]) for r in await cur.fetchall()]
    for space_key in spaces:
        await refresh_space(rt, space_key)
    for start in range(0, len(contents), 100):
        await refresh_restrictions(rt, contents[start : start + 100])
    await _recheck_paths(rt, PATH_RECHECKS_PER_SYNC, doubtful_only=True)
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            """SELECT (SELECT count(*) FROM cv_space_access AS s WHERE s.principals IS NULL
                         AND EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.space_key = s.space_key))
                    + (SELECT count(*) FROM cv_restrictions AS r WHERE r.restricted IS NULL
                         AND EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.path @> ARRAY[r.content_id]))"""
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


@task(name="recheck_access", queue=MAINTENANCE_QUEUE, lock="permission_sync")
async def recheck_access_job(rt: Runtime, attempt: int) -> dict[str, Any]:
    """Re-read what could not be read (`recheck_not_established`); while anything remains, come back later
    with a longer backoff. Shares the sync's `lock`: never runs beside it."""
    token = _RECHECKING.set(True)
    try:
        remaining = await recheck_not_established(rt)
    finally:
        _RECHECKING.reset(token)
    if remaining:
        await schedule_access_recheck(rt, attempt + 1)
    return {"attempt": attempt, "not_established": remaining}


@task(
    name="permission_sync",
    queue=MAINTENANCE_QUEUE,
    lock="permission_sync",
    periodic={"cron": "* * * * *", "periodic_id": "permission_sync"},
)
async def permission_sync_job(rt: Runtime, timestamp: int) -> dict[str, Any]:
    """Every minute, on one worker: run the permission sync when `PERMISSION_SYNC_INTERVAL` has passed.

    Postgres lost mid-sync (a failover, connections killed) is not a failed job: the sync records its finish only
    when it finishes (`cv_state`), so it is still due and the next minute's run reads everything again; a warning
    says so. (Procrastinate marked such a job failed, which `status` and the queue showed as a fault.)"""
    try:
        if not await permission_sync_due(rt):
            return {"ran": False}
        report = await sync_permissions(rt)
    except (psycopg.OperationalError, DatabaseUnavailable, PoolTimeout) as exc:
        log.warning(
            "permission sync interrupted: Postgres was lost; it runs again within a minute",
            extra={"error": f"{type(exc).__name__}: {exc}"[:500]},
        )
        return {"ran": False, "interrupted": type(exc).__name__}
    return {"ran": True, "spaces": report.spaces, "restrictions": report.restrictions}


async def forget_page_access(rt: Runtime, page_id: str, error: str = "page not readable in Confluence") -> None:
    """The page left the index (not found, trashed, archived...): its access record goes, and its restriction
    is recorded as not established. Confluence answers 404 for a page whose restriction excludes the service
    account, so "not found" may mean "restricted further": the indexed descendants, whose paths name it, are
    hidden until their paths are read again (their next job, or the scheduled sync, which re-reads such paths
    first) rather than shown under a restriction we can no longer read."""
    async with rt.pool.connection() as conn, conn.transaction():
        # Locked before the check (a later statement, so a later snapshot): a page job storing a path that
        # names it either committed first and is seen, or waits and re-inserts a not-established row
        # (`access.save_page_access`). Deleting a row a stored path names would show that path's page. Taken
        # before the access row, in the order a page job takes the two, so the two never deadlock.
        await conn.execute("SELECT 1 FROM cv_restrictions WHERE content_id = %s FOR UPDATE", (page_id,))
        await access.forget_page(conn, page_id)
        cur = await conn.execute("SELECT 1 FROM cv_page_access WHERE path @> ARRAY[%s]::text[] LIMIT 1", (page_id,))
        if await cur.fetchone() is not None:  # it guards indexed pages below it
            await access.save_restrictions(conn, [restriction_unknown(page_id, error)])
        else:  # nothing names it any more: no row to show as "not established" in `status`
            await conn.execute("DELETE FROM cv_restrictions WHERE content_id = %s", (page_id,))


async def hide_page_access(rt: Runtime, page_id: str, error: str) -> None:
    """Confluence refused to show us the page: record its restriction as not established, which hides it and
    every indexed descendant (their paths name it) until a later job or the scheduled sync reads it again."""
    async with rt.pool.connection() as conn, conn.transaction():
        await access.save_restrictions(conn, [restriction_unknown(page_id, error)])
    log.warning("page refused by Confluence; hidden with its subtree", extra={"page_id": page_id, "error": error})
