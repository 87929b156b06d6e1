"""Run the benchmarks and record their tables in bench/RESULTS.md.

    python -m bench                            # all, in order
    python -m bench write_path search_latency  # only these; the other sections of RESULTS.md are kept

Each module's `main()` prints its table and returns it as Markdown (a module whose `main()` returns nothing
contributes what it printed). RESULTS.md keeps one section per module between marker comments, so results
accumulate across partial runs; the file is rewritten after every module, so a failure later keeps what was
measured before it. A failing module keeps its previous section and makes the exit status 1.
"""

from __future__ import annotations

import importlib
import io
import re
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

from bench.common import RESULTS, console, machine

MODULES = (
    "convert_fidelity",
    "attachment_extraction",
    "hostile_input",
    "write_path",
    "embedding_economy",
    "pipeline_efficiency",
    "backfill",
    "reconcile_calls",
    "webhook_latency",
    "search_latency",
    "permission_search",
    "retrieval_quality",
    "mcp_context",
    "search_scale",  # BENCH_SCALE_ROWS=1000000 for the 1M-chunk run (opt-in: hours on 2 cores)
    "queue_choice",
)
_SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n?", re.DOTALL)


class _Tee(io.TextIOBase):
    """Writes go to the terminal and to a buffer; terminal queries (isatty, fileno) go to the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.buffer_text = out, io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        return self.buffer_text.write(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def fileno(self) -> int:
        return self.out.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.out, "encoding", "utf-8")


def read_sections(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in _SECTION.finditer(text)}


def render(sections: dict[str, str], ran: list[str]) -> str:
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (`make bench`); each section is replaced when its benchmark runs again.",
        f"Last run: {now}, {machine()}: {', '.join(ran)}.",
        "",
    ]
    names = [m for m in MODULES if m in sections] + sorted(set(sections) - set(MODULES))
    for name in names:
        lines += [f"<!-- bench:{name} -->", sections[name].rstrip("\n"), f"<!-- /bench:{name} -->", ""]
    return "\n".join(lines)


def run_one(name: str) -> str:
    module = importlib.import_module(f"bench.{name}")
    saved_argv, saved_stdout = sys.argv, sys.stdout
    tee = _Tee(saved_stdout)
    sys.argv = [f"bench.{name}"]  # modules that read their own arguments get none
    sys.stdout = tee
    try:
        result: Any = module.main()
    finally:
        sys.argv, sys.stdout = saved_argv, saved_stdout
    return result if isinstance(result, str) else tee.buffer_text.getvalue()


def main(argv: list[str]) -> int:
    unknown = [a for a in argv if a not in MODULES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    chosen = [m for m in MODULES if m in argv] if argv else list(MODULES)
    sections = read_sections(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    failed: list[str] = []
    ran: list[str] = []
    for name in chosen:
        console.rule(f"bench.{name}")
        started = time.perf_counter()
        try:
            markdown = run_one(name)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        seconds = time.perf_counter() - started
        stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        where = machine().rsplit(", ", 1)[0]  # machine() ends with the date, already in the stamp
        sections[name] = f"_`bench.{name}`, run {stamp} on {where}, took {seconds:.0f} s._\n\n{markdown}"
        ran.append(name)
        RESULTS.write_text(render(sections, ran), encoding="utf-8")
        console.print(f"bench.{name}: {seconds:.0f} s")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red] (their previous sections in {RESULTS.name} are kept)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
