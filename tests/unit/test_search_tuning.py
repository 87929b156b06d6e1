"""HNSW tuning rules of `app.search` (the measurements behind them are in bench/search_latency.py)."""

from app.search import MAX_EF_SEARCH, candidate_count, ef_search_for


def test_unfiltered_scans_stay_small_so_the_planner_keeps_the_index() -> None:
    assert ef_search_for(10) == 40
    assert ef_search_for(candidate_count(10)) == candidate_count(10)


def test_filtered_scans_look_deeper_than_unfiltered_ones() -> None:
    for limit in (1, 10, 50, 200):
        assert ef_search_for(limit, filtered=True) >= max(100, 2 * limit)
        assert ef_search_for(limit, filtered=True) > ef_search_for(limit)


def test_ef_search_never_exceeds_pgvectors_cap() -> None:
    assert ef_search_for(5000) == MAX_EF_SEARCH
    assert ef_search_for(5000, filtered=True) == MAX_EF_SEARCH


def test_tuning_rejects_weights_outside_the_unit_interval() -> None:
    import pytest

    from app.search import SearchTuning

    for bad in ({"vector_weight": -0.1}, {"vector_weight": 1.5}, {"field_tie": 2.0}, {"rrf_k": 0}):
        with pytest.raises(ValueError):
            SearchTuning(**bad)  # type: ignore[arg-type]


def test_each_fusion_renders_its_own_score() -> None:
    """The fused score is the only part of the statement a fusion changes (same scans, same tie-breaks)."""
    from app.search import Fusion, _hybrid_sql

    rendered = {f: _hybrid_sql("confluence", space=None, label=None, fusion=f).as_string(None) for f in Fusion}
    assert "%(rrf_k)s + s.rank" in rendered[Fusion.RRF] and "%(rrf_k)s" not in rendered[Fusion.RELATIVE]
    assert "s.hi - s.distance" in rendered[Fusion.RELATIVE]
    for text in rendered.values():
        assert text.rstrip().endswith("LIMIT %(k)s")
        assert "d.node_id\n" in text  # the last tie-break: content-derived, never the row id


def test_hnsw_ef_search_setting_raises_the_floor_never_past_pgvectors_cap() -> None:
    """HNSW_EF_SEARCH is a floor: recall at a million chunks needs a wider walk (bench/search_scale.py)."""
    assert ef_search_for(10, least=400) == 400
    assert ef_search_for(10, filtered=True, least=400) == 400
    assert ef_search_for(10, least=1) == ef_search_for(10)  # never below what the limit needs
    assert ef_search_for(600, least=400) == 600
    assert ef_search_for(10, least=5000) == MAX_EF_SEARCH
