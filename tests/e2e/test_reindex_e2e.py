"""A model change: refused at start-up, then `reindex` rebuilds into a shadow table and swaps it in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from app.db import vector_index_names
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
            tables = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r'")}
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'data_confluence'")}
            shadow_meta = conn.execute("SELECT count(*) FROM cv_index_meta WHERE table_name <> 'confluence'").fetchone()
        assert model == ("all-minilm", 384) and dims == [(384,)]
        assert db.total_rows() == before
        # The shadow and its page records are gone; the new table has every index, under the live names.
        assert {t for t in tables if t.startswith("data_") or "reindex" in t} == {"data_confluence"}
        assert shadow_meta == (0,)
        assert names == {"data_confluence_pkey", *vector_index_names("confluence").values()}
        assert "data_confluence_embedding_idx" in names and "confluence_idx" in names

        with running(Api(new_env, tmp_path / "v2.log")) as api2:  # starts cleanly on the rebuilt table
            status = subprocess.run(
                [cli_path(), "status", "--json"], env=new_env, capture_output=True, text=True, timeout=60
            )
            assert status.returncode == 0 and '"indexed": 3' in status.stdout
            assert api2.webhook({"event": "page_updated", "page": {"id": "7000"}}).status_code == 202  # type: ignore[attr-defined]


def test_edits_creations_and_deletions_during_a_reindex_all_reach_the_new_table(
    env: dict[str, str], confluence: FakeConfluence, db: Db, tmp_path: Path
) -> None:
    """The old-model worker keeps indexing while the rebuild runs: the new table must end with its work.

    The new model's Ollama holds the rebuild on the last page (bulk order is by page id), after it has already
    rebuilt the pages edited and deleted meanwhile; a page is also created. Nothing is re-enqueued after the
    swap for these (no worker with the new model runs here), so what the new table shows is the swap's doing.
    """
    ids = [f"71{i:02d}" for i in range(6)]
    with FakeOllama(dim=384, model="all-minilm") as small, running(Api(env, tmp_path / "v1.log")) as api:
        for page_id in ids:
            confluence.put_page(page_id, title=f"Page {page_id}", body=page_body(2, 2, seed=page_id), space_key="ENG")
            assert api.webhook({"event": "page_created", "page": {"id": page_id}}).status_code == 202  # type: ignore[attr-defined]
        wait_until(lambda: all(indexed(db, page_id) for page_id in ids), what="indexed with the old model")

        small.hold_on = f"Paragraph 0 of section 0 {ids[-1]}"
        new_env = {**env, "OLLAMA_BASE_URL": small.base_url, "EMBED_MODEL": "all-minilm", "EMBED_DIM": "384"}
        rebuild = subprocess.Popen(
            [cli_path(), "reindex", "--yes"], env=new_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_until(lambda: small.held > 0, timeout=120, what="the rebuild reaching its last page")
            edited, gone, created = ids[1], ids[2], "7199"
            confluence.put_page(edited, title=f"Page {edited}", body="<p>Rollbacks need two approvals now.</p>")
            confluence.delete_page(gone)
            confluence.put_page(created, title="Created meanwhile", body="<p>A page born during the rebuild.</p>")
            for event, page_id in (("page_updated", edited), ("page_removed", gone), ("page_created", created)):
                assert api.webhook({"event": event, "page": {"id": page_id}}).status_code == 202  # type: ignore[attr-defined]
            wait_until(
                lambda: (
                    indexed(db, edited, 2)
                    and indexed(db, created)
                    and (db.state(gone) or {}).get("status") == "deleted"
                ),
                what="the old worker indexing the changes into the old table",
            )
            assert any("two approvals" in text for text, _ in db.rows(edited))  # the old table has them
            small.release()
            output, _ = rebuild.communicate(timeout=300)
        finally:
            small.release()
            if rebuild.poll() is None:
                rebuild.kill()
        assert rebuild.returncode == 0, output

    assert "Reindexed" in output
    with psycopg.connect(db.url) as conn:
        dims = conn.execute("SELECT DISTINCT vector_dims(embedding) FROM data_confluence").fetchall()
        model = conn.execute("SELECT embed_model FROM cv_index_meta WHERE table_name = 'confluence'").fetchone()
    assert dims == [(384,)] and model == ("all-minilm",)
    assert [text for text, _ in db.rows(edited)] == ["Rollbacks need two approvals now."]
    assert db.rows(gone) == []
    assert [text for text, _ in db.rows(created)] == ["A page born during the rebuild."]
    assert all(db.rows(page_id) for page_id in ids if page_id != gone)
    assert (db.state(edited) or {}).get("version") == 2 and (db.state(gone) or {}).get("status") == "deleted"
    assert db.duplicates() == 0
