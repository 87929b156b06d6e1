"""The lexical ranking tests each matching row with weight-restricted queries (`app.search._QUOTED_LEXEME`:
`to_tsquery('simple', quoted || ':D')` for chunk text, `':AB'` for title and headings) instead of
`ts_filter(row, '{d}') @@ phraseto_tsquery('simple', lexeme)`, which copied each row's tsvector per query word.
The two must agree on every row for every lexeme a query can produce: quotes, backslashes, tsquery operators,
compounds the parser splits, other scripts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from app.search import _QUOTED_LEXEME

TRICKY = ["err-4711", "o'brien", "a\\b", "foo:bar", "x&y", "!x", "(x)", "x<->y", "a:*", "'", "\\", "a''b",
          "a\\'b", "héllo", "日本語", "a b", "v1.2.3", "user@example.com", "https://wiki.example/x"]  # fmt: skip

_AGREE = sql.SQL(
    """SELECT bool_and((doc.v @@ to_tsquery('simple', {q} || ':D')) = (ts_filter(doc.v, '{{d}}') @@ terms.tsq)
                   AND (doc.v @@ to_tsquery('simple', {q} || ':AB')) = (ts_filter(doc.v, '{{a,b}}') @@ terms.tsq))
       FROM (SELECT %(lexeme)s AS lexeme, phraseto_tsquery('simple', %(lexeme)s) AS tsq) AS terms,
            (VALUES (setweight(to_tsvector('english', %(title)s), 'A')
                     || setweight(to_tsvector('english', %(head)s), 'B')
                     || to_tsvector('english', %(body)s))) AS doc(v)"""
).format(q=_QUOTED_LEXEME)


async def _agree(pool: Any, lexeme: str, title: str, head: str, body: str) -> bool:
    async with pool.connection() as conn:
        args = {"lexeme": lexeme, "title": title, "head": head, "body": body}
        row = await (await conn.execute(_AGREE, args)).fetchone()
    return bool(row and row[0])


async def test_weighted_queries_match_exactly_where_filtered_rows_did(pool: Any) -> None:
    for lexeme in TRICKY:
        places = [(lexeme, "", "nothing here"), ("x", lexeme, "nothing"), ("x", "y", f"see {lexeme} now"),
                  (lexeme, lexeme, lexeme), ("none", "none", "none")]  # fmt: skip
        for title, head, body in places:
            assert await _agree(pool, lexeme, title, head, body), (lexeme, title, head, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lexeme=st.text(alphabet="ab'\\:&|!()<->* -.@é日", min_size=1, max_size=10),
       where=st.sampled_from(["title", "head", "body"]))  # fmt: skip
async def test_weighted_queries_agree_on_random_lexemes(pool: Any, lexeme: str, where: str) -> None:
    text = {"title": "t", "head": "h", "body": "b"}
    text[where] = f"x {lexeme} y"
    assert await _agree(pool, lexeme, text["title"], text["head"], text["body"])
