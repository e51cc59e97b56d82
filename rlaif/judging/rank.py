"""Ranking K candidates from soft pairwise verdicts: Bradley–Terry fitted to win probabilities.

Bradley–Terry (1952) models P(i beats j) = π_i / (π_i + π_j). We fit it with Hunter's (2004)
minorise–maximise updates, with one difference: each comparison contributes its *soft* outcome
(the judge's two-order average P(i better)) instead of a 0/1 win, so a 0.52 verdict counts for
little and a 0.95 verdict for a lot. A weak prior (half a win and half a loss against a virtual
opponent of strength 1) keeps strengths finite when one candidate wins every comparison. Failed
(NaN) verdicts are left out. Ties in strength fall back to the mean win probability, then to the
candidate index, so rankings are deterministic.
"""

import math


def win_matrix(k: int, verdicts: list[dict]) -> list[list[float]]:
    """P[i][j] = P(i beats j); NaN where no valid verdict exists (and on the diagonal)."""
    P = [[math.nan] * k for _ in range(k)]
    for v in verdicts:
        i, j, p = v["i"], v["j"], v["p_i"]
        if p is None or math.isnan(p):
            continue
        P[i][j], P[j][i] = p, 1.0 - p
    return P


def bradley_terry(P: list[list[float]], prior: float = 1.0, iters: int = 500, tol: float = 1e-10) -> list[float]:
    """Log-strengths (mean zero) of a soft-outcome Bradley–Terry model."""
    k = len(P)
    pi = [1.0] * k
    for _ in range(iters):
        new = []
        for i in range(k):
            wins = prior * 0.5 + sum(P[i][j] for j in range(k) if j != i and not math.isnan(P[i][j]))
            denom = prior / (pi[i] + 1.0) + sum(1.0 / (pi[i] + pi[j]) for j in range(k) if j != i and not math.isnan(P[i][j]))
            new.append(wins / denom)
        delta = max(abs(math.log(a) - math.log(b)) for a, b in zip(new, pi))
        pi = new
        if delta < tol:
            break
    logs = [math.log(x) for x in pi]
    mean = sum(logs) / k
    return [x - mean for x in logs]


def mean_wins(P: list[list[float]]) -> list[float]:
    out = []
    for i, row in enumerate(P):
        vals = [p for j, p in enumerate(row) if j != i and not math.isnan(p)]
        out.append(sum(vals) / len(vals) if vals else 0.5)
    return out


def rank_candidates(k: int, verdicts: list[dict]) -> dict:
    """``{order, strength, mean_win}``: candidate indices best first, with their scores."""
    P = win_matrix(k, verdicts)
    strength = bradley_terry(P)
    wins = mean_wins(P)
    order = sorted(range(k), key=lambda i: (-round(strength[i], 9), -wins[i], i))
    return {"order": order, "strength": strength, "mean_win": wins}


def rank_all(candidates: list[dict], verdicts: list[dict]) -> list[dict]:
    """One ranking row per prompt, in the order prompts first appear among the candidates."""
    k_of: dict[str, int] = {}
    for c in candidates:
        k_of[c["prompt_id"]] = max(k_of.get(c["prompt_id"], 0), c["candidate"] + 1)
    by_prompt: dict[str, list[dict]] = {pid: [] for pid in k_of}
    for v in verdicts:
        by_prompt.setdefault(v["prompt_id"], []).append(v)
    return [{"prompt_id": pid, **rank_candidates(k, by_prompt[pid])} for pid, k in k_of.items()]
