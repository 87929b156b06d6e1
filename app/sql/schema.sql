-- confluence-vectors' own tables. Idempotent: applied at every start under an advisory lock.
-- The vector table itself (data_<VECTOR_TABLE>) is created in app/db.py because its name and dimension
-- come from the settings.

-- The single record of what we hold for each page: what version we indexed, why we did not, what failed.
CREATE TABLE IF NOT EXISTS cv_pages (
    page_id        TEXT PRIMARY KEY,
    content_type   TEXT NOT NULL DEFAULT 'page',
    space_key      TEXT,
    title          TEXT,
    url            TEXT,
    version        INTEGER,
    last_modified  TIMESTAMPTZ,
    -- pending | indexed | deleted | skipped | failed
    status         TEXT NOT NULL DEFAULT 'pending',
    reason         TEXT,
    content_hash   TEXT,
    meta_hash      TEXT,
    chunk_count    INTEGER NOT NULL DEFAULT 0,
    indexed_at     TIMESTAMPTZ,
    last_error     TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cv_pages_status_idx ON cv_pages (status);
CREATE INDEX IF NOT EXISTS cv_pages_space_idx ON cv_pages (space_key);
-- The page's chunk (node) ids in reading order at its last write: the MCP `get_page` rebuilds the page from it.
ALTER TABLE cv_pages ADD COLUMN IF NOT EXISTS chunk_ids TEXT[];

-- Which embedding model and dimension built each vector table: a model change must not mix vectors.
CREATE TABLE IF NOT EXISTS cv_index_meta (
    table_name   TEXT PRIMARY KEY,
    embed_model  TEXT NOT NULL,
    embed_dim    INTEGER NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Small key/value state: reconciliation checkpoint, backfill cursors, the active table after a reindex.
CREATE TABLE IF NOT EXISTS cv_state (
    key         TEXT PRIMARY KEY,
    value       JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Webhook deliveries seen recently (digest of body or delivery id), to acknowledge re-deliveries once.
CREATE TABLE IF NOT EXISTS cv_deliveries (
    digest       TEXT PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cv_deliveries_received_idx ON cv_deliveries (received_at);
