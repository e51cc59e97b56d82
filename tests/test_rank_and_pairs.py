import dataclasses
import math

import pytest

from rlaif.config import PairsConfig
from rlaif.judging.constitution import load_constitution
from rlaif.judging.rank import bradley_terry, rank_all, rank_candidates, win_matrix
from rlaif.judging.verdicts import Comparison, combine_orders, judge_candidates, verdict_metrics
from rlaif.stages.pairs import anchor_prompts, build_pairs


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


# ---------------------------------------------------------------- length tie-break and anchor pairs


def _planted_ranking(mean_win, tokens, p=0.9):
    """Candidates 0..k-1, ranked in index order, with planted mean-win scores and token counts.

    Every head-to-head is won by the better-ranked candidate with probability ``p``, so a pair keeps
    its margin whichever near-tied candidates the tie-break picks.
    """
    k = len(mean_win)
    prompts = [{"id": "p", "prompt": "q"}]
    cands = [{"prompt_id": "p", "candidate": i, "text": f"answer {i}", "truncated": False, "num_tokens": n}
             for i, n in enumerate(tokens)]
    verdicts = [{"prompt_id": "p", "i": i, "j": j, "p_i": p} for i in range(k) for j in range(i + 1, k)]
    ranking = {"prompt_id": "p", "order": list(range(k)), "strength": [0.0] * k, "mean_win": mean_win}
    return prompts, cands, verdicts, [ranking]


def test_length_tiebreak_prefers_the_shorter_near_tied_top():
    fx = _planted_ranking([0.80, 0.78, 0.50, 0.20], tokens=[40, 10, 5, 30])
    (pair,), _, counts = build_pairs(*fx, PairsConfig(length_tiebreak=0.05))
    assert (pair["chosen_candidate"], pair["rejected_candidate"]) == (1, 3)  # 1 is within 0.05 of the top and shorter
    assert pair["length_tiebreak"] is True and pair["source"] == "judge"
    assert counts["length_tiebreak_changed"] == 1 and counts["length_tiebreak_kept"] == 1
    assert pair["p_chosen"] == pytest.approx(0.9)  # the margin rule judges the final pair's own head-to-head
    (off,), _, counts = build_pairs(*fx, PairsConfig())
    assert (off["chosen_candidate"], off["rejected_candidate"]) == (0, 3) and off["length_tiebreak"] is False
    assert "length_tiebreak_changed" not in counts


def test_length_tiebreak_leaves_candidates_outside_the_tolerance_alone():
    fx = _planted_ranking([0.80, 0.70, 0.50, 0.20], tokens=[40, 10, 5, 30])
    (pair,), _, counts = build_pairs(*fx, PairsConfig(length_tiebreak=0.05))
    assert (pair["chosen_candidate"], pair["rejected_candidate"]) == (0, 3)
    assert pair["length_tiebreak"] is False and counts["length_tiebreak_changed"] == 0


def test_length_tiebreak_rejects_the_longer_near_tied_bottom():
    fx = _planted_ranking([0.80, 0.50, 0.24, 0.22], tokens=[10, 5, 60, 30])
    (pair,), _, _ = build_pairs(*fx, PairsConfig(length_tiebreak=0.05))
    assert (pair["chosen_candidate"], pair["rejected_candidate"]) == (0, 2)
    assert pair["length_tiebreak"] is True


def test_length_tiebreak_never_pairs_a_candidate_with_itself():
    # candidate 1 is near both ends and the longest near the bottom, but it is already chosen
    fx = _planted_ranking([0.80, 0.62, 0.40], tokens=[30, 10, 5])
    (pair,), _, _ = build_pairs(*fx, PairsConfig(length_tiebreak=0.25))
    assert (pair["chosen_candidate"], pair["rejected_candidate"]) == (1, 2)
    # two candidates, the worse one shorter: chosen is the worse one, so the judge's P(2nd beats 1st) = 0.1
    # decides, and the margin rule drops the swapped pair instead of training on it
    fx = _planted_ranking([0.52, 0.48], tokens=[30, 5])
    pairs, dropped, counts = build_pairs(*fx, PairsConfig(length_tiebreak=0.5))
    assert pairs == [] and dropped[0]["reason"] == "low_margin" and dropped[0]["length_tiebreak"] is True
    assert dropped[0]["chosen_candidate"] != dropped[0]["rejected_candidate"]
    assert counts["length_tiebreak_changed"] == 1 and counts["length_tiebreak_kept"] == 0


def test_all_ranked_ignores_the_length_tiebreak():
    fx = _planted_ranking([0.80, 0.78, 0.20], tokens=[40, 10, 30])
    pairs, _, _ = build_pairs(*fx, PairsConfig(strategy="all_ranked", length_tiebreak=0.05))
    assert [(p["chosen_candidate"], p["rejected_candidate"]) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert not any(p["length_tiebreak"] for p in pairs)


def _anchor_fixture(n_prompts=20, k=3, missing=()):
    prompts, cands, verdicts = [], [], []
    for n in range(n_prompts):
        pid = f"p{n}"
        prompts.append({"id": pid, "prompt": f"question {n}"} | ({} if pid in missing else {"reference": f"reference {n}"}))
        cands += [{"prompt_id": pid, "candidate": i, "text": f"{pid} answer {i}", "truncated": False, "num_tokens": 5}
                  for i in range(k)]
        verdicts += [{"prompt_id": pid, "i": i, "j": j, "p_i": 0.9} for i in range(k) for j in range(i + 1, k)]
    return prompts, cands, verdicts, rank_all(cands, verdicts)


def test_anchor_share_picks_an_exact_deterministic_share():
    picked = anchor_prompts([f"p{n}" for n in range(20)], 0.25, seed=0, round_n=1)
    assert len(picked) == 5
    assert anchor_prompts([f"p{n}" for n in reversed(range(20))], 0.25, seed=0, round_n=1) == picked  # order-free
    others = [anchor_prompts([f"p{n}" for n in range(20)], 0.25, seed=s, round_n=r) for s, r in ((1, 1), (0, 2))]
    assert all(o != picked for o in others), "seed and round change the choice"
    assert len(anchor_prompts([f"p{n}" for n in range(20)], 1.0, 0, 1)) == 20
    assert anchor_prompts([f"p{n}" for n in range(20)], 0.0, 0, 1) == set()

    fx = _anchor_fixture()
    pairs, _, counts = build_pairs(*fx, PairsConfig(anchor_share=0.25), seed=0, round_n=1)
    anchors = [p for p in pairs if p["source"] == "reference"]
    assert {p["prompt_id"] for p in anchors} == picked
    assert counts["anchor_pairs"] == 5 and counts["anchor_selected"] == 5 and counts["kept"] == 20 + 5
    again, _, _ = build_pairs(*fx, PairsConfig(anchor_share=0.25), seed=0, round_n=1)
    assert again == pairs  # a resumed or redone stage makes the same pairs


def test_anchor_pair_is_reference_over_the_worst_eligible_candidate():
    fx = _anchor_fixture(n_prompts=4, k=4)
    cands = fx[1]
    next(c for c in cands if c["prompt_id"] == "p0" and c["candidate"] == 3)["text"] = ""  # the worst is empty
    pairs, _, counts = build_pairs(*fx, PairsConfig(anchor_share=1.0), seed=0, round_n=1)
    anchors = {p["prompt_id"]: p for p in pairs if p["source"] == "reference"}
    assert len(anchors) == 4 and counts["anchor_pairs"] == 4
    for n, a in enumerate(anchors[f"p{n}"] for n in range(4)):
        assert a["chosen"] == f"reference {n}" and a["prompt"] == f"question {n}"
        worst = 2 if n == 0 else 3  # p0's last candidate is set aside as empty: the worst *eligible* one
        assert a["rejected_candidate"] == worst and a["rejected"] == f"p{n} answer {worst}"
        assert a["margin"] is None and a["chosen_candidate"] is None
    judged = [p for p in pairs if p["source"] == "judge"]
    assert len(judged) == 4 and all(p["margin"] == pytest.approx(0.4) for p in judged)


def test_anchor_missing_reference_is_counted_not_paired():
    fx = _anchor_fixture(n_prompts=6, missing={"p1", "p4"})
    pairs, dropped, counts = build_pairs(*fx, PairsConfig(anchor_share=1.0), seed=3, round_n=2)
    assert {p["prompt_id"] for p in pairs if p["source"] == "reference"} == {"p0", "p2", "p3", "p5"}
    assert counts["anchor_missing_reference"] == 2 and counts["anchor_pairs"] == 4
    assert sorted(d["prompt_id"] for d in dropped if d["reason"] == "anchor_missing_reference") == ["p1", "p4"]
    assert counts["dropped"] == len(dropped) == 2 and counts["kept"] == len(pairs) == 6 + 4
    # a prompt whose every candidate is set aside gets neither pair
    prompts, cands, verdicts, rankings = _anchor_fixture(n_prompts=1)
    for c in cands:
        c["text"] = ""
    pairs, dropped, counts = build_pairs(prompts, cands, verdicts, rankings, PairsConfig(anchor_share=1.0))
    assert pairs == [] and counts["anchor_no_candidate"] == 1 and counts["dropped_too_few_candidates"] == 1
    assert counts["dropped"] == len(dropped) == 2
