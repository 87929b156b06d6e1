-- confluence-vectors' own tables. Idempotent: applied at every start under an advisory lock.
-- The vector table itself (data_<VECTOR_TABLE>) is created in app/db.py because its name and dimension
-- come from the settings.
-- Applied at every start, under app.db's migration lock. What exists as it should is left alone, unlocked:
-- CREATE INDEX and CREATE OR REPLACE TRIGGER (SHARE, SHARE ROW EXCLUSIVE) and ALTER TABLE (ACCESS EXCLUSIVE) lock
-- their table before they look, even with IF NOT EXISTS, so a start would wait for open transactions and stall
-- readers and writers queued behind it. Hence the DO blocks that look first. The permission triggers are
-- (re)created whenever one is missing, disabled (ALTER TABLE ... DISABLE TRIGGER, an interrupted
-- pg_restore --disable-triggers) or defined otherwise: every start restores them, as CREATE OR REPLACE did.

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
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_pages') AND c.relname = 'cv_pages_status_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_pages_status_idx ON cv_pages (status);
END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_pages') AND c.relname = 'cv_pages_space_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_pages_space_idx ON cv_pages (space_key);
END IF; END $$;
-- The page's chunk (node) ids in reading order at its last write: the MCP `get_page` rebuilds the page from it.
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cv_pages')
                           AND attname = 'chunk_ids' AND NOT attisdropped) THEN
    ALTER TABLE cv_pages ADD COLUMN IF NOT EXISTS chunk_ids TEXT[];
END IF; END $$;
-- The last editor of the indexed version. Per-version fields (version, last_modified, author) live here, once per
-- page, not in every chunk row: an edit then rewrites only the rows of the chunks it changed.
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cv_pages')
                           AND attname = 'author' AND NOT attisdropped) THEN
    ALTER TABLE cv_pages ADD COLUMN IF NOT EXISTS author TEXT;
END IF; END $$;

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

-- Heartbeats of the processes that search on a standby (app/replica.py): each writes its counter here on the
-- primary every second and reads it back on the standby, to know how recent the standby's copy is.
CREATE TABLE IF NOT EXISTS cv_search_heartbeat (
    probe_id    TEXT PRIMARY KEY,
    beat        BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Webhook deliveries seen recently (digest of body or delivery id), to acknowledge re-deliveries once.
CREATE TABLE IF NOT EXISTS cv_deliveries (
    digest       TEXT PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_deliveries') AND c.relname = 'cv_deliveries_received_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_deliveries_received_idx ON cv_deliveries (received_at);
END IF; END $$;

-- ============================================================================================================
-- Permission-aware retrieval (see README "Permissions"). The rule, from Atlassian's "Page restrictions" and
-- "Space permissions" documentation: a person may read a page when they hold the space's view permission
-- (directly, through a group, or because the space is open to anonymous users) AND, for every piece of content
-- on the path from the space root to the page (folders included) that carries a read restriction, they are one
-- of its users or a member of one of its groups. Inherited restrictions intersect; they never widen access.
--
-- Principals are text keys: 'user:<Cloud account id | Data Center user key>', 'group:<Cloud group id | Data
-- Center group name>', 'anyone' (anonymous access; every person holds it) and 'logged-in' (every known person).
--
-- Fail closed: a space without a row, or with principals NULL (not established), and a path element without a
-- row in cv_restrictions, or with restricted NULL (not established), make the page visible to nobody.

-- Who holds the space's read ("view") permission. NULL principals: we could not establish it (see error).
CREATE TABLE IF NOT EXISTS cv_space_access (
    space_key   TEXT PRIMARY KEY,
    principals  TEXT[],
    error       TEXT,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The read restriction of one piece of content (page, blog post, folder), shared by every descendant's path.
-- restricted NULL: not established. principals: who the restriction admits (its users and groups).
CREATE TABLE IF NOT EXISTS cv_restrictions (
    content_id  TEXT PRIMARY KEY,
    restricted  BOOLEAN,
    principals  TEXT[] NOT NULL DEFAULT '{}',
    error       TEXT,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each indexed page's space and path: every content id from the root down to the page itself, distinct.
CREATE TABLE IF NOT EXISTS cv_page_access (
    page_id     TEXT PRIMARY KEY,
    space_key   TEXT NOT NULL,
    path        TEXT[] NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_page_access') AND c.relname = 'cv_page_access_path_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_page_access_path_idx ON cv_page_access USING GIN (path);
END IF; END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_page_access') AND c.relname = 'cv_page_access_space_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_page_access_space_idx ON cv_page_access (space_key);
END IF; END $$;

-- The invariant the fast search forms rely on (app/search.py: a path id is blocked only through its
-- cv_restrictions row): every id on a stored path has a restriction row, a placeholder "not read yet" (denies)
-- until its restriction is read. Enforced here, not only by the writers' discipline, so no writer, present or
-- future, can make a path id fail open: a path written without a row gets one, and a row a stored path still
-- names is never deleted (the DELETE is skipped for that row). The BEFORE DELETE trigger runs after the row is
-- locked, and its query takes a fresh snapshot, so it sees a path committed by a writer it waited for.
CREATE OR REPLACE FUNCTION cv_page_access_name_restrictions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cv_restrictions (content_id, restricted, error, checked_at)
    SELECT DISTINCT u.id, NULL::boolean, 'not read yet', '-infinity'::timestamptz FROM unnest(NEW.path) AS u(id)
    ON CONFLICT (content_id) DO NOTHING;
    RETURN NULL;
END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('cv_page_access')
                           AND tgname = 'cv_page_access_name_restrictions' AND tgenabled = 'O'
                           AND pg_get_triggerdef(oid) LIKE 'CREATE TRIGGER cv\_page\_access\_name\_restrictions AFTER INSERT OR UPDATE OF path ON %.cv\_page\_access FOR EACH ROW EXECUTE FUNCTION %cv\_page\_access\_name\_restrictions()') THEN
    CREATE OR REPLACE TRIGGER cv_page_access_name_restrictions
        AFTER INSERT OR UPDATE OF path ON cv_page_access
        FOR EACH ROW EXECUTE FUNCTION cv_page_access_name_restrictions();
END IF; END $$;

CREATE OR REPLACE FUNCTION cv_restrictions_keep_named() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM cv_page_access WHERE path @> ARRAY[OLD.content_id]) THEN
        RETURN NULL;  -- still named by a stored path: keep the row
    END IF;
    RETURN OLD;
END $$;
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('cv_restrictions')
                           AND tgname = 'cv_restrictions_keep_named' AND tgenabled = 'O'
                           AND pg_get_triggerdef(oid) LIKE 'CREATE TRIGGER cv\_restrictions\_keep\_named BEFORE DELETE ON %.cv\_restrictions FOR EACH ROW EXECUTE FUNCTION %cv\_restrictions\_keep\_named()') THEN
    CREATE OR REPLACE TRIGGER cv_restrictions_keep_named
        BEFORE DELETE ON cv_restrictions
        FOR EACH ROW EXECUTE FUNCTION cv_restrictions_keep_named();
END IF; END $$;

-- May a person holding the principals `viewer` read page `page`? The one definition of the rule in SQL: /search filters
-- with it inside the HNSW scan, and direct SQL / LlamaIndex readers should too. STABLE, so Postgres evaluates
-- it per row within one statement's snapshot.
-- (The parameters are named unlike any column: inside a SQL function a column of the same name would win.)
CREATE OR REPLACE FUNCTION cv_may_read(viewer TEXT[], page TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM cv_page_access AS a
        JOIN cv_space_access AS s ON s.space_key = a.space_key
        WHERE a.page_id = page
          AND s.principals && viewer
          AND (SELECT count(*) FROM cv_restrictions AS r
               WHERE r.content_id = ANY (a.path)
                 AND r.restricted IS NOT NULL
                 AND (NOT r.restricted OR r.principals && viewer)) = cardinality(a.path)
    )
$$;

-- One row per attachment of an indexed page (app/attachments/index.py): the version we last read, what we
-- extracted (so an unchanged attachment costs no download, extraction or embedding) or why it was skipped
-- (too large, unsupported type, encrypted, corrupt, no text layer, garbage text...), shown by `status`.
CREATE TABLE IF NOT EXISTS cv_attachments (
    page_id       TEXT NOT NULL,
    attachment_id TEXT NOT NULL,
    version       INTEGER NOT NULL,
    file_name     TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    size_bytes    BIGINT,
    status        TEXT NOT NULL CHECK (status IN ('indexed', 'skipped')),
    reason        TEXT,
    detail        TEXT,
    markdown      TEXT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (page_id, attachment_id)
);
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_attachments') AND c.relname = 'cv_attachments_skipped_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_attachments_skipped_idx ON cv_attachments (status) WHERE status = 'skipped';
END IF; END $$;

-- The same rule, evaluated fast inside a search: the viewer's readable spaces and the content that blocks them
-- (restricted without admitting them, or not established) are computed once per query, then each candidate row
-- costs one primary-key probe. Equal to cv_may_read because every id on a stored path has a cv_restrictions
-- row (app.access.save_page_access inserts a not-established one for any it lacks).
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                           WHERE i.indrelid = to_regclass('cv_restrictions') AND c.relname = 'cv_restrictions_guarding_idx') THEN
    CREATE INDEX IF NOT EXISTS cv_restrictions_guarding_idx ON cv_restrictions (content_id) WHERE restricted IS NOT FALSE;
END IF; END $$;

CREATE OR REPLACE FUNCTION cv_viewer_spaces(viewer TEXT[]) RETURNS TEXT[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(s.space_key ORDER BY s.space_key), '{}') FROM cv_space_access AS s
    WHERE s.principals && viewer
$$;

CREATE OR REPLACE FUNCTION cv_viewer_blocked(viewer TEXT[]) RETURNS TEXT[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(r.content_id ORDER BY r.content_id), '{}') FROM cv_restrictions AS r
    WHERE r.restricted IS NOT FALSE AND (r.restricted IS NULL OR NOT r.principals && viewer)
$$;

CREATE OR REPLACE FUNCTION cv_page_visible(page TEXT, spaces TEXT[], blocked TEXT[]) RETURNS BOOLEAN
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1 FROM cv_page_access AS a
        WHERE a.page_id = page AND a.space_key = ANY (spaces) AND NOT a.path && blocked
    )
$$;

-- The pages a viewer may read, as one set (cv_page_visible for every stored page): for SQL readers that test
-- thousands of rows, computed once and tested with a hashed `IN` (~1.6 µs a row against ~4 µs for a per-row
-- probe of cv_page_access), at a cost of ~6 ms per query at 5,000 pages. (/search no longer needs it: it tests
-- only the ~100 rows that can reach a result, app/search.py.) The pages under a blocking id are found through
-- the GIN index on path, one probe per blocked id: `path && blocked` on every row compares every pair of
-- elements. A page without an access record is not in the set: fail closed, as cv_may_read.
CREATE OR REPLACE FUNCTION cv_viewer_pages(spaces TEXT[], blocked TEXT[]) RETURNS SETOF TEXT
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT a.page_id FROM cv_page_access AS a
    WHERE a.space_key = ANY (spaces)
      AND a.page_id NOT IN (
          SELECT h.page_id FROM unnest(blocked) AS b(id) JOIN cv_page_access AS h ON h.path @> ARRAY[b.id]
      )
$$;
