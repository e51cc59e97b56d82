import dataclasses
import math

import pytest

from rlaif.config import PairsConfig
from rlaif.constitution import load_constitution
from rlaif.judge import Comparison, combine_orders, judge_candidates, verdict_metrics
from rlaif.pairs import build_pairs
from rlaif.rank import bradley_terry, rank_all, rank_candidates, win_matrix


def logit(p):
    return math.log(p / (1 - p))


def test_position_biased_judge_cancels_out():
    # a judge that says "A" with P=0.8 whichever answer is first has no preference at all
    v = combine_orders(logit(0.8), logit(0.8))
    assert v["p_i"] == pytest.approx(0.5)
    assert v["agree"] is False
    assert v["p_first"] == pytest.approx(0.8)


def test_two_orders_recover_a_weak_preference_under_bias():
    # i better: P(A)=0.9 when i is first, P(A)=0.7 when j is first (bias 0.8 ± 0.1)
    v = combine_orders(logit(0.9), logit(0.7))
    assert v["p_i"] == pytest.approx((0.9 + 0.3) / 2)
    assert v["p_i"] > 0.5 and v["agree"] is False
    w = combine_orders(logit(0.9), logit(0.2))
    assert w["agree"] is True and w["p_i"] == pytest.approx(0.85)


def test_failed_verdict_is_a_value():
    v = combine_orders(math.nan, 1.0)
    assert v["failed"] and math.isnan(v["p_i"]) and v["agree"] is None
    m = verdict_metrics([{**v}, {**combine_orders(0.0, 0.0), "label_mass": 1.0}])
    assert m["failed_verdicts"] == 1 and m["verdicts"] == 2


def planted(strengths):
    """Verdicts whose P(i beats j) follows a Bradley–Terry model with the given strengths."""
    k = len(strengths)
    return [
        {"i": i, "j": j, "p_i": strengths[i] / (strengths[i] + strengths[j])}
        for i in range(k)
        for j in range(i + 1, k)
    ]


def test_bradley_terry_recovers_planted_order_and_ratios():
    strengths = [1.0, 4.0, 0.5, 2.0]
    r = rank_candidates(4, planted(strengths))
    assert r["order"] == [1, 3, 0, 2]
    # with a weak prior the fitted log-strength gaps shrink toward 0 but keep their order
    s = r["strength"]
    assert s[1] > s[3] > s[0] > s[2]
    # without the prior, soft BT recovers the exact ratios
    exact = bradley_terry(win_matrix(4, planted(strengths)), prior=0.0)
    assert exact[1] - exact[0] == pytest.approx(math.log(4.0), abs=1e-6)


def test_rank_ignores_failed_verdicts_and_breaks_ties_by_index():
    verdicts = [{"i": 0, "j": 1, "p_i": math.nan}, {"i": 0, "j": 2, "p_i": 0.5}, {"i": 1, "j": 2, "p_i": 0.5}]
    assert rank_candidates(3, verdicts)["order"] == [0, 1, 2]
    assert rank_candidates(3, [{"i": 0, "j": 1, "p_i": 0.2}, {"i": 0, "j": 2, "p_i": 0.5}, {"i": 1, "j": 2, "p_i": 0.6}])["order"][0] == 1


class LengthJudge:
    """A plain-callable judge with planted preferences: longer answer wins, plus a first-position bias."""

    def __call__(self, comparisons):
        return [0.05 * (len(c.answer_a) - len(c.answer_b)) + 1.5 for c in comparisons]


def test_judge_candidates_shows_both_orders_and_ranks():
    const = load_constitution("default")
    prompts = [{"id": "p1", "prompt": "Say hi"}]
    texts = ["hi", "hello there", "hello there, friend!"]
    cands = [{"prompt_id": "p1", "candidate": i, "text": t, "truncated": False} for i, t in enumerate(texts)]
    seen = []

    class Recorder(LengthJudge):
        def __call__(self, comparisons):
            seen.extend(comparisons)
            return super().__call__(comparisons)

    verdicts = judge_candidates(Recorder(), const, prompts, cands, "sample", seed=1)
    assert len(verdicts) == 3 and len(seen) == 6
    for a, b in zip(seen[::2], seen[1::2]):  # each pair in both orders, same principle
        assert (a.answer_a, a.answer_b) == (b.answer_b, b.answer_a) and a.principle == b.principle
    assert {v["principle"] for v in verdicts} <= {p.id for p in const.principles}
    assert rank_all(cands, verdicts)[0]["order"] == [2, 1, 0]
    m = verdict_metrics(verdicts)
    assert m["position_bias_p_first"] > 0.75  # the planted bias is visible, not hidden
    all_mode = judge_candidates(LengthJudge(), const, prompts, cands, "all", seed=1)
    assert {v["principle"] for v in all_mode} == {"all"}


def _pairs_fixture(texts, truncated=None, p=0.9):
    truncated = truncated or [False] * len(texts)
    prompts = [{"id": "p", "prompt": "q"}]
    cands = [{"prompt_id": "p", "candidate": i, "text": t, "truncated": tr} for i, (t, tr) in enumerate(zip(texts, truncated))]
    k = len(texts)
    # candidate 0 best ... k-1 worst, every head-to-head won by the better one with probability p
    verdicts = [{"prompt_id": "p", "i": i, "j": j, "p_i": p} for i in range(k) for j in range(i + 1, k)]
    return prompts, cands, verdicts, rank_all(cands, verdicts)


def test_best_worst_pair():
    pairs, dropped, counts = build_pairs(*_pairs_fixture(["a", "b", "c", "d"]), PairsConfig())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "d")]
    assert pairs[0]["margin"] == pytest.approx(0.4)
    assert counts["kept"] == 1 and dropped == []


def test_filters_set_candidates_aside_and_count_why():
    fx = _pairs_fixture(["best", "", "best", "cut off", "worst"], truncated=[False, False, False, True, False])
    pairs, _, counts = build_pairs(*fx, PairsConfig())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "worst")]
    assert counts["candidates_empty"] == 1 and counts["candidates_identical"] == 1 and counts["candidates_truncated"] == 1
    pairs, _, counts = build_pairs(*fx, PairsConfig(drop_truncated=False, drop_identical=False, drop_empty=False))
    assert pairs[0]["rejected"] == "worst" and "candidates_empty" not in counts


def test_low_margin_and_too_few_are_dropped():
    pairs, dropped, counts = build_pairs(*_pairs_fixture(["a", "b"], p=0.52), PairsConfig(min_margin=0.05))
    assert pairs == [] and counts["dropped_low_margin"] == 1 and dropped[0]["reason"] == "low_margin"
    pairs, dropped, counts = build_pairs(*_pairs_fixture(["same", "same"]), PairsConfig())
    assert pairs == [] and counts["dropped_too_few_candidates"] == 1


def test_all_ranked_strategy():
    pairs, _, _ = build_pairs(*_pairs_fixture(["a", "b", "c"]), PairsConfig(strategy="all_ranked"))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]


def test_comparison_is_frozen():
    c = Comparison("p", "a", "b", "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.prompt = "q"
