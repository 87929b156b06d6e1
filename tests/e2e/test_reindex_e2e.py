"""A model change: refused at start-up, then `reindex` rebuilds into a shadow table and swaps it in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, cli_path, running, wait_until
from tests.e2e.test_pipeline_e2e import indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


def test_reindex_switches_model_and_keeps_every_page(
    env: dict[str, str], confluence: FakeConfluence, db: Db, tmp_path: Path
) -> None:
    with running(Api(env, tmp_path / "v1.log")) as api:
        for i in range(3):
            confluence.put_page(f"700{i}", title=f"Reindex {i}", body=page_body(2, 2, seed=str(i)), space_key="ENG")
            assert api.webhook({"event": "page_created", "page": {"id": f"700{i}"}}).status_code == 202  # type: ignore[attr-defined]
        wait_until(lambda: all(indexed(db, f"700{i}") for i in range(3)), what="indexed with bge-m3")
    before = db.total_rows()

    with FakeOllama(dim=384, model="all-minilm") as small:
        new_env = {**env, "OLLAMA_BASE_URL": small.base_url, "EMBED_MODEL": "all-minilm", "EMBED_DIM": "384"}
        refused = subprocess.run([cli_path(), "status"], env=new_env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "reindex" in refused.stdout + refused.stderr

        done = subprocess.run(
            [cli_path(), "reindex", "--yes"], env=new_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Reindexed 3 pages" in done.stdout
        assert small.inputs == before  # every chunk re-embedded with the new model

        with psycopg.connect(db.url) as conn:
            model = conn.execute(
                "SELECT embed_model, embed_dim FROM cv_index_meta WHERE table_name = 'confluence'"
            ).fetchone()
            dims = conn.execute("SELECT DISTINCT vector_dims(embedding) FROM data_confluence").fetchall()
            leftovers = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'data_confluence_%'").fetchone()
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'data_confluence'")}
        assert model == ("all-minilm", 384) and dims == [(384,)]
        assert db.total_rows() == before
        assert leftovers is not None and "data_confluence_embedding_idx" in names and "confluence_idx" in names
        assert not any("reindex" in n for n in names)

        with running(Api(new_env, tmp_path / "v2.log")) as api2:  # starts cleanly on the rebuilt table
            status = subprocess.run(
                [cli_path(), "status", "--json"], env=new_env, capture_output=True, text=True, timeout=60
            )
            assert status.returncode == 0 and '"indexed": 3' in status.stdout
            assert api2.webhook({"event": "page_updated", "page": {"id": "7000"}}).status_code == 202  # type: ignore[attr-defined]
