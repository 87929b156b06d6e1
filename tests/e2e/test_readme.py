"""Every code block README.md shows users runs as written (issue 13): Python and SQL against real Postgres
holding an indexed corpus and the fake Ollama over HTTP, `make` lines as make dry-runs, command synopses
against the CLI's own options, MCP configuration snippets against the real `mcp` command and `/mcp` route.

A block no checker claims fails the test: a new kind of example must come with a way to run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.cli import _bundled_psql
from tests.e2e.harness import REPO, cli_path
from tests.fakes import ollama
from tests.integration.test_search import CORPUS, load_corpus

README = (REPO / "README.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"^```([a-z]*)\n(.*?)^```", re.S | re.M)
BLOCKS = [(lang, body) for lang, body in _BLOCK.findall(README)]
TITLES = {entry[2] for entry in CORPUS}


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


@pytest.fixture()
async def corpus_db(pool: Any, db_url: str) -> str:
    await load_corpus(pool)
    return db_url


def test_every_block_has_a_checker() -> None:
    known = {"python", "sql", "sh", "json", ""}
    assert {lang for lang, _ in BLOCKS} <= known, {lang for lang, _ in BLOCKS} - known
    for body in blocks(""):
        kind = _plain_kind(body)
        assert kind is not None, f"README block with no checker:\n{body}"


def _plain_kind(body: str) -> str | None:
    if "─►" in body:
        return "diagram"  # the architecture figure: not code
    if body.startswith("https://") and body.count("\n") == 1:
        return "url"  # the webhook URL to register, checked by the webhook tests
    if all(line.startswith("confluence-vectors ") for line in body.splitlines() if line.strip()):
        return "synopsis"
    return None


async def test_python_examples_run(corpus_db: str, tmp_path: Path) -> None:
    with ollama.FakeOllama() as fake:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": corpus_db,
            "OLLAMA_BASE_URL": fake.base_url,
        }
        assert blocks("python"), "the README shows Python"
        for body in blocks("python"):
            run = subprocess.run(
                [sys.executable, "-c", body], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            assert run.returncode == 0, run.stderr[-3000:]
            if ".retrieve(" in body:  # the retrieval example prints score, title and URL of its top 5
                lines = run.stdout.strip().splitlines()
                assert len(lines) == 5 and all(any(t in line for t in TITLES) for line in lines), run.stdout
                assert fake.calls >= 1, "the example's embedder must reach OLLAMA_BASE_URL"


async def test_sql_examples_run_in_psql(corpus_db: str) -> None:
    psql = _bundled_psql()
    assert psql is not None
    vector = json.dumps(ollama.embed_text("how do we roll back a deploy"))
    assert blocks("sql"), "the README shows SQL"
    for body in blocks("sql"):
        if ":'q'" in body:
            first = body.splitlines()[0]
            assert first.startswith("-- psql -v q="), "the example says how to give it the query vector"
        run = subprocess.run(
            [psql, corpus_db, "-v", "ON_ERROR_STOP=1", "-v", f"q={vector}", "-At", "-F", "|"],
            input=body,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, (body, run.stderr)
        if "embedding <=>" in body:  # the nearest-chunks example: title, section, URL, score
            rows = [line.split("|") for line in run.stdout.strip().splitlines()]
            assert rows and all(title in TITLES and -1 <= float(score) <= 1 for title, _, _, score in rows), rows


def test_make_lines_are_real_targets() -> None:
    for body in blocks("sh"):
        for line in body.splitlines():
            command = line.split("#", 1)[0].split()
            assert command[0] == "make", line
            dry = subprocess.run(["make", "-n", *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
            assert dry.returncode == 0, (line, dry.stderr)


def _help(command: str) -> str:
    run = subprocess.run([cli_path(), command, "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (command, run.stderr)
    return run.stdout


def test_command_synopses_use_real_commands_and_options() -> None:
    synopses = [body for body in blocks("") if _plain_kind(body) == "synopsis"]
    assert synopses
    for body in synopses:
        for line in body.splitlines():
            words = line.split("#", 1)[0].split()
            usage = _help(words[1])
            for option in (w.strip("[]|") for w in words[2:]):
                if option.startswith("--"):
                    assert option in usage, (line, option)


def test_mcp_configuration_snippets() -> None:
    configs = [json.loads(body)["mcpServers"] for body in blocks("json")]
    servers = [server for config in configs for server in config.values()]
    stdio = [s for s in servers if "command" in s]
    http = [s for s in servers if "url" in s]
    assert stdio and http
    for server in stdio:
        assert server["command"].rsplit("/", 1)[-1] == "confluence-vectors" and server["args"][0] == "mcp"
        usage = _help("mcp")
        assert all(option in usage for option in server["args"][1:] if option.startswith("--"))
    for server in http:
        assert server["url"].endswith("/mcp") and server["type"] == "http"
        assert server["headers"]["Authorization"].startswith("Bearer ")
        assert "X-Confluence-User" in server["headers"]
