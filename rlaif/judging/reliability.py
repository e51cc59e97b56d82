"""How far a round's verdicts can be trusted: pure functions of the verdict rows.

- ``order_agreement``: share of pairs whose two orders pick the same winner (pairwise only).
- ``position_bias_p_first``: mean probability given to whichever answer was shown first (0.5 = none).
- ``intransitive_share``: among triples of one prompt's K candidates with decisive verdicts, the
  share that form a cycle (a > b > c > a). A consistent judge has none; a coin-flip judge ~1/4.
- ``length_corr``: Pearson correlation between (len_i − len_j) and (p_i − 0.5) over pairs; positive
  means the judge prefers longer answers. ``longer_preferred``: share of pairs of unequal length
  where the longer one wins.
- ``reference_agreement``: share of pairs where two judges (e.g. the policy and the frozen base)
  pick the same winner.

Verdict rows are those of :func:`rlaif.judging.verdicts.judge_candidates`: ``prompt_id, i, j, p_i`` (NaN = failed).
"""

import itertools
import math


def _valid(p) -> bool:
    return p is not None and not math.isnan(p)


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def intransitive_triples(verdicts: list[dict]) -> dict:
    """``{triples, intransitive, intransitive_share}`` over each prompt's decisive triples."""
    beats: dict[str, dict[tuple[int, int], bool]] = {}
    for v in verdicts:
        if _valid(v["p_i"]) and v["p_i"] != 0.5:
            d = beats.setdefault(v["prompt_id"], {})
            d[(v["i"], v["j"])] = v["p_i"] > 0.5
            d[(v["j"], v["i"])] = v["p_i"] < 0.5
    triples = cyclic = 0
    for d in beats.values():
        nodes = sorted({a for a, _ in d})
        for a, b, c in itertools.combinations(nodes, 3):
            if not all(e in d for e in ((a, b), (b, c), (a, c))):
                continue
            triples += 1
            wins = [d[(a, b)] + d[(a, c)], d[(b, a)] + d[(b, c)], d[(c, a)] + d[(c, b)]]
            cyclic += wins == [1, 1, 1]
    return {"triples": triples, "intransitive": cyclic, "intransitive_share": cyclic / triples if triples else math.nan}


def length_preference(verdicts: list[dict], lengths: dict[tuple[str, int], float]) -> dict:
    """``{length_corr, longer_preferred}``; ``lengths[(prompt_id, candidate)]`` in tokens or characters."""
    dx, dy, longer = [], [], []
    for v in verdicts:
        if not _valid(v["p_i"]):
            continue
        d = lengths[(v["prompt_id"], v["i"])] - lengths[(v["prompt_id"], v["j"])]
        dx.append(d)
        dy.append(v["p_i"] - 0.5)
        if d != 0 and v["p_i"] != 0.5:
            longer.append(float((d > 0) == (v["p_i"] > 0.5)))
    return {
        "length_corr": pearson(dx, dy),
        "longer_preferred": sum(longer) / len(longer) if longer else math.nan,
    }


def reference_agreement(verdicts: list[dict], reference: list[dict]) -> float:
    """Share of pairs judged by both where the two judges pick the same winner (ties count as a side)."""
    ref = {(v["prompt_id"], v["i"], v["j"]): v["p_i"] for v in reference}
    same = []
    for v in verdicts:
        q = ref.get((v["prompt_id"], v["i"], v["j"]))
        if _valid(v["p_i"]) and _valid(q):
            same.append(float(_side(v["p_i"]) == _side(q)))
    return sum(same) / len(same) if same else math.nan


def _side(p: float) -> int:
    return (p > 0.5) - (p < 0.5)


def reliability_metrics(verdicts: list[dict], lengths: dict[tuple[str, int], float]) -> dict:
    """Everything above that one judge's verdicts show on their own (order metrics: judge.verdict_metrics)."""
    return {**intransitive_triples(verdicts), **length_preference(verdicts, lengths)}
