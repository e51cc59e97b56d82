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
  :mod:`rlaif.judging.rank`.

Modes (``judge.mode``): ``pairwise`` (above, :class:`ModelJudge`) and ``pointwise`` (an additive
rubric scored as an expected value, :class:`PointwiseJudge`); ``judge.critique`` adds a short written
critique before the verdict (Constitutional AI's chain-of-thought variant, §4.2), which pays off only
for models large enough to reason in text.

The prompt and the candidates are content, never control tokens: a view is built by
:mod:`rlaif.chat`, so a candidate that writes ``<|im_end|>`` cannot close the judge's turn and answer
for it. A verdict needs one forward pass and the logits of the last position only; the tokens comparisons
share are computed once (:mod:`rlaif.judging.prefix_cache`). A failed verdict (non-finite logits) is a NaN value,
counted, never an exception mid-round. How good each mode is on the bundled model:
``benchmarks/judge_bench.py`` and README's "How good is the judge?".
"""

import math
import re

import torch
from tqdm.auto import tqdm

from rlaif import chat
from rlaif.chat import left_pad
from rlaif.errors import RlaifError
from rlaif.judging.constitution import Constitution, load_constitution
from rlaif.judging.prefix_cache import PrefixStore, last_logprobs
from rlaif.judging.verdicts import (
    Comparison,
    _mean,
    calibrated,
    combine_orders,
    expected_score,
    label_mass,
    pick_principle,
    pointwise_p,
)


class _ModelReader:
    """What both judges share: a causal LM read at the end of each view, the prefix cache, the critique option."""

    pointwise = False

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8,
                 prefix_cache: bool = True, critique: bool = False, critique_tokens: int = 48):
        self.model, self.tokenizer, self.constitution, self.batch_size = model, tokenizer, constitution, batch_size
        self.prefix_cache, self.critique, self.critique_tokens = prefix_cache, critique, critique_tokens
        self.prefix_store = PrefixStore() if prefix_cache else None
        self.last_critiques: list[str] = []
        self._read_labels_setup()

    def _read_labels_setup(self) -> None:
        """Which label tokens the judge reads, after which prefix (each judge its own)."""
        raise NotImplementedError


class ModelJudge(_ModelReader):
    """A causal LM as a pairwise judge: log-odds of the constitution's two labels, next token.

    ``prefix_cache`` computes the tokens that comparisons share (system + constitution, then the
    request under one principle) once (:mod:`rlaif.judging.prefix_cache`), and keeps the system + constitution
    head between calls while the weights do not change; ``critique`` first has the model write
    a short critique (greedy, ``critique_tokens``) and reads the label after it.
    """

    def _read_labels_setup(self) -> None:
        tokenizer, constitution = self.tokenizer, self.constitution
        self.label_ids = label_token_ids(tokenizer, constitution)
        if self.critique:
            self.verdict_prefix, self.label_ids = critique_label_ids(
                tokenizer, constitution, constitution.require("critique").pairwise_prefix, constitution.labels
            )
        self.last_label_mass: list[float] = []

    def text(self, c: Comparison) -> str:
        messages = self.constitution.render(c.principle, c.prompt, c.answer_a, c.answer_b, critique=self.critique)
        prefix = chat.render(self.tokenizer, messages)
        return prefix if self.critique else prefix + self.constitution.answer_prefix

    def __call__(self, comparisons: list[Comparison]) -> list[float]:
        texts = [self.text(c) for c in comparisons]
        groups = [(c.prompt, c.principle) for c in comparisons]
        logp, self.last_critiques = read_labels(self, texts, groups, self.label_ids)
        logodds = [a - b if math.isfinite(a) and math.isfinite(b) else math.nan for a, b in logp.tolist()]
        self.last_label_mass = [label_mass(row) for row in logp.tolist()]
        return logodds


class PointwiseJudge(_ModelReader):
    """A causal LM as a rubric scorer: the expected score over the score labels' next-token probabilities.

    Follows Self-Rewarding Language Models (Yuan et al. 2024) in scoring each answer on its own with
    an additive 5-point rubric (the constitution's ``pointwise`` section). Deviation: the paper
    samples a written justification and parses "Score: N"; we read the probabilities of the score
    labels after ``Score: `` and take the expected value, one forward pass per answer (optionally
    after a written critique). Each answer is scored once and reused in every pair it is in.

    Options (``judge.few_shot``, ``judge.rubrics``, ``judge.calibrate``; what each is worth on the bundled
    model: benchmarks/README.md, "Can the self-judge be made stronger?"):

    - ``few_shot``: the constitution's first N graded examples fill the rubric's ``{examples}``, which
      comes before the request, so they are part of the cached head, computed once, not per view.
    - ``rubrics``: the expected score is averaged over the first N wordings of the rubric (``template``
      then ``alternates``); each wording is its own pass with its own cached head (N× the views).
    - ``calibrate``: contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): per request, the
      rubric also scores a content-free answer (``pointwise.content_free``), and its label log-probabilities
      are subtracted from every answer's before the expected score (their diagonal W = diag(p_cf)^-1,
      no bias term), which removes the score prior the request alone induces. One more view per request,
      in the request's cached group.
    """

    pointwise = True

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8, prefix_cache: bool = True,
                 critique: bool = False, critique_tokens: int = 48, few_shot: int = 0, rubrics: int = 1,
                 calibrate: bool = False):
        rubric = constitution.require("pointwise")
        if few_shot > len(rubric.examples):
            raise RlaifError(f"constitution {constitution.source}: judge.few_shot={few_shot} but the rubric has "
                             f"{len(rubric.examples)} graded examples (pointwise.examples)")
        if few_shot and not all("{examples}" in t for t in rubric.templates[:rubrics]):
            raise RlaifError(f"constitution {constitution.source}: judge.few_shot needs an {{examples}} placeholder "
                             "in each rubric template it uses")
        wrong = [e.score for e in rubric.examples[:few_shot] if e.score not in rubric.labels]
        if wrong:
            raise RlaifError(f"constitution {constitution.source}: graded example score {wrong[0]!r} is not one of "
                             f"the rubric's labels {list(rubric.labels)}")
        if rubrics > len(rubric.templates):
            raise RlaifError(f"constitution {constitution.source}: judge.rubrics={rubrics} but the rubric has "
                             f"{len(rubric.templates)} wordings (pointwise.template + alternates)")
        self.few_shot, self.rubrics, self.calibrate = few_shot, rubrics, calibrate
        super().__init__(model, tokenizer, constitution, batch_size, prefix_cache, critique, critique_tokens)
        self.prefix_stores = [self.prefix_store] + [PrefixStore() if prefix_cache else None for _ in range(rubrics - 1)]

    def _read_labels_setup(self) -> None:
        tokenizer, constitution = self.tokenizer, self.constitution
        self.rubric = constitution.require("pointwise")
        prefix = constitution.require("critique").pointwise_prefix if self.critique else self.rubric.answer_prefix
        self.score_prefix, self.label_ids = critique_label_ids(
            tokenizer, constitution, prefix, self.rubric.labels, pointwise=True, after_critique=self.critique
        )

    def text(self, prompt: str, answer: str, rubric: int = 0) -> str:
        messages = self.constitution.render_pointwise(prompt, answer, critique=self.critique, rubric=rubric,
                                                      examples=self.few_shot)
        prefix = chat.render(self.tokenizer, messages)
        return prefix if self.critique else prefix + self.score_prefix

    def __call__(self, items: list[tuple[str, str]]) -> list[dict]:
        """Per (prompt, answer): ``score`` (expected value), ``probs`` over the labels, ``label_mass``."""
        requests = list(dict.fromkeys(p for p, _ in items)) if self.calibrate else []
        views = items + [(p, self.rubric.content_free) for p in requests]
        scores, probs, mass = [[] for _ in items], [[] for _ in items], []
        for r in range(self.rubrics):
            texts = [self.text(p, a, r) for p, a in views]
            logp, critiques = read_labels(self, texts, [p for p, _ in views], self.label_ids, self.prefix_stores[r])
            rows = logp.tolist()
            if r == 0:
                self.last_critiques = critiques[: len(items)]
                mass = [label_mass(row) for row in rows[: len(items)]]
            free = dict(zip(requests, rows[len(items):]))
            for k, (p, _) in enumerate(items):
                row = calibrated(rows[k], free[p]) if self.calibrate else rows[k]
                s, pr = expected_score(row, self.rubric.values)
                scores[k].append(s)
                probs[k].append(pr)
        return [{"score": sum(s) / len(s), "probs": [sum(c) / len(c) for c in zip(*pr)], "label_mass": m}
                for s, pr, m in zip(scores, probs, mass)]


def read_labels(judge, texts: list[str], groups: list, label_ids: list[int], store: PrefixStore | None = None,
                ) -> tuple[torch.Tensor, list[str]]:
    """log P(label) at the end of each text (after a generated critique if the judge asks for one).

    ``store``: the prefix store to use (default the judge's own).

    ``texts`` are views built with :func:`rlaif.chat.render`; a generated critique is model text, marked too.
    """
    critiques: list[str] = []
    if judge.critique:
        critiques = [trim_critique(t) for t in greedy_generate(judge.model, judge.tokenizer, texts, judge.critique_tokens, judge.batch_size)]
        prefix = judge.verdict_prefix if not judge.pointwise else judge.score_prefix
        texts = [t + chat.mark(judge.tokenizer, c) + prefix for t, c in zip(texts, critiques)]
    seqs = [chat.encode(judge.tokenizer, t) for t in texts]
    bar = tqdm(total=len(seqs), desc="judge", unit="view", leave=False)
    logp = last_logprobs(judge.model, seqs, label_ids, judge.batch_size, judge.tokenizer.pad_token_id,
                         groups=groups, prefix_cache=judge.prefix_cache, progress=bar.update,
                         store=store if store is not None else judge.prefix_store)
    bar.close()
    return logp, critiques


def trim_critique(text: str) -> str:
    """The critique up to where the model starts its own verdict (we write the verdict line ourselves)."""
    cut = re.search(r"\n?\s*(verdict|score)\s*:", text, flags=re.IGNORECASE)
    return (text[: cut.start()] if cut else text).rstrip()


@torch.no_grad()
def greedy_generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of texts built with :func:`rlaif.chat.render` (left-padded batches), special tokens dropped."""
    out = [""] * len(texts)
    seqs = [chat.encode(tokenizer, t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask, _ = left_pad([seqs[i] for i in idx], tokenizer.pad_token_id, model.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[r, ids.shape[1] :], skip_special_tokens=True)
    return out


class NoJudge:
    """``judge.mode: none``: no soft judge. Every verdict is a tie (``p_i`` 0.5, not failed), read by no model,
    so on prompts that carry constraints the verifier alone decides (:mod:`rlaif.judging.verifier`) and a
    prompt without constraints yields no pair. The verifier-only arm of the judge/verifier ablation."""

    pointwise = False
    abstains = True


def build_judge(cfg, model, tokenizer, constitution: Constitution):
    """The judge a recipe's ``judge`` section asks for (mode, critique, prefix cache, batch size; pointwise:
    few-shot examples, rubric wordings, calibration)."""
    if cfg.mode == "none":
        return NoJudge()
    common = {"prefix_cache": cfg.prefix_cache, "critique": cfg.critique, "critique_tokens": cfg.critique_tokens}
    if cfg.mode == "pointwise":
        return PointwiseJudge(model, tokenizer, constitution, cfg.batch_size, **common, few_shot=cfg.few_shot,
                              rubrics=cfg.rubrics, calibrate=cfg.calibrate)
    return ModelJudge(model, tokenizer, constitution, cfg.batch_size, **common)


def continuation_ids(tokenizer, prefix: str, labels) -> tuple[str, list[int]] | str:
    """(text to end the prompt with, each label's token id after it), or the first label that fails.

    A label must add exactly one token after ``prefix``. Where the prefix ends in a space that the
    tokenizer would merge into the label (``"Answer " + "A"`` → ``" A"``), the space moves into the label.
    """
    tries = [(prefix, "")] + ([(prefix.rstrip(" "), " ")] if prefix.endswith(" ") else [])
    failed = labels[0]
    for pre, sep in tries:
        base = tokenizer(pre, add_special_tokens=False)["input_ids"]
        ids = []
        for label in labels:
            full = tokenizer(pre + sep + label, add_special_tokens=False)["input_ids"]
            if full[: len(base)] != base or len(full) != len(base) + 1:
                failed = label
                break
            ids.append(full[-1])
        else:
            return pre, ids
    return failed


def label_token_ids(tokenizer, constitution: Constitution) -> tuple[int, int]:
    """The token id each label adds after the judge prompt; each label must be exactly one token."""
    probe = constitution.render("p", "q", "x", "y")
    prefix = chat.render(tokenizer, probe) + constitution.answer_prefix
    got = continuation_ids(tokenizer, prefix, constitution.labels)
    if isinstance(got, str) or got[0] != prefix:
        label = got if isinstance(got, str) else constitution.labels[0]
        raise RlaifError(
            f"constitution {constitution.source}: label {label!r} is not a single token for this "
            "tokenizer after the judge prompt; choose other labels or answer_prefix"
        )
    return got[1][0], got[1][1]


def critique_label_ids(tokenizer, constitution: Constitution, prefix: str, labels, pointwise: bool = False,
                       after_critique: bool = True) -> tuple[str, list[int]]:
    """(prefix to write, label ids) for reading labels after ``prefix`` (after a critique or the rubric)."""
    probe = constitution.render_pointwise("q", "x", after_critique) if pointwise else constitution.render("p", "q", "x", "y", True)
    head = chat.render(tokenizer, probe)
    head += "The answer is fine." if after_critique else ""
    got = continuation_ids(tokenizer, head + prefix, labels)
    if isinstance(got, str):
        what = "critique prefix" if after_critique else "pointwise.answer_prefix"
        raise RlaifError(
            f"constitution {constitution.source}: label {got!r} is not a single token for this tokenizer "
            f"after the {what} {prefix!r}; choose other labels or prefix"
        )
    return got[0][len(head) :], got[1]


def judge_pair(model, tokenizer, prompt: str, answer_a: str, answer_b: str, principle: str | None = None,
               constitution="default", mode: str = "pairwise") -> dict:
    """Judge one pair of your own, as a round would: both orders (pairwise) or both rubric scores (pointwise).

    ``principle``: your own principle text, or a principle id of the constitution; None samples one
    as a round does. ``constitution``: ``default``, a YAML path, or a loaded :class:`Constitution`.
    Returns the principle used and :func:`combine_orders`' keys with i = ``answer_a``: ``p_a_ij``
    (P(label A) with answer_a shown first), ``p_a_ji`` (with answer_b shown first), ``p_i`` (P(answer_a
    better), the two orders averaged), ``agree``, ``p_first``, ``failed``; ``order_ab`` / ``order_ba``
    (P(answer_a better) in each order, whose mean is ``p_i``), ``label_mass`` and ``winner`` ("a", "b"
    or "tie"). Pointwise adds ``score_a``/``score_b``, their ``probs_*`` over ``score_labels``; ``p_i`` is then
    :func:`pointwise_p` and the order keys are NaN.
    """
    c = constitution if isinstance(constitution, Constitution) else load_constitution(constitution)
    if mode == "pointwise":
        if principle is not None:
            raise RlaifError("a principle applies to pairwise judging; pointwise scores against the constitution's rubric")
        judge = PointwiseJudge(model, tokenizer, c, batch_size=2)
        sa, sb = judge([(prompt, answer_a), (prompt, answer_b)])
        values = judge.rubric.values
        p = pointwise_p(sa["score"], sb["score"], min(values), max(values))
        out = {"mode": mode, "principle_id": "rubric", "principle": None, "p_a_ij": math.nan, "p_a_ji": math.nan,
               "p_i": p, "agree": None, "p_first": math.nan, "failed": math.isnan(p), "order_ab": math.nan, "order_ba": math.nan,
               "label_mass": _mean([sa["label_mass"], sb["label_mass"]]),
               "score_a": sa["score"], "score_b": sb["score"], "probs_a": sa["probs"], "probs_b": sb["probs"],
               "score_labels": list(judge.rubric.labels)}
    elif mode == "pairwise":
        by_id = {p.id: p.text for p in c.principles}
        if principle is None:
            pid, text = pick_principle(c, "sample", 0, prompt, 0, 1)
        else:
            pid, text = (principle, by_id[principle]) if principle in by_id else ("custom", principle)
        judge = ModelJudge(model, tokenizer, c, batch_size=2)
        logodds = judge([Comparison(prompt, answer_a, answer_b, text), Comparison(prompt, answer_b, answer_a, text)])
        v = combine_orders(*logodds)
        out = {"mode": mode, "principle_id": pid, "principle": text, **v, "label_mass": _mean(judge.last_label_mass),
               "order_ab": v["p_a_ij"], "order_ba": 1.0 - v["p_a_ji"]}
    else:
        raise RlaifError(f"mode must be 'pairwise' or 'pointwise', got {mode!r}")
    p = out["p_i"]
    out["winner"] = None if math.isnan(p) else "a" if p > 0.5 else "b" if p < 0.5 else "tie"
    return out
