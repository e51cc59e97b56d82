"""The evaluation's metrics, as pure functions of responses and verdicts (tested on planted values).

Collapse signals follow Shumailov et al. (2024): diversity (distinct-n), sameness within a prompt's
samples (self-similarity), length and truncation, and a Monte-Carlo KL to the base. Win-rates count a
tie or a failed verdict as half a win and carry a bootstrap interval over prompts.
"""

import itertools
import math
import random
import statistics

from rlaif.evaluation import checks as checkers


def words(text: str) -> list[str]:
    """Lower-cased words, split as the instruction checkers count them."""
    return [w.lower() for w in checkers.words(text)]


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of all texts (Li et al. 2016); NaN when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def self_similarity(groups: list[list[str]]) -> float:
    """Mean word-bigram Jaccard similarity between samples of the same prompt (1 = identical samples)."""
    sims = []
    for texts in groups:
        sets = [set(ngrams(words(t), 2)) for t in texts]
        sims += [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
    return statistics.fmean(sims) if sims else math.nan


def win_rate(ps: list[float], resamples: int, seed: int, groups: list | None = None) -> tuple[float, list[float]]:
    """Share of head-to-heads won (p > 0.5; a tie or failed verdict is half), and its 95% bootstrap interval.

    ``groups`` (one label per head-to-head, e.g. its prompt): the bootstrap resamples whole groups, so several
    samples of one prompt count as one draw of a prompt, not as independent evidence.
    """
    wins = [0.5 if math.isnan(p) or p == 0.5 else float(p > 0.5) for p in ps]
    if not wins:
        return math.nan, [math.nan, math.nan]
    by: dict = {}
    for g, w in zip(groups if groups is not None else range(len(wins)), wins):
        by.setdefault(g, []).append(w)
    units = [(sum(v), len(v)) for v in by.values()]
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        draw = rng.choices(units, k=len(units))
        means.append(sum(s for s, _ in draw) / sum(n for _, n in draw))
    means.sort()
    return statistics.fmean(wins), [means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1))]]


def collapse_signals(heldout: list[dict]) -> dict:
    """Diversity, length and KL signals of one model's held-out samples."""
    by_prompt: dict[str, list[str]] = {}
    for r in heldout:
        by_prompt.setdefault(r["prompt_id"], []).append(r["text"])
    lengths = [r["num_tokens"] for r in heldout]
    return {
        "distinct_1": distinct_n([r["text"] for r in heldout], 1),
        "distinct_2": distinct_n([r["text"] for r in heldout], 2),
        "self_similarity": self_similarity(list(by_prompt.values())),
        "mean_tokens": statistics.fmean(lengths),
        "std_tokens": statistics.pstdev(lengths),
        "truncated_share": sum(r["truncated"] for r in heldout) / len(heldout),
        "empty_share": sum(not r["text"].strip() for r in heldout) / len(heldout),
        "kl_to_base": statistics.fmean(r["logp_model"] - r["logp_base"] for r in heldout),
    }


def instruction_metrics(rows: list[dict]) -> dict:
    if not rows:
        return {"if_prompt_accuracy": None, "if_constraint_accuracy": None}
    met = [m for r in rows for m in r["met"]]
    return {
        "if_prompt_accuracy": sum(all(r["met"]) for r in rows) / len(rows),
        "if_constraint_accuracy": sum(met) / len(met),
    }


def paired_constraint_gain(model: list[dict], base: list[dict], resamples: int, seed: int) -> tuple[float, list[float]]:
    """The model's share of instruction constraints met minus the base's, and its paired 95% bootstrap interval.

    Both lists are instruction rows (``prompt_id``, ``met``) over the same prompts (one row per sample). A
    bootstrap resample draws prompts with replacement and keeps each drawn prompt's rows of *both* models, so
    the prompt-to-prompt spread in difficulty, shared by the two, cancels out of the interval (paired). NaN
    with no common prompt.
    """
    def counts(rows):
        out: dict[str, list[int]] = {}
        for r in rows:
            c = out.setdefault(r["prompt_id"], [0, 0])
            c[0], c[1] = c[0] + sum(r["met"]), c[1] + len(r["met"])
        return out

    cm, cb = counts(model), counts(base)
    ids = [i for i in cm if i in cb and cm[i][1] and cb[i][1]]
    if not ids:
        return math.nan, [math.nan, math.nan]

    def gain(sample):
        met_m, n_m, met_b, n_b = (sum(c[i][k] for i in sample) for c, k in ((cm, 0), (cm, 1), (cb, 0), (cb, 1)))
        return met_m / n_m - met_b / n_b

    rng = random.Random(seed)
    gains = sorted(gain(rng.choices(ids, k=len(ids))) for _ in range(resamples))
    return gain(ids), [gains[int(0.025 * (resamples - 1))], gains[int(0.975 * (resamples - 1))]]


def judge_set_accuracy(p_better: list[float]) -> float:
    """Share of labelled pairs where the judge prefers the better answer: P(better) above 0.5 is right, below
    is wrong, exactly 0.5 or a failed (NaN) verdict is half right, as a tie counts in the win-rates."""
    score = [0.5 if math.isnan(p) or p == 0.5 else float(p > 0.5) for p in p_better]
    return statistics.fmean(score) if score else math.nan
