"""The retrieval benchmark's scoring (bench/retrieval_quality.py) gives known values on a tiny example, and the
labelled set is self-consistent (every answer string is on its page as our converter renders it)."""

from __future__ import annotations

import math

import pytest

from bench.quality import Question, contains_answer, load_questions
from bench.retrieval_quality import Hit, budget_text, evaluate, export_view, page_ranking


def q(qid: str, page: str, answer: str, kind: str = "paraphrase") -> Question:
    return Question(id=qid, q=f"question {qid}", page=page, answer=answer, type=kind, split="test")


def test_metrics_on_a_tiny_example() -> None:
    questions = [q("a", "P1", "alpha"), q("b", "P2", "beta"), q("c", "P3", "gamma", "keyword")]
    chunks = {"n1": "alpha here", "n2": "nothing", "n3": "beta there", "n4": "more", "n5": "gamma elsewhere"}
    results = {
        "a": [Hit("n1", "P1", chunks["n1"]), Hit("n2", "P9", chunks["n2"])],  # page at rank 1
        "b": [Hit("n2", "P9", chunks["n2"]), Hit("n4", "P9", chunks["n4"]), Hit("n3", "P2", chunks["n3"])],
        "c": [Hit("n4", "P7", chunks["n4"])],  # page never found
    }
    scores = evaluate(questions, results, chunks)
    # "b": P9 twice, so P2 is the second *page* although its chunk is third.
    assert scores.overall["hit_rate@1"] == pytest.approx(1 / 3)
    assert scores.overall["hit_rate@5"] == pytest.approx(2 / 3)
    assert scores.overall["mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert scores.overall["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert scores.overall["answer@5"] == pytest.approx(2 / 3)  # a and b have the answer chunk in the top 5
    assert scores.by_type["keyword"]["mrr@10"] == 0.0
    assert scores.by_type["paraphrase"]["mrr@10"] == pytest.approx(0.75)
    assert scores.rankings["b"] == ["n2", "n4", "n3"]


def test_equal_reading_budget_cuts_the_text_not_the_ranking() -> None:
    hits = [Hit("n1", "P1", "x" * 30), Hit("n2", "P1", "the answer is 42")]
    assert contains_answer(budget_text(hits, budget=46), "answer is 42")
    assert not contains_answer(budget_text(hits, budget=40), "answer is 42")
    questions = [q("a", "P1", "answer is 42")]
    long_first = {"a": [Hit("n1", "P1", "x" * 4000), Hit("n2", "P1", "the answer is 42")]}
    assert evaluate(questions, long_first, {"n1": "x", "n2": "the answer is 42"}).overall["budget"] == 0.0


def test_page_ranking_keeps_first_occurrence() -> None:
    hits = [Hit("1", "A", ""), Hit("2", "B", ""), Hit("3", "A", ""), Hit("4", "C", "")]
    assert page_ranking(hits) == ["A", "B", "C"]


def test_answers_match_across_renderings() -> None:
    assert contains_answer("| Critical | **7 days** |", "critical 7 days")
    assert contains_answer("set RATELIMIT\\_FAIL\\_OPEN=true\nnow", "RATELIMIT_FAIL_OPEN=true")
    assert not contains_answer("14 days", "7 days")


def test_export_view_renders_code_and_links_as_text() -> None:
    storage = (
        '<ac:structured-macro ac:name="code"><ac:parameter ac:name="language">bash</ac:parameter>'
        '<ac:parameter ac:name="title">Restore</ac:parameter><ac:plain-text-body><![CDATA[a < b && c]]>'
        "</ac:plain-text-body></ac:structured-macro>"
        '<p>see <ac:link><ri:page ri:content-title="Expense policy" /></ac:link></p>'
    )
    out = export_view(storage)
    assert "<pre><code>a &lt; b &amp;&amp; c</code></pre>" in out
    assert "<b>Restore</b>" in out and "Expense policy" in out
    assert "ac:" not in out and "bash" not in out


def test_every_answer_is_on_its_page() -> None:
    from app.convert import storage_to_markdown
    from bench.quality.pages import PAGES

    pages = {pg.id: pg for pg in PAGES}
    questions = load_questions()
    assert len(pages) >= 40 and len(questions) >= 80
    assert {x.split for x in questions} == {"tune", "test"}
    missing = [
        x.id
        for x in questions
        if not contains_answer(storage_to_markdown(pages[x.page].body, title=pages[x.page].title), x.answer)
    ]
    assert missing == []


def test_epsilon_recall_counts_rows_within_one_percent_of_the_kth_distance() -> None:
    """bench/search_scale.py's ε-recall (ann-benchmarks): a row 0.5% farther than the true 10th counts, 2% does not,
    and fewer rows than k asked for count as misses."""
    from types import SimpleNamespace

    from bench.search_scale import epsilon_recall

    kth = 0.36
    near = [SimpleNamespace(score=1 - 0.35)] * 8 + [SimpleNamespace(score=1 - kth * 1.005)]
    assert epsilon_recall([*near, SimpleNamespace(score=1 - kth * 1.02)], kth) == pytest.approx(0.9)
    assert epsilon_recall(near, kth) == pytest.approx(0.9)
