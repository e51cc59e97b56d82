"""Stage 4, pairs: rankings become (prompt, chosen, rejected) preference pairs.

Self-Rewarding Language Models (Yuan et al. 2024) pair the highest- and lowest-scored candidates of
each prompt and drop prompts whose scores tie. We do the same from the Bradley–Terry ranking, with
two deviations:

- Candidates that cannot teach anything are set aside *before* pairing (empty, cut off at
  ``max_new_tokens``, or a duplicate of a better-ranked candidate; each configurable), so one bad
  sample does not cost the prompt its pair: best vs worst is taken among what remains.
- The tie rule is a margin on the judge's own head-to-head verdict between the two candidates
  (both orders averaged), not on the ranking scores: a pair is kept only when
  P(chosen beats rejected) > 0.5 + ``min_margin``.

Everything set aside or dropped is counted by reason and written next to the kept pairs.
"""

import math
from collections import Counter

from rlaif.config import PairsConfig
from rlaif.rank import win_matrix


def _exclusion(c: dict, better_texts: set[str], cfg: PairsConfig) -> str | None:
    if cfg.drop_empty and not c["text"].strip():
        return "empty"
    if cfg.drop_truncated and c["truncated"]:
        return "truncated"
    if cfg.drop_identical and c["text"].strip() in better_texts:
        return "identical"
    return None


def build_pairs(prompts: list[dict], candidates: list[dict], verdicts: list[dict], rankings: list[dict], cfg: PairsConfig):
    """Returns (pairs, dropped, counts)."""
    cands = {(c["prompt_id"], c["candidate"]): c for c in candidates}
    verdicts_of: dict[str, list[dict]] = {}
    for v in verdicts:
        verdicts_of.setdefault(v["prompt_id"], []).append(v)
    prompt_text = {p["id"]: p["prompt"] for p in prompts}
    pairs, dropped = [], []
    counts: Counter = Counter()
    for ranking in rankings:
        pid, order = ranking["prompt_id"], ranking["order"]
        P = win_matrix(len(order), verdicts_of.get(pid, []))
        eligible, seen = [], set()
        for idx in order:  # best first, so a duplicate keeps its better-ranked copy
            c = cands[(pid, idx)]
            reason = _exclusion(c, seen, cfg)
            if reason:
                counts[f"candidates_{reason}"] += 1
            else:
                eligible.append(idx)
            seen.add(c["text"].strip())
        if len(eligible) < 2:
            counts["dropped_too_few_candidates"] += 1
            dropped.append({"prompt_id": pid, "reason": "too_few_candidates", "eligible": eligible})
            continue
        if cfg.strategy == "best_worst":
            candidates_pairs = [(eligible[0], eligible[-1])]
        else:
            candidates_pairs = [(a, b) for n, a in enumerate(eligible) for b in eligible[n + 1 :]]
        for hi, lo in candidates_pairs:
            p = P[hi][lo]
            row = {
                "prompt_id": pid,
                "prompt": prompt_text[pid],
                "chosen": cands[(pid, hi)]["text"],
                "rejected": cands[(pid, lo)]["text"],
                "chosen_candidate": hi,
                "rejected_candidate": lo,
                "p_chosen": p,
                "margin": (p - 0.5) if not math.isnan(p) else math.nan,
            }
            if math.isnan(p):
                counts["dropped_no_verdict"] += 1
                dropped.append({**row, "reason": "no_verdict"})
            elif p - 0.5 <= cfg.min_margin:
                counts["dropped_low_margin"] += 1
                dropped.append({**row, "reason": "low_margin"})
            else:
                pairs.append(row)
    counts["kept"] = len(pairs)
    counts["dropped"] = len(dropped)
    return pairs, dropped, dict(counts)
