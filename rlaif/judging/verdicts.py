"""A round's verdicts: every comparison a judge makes of a prompt's candidates, and what the verdicts say.

:func:`judge_candidates` turns a judge (:mod:`rlaif.judging.judges`) into one verdict per candidate pair:
pairwise, both orders' label probabilities combined (:func:`combine_orders`); pointwise, two expected
rubric scores mapped to a probability (:func:`pointwise_p`). The maths is here, free of models, so it is
tested on planted numbers; a failed verdict is NaN, counted by :func:`verdict_metrics`, never raised.
"""

import itertools
import math
import random
from dataclasses import dataclass
from typing import Protocol

from rlaif.judging.constitution import Constitution
from rlaif.seeds import derive_seed


@dataclass(frozen=True)
class Comparison:
    prompt: str
    answer_a: str
    answer_b: str
    principle: str


class PairJudge(Protocol):
    """Anything that returns, per comparison, the log-odds of label A over label B (NaN = failed)."""

    def __call__(self, comparisons: list[Comparison]) -> list[float]: ...


def sigmoid(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def combine_orders(logodds_ij: float, logodds_ji: float) -> dict:
    """One verdict from both orders.

    ``logodds_ij``: log P(A)/P(B) when candidate i is shown as A (j as B);
    ``logodds_ji``: the same when j is shown as A (i as B).
    Returns P(A) in each order, ``p_i`` = P(i better) averaged over the two orders, whether the two
    orders agree, and ``p_first`` = the mean probability given to whichever answer was shown first.
    """
    pa_ij, pa_ji = sigmoid(logodds_ij), sigmoid(logodds_ji)
    p_i_first, p_i_second = pa_ij, 1.0 - pa_ji
    failed = math.isnan(pa_ij) or math.isnan(pa_ji)
    return {
        "p_a_ij": pa_ij,
        "p_a_ji": pa_ji,
        "p_i": math.nan if failed else (p_i_first + p_i_second) / 2,
        "agree": None if failed else (p_i_first > 0.5) == (p_i_second > 0.5),
        "p_first": math.nan if failed else (pa_ij + pa_ji) / 2,
        "failed": failed,
    }


def label_mass(logps: list[float]) -> float:
    return sum(math.exp(x) for x in logps) if all(math.isfinite(x) for x in logps) else math.nan


def expected_score(logps: list[float], values: tuple[float, ...] | list[float]) -> tuple[float, list[float]]:
    """E[score] under the score labels' probabilities renormalised over the labels (NaN if failed)."""
    if not logps or not all(math.isfinite(x) for x in logps):
        return math.nan, [math.nan] * len(values)
    top = max(logps)
    w = [math.exp(x - top) for x in logps]
    z = sum(w)
    probs = [x / z for x in w]
    return sum(p * v for p, v in zip(probs, values)), probs


def calibrated(logps: list[float], content_free: list[float]) -> list[float]:
    """Contextual calibration (Zhao et al. 2021): the labels' log-probabilities minus a content-free answer's.

    Renormalised over the labels (as :func:`expected_score` does), this is their W = diag(p_cf)^-1: a
    content-free answer then scores uniformly. NaN where either side failed.
    """
    if not all(math.isfinite(x) for x in [*logps, *content_free]):
        return [math.nan] * len(logps)
    return [a - b for a, b in zip(logps, content_free)]


def pointwise_p(score_i: float, score_j: float, lo: float, hi: float) -> float:
    """P(i better) from two expected scores: 0.5 + (s_i − s_j) / (2·(hi − lo)), in [0, 1].

    Linear, so p_i > 0.5 exactly when i's expected score is higher, and a one-point difference on a
    0–5 scale is p = 0.6 (``pairs.min_margin`` 0.05 asks for half a point).
    """
    if math.isnan(score_i) or math.isnan(score_j):
        return math.nan
    return 0.5 + (score_i - score_j) / (2 * (hi - lo))


def pick_principle(constitution: Constitution, mode: str, seed: int, prompt_id: str, i: int, j: int) -> tuple[str, str]:
    """(principle id, text) for one comparison: sampled per comparison, or all of them."""
    if mode == "all":
        return "all", constitution.all_principles_text()
    p = random.Random(derive_seed(seed, prompt_id, i, j)).choice(constitution.principles)
    return p.id, p.text


def judge_candidates(
    judge: PairJudge,
    constitution: Constitution,
    prompts: list[dict],
    candidates: list[dict],
    principles: str,
    seed: int,
) -> list[dict]:
    """Verdict rows for every pair (i < j) of each prompt's candidates: both orders (pairwise), or
    the two candidates' expected rubric scores mapped to ``p_i`` by :func:`pointwise_p` (pointwise)."""
    by_prompt: dict[str, list[dict]] = {}
    for c in candidates:
        by_prompt.setdefault(c["prompt_id"], []).append(c)
    if getattr(judge, "abstains", False):  # judge.mode none: every pair a tie, for the verifier to decide
        return [{"prompt_id": p["id"], "i": i, "j": j, "principle": "none", "p_a_ij": math.nan, "p_a_ji": math.nan,
                 "p_i": 0.5, "agree": None, "p_first": math.nan, "failed": False, "label_mass": math.nan}
                for p in prompts
                for i, j in itertools.combinations(sorted(c["candidate"] for c in by_prompt.get(p["id"], [])), 2)]
    if getattr(judge, "pointwise", False):
        return _pointwise_rows(judge, prompts, by_prompt)
    plan, comparisons = [], []
    for p in prompts:
        cands = sorted(by_prompt.get(p["id"], []), key=lambda c: c["candidate"])
        for ci, cj in itertools.combinations(cands, 2):
            pid, ptext = pick_principle(constitution, principles, seed, p["id"], ci["candidate"], cj["candidate"])
            plan.append((p["id"], ci["candidate"], cj["candidate"], pid))
            comparisons.append(Comparison(p["prompt"], ci["text"], cj["text"], ptext))
            comparisons.append(Comparison(p["prompt"], cj["text"], ci["text"], ptext))
    logodds = judge(comparisons) if comparisons else []
    mass = getattr(judge, "last_label_mass", None) or [math.nan] * len(comparisons)
    rows = []
    for k, (prompt_id, i, j, pid) in enumerate(plan):
        v = combine_orders(logodds[2 * k], logodds[2 * k + 1])
        rows.append(
            {
                "prompt_id": prompt_id,
                "i": i,
                "j": j,
                "principle": pid,
                **v,
                "label_mass": _mean([mass[2 * k], mass[2 * k + 1]]),
            }
        )
    return rows


def _pointwise_rows(judge, prompts: list[dict], by_prompt: dict[str, list[dict]]) -> list[dict]:
    items, keys = [], []
    for p in prompts:
        for c in sorted(by_prompt.get(p["id"], []), key=lambda c: c["candidate"]):
            items.append((p["prompt"], c["text"]))
            keys.append((p["id"], c["candidate"]))
    scored = dict(zip(keys, judge(items) if items else []))
    values = judge.rubric.values
    lo, hi = min(values), max(values)
    rows = []
    for p in prompts:
        cands = sorted(c["candidate"] for c in by_prompt.get(p["id"], []))
        for i, j in itertools.combinations(cands, 2):
            si, sj = scored[(p["id"], i)], scored[(p["id"], j)]
            p_i = pointwise_p(si["score"], sj["score"], lo, hi)
            rows.append(
                {
                    "prompt_id": p["id"],
                    "i": i,
                    "j": j,
                    "principle": "rubric",
                    "score_i": si["score"],
                    "score_j": sj["score"],
                    "probs_i": si["probs"],
                    "probs_j": sj["probs"],
                    "p_a_ij": math.nan,
                    "p_a_ji": math.nan,
                    "p_i": p_i,
                    "agree": None,  # one view per answer: no order to disagree with
                    "p_first": math.nan,
                    "failed": math.isnan(p_i),
                    "label_mass": _mean([si["label_mass"], sj["label_mass"]]),
                }
            )
    return rows


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def verdict_metrics(verdicts: list[dict]) -> dict:
    ok = [v for v in verdicts if not v["failed"]]
    return {
        "verdicts": len(verdicts),
        "failed_verdicts": len(verdicts) - len(ok),
        "mean_margin": _mean([abs(v["p_i"] - 0.5) for v in ok]),
        "order_agreement": _mean([float(v["agree"]) for v in ok if v["agree"] is not None]),
        "position_bias_p_first": _mean([v["p_first"] for v in ok]),
        "label_mass": _mean([v["label_mass"] for v in ok]),
    }
