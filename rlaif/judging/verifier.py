"""The verifier: on prompts that carry checkable constraints, a program's verdict joins the soft judge's.

Follows reinforcement learning with verifiable rewards (RLVR; Lambert et al. 2024, "Tülu 3", its RLVR stage) in
letting a program that checks the prompt's constraints (:mod:`rlaif.evaluation.checks`) decide what
it can decide, instead of asking a learned judge. Where we deviate, and why:

- Tülu 3 rewards verifiable prompts with the checker alone (1 when every constraint holds, else 0).
  We score each candidate by its *share* of constraints met, so a candidate that keeps two of three
  beats one that keeps none, and combine it with the soft judge on the same pair: the checker cannot
  tell a helpful answer from a useless one that happens to be 40 words long.
- **Default rule:** when two candidates meet different shares, the verifier decides (P(i better) = 1
  or 0, or ``0.5 ± strength / 2``); when they meet the same share, the judge's verdict stands, so it
  breaks ties and ranks everything the checker cannot tell apart. With ``weight`` w < 1 the two mix
  where the shares differ: p = w · verifier_p + (1 − w) · judge_p.
- Every verdict says which source decided (``decided_by``: ``verifier``, ``judge`` or ``mixed``)
  and keeps the judge's own probability (``judge_p_i``), so the judge's accuracy against the checker
  stays measurable: :func:`verifier_agreement`, how often the judge alone prefers the candidate that
  meets more constraints, is the self-judge's accuracy on its own policy's outputs, free every round.
- A verdict the judge failed (NaN) is decided by the verifier alone when the shares differ.
- Prompts without constraints keep the judge's verdict exactly (only ``decided_by: judge`` is added).

The combined verdicts are ordinary verdict rows (``prompt_id``, ``i``, ``j``, ``p_i``, ``failed``):
the ranking, the pair builder and the GRPO/RLOO reward read them as they read the judge's.
"""

import math
from collections.abc import Iterable

from rlaif.errors import RlaifError
from rlaif.evaluation.checks import check_all


def share_met(constraints: list[dict], text: str) -> float:
    """The share of ``constraints`` that ``text`` keeps (NaN when there are none)."""
    if not constraints:
        return math.nan
    met = check_all(text, constraints)
    return sum(met) / len(met)


def candidate_shares(prompts: Iterable[dict], candidates: Iterable[dict]) -> dict[tuple[str, int], float]:
    """``{(prompt_id, candidate): share met}`` for the candidates of prompts that carry constraints."""
    constraints = {p["id"]: p.get("constraints") or [] for p in prompts}
    return {
        (c["prompt_id"], c["candidate"]): share_met(constraints[c["prompt_id"]], c["text"])
        for c in candidates
        if constraints.get(c["prompt_id"])
    }


def check_settings(weight: float, strength: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise RlaifError(f"judge.verifier_weight must be a number from 0 to 1, got {weight!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise RlaifError(f"judge.verifier_strength must be a number above 0 and at most 1, got {strength!r}")


def combine(judge_p: float, share_i: float, share_j: float, weight: float = 1.0, strength: float = 1.0) -> dict:
    """One combined verdict: ``p_i``, ``verifier_p_i`` (None when the shares are equal), ``decided_by``."""
    if share_i == share_j or weight == 0:
        return {"p_i": judge_p, "verifier_p_i": None, "decided_by": "judge"}
    verifier_p = 0.5 + strength / 2 if share_i > share_j else 0.5 - strength / 2
    if weight == 1 or math.isnan(judge_p):
        return {"p_i": verifier_p, "verifier_p_i": verifier_p, "decided_by": "verifier"}
    return {"p_i": weight * verifier_p + (1 - weight) * judge_p, "verifier_p_i": verifier_p, "decided_by": "mixed"}


def apply_verifier(verdicts: list[dict], prompts: list[dict], candidates: list[dict], weight: float = 1.0,
                   strength: float = 1.0) -> list[dict]:
    """The judge's verdict rows with the verifier folded in (new dicts; the inputs are not changed).

    ``prompts``: rows with ``id`` and, where the prompt has any, ``constraints``; ``candidates``:
    rows with ``prompt_id``, ``candidate``, ``text``. A row of a constrained prompt gains ``share_i``,
    ``share_j``, ``judge_p_i`` (the judge's own P(i better)), ``verifier_p_i`` and ``decided_by``,
    and its ``p_i`` / ``failed`` become the combined verdict's.
    """
    check_settings(weight, strength)
    shares = candidate_shares(prompts, candidates)
    out = []
    for v in verdicts:
        key_i, key_j = (v["prompt_id"], v["i"]), (v["prompt_id"], v["j"])
        if key_i not in shares or key_j not in shares:
            out.append({**v, "decided_by": "judge"})
            continue
        judge_p = v["p_i"] if v["p_i"] is not None else math.nan
        combined = combine(judge_p, shares[key_i], shares[key_j], weight, strength)
        out.append({**v, "share_i": shares[key_i], "share_j": shares[key_j], "judge_p_i": judge_p, **combined,
                    "failed": math.isnan(combined["p_i"])})
    return out


def verifier_agreement(verdicts: list[dict]) -> float:
    """How often the judge alone prefers the candidate that meets more constraints.

    Over combined verdicts whose candidates meet different shares and whose judge verdict did not
    fail; a judge verdict of exactly 0.5 counts as half. NaN when there is no such verdict.
    """
    scores = []
    for v in verdicts:
        si, sj, p = v.get("share_i"), v.get("share_j"), v.get("judge_p_i")
        if si is None or sj is None or si == sj or p is None or math.isnan(p):
            continue
        scores.append(0.5 if p == 0.5 else float((p > 0.5) == (si > sj)))
    return sum(scores) / len(scores) if scores else math.nan


def verifier_metrics(verdicts: list[dict]) -> dict:
    """Per-round numbers for the tracker: agreement, and which source decided how many verdicts."""
    constrained = [v for v in verdicts if v.get("share_i") is not None]
    unequal = [v for v in constrained if v["share_i"] != v["share_j"]]
    n = len(verdicts)
    return {
        "verifier_agreement": verifier_agreement(verdicts),
        "verifier_pairs": len(unequal),
        "constraint_verdicts": len(constrained),
        **{f"decided_by_{s}": (sum(v.get("decided_by") == s for v in verdicts) / n if n else math.nan)
           for s in ("verifier", "judge", "mixed")},
    }


def constraint_metrics(prompts: list[dict], candidates: list[dict]) -> dict:
    """How well the round's candidates keep their prompts' constraints (the policy's training-set IF)."""
    shares = list(candidate_shares(prompts, candidates).values())
    return {
        "constraint_prompts": sum(1 for p in prompts if p.get("constraints")),
        "constraints_met_share": sum(shares) / len(shares) if shares else math.nan,
        "constraints_all_met_share": sum(s == 1 for s in shares) / len(shares) if shares else math.nan,
    }
