"""The conservative bge-m3 token estimate and the last-resort splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.tokens import count_tokens, split_to_fit, tokenize

MIXED = st.text(
    alphabet=st.sampled_from([*"abcXYZ019 \n\t.,;:_-|#`/()한국어中文ひらがなкирилица", "🙂", "é", "\u0301"]),
    max_size=300,
)


@pytest.mark.parametrize(
    ("text", "at_least"),
    [
        # Floors SentencePiece cannot go under: a piece per word and per punctuation mark, `▁` + CJK words.
        ("Hello world, this is a test.", 8),
        ("Deploy the service with kubectl apply -f deploy.yaml", 10),
        ("안녕하세요 세계", 2),
        ("你好世界", 3),
        ("a8f3e9c1d2", 5),
        ("2024-01-31T12:00:00Z", 9),
    ],
)
def test_never_below_the_real_tokenizer_on_typical_text(text: str, at_least: int) -> None:
    assert count_tokens(text) >= at_least


def test_every_cjk_hangul_and_kana_character_costs_at_least_one() -> None:
    for text in ("가나다라마바사", "漢字仮名交じり文", "ひらがなカタカナ"):
        assert count_tokens(text) >= len(text)


def test_whitespace_is_free_and_the_count_is_additive_across_it() -> None:
    assert count_tokens("") == 0
    assert count_tokens(" \n\t ") == 0
    left, right = "Roll back: run `deploy --undo`.", "그 다음 확인하세요."
    assert count_tokens(left + "\n\n" + right) == count_tokens(left) + count_tokens(right)


@given(MIXED)
def test_tokenize_is_the_count(text: str) -> None:
    assert len(tokenize(text)) == count_tokens(text)


@given(MIXED, st.integers(min_value=0, max_value=300))
def test_cutting_a_string_never_lowers_the_total(text: str, cut: int) -> None:
    """What lets a packer add up piece counts without recounting the joined chunk."""
    cut = min(cut, len(text))
    assert count_tokens(text) <= count_tokens(text[:cut]) + count_tokens(text[cut:])


@pytest.mark.parametrize("text", ["x" * 50_000, "가" * 50_000, "ab/" * 17_000, "word " * 10_000])
def test_split_to_fit_handles_huge_inputs(text: str) -> None:
    pieces = split_to_fit(text, 100)
    assert "".join(pieces) == text
    assert all(count_tokens(piece) <= 100 for piece in pieces)
    assert len(pieces) <= count_tokens(text) // 50 + 2  # pieces are reasonably full, not one character each


@given(MIXED, st.integers(min_value=2, max_value=40))
def test_split_to_fit_pieces_fit_and_rejoin(text: str, limit: int) -> None:
    pieces = split_to_fit(text, limit)
    assert "".join(pieces) == text
    assert all(count_tokens(piece) <= limit for piece in pieces)


def test_split_to_fit_prefers_word_boundaries() -> None:
    assert split_to_fit("alpha beta gamma delta epsilon", 4) == ["alpha beta ", "gamma delta ", "epsilon"]


def test_split_to_fit_refuses_a_limit_no_character_can_meet() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        split_to_fit("anything", 1)
