"""procrastinate's schema in our database: applied on first start, migrated on upgrade, checked every start.

Why it matters here: we insert page jobs through procrastinate's SQL function `procrastinate_defer_jobs_v1`
ourselves (`app.queue.defer_pages`) and end stalled ones with `procrastinate_finish_job_v1`, so the database must
hold exactly the schema of the procrastinate version installed (pinned in pyproject.toml). procrastinate keeps
no schema version in the database; it ships its schema whole (`procrastinate/sql/schema.sql`, what a fresh
database gets) plus one SQL file per change (`procrastinate/sql/migrations/`, named so that lexical order is
the order to apply them; "Migrations" in procrastinate's documentation). We record the name of the last
migration the schema corresponds to in `cv_state`, and at start-up, under `app.db.migrate`'s advisory lock:

* no procrastinate tables: apply `schema.sql`, record the newest migration;
* recorded older than the newest migration installed: apply the newer migration files in order, one
  transaction each (pre- and post-migrations alike: stop every old worker before starting the new version);
* recorded newer than the newest installed: refuse (the package is older than the database);
* tables but nothing recorded (a database from before this check): accept and record if every function we
  call exists, else refuse, naming the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import psycopg
from procrastinate import schema
from psycopg.types.json import Jsonb

from app.errors import ConfigurationError

log = logging.getLogger(__name__)

STATE_KEY = "procrastinate_schema"

#: The procrastinate objects our own SQL calls (regprocedure signatures, `to_regprocedure`).
REQUIRED_FUNCTIONS = (
    "procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])",
    "procrastinate_finish_job_v1(bigint, procrastinate_job_status, boolean)",
    "procrastinate_fetch_job_v2(character varying[], bigint)",
    "procrastinate_retry_job_v2(bigint, timestamp with time zone, integer, character varying, character varying)",
)


class QueueSchemaMismatch(ConfigurationError):
    """procrastinate's schema in the database does not match the installed procrastinate."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # the file's stem, e.g. "03.04.00_50_post_add_retry_failed_job_procedure"
    path: Path


def installed_migrations() -> list[Migration]:
    """The migration files of the installed procrastinate, in the order to apply them."""
    folder = Path(schema.SchemaManager.get_migrations_path())
    return sorted((Migration(p.stem, p) for p in folder.glob("*.sql")), key=lambda m: m.name)


def latest_migration() -> str:
    """The name of the newest migration installed: the schema version `schema.sql` corresponds to."""
    return installed_migrations()[-1].name


async def ensure_procrastinate_schema(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Make procrastinate's schema match the installed package; returns the migrations applied.

    `conn` is in autocommit mode and holds the caller's migration lock. Raises QueueSchemaMismatch (with the
    fix in its message) when it cannot.
    """
    latest = latest_migration()
    exists = await _one(conn, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    if not exists:
        await conn.execute(schema.SchemaManager.get_schema())
        await _record(conn, latest)
        log.info("applied procrastinate's schema", extra={"migration": latest})
        return []
    recorded = await _one(conn, "SELECT value ->> 'migration' FROM cv_state WHERE key = %s", (STATE_KEY,))
    if recorded is None:
        missing = await _missing_functions(conn)
        if missing:
            raise QueueSchemaMismatch(
                f"procrastinate's tables in this database predate the installed procrastinate "
                f"{package_version('procrastinate')} (missing {', '.join(missing)}). Apply the migrations listed "
                "by `procrastinate schema --migrations-path` that are newer than the version that created them, "
                f"in order, then record it: INSERT INTO cv_state (key, value) VALUES ('{STATE_KEY}', "
                f'\'{{"migration": "{latest}"}}\').'
            )
        await _record(conn, latest)
        return []
    if recorded == latest:
        return []
    if recorded > latest:
        raise QueueSchemaMismatch(
            f"procrastinate's schema in this database is at migration {recorded}, newer than the installed "
            f"procrastinate {package_version('procrastinate')} knows ({latest}): install the confluence-vectors "
            "release that migrated it (or a newer one)."
        )
    pending = [m for m in installed_migrations() if m.name > recorded]
    for migration in pending:
        async with conn.transaction():
            await conn.execute(migration.path.read_text(encoding="utf-8"))
            await _record(conn, migration.name)
        log.warning("applied procrastinate migration", extra={"migration": migration.name})
    return [m.name for m in pending]


async def _missing_functions(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    missing = []
    for signature in REQUIRED_FUNCTIONS:
        try:
            found = await _one(conn, "SELECT to_regprocedure(%s) IS NOT NULL", (signature,))
        except psycopg.errors.UndefinedObject:  # a type in the signature does not exist yet
            found = False
        if not found:
            missing.append(signature.split("(")[0])
    return missing


async def _record(conn: psycopg.AsyncConnection[Any], migration: str) -> None:
    await conn.execute(
        """INSERT INTO cv_state (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
        (STATE_KEY, Jsonb({"migration": migration, "procrastinate": package_version("procrastinate")})),
    )


async def _one(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] | None = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None
