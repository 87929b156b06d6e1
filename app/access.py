"""Who may read a page: principal keys, the rule, and the access records kept beside the vectors.

The rule (Atlassian, "Space permissions overview" and "Page restrictions"): a person may read a page when they
hold the space's view permission (directly, through a group, or because the space is open to anonymous users)
AND, for every piece of content on the path from the space root to the page that carries a read restriction,
they are among that restriction's users or members of one of its groups. Inherited restrictions intersect,
never widen. Blog posts have no ancestors: their path is themselves.

Access is stored normalised, so that a change of one restriction re-evaluates every descendant at once and
without re-embedding anything:

- `cv_space_access(space_key, principals[])`: who holds the space's read permission;
- `cv_restrictions(content_id, restricted, principals[])`: each content's own read restriction;
- `cv_page_access(page_id, space_key, path[])`: each indexed page's space and full path (root first, itself
  last).

`cv_may_read(principals, page_id)` in `app/sql/schema.sql` is the rule in SQL; `decide` below is the same rule
in Python, used to *explain* a decision (which part of the rule decides). Both fail closed: anything not
established (NULL) or missing denies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

#: Every person holds this principal: a space open to anonymous access lists it.
ANYONE = "anyone"
#: Every person known to Confluence holds this principal.
LOGGED_IN = "logged-in"


def user_principal(user_id: str) -> str:
    """'user:<Cloud account id | Data Center user key>'."""
    return f"user:{user_id}"


def group_principal(group: str) -> str:
    """'group:<Cloud group id | Data Center group name>' (Data Center groups have only names)."""
    return f"group:{group}"


def person_principals(user_id: str, groups: Iterable[str]) -> frozenset[str]:
    """The principal set of a known person: themself, their groups, anyone, logged-in."""
    return frozenset({ANYONE, LOGGED_IN, user_principal(user_id), *(group_principal(g) for g in groups)})


@dataclass(frozen=True, slots=True)
class SpaceAccess:
    """Who holds a space's read permission; `principals` None when it could not be established (`error`)."""

    space_key: str
    principals: frozenset[str] | None
    error: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Restriction:
    """One content's own read restriction.

    `restricted` None: not established (`error` says why). False: no read restriction (principals empty).
    True: only `principals` pass it (an empty set passes nobody).
    """

    content_id: str
    restricted: bool | None
    principals: frozenset[str] = frozenset()
    error: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PageAccess:
    """What decides who may read one page: its space and every content id on its path (root first)."""

    page_id: str
    space_key: str
    path: tuple[str, ...]


Part = Literal["allowed", "space", "restriction", "unknown"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision with the part of the rule that made it: `space` (no view permission), `restriction` (the
    restriction on `content_id` excludes them), `unknown` (something not established: fail closed)."""

    allowed: bool
    part: Part
    content_id: str | None = None
    detail: str = ""


def decide(
    principals: frozenset[str],
    access: PageAccess | None,
    space: SpaceAccess | None,
    restrictions: Mapping[str, Restriction],
) -> Decision:
    """The rule, in Python, with its reason. Same answer as SQL `cv_may_read` for the same records.

    The first failing part is reported, in the order a reader meets them: the page record, the space, then
    the path from the root down.
    """
    if access is None:
        return Decision(False, "unknown", None, "no access record for this page (not indexed, or not yet)")
    if space is None or space.principals is None:
        why = space.error if space is not None and space.error else "space permissions not established"
        return Decision(False, "unknown", None, f"space {access.space_key}: {why}")
    if not principals & space.principals:
        return Decision(False, "space", None, f"no view permission on space {access.space_key}")
    for content_id in access.path:
        restriction = restrictions.get(content_id)
        if restriction is None or restriction.restricted is None:
            why = restriction.error if restriction is not None and restriction.error else "not established"
            return Decision(False, "unknown", content_id, f"read restriction of {content_id}: {why}")
        if restriction.restricted and not principals & restriction.principals:
            where = "the page itself" if content_id == access.page_id else f"ancestor {content_id}"
            return Decision(False, "restriction", content_id, f"read restriction on {where} excludes them")
    return Decision(True, "allowed", None, "space view permission and every restriction on the path admit them")


def distinct_path(ids: Iterable[str]) -> tuple[str, ...]:
    """Path ids in order without repeats (the SQL rule counts path elements, so they must be distinct)."""
    return tuple(dict.fromkeys(i for i in ids if i))


# --- storage ----------------------------------------------------------------------------------------------
async def save_space(conn: AsyncConnection[Any], space: SpaceAccess) -> None:
    """Upsert a space's access, unless a newer check is already stored (concurrent jobs race)."""
    await conn.execute(
        """INSERT INTO cv_space_access (space_key, principals, error, checked_at)
           VALUES (%s, %s, %s, COALESCE(%s, now()))
           ON CONFLICT (space_key) DO UPDATE SET
               principals = EXCLUDED.principals, error = EXCLUDED.error, checked_at = EXCLUDED.checked_at
           WHERE cv_space_access.checked_at <= EXCLUDED.checked_at""",
        (space.space_key, _array(space.principals), space.error, space.checked_at),
    )


async def save_restrictions(conn: AsyncConnection[Any], restrictions: Sequence[Restriction]) -> None:
    """Upsert content restrictions; an older answer never overwrites a newer one."""
    if not restrictions:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO cv_restrictions (content_id, restricted, principals, error, checked_at)
               VALUES (%s, %s, %s, %s, COALESCE(%s, now()))
               ON CONFLICT (content_id) DO UPDATE SET
                   restricted = EXCLUDED.restricted, principals = EXCLUDED.principals,
                   error = EXCLUDED.error, checked_at = EXCLUDED.checked_at
               WHERE cv_restrictions.checked_at <= EXCLUDED.checked_at""",
            [(r.content_id, r.restricted, sorted(r.principals), r.error, r.checked_at) for r in restrictions],
        )


async def lock_path_restrictions(conn: AsyncConnection[Any], path: Sequence[str]) -> None:
    """Lock (creating not-established placeholders where missing) the restriction rows of every id on `path`, in
    sorted order, until the caller's transaction ends: taken first by every writer of a page's access, so two
    writers of overlapping paths (a parent's and a child's job) queue on the same first row instead of locking
    rows in opposite orders (a deadlock, found by a reviewer)."""
    await conn.execute(
        """INSERT INTO cv_restrictions (content_id, restricted, error, checked_at)
           SELECT unnest(%s::text[]), NULL, 'not read yet', '-infinity'
           ON CONFLICT (content_id) DO UPDATE SET content_id = EXCLUDED.content_id WHERE false""",
        (sorted(distinct_path(path)),),
    )


async def save_page_access(conn: AsyncConnection[Any], access: PageAccess, *, read_at: datetime | None = None) -> bool:
    """Upsert a page's space and path, unless a read that started later is already stored; returns whether it
    was written. `read_at` is when the path's read began (the database clock, `read_started`): a page job and
    the scheduled sync may read one path concurrently, and the slower writer must not put back the older path.

    Any path id without a restriction row gets a not-established one (it denies until read):
    `cv_page_visible`, the fast form of the rule used by search, relies on every path id having a row. The
    placeholder is dated -infinity, so any real answer replaces it. The rows are also locked until the caller's
    transaction ends (DO UPDATE ... WHERE false updates nothing but locks every conflicting row, PostgreSQL
    "INSERT ... ON CONFLICT"; DO NOTHING locks none): a writer that deletes a row no stored path names
    (`drop_unnamed_restrictions`, `forget_page_access`) would otherwise check before this path commits and
    delete the row it names, and the fast forms read a path id without a row as unrestricted (a leak)."""
    await conn.execute(
        """INSERT INTO cv_restrictions (content_id, restricted, error, checked_at)
           SELECT unnest(%s::text[]), NULL, 'not read yet', '-infinity'
           ON CONFLICT (content_id) DO UPDATE SET content_id = EXCLUDED.content_id WHERE false""",
        (sorted(distinct_path(access.path)),),
    )
    cur = await conn.execute(
        """INSERT INTO cv_page_access (page_id, space_key, path, updated_at)
           VALUES (%s, %s, %s, COALESCE(%s, now()))
           ON CONFLICT (page_id) DO UPDATE SET space_key = EXCLUDED.space_key, path = EXCLUDED.path,
               updated_at = EXCLUDED.updated_at
           WHERE cv_page_access.updated_at <= EXCLUDED.updated_at
           RETURNING 1""",
        (access.page_id, access.space_key, list(distinct_path(access.path)), read_at),
    )
    return await cur.fetchone() is not None


async def drop_unnamed_restrictions(conn: AsyncConnection[Any], content_ids: Sequence[str]) -> None:
    """Delete the restriction rows of `content_ids` that no stored path names (path-unread markers once read).

    Must run inside a transaction. The rows are locked first, and the check is a later statement (a new
    snapshot under READ COMMITTED): `save_page_access` locks the rows its path names until it commits, so either
    its path is visible to the check, or it waits and re-inserts a not-established row after the delete. One
    DELETE ... WHERE NOT EXISTS would check in the snapshot taken before it waited, and delete a row a path
    committed meanwhile names: the fast forms of the rule would then read that id as unrestricted."""
    cur = await conn.execute(
        "SELECT content_id FROM cv_restrictions WHERE content_id = ANY (%s) ORDER BY content_id FOR UPDATE",
        (list(content_ids),),
    )
    locked = [str(r[0]) for r in await cur.fetchall()]
    if locked:
        await conn.execute(
            """DELETE FROM cv_restrictions AS r WHERE r.content_id = ANY (%s)
               AND NOT EXISTS (SELECT 1 FROM cv_page_access AS a WHERE a.path @> ARRAY[r.content_id])""",
            (locked,),
        )


async def read_started(conn: AsyncConnection[Any]) -> datetime:
    """The database clock now, taken before reading access from Confluence: the `checked_at` of what the
    read returns. Stamping a path with the time its read began (not the time it is written) is what lets
    `save_page_access` order two concurrent readers correctly: the scheduled sync that read a path before a
    move, and wrote after the move's page job, must lose. The database's clock, as `_rewrite_descendant_paths`
    (`now()`) uses for the same column. (Restriction answers are dated by the permission client, per request.)"""
    cur = await conn.execute("SELECT clock_timestamp()")
    row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def forget_page(conn: AsyncConnection[Any], page_id: str) -> None:
    """A page left the index: drop its access record (its restriction row may still serve descendants)."""
    await conn.execute("DELETE FROM cv_page_access WHERE page_id = %s", (page_id,))


async def load(
    pool: AsyncConnectionPool, page_id: str
) -> tuple[PageAccess | None, SpaceAccess | None, dict[str, Restriction]]:
    """The stored records that decide `page_id` (for explanations)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT page_id, space_key, path FROM cv_page_access WHERE page_id = %s", (page_id,))
        row = await cur.fetchone()
        if row is None:
            return None, None, {}
        access = PageAccess(row["page_id"], row["space_key"], tuple(row["path"]))
        await cur.execute(
            "SELECT space_key, principals, error, checked_at FROM cv_space_access WHERE space_key = %s",
            (access.space_key,),
        )
        srow = await cur.fetchone()
        space = (
            SpaceAccess(srow["space_key"], _set(srow["principals"]), srow["error"], srow["checked_at"])
            if srow
            else None
        )
        await cur.execute(
            """SELECT content_id, restricted, principals, error, checked_at FROM cv_restrictions
               WHERE content_id = ANY (%s)""",
            (list(access.path),),
        )
        restrictions = {
            r["content_id"]: Restriction(
                r["content_id"], r["restricted"], frozenset(r["principals"]), r["error"], r["checked_at"]
            )
            for r in await cur.fetchall()
        }
    return access, space, restrictions


async def may_read(pool: AsyncConnectionPool, principals: frozenset[str], page_id: str) -> bool:
    """SQL `cv_may_read` for one page."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT cv_may_read(%s, %s)", (sorted(principals), page_id))
        row = await cur.fetchone()
    return bool(row and row[0])


async def descendants(pool: AsyncConnectionPool, content_id: str) -> list[str]:
    """Indexed pages whose path contains `content_id` (itself included), through the GIN index on path."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT page_id FROM cv_page_access WHERE path @> ARRAY[%s]::text[] ORDER BY page_id", (content_id,)
        )
        return [str(r[0]) for r in await cur.fetchall()]


async def unestablished(pool: AsyncConnectionPool, limit: int = 20) -> dict[str, Any]:
    """What is failing closed now, for `status`: counts, and ids (never titles) with their errors."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT space_key, error FROM cv_space_access WHERE principals IS NULL ORDER BY space_key LIMIT %s",
            (limit,),
        )
        spaces = list(await cur.fetchall())
        await cur.execute(
            """SELECT content_id, error FROM cv_restrictions WHERE restricted IS NULL
               ORDER BY checked_at DESC LIMIT %s""",
            (limit,),
        )
        contents = list(await cur.fetchall())
        await cur.execute("SELECT count(*) AS n FROM cv_restrictions WHERE restricted IS NULL")
        n_row = await cur.fetchone()
    return {"spaces": spaces, "content": contents, "content_count": int(n_row["n"]) if n_row else 0}


def _array(principals: frozenset[str] | None) -> list[str] | None:
    return sorted(principals) if principals is not None else None


def _set(values: Sequence[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values is not None else None
