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

Two optional safeguards against collapse:

- **Length control** (``length_tiebreak``, Meta-Rewarding LMs, Wu et al. 2024). Meta-Rewarding
  breaks *exact* score ties toward the shorter response, against the judge's length bias. Our
  scores are continuous, so exact ties hardly happen: we use a tolerance instead. The score is the
  ranking's ``mean_win`` (a candidate's mean soft probability of beating the others, in [0, 1]),
  chosen over the Bradley–Terry log-strength because it stays a probability whatever K, unshrunk by
  the fit's prior (pointwise judge, K=4: 0.05 is about 0.4 rubric point). With ``best_worst``, the chosen response
  is the shortest (fewest tokens) eligible candidate whose score is within the tolerance of the
  top-ranked one, the rejected the longest within the tolerance of the bottom-ranked one, never the
  same candidate. The margin rule above still judges the final pair, so a swap the judge disagrees
  with is dropped, not trained on. ``all_ranked`` already pairs every ordered couple, near-ties
  included, so the tie-break is not applied there.
- **Anchoring to real data** (``anchor_share``; Shumailov et al. 2024, Gerstgrasser et al. 2024:
  mixing real data into each generation's training data keeps self-training from collapsing). For
  that share of the round's prompts (exactly round(share × prompts), picked by a hash of run seed,
  round and prompt id, so a resumed or redone stage picks the same ones) an extra pair is added: chosen = the prompt's human-written
  reference answer, rejected = its lowest-ranked eligible candidate. It needs no judge margin: the
  reference is preferred by construction. Anchor pairs are marked ``"source": "reference"``,
  judge-made ones ``"source": "judge"``. A picked prompt without a reference answer, or with no
  eligible candidate, gets none (counted as ``anchor_missing_reference`` / ``anchor_no_candidate``).

Everything set aside or dropped is counted by reason and written next to the kept pairs.

A cut-off candidate is never trained as a finished turn: with ``drop_truncated: false`` it may still
be paired, but every pair records ``chosen_truncated`` / ``rejected_truncated``, and the trainer
leaves such a response open (no end-of-turn token; :func:`rlaif.stages.train_dpo.to_dataset`).
"""

import hashlib
import math
import statistics
from collections import Counter

from rlaif.config import PairsConfig
from rlaif.judging.rank import win_matrix
from rlaif.run import RunContext
from rlaif.rundir import read_jsonl, write_jsonl


def _exclusion(c: dict, better_texts: set[str], cfg: PairsConfig) -> str | None:
    if cfg.drop_empty and not c["text"].strip():
        return "empty"
    if cfg.drop_truncated and c["truncated"]:
        return "truncated"
    if cfg.drop_identical and c["text"].strip() in better_texts:
        return "identical"
    return None


def anchor_prompts(prompt_ids: list[str], share: float, seed: int, round_n: int) -> set[str]:
    """The ``round(share × n)`` prompts (halves round up) with the smallest hash of (seed, round, id).

    Depends only on the set of ids, not their order, so a resumed or redone stage picks the same ones.
    """
    ids = set(prompt_ids)
    n = math.floor(share * len(ids) + 0.5)

    def key(pid: str) -> str:
        return hashlib.sha256(f"anchor:{seed}:{round_n}:{pid}".encode()).hexdigest()

    return set(sorted(ids, key=key)[:n])


def best_worst(eligible: list[int], ranking: dict, cands: dict, pid: str, tolerance: float) -> tuple[int, int]:
    """(chosen, rejected) among ``eligible`` (best first): the ends, or with a tolerance the length tie-break."""
    if tolerance <= 0:
        return eligible[0], eligible[-1]
    score = ranking["mean_win"]
    pos = {c: n for n, c in enumerate(eligible)}
    tokens = {c: cands[(pid, c)]["num_tokens"] for c in eligible}
    tolerance += 1e-9  # "within" includes the boundary, whatever the float rounding of top - tolerance
    top, bottom = score[eligible[0]], score[eligible[-1]]
    near_top = [c for c in eligible if score[c] >= top - tolerance]
    chosen = min(near_top, key=lambda c: (tokens[c], pos[c]))  # shortest; equal length: the better ranked
    # never the chosen one; never empty either: if chosen is the bottom candidate, it is within the
    # tolerance of the top, so the top is within the tolerance of the bottom
    near_bottom = [c for c in eligible if score[c] <= bottom + tolerance and c != chosen]
    rejected = max(near_bottom, key=lambda c: (tokens[c], pos[c]))  # longest; equal length: the worse ranked
    return chosen, rejected


def build_pairs(prompts: list[dict], candidates: list[dict], verdicts: list[dict], rankings: list[dict], cfg: PairsConfig,
                seed: int = 0, round_n: int = 1):
    """Returns (pairs, dropped, counts). ``seed`` and ``round_n`` pick the anchored prompts."""
    cands = {(c["prompt_id"], c["candidate"]): c for c in candidates}
    verdicts_of: dict[str, list[dict]] = {}
    for v in verdicts:
        verdicts_of.setdefault(v["prompt_id"], []).append(v)
    prompt_of = {p["id"]: p for p in prompts}
    anchored = anchor_prompts(list(prompt_of), cfg.anchor_share, seed, round_n) if cfg.anchor_share > 0 else set()
    pairs, dropped = [], []
    counts: Counter = Counter()
    if cfg.anchor_share > 0:  # present, even when 0, whenever the option is on
        counts.update(anchor_selected=len(anchored), anchor_pairs=0)
    if cfg.length_tiebreak > 0:
        counts.update(length_tiebreak_changed=0, length_tiebreak_kept=0)
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
        if pid in anchored:
            _anchor(prompt_of[pid], eligible, cands, pairs, dropped, counts)
        if len(eligible) < 2:
            counts["dropped_too_few_candidates"] += 1
            dropped.append({"prompt_id": pid, "source": "judge", "reason": "too_few_candidates", "eligible": eligible})
            continue
        if cfg.strategy == "best_worst":
            hi, lo = best_worst(eligible, ranking, cands, pid, cfg.length_tiebreak)
            candidates_pairs = [(hi, lo, (hi, lo) != (eligible[0], eligible[-1]))]
        else:
            candidates_pairs = [(a, b, False) for n, a in enumerate(eligible) for b in eligible[n + 1 :]]
        for hi, lo, tiebreak in candidates_pairs:
            p = P[hi][lo]
            row = {
                "prompt_id": pid,
                "prompt": prompt_of[pid]["prompt"],
                "chosen": cands[(pid, hi)]["text"],
                "rejected": cands[(pid, lo)]["text"],
                "chosen_candidate": hi,
                "rejected_candidate": lo,
                "chosen_truncated": bool(cands[(pid, hi)]["truncated"]),
                "rejected_truncated": bool(cands[(pid, lo)]["truncated"]),
                "p_chosen": p,
                "margin": (p - 0.5) if not math.isnan(p) else math.nan,
                "source": "judge",
                "length_tiebreak": tiebreak,
            }
            if cfg.length_tiebreak > 0:
                counts["length_tiebreak_changed"] += tiebreak
            if math.isnan(p):
                counts["dropped_no_verdict"] += 1
                dropped.append({**row, "reason": "no_verdict"})
            elif p - 0.5 <= cfg.min_margin:
                counts["dropped_low_margin"] += 1
                dropped.append({**row, "reason": "low_margin"})
            else:
                if cfg.length_tiebreak > 0:
                    counts["length_tiebreak_kept"] += tiebreak
                pairs.append(row)
    counts["kept"] = len(pairs)
    counts["dropped"] = len(dropped)
    return pairs, dropped, dict(counts)


def _anchor(prompt: dict, eligible: list[int], cands: dict, pairs: list, dropped: list, counts: Counter) -> None:
    """The anchor pair of one selected prompt: its reference answer over its worst eligible candidate."""
    pid, reference = prompt["id"], prompt.get("reference")
    lo = eligible[-1] if eligible else None
    row = {
        "prompt_id": pid,
        "prompt": prompt["prompt"],
        "chosen": reference,
        "rejected": None if lo is None else cands[(pid, lo)]["text"],
        "chosen_candidate": None,
        "rejected_candidate": lo,
        "chosen_truncated": False,  # a human-written reference answer is complete
        "rejected_truncated": None if lo is None else bool(cands[(pid, lo)]["truncated"]),
        "p_chosen": None,
        "margin": None,
        "source": "reference",
        "length_tiebreak": False,
    }
    if not reference:
        reason = "missing_reference"
    elif lo is None:
        reason = "no_candidate"
    elif row["rejected"].strip() == reference.strip():
        reason = "identical"
    else:
        counts["anchor_pairs"] += 1
        pairs.append(row)
        return
    counts[f"anchor_{reason}"] += 1
    dropped.append({**row, "reason": f"anchor_{reason}"})


def run(ctx: RunContext, n: int) -> dict:
    """The pairs stage: the judged, ranked candidates of round n become the round's training pairs."""
    prompts, candidates, verdicts, rankings = (
        read_jsonl(ctx.run.path(n, name)) for name in ("prompts.jsonl", "candidates.jsonl", "verdicts.jsonl", "rankings.jsonl")
    )
    pairs, dropped, counts = build_pairs(prompts, candidates, verdicts, rankings, ctx.recipe.pairs, ctx.recipe.run.seed, n)
    write_jsonl(ctx.run.path(n, "pairs.jsonl"), pairs)
    write_jsonl(ctx.run.path(n, "pairs_dropped.jsonl"), dropped)
    judged = [p["margin"] for p in pairs if p["source"] == "judge"]  # anchor pairs have no judge margin
    counts["mean_margin_kept"] = statistics.fmean(judged) if judged else None
    return counts
