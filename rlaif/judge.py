"""Stage 3, judge: a constitution-prompted copy of the model compares candidates, softly.

Follows Constitutional AI (Bai et al. 2022, §4) in asking the feedback model a multiple-choice
question under one principle sampled per comparison, and in reading the *probabilities* of the
answer labels rather than parsing generated text. Where we deviate, and why:

- Every pair is shown in **both orders** and the two probabilities of "candidate i is better" are
  averaged. Small models have a strong position bias (SmolLM2-135M-Instruct picks the first-shown
  answer with P≈0.8 whatever its quality); only the two-order average recovers the better answer.
  Each verdict records both orders' probabilities so the bias stays measurable.
- The two label probabilities are renormalised over the two labels (a softmax of their two logits);
  the mass the model gave the labels among all tokens is kept as ``label_mass`` for diagnosis.
- With ``judge.principles: all`` every principle is shown in one prompt instead of sampling one.
- K candidates are compared as a full round robin (K·(K−1)/2 pairs, twice each), ranked in
  :mod:`rlaif.rank`.

A verdict needs one forward pass and the logits of the last position only (``logits_to_keep=1``).
A failed verdict (non-finite logits) is a NaN value, counted, never an exception mid-round.
"""

import itertools
import math
import random
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from rlaif.constitution import Constitution
from rlaif.errors import RlaifError
from rlaif.generate import derive_seed


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


class ModelJudge:
    """A causal LM as a pairwise judge: log-odds of the constitution's two labels, next token."""

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8):
        self.model, self.tokenizer, self.constitution, self.batch_size = model, tokenizer, constitution, batch_size
        self.label_ids = label_token_ids(tokenizer, constitution)
        self.last_label_mass: list[float] = []

    def text(self, c: Comparison) -> str:
        messages = self.constitution.render(c.principle, c.prompt, c.answer_a, c.answer_b)
        prefix = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prefix + self.constitution.answer_prefix

    @torch.no_grad()
    def __call__(self, comparisons: list[Comparison]) -> list[float]:
        texts = [self.text(c) for c in comparisons]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch
        logodds, mass = [math.nan] * len(texts), [math.nan] * len(texts)
        a, b = self.label_ids
        bar = tqdm(total=len(texts), desc="judge", unit="view", leave=False)
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.model.device)
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(idx):
                la, lb = logp[row, a].item(), logp[row, b].item()
                if math.isfinite(la) and math.isfinite(lb):
                    logodds[i] = la - lb
                    mass[i] = math.exp(la) + math.exp(lb)
            bar.update(len(idx))
        bar.close()
        self.last_label_mass = mass
        return logodds


def label_token_ids(tokenizer, constitution: Constitution) -> tuple[int, int]:
    """The token id each label adds after the judge prompt; each label must be exactly one token."""
    probe = constitution.render("p", "q", "x", "y")
    prefix = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False) + constitution.answer_prefix
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for label in constitution.labels:
        full = tokenizer(prefix + label, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise RlaifError(
                f"constitution {constitution.source}: label {label!r} is not a single token for this "
                "tokenizer after the judge prompt; choose other labels or answer_prefix"
            )
        ids.append(full[-1])
    return ids[0], ids[1]


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
    """Verdict rows for every pair (i < j) of each prompt's candidates, both orders."""
    by_prompt: dict[str, list[dict]] = {}
    for c in candidates:
        by_prompt.setdefault(c["prompt_id"], []).append(c)
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


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def verdict_metrics(verdicts: list[dict]) -> dict:
    ok = [v for v in verdicts if not v["failed"]]
    return {
        "verdicts": len(verdicts),
        "failed_verdicts": len(verdicts) - len(ok),
        "mean_margin": _mean([abs(v["p_i"] - 0.5) for v in ok]),
        "order_agreement": _mean([float(v["agree"]) for v in ok]),
        "position_bias_p_first": _mean([v["p_first"] for v in ok]),
        "label_mass": _mean([v["label_mass"] for v in ok]),
    }
