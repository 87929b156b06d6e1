"""Retrieval on real Postgres: the right page first, exact terms via hybrid, filters that still fill k, and a
stock LlamaIndex retriever over the same table."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from psycopg import sql

from app.db import make_pool, vector_index_names
from app.models import Page
from app.search import SearchMode, _vector_sql, search
from app.vector_store import VectorStore, llamaindex_store, metadata_hash
from tests.unit._embed import DIM, FakeQueryEmbedder, embed_text

TABLE = "confluence"

# (page id, space, title, labels, [(heading, text), ...])
CORPUS: list[tuple[str, str, str, tuple[str, ...], list[tuple[str, str]]]] = [
    (
        "101",
        "OPS",
        "Deploy rollback",
        ("runbook", "deploy"),
        [
            (
                "When to roll back",
                "Roll back a deployment when the error rate doubles after a release or health checks fail.",
            ),
            (
                "Steps",
                "Run deployctl rollback --to previous, watch the canary, then announce the rollback in #releases.",
            ),
        ],
    ),
    (
        "102",
        "IT",
        "VPN setup",
        ("how-to",),
        [
            ("Install", "Install the WireGuard VPN client and import the VPN profile from the self-service portal."),
            (
                "Troubleshooting",
                "If the VPN tunnel drops, renew the VPN profile and check that UDP port 51820 is open.",
            ),
        ],
    ),
    (
        "103",
        "OPS",
        "On-call rotation",
        ("runbook",),
        [
            (
                "Schedule",
                "The on-call rotation hands over every Monday at 10:00; the PagerDuty schedule lists who is on call.",
            ),
            (
                "Handover",
                "Before the on-call handover, review open incidents and pending pages with the next engineer.",
            ),
        ],
    ),
    (
        "104",
        "HR",
        "Expense policy",
        ("policy",),
        [
            ("Receipts", "Submit expense receipts within 30 days; expenses without receipts are not reimbursed."),
            ("Meals", "Meal expenses are reimbursed up to 50 EUR per day while travelling for work."),
        ],
    ),
    (
        "105",
        "KO",
        "휴가 신청 방법",
        ("policy",),
        [
            ("신청", "휴가 신청은 인사 시스템에서 연차 휴가를 선택하고 팀장의 승인을 받으세요."),
            ("취소", "승인된 휴가를 취소하려면 인사 시스템에서 휴가 신청을 철회하세요."),
        ],
    ),
    (
        "106",
        "IT",
        "Password reset",
        ("how-to",),
        [
            ("Reset", "Reset a forgotten password at the identity portal; a reset link is emailed to you."),
            ("Locked", "After five wrong passwords the account is locked for fifteen minutes."),
        ],
    ),
    (
        "107",
        "OPS",
        "Database backup and restore",
        ("runbook",),
        [
            ("Backups", "Postgres backups run nightly with pgBackRest and are kept for 35 days."),
            (
                "Restore",
                "To restore a database backup, pick the backup label and run pgbackrest restore on a fresh node.",
            ),
        ],
    ),
    (
        "108",
        "HR",
        "Onboarding checklist",
        ("checklist",),
        [
            ("First day", "On the first day new hires collect a badge, a laptop and meet their onboarding buddy."),
            ("First week", "In the first week new hires finish security training and set up payroll."),
        ],
    ),
    (
        "109",
        "ENG",
        "Code review guidelines",
        ("engineering",),
        [
            ("Reviewers", "Every pull request needs one approving code review from a code owner."),
            ("Style", "Review comments should be kind, specific and suggest a change, not just criticise."),
        ],
    ),
    (
        "110",
        "ENG",
        "Release train schedule",
        ("engineering",),
        [
            ("Cadence", "The release train leaves every second Wednesday; the branch cut is on Tuesday noon."),
            ("Hotfix", "Hotfixes skip the release train but need approval from the release manager."),
        ],
    ),
    (
        "111",
        "OPS",
        "Incident postmortem template",
        ("template",),
        [
            ("Summary", "A postmortem summary states impact, duration, root cause and detection."),
            ("Actions", "List follow-up actions with owners; the follow-up ticket OPS-123 tracks the broker fix."),
        ],
    ),
    (
        "112",
        "ENG",
        "Kubernetes pod debugging",
        ("engineering", "how-to"),
        [
            (
                "CrashLoopBackOff",
                "When a pod is in CrashLoopBackOff, read kubectl logs --previous and describe the pod.",
            ),
            ("Exec", "Use kubectl exec to open a shell inside a running container of the pod."),
        ],
    ),
    (
        "113",
        "IT",
        "Office Wi-Fi and printers",
        ("office",),
        [
            ("Wi-Fi", "The office wireless network is called CorpNet; guests use the Guest network with a daily code."),
            ("Printers", "Printers on every floor accept badge release printing."),
        ],
    ),
    (
        "114",
        "HR",
        "Travel booking policy",
        ("policy",),
        [
            ("Flights", "Book flights through the travel agency; economy class for flights under six hours."),
            ("Hotels", "Hotels are booked through the travel portal within the city rate cap."),
        ],
    ),
    (
        "115",
        "HR",
        "Parental leave",
        ("policy",),
        [
            (
                "Entitlement",
                "Parents receive sixteen weeks of paid parental leave after the birth or adoption of a child.",
            ),
        ],
    ),
    (
        "116",
        "ENG",
        "Feature flags",
        ("engineering",),
        [
            ("Usage", "Wrap risky changes in a feature flag and enable the flag gradually per tenant."),
            ("Cleanup", "Remove a feature flag within two sprints after full rollout."),
        ],
    ),
    (
        "117",
        "ENG",
        "API rate limits",
        ("engineering", "api"),
        [
            ("Limits", "The public API allows 600 requests per minute per token; bursts above return HTTP 429."),
        ],
    ),
    (
        "118",
        "OPS",
        "Monitoring dashboards",
        ("runbook",),
        [
            ("Grafana", "Grafana dashboards show latency, saturation and error budgets for every service."),
            ("Alerts", "Alertmanager routes critical alerts to the on-call pager and warnings to Slack."),
        ],
    ),
    (
        "119",
        "ENG",
        "Secrets management",
        ("engineering", "security"),
        [
            ("Vault", "Application secrets live in HashiCorp Vault; never commit secrets to git."),
            ("Rotation", "Database credentials are rotated by Vault every 24 hours."),
        ],
    ),
    (
        "120",
        "IT",
        "Laptop hardware request",
        ("how-to",),
        [
            ("Request", "Request a new laptop or monitor through the IT hardware catalogue."),
        ],
    ),
    (
        "121",
        "ENG",
        "Payment gateway error codes",
        ("engineering", "api"),
        [
            ("Overview", "The payment gateway answers every failed charge with an error code and a retry hint."),
            (
                "Card errors",
                "Card errors: ERR-4701 card expired, ERR-4702 card declined, ERR-4703 insufficient funds, "
                "ERR-4704 wrong CVC. Ask the customer to use another card.",
            ),
            (
                "Network errors",
                "Network errors are transient. ERR-4710 gateway timeout. ERR-4712 acquirer timeout. Retry them.",
            ),
            (
                "Issuer errors",
                "Issuer side problems are rare and usually resolve themselves within minutes after the "
                "issuing bank recovers; the checkout shows a generic message, support sees the code in the admin "
                "console, and finance reconciles the failed charges at the end of the day. For example ERR-4711 means "
                "the issuer did not answer, so the charge is safe to retry once after thirty seconds.",
            ),
            (
                "Fraud errors",
                "Fraud errors: ERR-4720 blocked by risk rules, ERR-4721 velocity limit. Never retry them.",
            ),
        ],
    ),
    (
        "122",
        "SUP",
        "Customer support escalation",
        ("support",),
        [
            ("Levels", "Tier 1 answers tickets; unresolved tickets escalate to tier 2 after four hours."),
        ],
    ),
    (
        "123",
        "LEGAL",
        "Data retention and GDPR",
        ("policy", "legal"),
        [
            ("Retention", "Customer personal data is deleted 30 days after account closure, as GDPR requires."),
        ],
    ),
    (
        "124",
        "MKT",
        "Brand guidelines",
        ("marketing",),
        [
            ("Logo", "Use the logo on white backgrounds with clear space equal to the height of the letter C."),
        ],
    ),
    (
        "125",
        "HR",
        "Team offsite planning",
        ("events",),
        [
            ("Budget", "Team offsites are planned once a year with a budget of 300 EUR per person."),
        ],
    ),
    (
        "126",
        "OPS",
        "TLS certificate renewal",
        ("runbook", "security"),
        [
            ("Renewal", "TLS certificates are renewed automatically by cert-manager 30 days before expiry."),
        ],
    ),
    (
        "127",
        "ENG",
        "Git branching strategy",
        ("engineering",),
        [
            ("Branches", "We use trunk based development with short lived feature branches merged by squash."),
        ],
    ),
    (
        "128",
        "HR",
        "Performance review cycle",
        ("policy",),
        [
            ("Cycle", "Performance reviews happen twice a year, in March and September, with self assessment first."),
        ],
    ),
    (
        "129",
        "IT",
        "Meeting room booking",
        ("office",),
        [
            ("Booking", "Book meeting rooms in the calendar; rooms unused for fifteen minutes are released."),
        ],
    ),
    (
        "130",
        "DE",
        "Urlaubsantrag stellen",
        ("policy",),
        [
            ("Antrag", "Den Urlaubsantrag stellst du im Personalportal; die Führungskraft genehmigt den Urlaub."),
        ],
    ),
]

QUESTIONS = [
    ("how do I roll back a failed deployment", "101"),
    ("VPN client setup WireGuard profile", "102"),
    ("who is on call this week rotation", "103"),
    ("are meal expenses reimbursed", "104"),
    ("휴가 신청 어떻게 해요", "105"),
    ("I forgot my password how to reset it", "106"),
    ("restore a postgres database backup", "107"),
    ("kubectl pod CrashLoopBackOff logs", "112"),
    ("parental leave weeks", "115"),
    ("API rate limit requests per minute 429", "117"),
    ("where are application secrets stored Vault", "119"),
    ("Urlaubsantrag Personalportal", "130"),
]


def make_page(page_id: str, space: str, title: str, labels: tuple[str, ...]) -> Page:
    return Page(
        id=page_id,
        title=title,
        space_key=space,
        version=3,
        last_modified=datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
        url=f"https://wiki.example.com/spaces/{space}/pages/{page_id}",
        body_storage="",
        space_name=f"{space} space",
        labels=labels,
    )


def make_nodes(page: Page, sections: list[tuple[str, str]]) -> list[TextNode]:
    nodes = []
    for heading, text in sections:
        metadata: dict[str, Any] = {
            "page_id": page.id,
            "title": page.title,
            "url": page.url,
            "space_key": page.space_key,
            "space_name": page.space_name,
            "author": "Ada",
            "version": page.version,
            "last_modified": page.last_modified.isoformat(),
            "labels": list(page.labels),
            "ancestors": [],
            "content_type": "page",
            "header_path": heading,
            "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        }
        node = TextNode(
            id_=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{page.id}:{heading}:{text}")), text=text, metadata=metadata
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=page.id)
        nodes.append(node)
    return nodes


def embedded(page: Page, node: TextNode) -> list[float]:
    """What the pipeline embeds: the title and heading path prefixed to the chunk."""
    return embed_text(f"title: {page.title}\nheader_path: {node.metadata['header_path']}\n\n{node.text}")


async def write_page(store: VectorStore, page: Page, sections: list[tuple[str, str]]) -> None:
    nodes = make_nodes(page, sections)
    result = await store.replace_page(
        page, nodes, {n.node_id: embedded(page, n) for n in nodes}, page_meta_hash=metadata_hash({"v": 1})
    )
    assert result.written


async def load_corpus(pool: Any, pages: Any = None) -> None:
    """Write `pages` (default: the whole `CORPUS`) into the test table."""
    store = VectorStore(pool, TABLE)
    for page_id, space, title, labels, sections in CORPUS if pages is None else pages:
        await write_page(store, make_page(page_id, space, title, labels), sections)


#: The questions plus an error code, a ticket key and a stop word: the queries a ranking comparison runs.
RANKING_QUERIES = [q for q, _ in QUESTIONS] + ["what does error ERR-4711 mean?", "OPS-123", "the"]


async def rankings(pool: Any, queries: list[str] = RANKING_QUERIES) -> list[list[tuple[str, float]]]:
    """Each query's top 10 (hybrid, service account) as (node id, score): what must not change between two states."""
    embedder = FakeQueryEmbedder()
    return [[(h.node_id, h.score) for h in await search(pool, embedder, TABLE, q, k=10)] for q in queries]


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_questions_find_their_page_first(pool: Any, mode: SearchMode) -> None:
    await load_corpus(pool)
    embedder = FakeQueryEmbedder()
    misses = []
    for question, page_id in QUESTIONS:
        hits = await search(pool, embedder, TABLE, question, k=5, mode=mode)
        if not hits or hits[0].page_id != page_id:
            misses.append((question, page_id, [(h.page_id, round(h.score, 4)) for h in hits]))
    assert misses == []
    assert len(embedder.calls) == len(QUESTIONS)  # one embedding per query, whatever the mode


async def test_hit_carries_page_metadata(pool: Any) -> None:
    await load_corpus(pool)
    hits = await search(pool, FakeQueryEmbedder(), TABLE, "restore a postgres database backup", k=3)
    top = hits[0]
    assert top.page_id == "107" and top.title == "Database backup and restore" and top.space_key == "OPS"
    assert top.url == "https://wiki.example.com/spaces/OPS/pages/107"
    assert top.header_path == "Restore" and "pgbackrest restore" in top.text
    assert top.version == 3 and top.last_modified == "2026-02-01T12:00:00+00:00"
    assert top.node_id and top.score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_vector_scores_are_cosine_similarities(pool: Any) -> None:
    await load_corpus(pool)
    hits = await search(pool, FakeQueryEmbedder(), TABLE, "parental leave weeks", k=3, mode=SearchMode.VECTOR)
    query = np.asarray(embed_text("parental leave weeks"))
    page = make_page("115", "HR", "Parental leave", ("policy",))
    node = make_nodes(page, CORPUS[14][4])[0]
    expected = float(query @ np.asarray(embedded(page, node)))
    assert hits[0].score == pytest.approx(expected, abs=1e-5)


async def test_exact_error_code_found_only_by_hybrid(pool: Any) -> None:
    """ERR-4711 sits deep inside one long chunk; near-identical codes in short chunks fool the embedding."""
    await load_corpus(pool)
    embedder = FakeQueryEmbedder()
    vector = await search(pool, embedder, TABLE, "ERR-4711", k=5, mode=SearchMode.VECTOR)
    hybrid = await search(pool, embedder, TABLE, "ERR-4711", k=5, mode=SearchMode.HYBRID)
    assert "ERR-4711" not in vector[0].text
    assert "ERR-4711" in hybrid[0].text and hybrid[0].header_path == "Issuer errors"

    # Inside a question too: "what", "does" and "mean" must not drown the code.
    hits = await search(pool, embedder, TABLE, "what does error ERR-4711 mean?", k=5)
    assert "ERR-4711" in hits[0].text


async def test_ticket_key_found_by_hybrid(pool: Any) -> None:
    await load_corpus(pool)
    hits = await search(pool, FakeQueryEmbedder(), TABLE, "OPS-123", k=3)
    assert hits[0].page_id == "111" and "OPS-123" in hits[0].text


async def test_query_words_common_to_all_rows_do_not_break_keyword_side(pool: Any) -> None:
    """A query made only of words found everywhere still answers (the vector side carries it)."""
    await load_corpus(pool)
    hits = await search(pool, FakeQueryEmbedder(), TABLE, "the", k=4)
    assert len(hits) == 4


async def test_ranking_does_not_depend_on_when_the_table_was_last_analyzed(pool: Any) -> None:
    """Statistics taken while a wiki was half indexed (autovacuum analyzes mid-backfill) must not change the
    ranking of the full table: word rarity comes from counts kept exact on every write (`app.term_counts`), never
    from `pg_stats` / `reltuples`. Measured before: 11 of 46 top-10 rankings of bench/retrieval_quality changed
    between a stale and a fresh ANALYZE."""
    third = len(CORPUS) // 3
    await load_corpus(pool, CORPUS[:third])
    async with pool.connection() as conn:
        await conn.execute(f"ANALYZE data_{TABLE}")  # statistics of a third of the wiki
    await load_corpus(pool, CORPUS[third:])
    stale = await rankings(pool)
    async with pool.connection() as conn:
        await conn.execute(f"ANALYZE data_{TABLE}")
    assert await rankings(pool) == stale


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_space_and_label_filters(pool: Any, mode: SearchMode) -> None:
    await load_corpus(pool)
    embedder = FakeQueryEmbedder()
    hits = await search(pool, embedder, TABLE, "how do I roll back a failed deployment", k=5, space="HR", mode=mode)
    assert hits and {h.space_key for h in hits} == {"HR"}
    assert len(hits) == 5

    hits = await search(pool, embedder, TABLE, "VPN profile", k=10, label="office", mode=mode)
    assert {h.page_id for h in hits} == {"113", "129"}  # the only pages labelled office, 3 chunks
    assert len(hits) == 3

    hits = await search(pool, embedder, TABLE, "VPN profile", k=10, space="IT", label="nope", mode=mode)
    assert hits == []


async def test_blank_query_and_empty_table(pool: Any) -> None:
    embedder = FakeQueryEmbedder()
    assert await search(pool, embedder, TABLE, "   ") == []
    assert embedder.calls == []
    assert await search(pool, embedder, TABLE, "anything") == []
    with pytest.raises(ValueError):
        await search(pool, embedder, TABLE, "anything", k=0)


async def test_hostile_query_text_is_just_text(pool: Any) -> None:
    await load_corpus(pool)
    for query in ["'; DROP TABLE data_confluence; --", "a & b | !c <-> (d", "%(k)s %s {t}", "\\", '"unclosed']:
        await search(pool, FakeQueryEmbedder(), TABLE, query, k=3)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM data_confluence")).fetchone()
    assert row is not None and row[0] > 30


# --- selective filters: the iterative index scan ------------------------------------------------------------
BULK_TOPIC = "deployment rollback release canary health check error rate"


async def load_haystack(pool: Any) -> None:
    """300 chunks: 295 close to the query in space BULK, 5 far from it in space RARE (label `rare`)."""
    store = VectorStore(pool, TABLE)
    rng = np.random.default_rng(7)
    words = BULK_TOPIC.split()
    for i in range(64):
        page_id = str(1000 + i)
        rare = i % 12 == 5  # pages 1005, 1017, ... spread through insertion order
        space = "RARE" if rare else "BULK"
        labels = ("rare",) if rare else ("bulk",)
        sections = []
        for j in range(5):
            if rare and j == 0:
                text = f"Lunch menu {i}: soup, salad and bread for the canteen."
            elif rare:
                continue
            else:
                text = " ".join(rng.choice(words, size=8)) + f" variant {i}-{j}"
            sections.append((f"Part {j}", text))
        await write_page(store, make_page(page_id, space, f"Page {i}", labels), sections)
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT count(*) FROM data_confluence")).fetchone()
    assert rows is not None and rows[0] == 295 + 5


@pytest.fixture()
async def index_only_pool(db_url: str) -> Any:
    """A pool whose sessions avoid sequential scans, so a 300-row table is still searched through HNSW."""
    from psycopg.conninfo import make_conninfo

    p = make_pool(make_conninfo(db_url, options="-c enable_seqscan=off"), max_size=2)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


async def test_selective_label_filter_still_returns_k(index_only_pool: Any) -> None:
    pool = index_only_pool
    await load_haystack(pool)
    embedder = FakeQueryEmbedder()
    query = "how to roll back a deployment when the error rate rises"
    statement = _vector_sql(TABLE, space=None, label="rare")
    params = {"embedding": np.asarray(embed_text(query), dtype=np.float32), "k": 5, "label": "rare"}
    async with pool.connection() as conn, conn.transaction():
        plan = "\n".join(
            r[0] for r in await (await conn.execute(b"EXPLAIN " + statement.as_bytes(conn), params)).fetchall()
        )
        assert "data_confluence_embedding_idx" in plan  # the case under test: HNSW, then the filter
        await conn.execute("SET LOCAL hnsw.iterative_scan = off")
        without = await (await conn.execute(statement, params)).fetchall()
    assert len(without) < 5  # what pgvector < 0.8 (or iterative scans off) would answer

    for mode in SearchMode:
        hits = await search(pool, embedder, TABLE, query, k=5, label="rare", mode=mode)
        assert len(hits) == 5 and {h.space_key for h in hits} == {"RARE"}


async def test_selective_space_filter_still_returns_k(pool: Any) -> None:
    await load_haystack(pool)
    for mode in SearchMode:
        hits = await search(pool, FakeQueryEmbedder(), TABLE, BULK_TOPIC, k=5, space="RARE", mode=mode)
        assert len(hits) == 5 and {h.space_key for h in hits} == {"RARE"}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_latency_is_reasonable(pool: Any) -> None:
    """Not a benchmark: catches a plan gone quadratic (hundreds of ms on 300 rows)."""
    await load_haystack(pool)
    embedder = FakeQueryEmbedder()
    for mode in SearchMode:
        await search(pool, embedder, TABLE, BULK_TOPIC, k=10, mode=mode)  # warm
        started = time.perf_counter()
        for _ in range(10):
            await search(pool, embedder, TABLE, BULK_TOPIC, k=10, mode=mode)
        assert (time.perf_counter() - started) / 10 < 0.25


# --- LlamaIndex reads the same table ------------------------------------------------------------------------
async def test_llamaindex_retriever_over_our_table(pool: Any, db_url: str) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding

    class FakeEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embed_text(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return embed_text(text)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embed_text(query)

    await load_corpus(pool)
    store = llamaindex_store(db_url, TABLE, DIM)
    index = VectorStoreIndex.from_vector_store(store, embed_model=FakeEmbedding(embed_batch_size=8))
    retrieved = index.as_retriever(similarity_top_k=3).retrieve("restore a postgres database backup")
    top = retrieved[0].node
    assert top.metadata["page_id"] == "107" and top.ref_doc_id == "107"
    assert "pgbackrest restore" in top.get_content()


# --- issue 14: ranking faults found with a real model ---------------------------------------------------------------
class ConstantEmbedder:
    """Every text at the same point: the semantic ranking ties everywhere, so the lexical ranking and the
    tie-breaks alone decide the hybrid order."""

    async def aget_query_embedding(self, query: str) -> list[float]:
        return [1.0] + [0.0] * (DIM - 1)


async def write_chunks(pool: Any, page: Page, chunks: list[tuple[str, str, str]]) -> None:
    """(node id, heading, text) rows with the constant embedding, written in the order given."""
    store = VectorStore(pool, TABLE)
    nodes = []
    for node_id, heading, text in chunks:
        node = make_nodes(page, [(heading, text)])[0]
        node.id_ = node_id
        nodes.append(node)
    vector = [1.0] + [0.0] * (DIM - 1)
    result = await store.replace_page(
        page, nodes, {n.node_id: vector for n in nodes}, page_meta_hash=metadata_hash({"v": 1})
    )
    assert result.written


async def test_page_named_by_its_title_ranks_above_a_page_linking_to_it(pool: Any) -> None:
    """The postmortem's key is only in its title; the index page names it in its text. Titles are part of the
    full-text document (weight A), so the page the key names comes first."""
    await write_chunks(
        pool,
        make_page("301", "OPS", "Postmortem PM-2024-017: label printing outage", ()),
        [("c-301", "Root cause", "The intermediate certificate of the label gateway expired.")],
    )
    await write_chunks(
        pool,
        make_page("302", "OPS", "Incident reviews 2024", ()),
        [("a-302", "Index", "PM-2024-031, PM-2024-023 and PM-2024-017: read each postmortem for its causes.")],
    )
    hits = await search(pool, ConstantEmbedder(), TABLE, "PM-2024-017", k=2)
    assert [h.page_id for h in hits] == ["301", "302"]


async def test_full_text_stems_words(pool: Any) -> None:
    """ "sentinels" finds "Sentinel" (the `simple` configuration found nothing, leaving node id order)."""
    page = make_page("303", "OPS", "Redis failover", ())
    await write_chunks(
        pool,
        page,
        [
            ("a-303", "Replicas", "Two replicas follow the primary."),
            ("b-303", "Alerts", "Alerts go to the on-call engineer."),
            ("z-303", "Failover", "A quorum of 2 of the 3 Sentinel processes must agree."),
        ],
    )
    hits = await search(pool, ConstantEmbedder(), TABLE, "how many sentinels are there", k=3)
    assert hits[0].node_id == "z-303"


async def test_ties_break_by_node_id_not_by_row_order(pool: Any) -> None:
    """Equal scores are ordered by the content-derived node id, whatever order the rows were written in (row
    ids follow write order, which differs between a first sync, a reindex and a re-sync)."""
    texts = [(f"{c}-304", "Same", "Identical text about release trains.") for c in "dbca"]
    await write_chunks(pool, make_page("304", "ENG", "Trains", ()), texts)
    for mode in SearchMode:
        hits = await search(pool, ConstantEmbedder(), TABLE, "release trains", k=4, mode=mode)
        assert [h.node_id for h in hits] == ["a-304", "b-304", "c-304", "d-304"], mode


# --- VECTOR_TYPE=halfvec ---------------------------------------------------------------------------------------------
async def test_halfvec_table_is_written_and_searched_like_a_vector_table(pool: Any, db_url: str) -> None:
    """A halfvec table (pgvector >= 0.7) takes the binary COPY write path and both search modes, ranks like the
    float32 table, keeps its HNSW index usable, and a stock `PGVectorStore(use_halfvec=True)` reads it."""
    from app.db import ensure_vector_table, vector_index_names
    from app.errors import IndexModelMismatch

    async with pool.connection() as conn:
        await ensure_vector_table(conn, "half", DIM, "halfvec")
        row = await (
            await conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (vector_index_names("half")["embedding"],)
            )
        ).fetchone()
        assert row is not None and "halfvec_cosine_ops" in row[0]
        with pytest.raises(IndexModelMismatch, match="reindex"):
            await ensure_vector_table(conn, "half", DIM, "vector")  # a type change needs a reindex
    await load_corpus(pool)
    half = VectorStore(pool, "half", track_state=False)
    for page_id, space, title, labels, sections in CORPUS:
        await write_page(half, make_page(page_id, space, title, labels), sections)
    embedder = FakeQueryEmbedder()
    for mode in SearchMode:
        for question, page_id in QUESTIONS:
            full = await search(pool, embedder, TABLE, question, k=3, mode=mode)
            halved = await search(pool, embedder, "half", question, k=3, mode=mode)
            assert halved[0].page_id == page_id == full[0].page_id
            assert halved[0].score == pytest.approx(full[0].score, abs=2e-3)

    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    class QueryOnly(MockEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embed_text(query)

    store = llamaindex_store(db_url, "half", DIM, use_halfvec=True)
    index = VectorStoreIndex.from_vector_store(store, embed_model=QueryOnly(embed_dim=DIM))
    top = index.as_retriever(similarity_top_k=1).retrieve("restore a postgres database backup")[0].node
    assert top.metadata["page_id"] == "107"


@pytest.mark.parametrize("mode", list(SearchMode))
@pytest.mark.parametrize("exact", [False, True])
async def test_equal_distances_are_ordered_by_node_id_wherever_the_rows_lie(
    pool: Any, mode: SearchMode, exact: bool
) -> None:
    """The same chunk text on many pages (a template, a pasted paragraph) gives equal distances: which of them
    fill the last places of a scan's LIMIT must not depend on where they lie in the heap (found by
    test_break_issue12_sampling: a person's answer changed when rows they may not read were deleted)."""
    text = "Boilerplate: contact the service desk before changing production access."
    vector = np.asarray(embed_text(text), dtype=np.float32)
    async with pool.connection() as conn:
        if exact:  # no HNSW index: the exact scan's top-N sort
            await conn.execute(f"DROP INDEX {vector_index_names(TABLE)['embedding']}")
        for i in reversed(range(120)):  # written in descending node_id order
            await conn.execute(
                f"INSERT INTO data_{TABLE} (text, metadata_, node_id, embedding) VALUES (%s, %s, %s, %s)",
                (text, json.dumps({"ref_doc_id": str(500 + i), "title": "T"}), f"dup-{i:03d}", vector),
            )

    async def first_five() -> list[str]:
        hits = await search(pool, FakeQueryEmbedder(), TABLE, text, k=5, mode=mode)
        return [h.node_id for h in hits]

    assert await first_five() == [f"dup-{i:03d}" for i in range(5)]
    async with pool.connection() as conn:  # move the first rows to the end of the heap
        await conn.execute(f"UPDATE data_{TABLE} SET text = text WHERE node_id < 'dup-060'")
    assert await first_five() == [f"dup-{i:03d}" for i in range(5)]


async def test_a_small_table_is_searched_exactly_whatever_its_statistics(pool: Any, monkeypatch: Any) -> None:
    """Up to EXACT_SCAN_ROWS chunks the nearest rows come from an exact scan, chosen on the kept row count rather
    than by the planner, whose choice flipped with ANALYZE (before it: the HNSW index, an approximation; after it:
    an exact scan; bench/retrieval_quality: 1-2 of 46 top-10 lists changed). Larger tables, and tables without
    kept counts, use the index."""
    import app.search as search_module

    await load_corpus(pool)
    chosen: list[bool] = []
    real = search_module._nearest_cte

    def spy(*args: Any, **kwargs: Any) -> Any:
        chosen.append(kwargs.get("hnsw", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "_nearest_cte", spy)
    for mode in SearchMode:
        await search(pool, FakeQueryEmbedder(), TABLE, "restore a postgres database backup", k=5, mode=mode)
    assert chosen == [False, False]
    async with pool.connection() as conn:  # the exact statement, before any ANALYZE, does not touch the index
        stmt = search_module._vector_sql(TABLE, space=None, label=None, hnsw=False)
        vector = np.asarray(embed_text("restore a postgres database backup"), dtype=np.float32)
        plan = await (await conn.execute(sql.SQL("EXPLAIN ") + stmt, {"embedding": vector, "k": 5})).fetchall()
        assert vector_index_names(TABLE)["embedding"] not in "\n".join(r[0] for r in plan)

    chosen.clear()
    monkeypatch.setattr(search_module, "EXACT_SCAN_ROWS", 10)  # the corpus has more chunks than that
    await search(pool, FakeQueryEmbedder(), TABLE, "restore a postgres database backup", k=5)
    monkeypatch.setattr(search_module, "EXACT_SCAN_ROWS", 2_000)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")  # a table without counts
    await search(pool, FakeQueryEmbedder(), TABLE, "restore a postgres database backup", k=5)
    assert chosen == [True, True]
