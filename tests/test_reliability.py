"""Reliability metrics on planted tournaments with known answers."""

import math

import pytest

from rlaif.judging.reliability import (
    intransitive_triples,
    length_preference,
    pearson,
    reference_agreement,
    reliability_metrics,
)


def v(i, j, p, pid="q"):
    return {"prompt_id": pid, "i": i, "j": j, "p_i": p}


def transitive(k, pid="q"):
    """Candidate 0 beats everyone, 1 beats 2.., and so on: a total order."""
    return [v(i, j, 0.8, pid) for i in range(k) for j in range(i + 1, k)]


def test_total_order_has_no_cycles():
    out = intransitive_triples(transitive(4))
    assert out == {"triples": 4, "intransitive": 0, "intransitive_share": 0.0}


def test_planted_cycle_is_found():
    cycle = [v(0, 1, 0.9), v(1, 2, 0.7), v(0, 2, 0.2)]  # 0 > 1 > 2 > 0
    assert intransitive_triples(cycle) == {"triples": 1, "intransitive": 1, "intransitive_share": 1.0}


def test_one_cycle_among_four_candidates_and_prompts_are_separate():
    # 0 > 1 > 2 > 0, and 3 loses to everyone: only triple (0, 1, 2) is cyclic out of 4
    rows = [v(0, 1, 0.9), v(1, 2, 0.9), v(0, 2, 0.1), v(0, 3, 0.9), v(1, 3, 0.9), v(2, 3, 0.9)]
    rows += transitive(3, "other")
    out = intransitive_triples(rows)
    assert out["triples"] == 5 and out["intransitive"] == 1 and out["intransitive_share"] == pytest.approx(0.2)


def test_ties_and_failed_verdicts_leave_the_triple_out():
    assert intransitive_triples([v(0, 1, 0.9), v(1, 2, 0.5), v(0, 2, 0.2)])["triples"] == 0
    assert intransitive_triples([v(0, 1, 0.9), v(1, 2, math.nan), v(0, 2, 0.2)])["triples"] == 0
    assert math.isnan(intransitive_triples([])["intransitive_share"])


def test_length_preference_of_a_judge_that_likes_long_answers():
    lengths = {("q", 0): 10, ("q", 1): 20, ("q", 2): 40}
    likes_long = [v(0, 1, 0.3), v(0, 2, 0.1), v(1, 2, 0.2)]
    out = length_preference(likes_long, lengths)
    assert out["longer_preferred"] == 1.0 and out["length_corr"] > 0.9
    likes_short = [{**r, "p_i": 1 - r["p_i"]} for r in likes_long]
    out = length_preference(likes_short, lengths)
    assert out["longer_preferred"] == 0.0 and out["length_corr"] < -0.9
    equal = {k: 5 for k in lengths}
    assert math.isnan(length_preference(likes_long, equal)["length_corr"])  # no length variation


def test_reference_agreement():
    a = [v(0, 1, 0.9), v(0, 2, 0.3), v(1, 2, 0.6), v(1, 3, math.nan)]
    assert reference_agreement(a, a) == 1.0
    assert reference_agreement(a, [{**r, "p_i": 1 - r["p_i"]} for r in a]) == 0.0
    b = [v(0, 1, 0.7), v(0, 2, 0.6), v(1, 2, 0.5)]  # same, opposite, tie vs preference
    assert reference_agreement(a, b) == pytest.approx(1 / 3)
    assert math.isnan(reference_agreement(a, []))


def test_pearson_and_combined_metrics():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1], [1]))
    rows = [v(0, 1, 0.6), v(0, 2, 0.9), v(1, 2, 0.7)]  # shorter wins, and by more the shorter it is
    m = reliability_metrics(rows, {("q", k): 10 * (k + 1) for k in range(3)})
    assert m["intransitive_share"] == 0.0 and m["longer_preferred"] == 0.0 and m["length_corr"] < 0
