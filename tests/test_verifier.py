import math

import pytest

from rlaif.errors import RlaifError
from rlaif.judging.rank import rank_all
from rlaif.judging.verifier import (
    apply_verifier,
    candidate_shares,
    combine,
    constraint_metrics,
    share_met,
    verifier_agreement,
    verifier_metrics,
)

LOW = {"type": "lowercase"}
NOCOMMA = {"type": "no_commas"}
SHORT = {"type": "word_count", "relation": "at_most", "n": 4}

PROMPTS = [
    {"id": "c", "prompt": "Say hi.", "constraints": [LOW, NOCOMMA]},
    {"id": "u", "prompt": "Say hello."},  # no constraints: the judge's verdicts must pass through unchanged
    {"id": "e", "prompt": "Say hey.", "constraints": []},
]
CANDIDATES = [
    {"prompt_id": "c", "candidate": 0, "text": "hi there friend"},  # both met: 1.0
    {"prompt_id": "c", "candidate": 1, "text": "Hi, there"},  # neither: 0.0
    {"prompt_id": "c", "candidate": 2, "text": "hi, there"},  # lowercase only: 0.5
    {"prompt_id": "c", "candidate": 3, "text": "Hi there"},  # no commas only: 0.5
    {"prompt_id": "u", "candidate": 0, "text": "Hello!"},
    {"prompt_id": "u", "candidate": 1, "text": "Hey."},
    {"prompt_id": "e", "candidate": 0, "text": "Hey."},
    {"prompt_id": "e", "candidate": 1, "text": "hey"},
]


def V(pid, i, j, p):
    return {"prompt_id": pid, "i": i, "j": j, "p_i": p, "failed": math.isnan(p), "agree": True, "label_mass": 0.3}


# The judge prefers the worse candidate on (0, 1) and (0, 2), the better on (1, 2), ties on (2, 3).
JUDGE = [V("c", 0, 1, 0.3), V("c", 0, 2, 0.45), V("c", 1, 2, 0.2), V("c", 2, 3, 0.9), V("c", 0, 3, math.nan),
         V("u", 0, 1, 0.7), V("e", 0, 1, 0.35)]


def test_share_met_and_candidate_shares():
    assert share_met([LOW, NOCOMMA, SHORT], "hi, friend") == pytest.approx(2 / 3)
    assert math.isnan(share_met([], "anything"))
    shares = candidate_shares(PROMPTS, CANDIDATES)
    assert shares == {("c", 0): 1.0, ("c", 1): 0.0, ("c", 2): 0.5, ("c", 3): 0.5}


@pytest.mark.parametrize(
    ("judge_p", "si", "sj", "w", "s", "expected"),
    [
        (0.3, 1.0, 0.0, 1.0, 1.0, (1.0, 1.0, "verifier")),
        (0.3, 0.0, 1.0, 1.0, 1.0, (0.0, 0.0, "verifier")),
        (0.3, 1.0, 0.5, 1.0, 0.6, (0.8, 0.8, "verifier")),
        (0.3, 0.5, 1.0, 1.0, 0.6, (0.2, 0.2, "verifier")),
        (0.3, 1.0, 0.0, 0.75, 1.0, (0.75 * 1.0 + 0.25 * 0.3, 1.0, "mixed")),
        (0.3, 1.0, 0.0, 0.5, 0.6, (0.5 * 0.8 + 0.5 * 0.3, 0.8, "mixed")),
        (0.3, 1.0, 0.0, 0.0, 1.0, (0.3, None, "judge")),
        (0.3, 0.5, 0.5, 1.0, 1.0, (0.3, None, "judge")),
        (math.nan, 1.0, 0.0, 0.5, 1.0, (1.0, 1.0, "verifier")),
    ],
)
def test_combine(judge_p, si, sj, w, s, expected):
    got = combine(judge_p, si, sj, w, s)
    assert (got["p_i"], got["verifier_p_i"], got["decided_by"]) == pytest.approx(expected)


def test_default_rule_on_planted_verdicts():
    out = apply_verifier(JUDGE, PROMPTS, CANDIDATES)
    by = {(v["prompt_id"], v["i"], v["j"]): v for v in out}
    assert [by["c", 0, 1]["p_i"], by["c", 0, 2]["p_i"], by["c", 1, 2]["p_i"]] == [1.0, 1.0, 0.0]
    assert {by[k]["decided_by"] for k in [("c", 0, 1), ("c", 0, 2), ("c", 1, 2)]} == {"verifier"}
    assert by["c", 2, 3]["p_i"] == 0.9 and by["c", 2, 3]["decided_by"] == "judge"  # equal shares: judge breaks tie
    assert by["c", 0, 3]["p_i"] == 1.0 and not by["c", 0, 3]["failed"]  # failed judge, shares differ
    assert [by["c", 0, 1]["judge_p_i"], by["c", 0, 1]["share_i"], by["c", 0, 1]["share_j"]] == [0.3, 1.0, 0.0]
    assert by["c", 0, 1]["agree"] is True and by["c", 0, 1]["label_mass"] == 0.3  # judge diagnostics kept


def test_prompts_without_constraints_keep_the_judges_verdict_exactly():
    out = apply_verifier(JUDGE, PROMPTS, CANDIDATES, weight=0.7, strength=0.5)
    for before, after in zip(JUDGE, out):
        if before["prompt_id"] in ("u", "e"):
            assert after == {**before, "decided_by": "judge"}


def test_inputs_are_not_changed():
    snapshot = repr(JUDGE)
    apply_verifier(JUDGE, PROMPTS, CANDIDATES)
    assert repr(JUDGE) == snapshot


def test_weighted_rule_on_planted_verdicts():
    out = apply_verifier(JUDGE, PROMPTS, CANDIDATES, weight=0.5, strength=1.0)
    by = {(v["prompt_id"], v["i"], v["j"]): v for v in out}
    assert by["c", 0, 1]["p_i"] == pytest.approx(0.65) and by["c", 0, 1]["decided_by"] == "mixed"
    assert by["c", 1, 2]["p_i"] == pytest.approx(0.1)
    assert by["c", 2, 3]["p_i"] == 0.9 and by["c", 2, 3]["decided_by"] == "judge"


def test_ranking_follows_the_verifier_then_the_judge():
    """Shares 1.0 > 0.5 = 0.5 > 0.0; between the two 0.5 candidates the judge prefers 2."""
    judge = [V("c", i, j, 0.5) for i in range(4) for j in range(i + 1, 4)]
    judge[[(v["i"], v["j"]) for v in judge].index((2, 3))]["p_i"] = 0.8
    combined = apply_verifier(judge, PROMPTS, CANDIDATES)
    ranking = rank_all([c for c in CANDIDATES if c["prompt_id"] == "c"], combined)[0]
    assert ranking["order"] == [0, 2, 3, 1]


def test_verifier_agreement_on_planted_verdicts():
    out = apply_verifier(JUDGE, PROMPTS, CANDIDATES)
    # unequal-share pairs with a judge verdict: (0,1) judge 0.3 wrong, (0,2) 0.45 wrong, (1,2) 0.2 right;
    # (0,3) judge failed, (2,3) equal shares, u and e carry no constraints
    assert verifier_agreement(out) == pytest.approx(1 / 3)
    half = [{"share_i": 1.0, "share_j": 0.0, "judge_p_i": 0.5}, {"share_i": 0.0, "share_j": 1.0, "judge_p_i": 0.1}]
    assert verifier_agreement(half) == pytest.approx(0.75)


def test_verifier_agreement_is_nan_without_unequal_pairs():
    assert math.isnan(verifier_agreement([]))
    assert math.isnan(verifier_agreement(apply_verifier([V("u", 0, 1, 0.7)], PROMPTS, CANDIDATES)))
    assert math.isnan(verifier_agreement(apply_verifier([V("c", 2, 3, 0.7)], PROMPTS, CANDIDATES)))


def test_metrics():
    out = apply_verifier(JUDGE, PROMPTS, CANDIDATES)
    m = verifier_metrics(out)
    assert m["verifier_pairs"] == 4 and m["constraint_verdicts"] == 5
    assert m["decided_by_verifier"] == pytest.approx(4 / 7) and m["decided_by_judge"] == pytest.approx(3 / 7)
    assert m["decided_by_mixed"] == 0
    c = constraint_metrics(PROMPTS, CANDIDATES)
    assert c == {"constraint_prompts": 1, "constraints_met_share": 0.5, "constraints_all_met_share": 0.25}


@pytest.mark.parametrize(("w", "s", "match"), [(1.5, 1.0, "judge.verifier_weight"), (-0.1, 1.0, "verifier_weight"),
                                               (1.0, 0.0, "judge.verifier_strength"), (1.0, 1.2, "verifier_strength")])
def test_bad_settings_name_the_key(w, s, match):
    with pytest.raises(RlaifError, match=match):
        apply_verifier(JUDGE, PROMPTS, CANDIDATES, weight=w, strength=s)
