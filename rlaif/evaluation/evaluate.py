"""Stage 6, evaluate: does a round's adapter get better on prompts the loop never trained on?

For the base model and each round's adapter, on the held-out split of the prompt set:

- **win-rate** against the base and against the previous round, judged by a judge that does not
  move (``eval.judge_model``: the frozen base by default), every head-to-head in both orders
  (pairwise), each of a prompt's ``eval.samples`` answers against the other model's answer of the same
  index, with a 95% bootstrap interval over prompts;
- **verifiable instruction following** on rlaif's checker set (:mod:`rlaif.evaluation.checks`): the share of
  prompts with every constraint met and the share of constraints met;
- **collapse signals** (Shumailov et al. 2024): distinct-1/2 over all samples, self-similarity
  between the samples of the same prompt, response length (mean, spread), the share cut off at the
  token limit, and a Monte-Carlo KL(model ‖ base) estimate on the held-out samples: the sampled
  token ids themselves, scored under both models at the sampling temperature
  (:func:`rlaif.stages.generate.sample_logprobs`; the stage's doc says why without the top-k/top-p cut).

Deviations from the usual win-rate evaluations (AlpacaEval, MT-Bench): the judge is the small
frozen base, not a strong external model, so win-rates near 0.5 mean "the judge cannot tell", not
"no change"; and a tie (p exactly 0.5, or a failed verdict) counts as half a win.

With several processes, each answers, scores and judges a contiguous share of the prompts, the results
are gathered back in prompt order, and the main process writes the files.

Everything is cached under ``RUN/eval/``: responses per model (keyed by the adapter's sha256 and the
evaluation settings) and head-to-heads per pair of models, so ``rlaif eval`` after a run whose rounds
were already evaluated only re-reads files, and a redone round is evaluated afresh.

    RUN/eval/responses/<model>.jsonl         held-out and instruction responses, log-probs, constraints met
    RUN/eval/responses/<model>.meta.json     adapter, its sha256, the settings fingerprint
    RUN/eval/comparisons/<a>_vs_<b>.jsonl    per held-out prompt and sample: both orders' P(A), p = P(a beats b)
    RUN/eval/results.json                    one row of metrics per model (the table `rlaif eval` prints)
"""

import dataclasses
import hashlib
import json
import math
import statistics
from importlib import resources
from pathlib import Path

from rlaif.config import Recipe
from rlaif.distributed import gather, main_lock, on_main, split
from rlaif.errors import RlaifError
from rlaif.evaluation import checks as checkers
from rlaif.evaluation.metrics import (
    collapse_signals,
    instruction_metrics,
    judge_set_accuracy,
    paired_constraint_gain,
    win_rate,
)
from rlaif.judging.judges import build_judge
from rlaif.judging.verdicts import judge_candidates
from rlaif.run import RunContext, say
from rlaif.rundir import read_json, read_jsonl, sha256_dir, write_json, write_jsonl
from rlaif.seeds import derive_seed
from rlaif.stages.generate import generate_candidates, sample_logprobs_split
from rlaif.stages.prompts import load_pool, prompt_token_count

# ---------------------------------------------------------------- the evaluator


@dataclasses.dataclass
class Model:
    """One evaluated model: the base (adapter None) or an adapter on it."""

    name: str
    round: int | None
    adapter: Path | None


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def heldout_prompts(pool, tokenizer, max_tokens: int, n: int) -> list[dict]:
    """The first ``n`` (0: all) held-out prompts of ``pool`` that fit ``max_tokens`` under the chat template."""
    fitting = [p for p in pool.heldout if prompt_token_count(tokenizer, p["prompt"]) <= max_tokens]
    if not pool.heldout:
        raise RlaifError(
            "no held-out prompts to evaluate on: the prompt set's held-out split is empty "
            "(set prompts.heldout_fraction for a file or hub prompt set)"
        )
    if not fitting:
        raise RlaifError(
            f"no held-out prompts to evaluate on: all {len(pool.heldout)} held-out prompts are longer than "
            f"prompts.max_prompt_tokens={max_tokens}"
        )
    return fitting[: n or len(fitting)]


def eval_judge_config(recipe: Recipe):
    """The evaluation judge's settings: the recipe's judge section with ``eval.judge_model`` / ``judge_mode``,
    every principle shown."""
    e = recipe.eval
    return recipe.judge.model_copy(update={"mode": e.judge_mode, "model": e.judge_model, "principles": "all"})


class Evaluator:
    """Answers, judges and scores models on the held-out prompts of one run folder, caching everything."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.recipe, self.run, self.cfg = ctx, ctx.recipe, ctx.run, ctx.recipe.eval
        recipe, run = ctx.recipe, ctx.run
        self.root = run.root / "eval"
        self._base = None
        self._judge = None
        self.heldout = self._heldout_prompts()
        self.instructions = self._instruction_prompts()
        gen = recipe.generate
        self.max_new_tokens = self.cfg.max_new_tokens or gen.max_new_tokens
        self.settings = fingerprint({
            "eval": self.cfg.model_dump(), "generate": gen.model_dump(), "model": recipe.model.source,
            "seed": recipe.run.seed, "heldout": [p["id"] for p in self.heldout],
            "instructions": [p["id"] for p in self.instructions],
            "kl": "sampled ids at the sampling temperature",  # responses cached before this scored re-tokenised text
        })

    # -- inputs
    def _heldout_prompts(self) -> list[dict]:
        return heldout_prompts(load_pool(self.recipe.prompts), self.ctx.tokenizer, self.recipe.prompts.max_prompt_tokens,
                               self.cfg.heldout_prompts)

    def _instruction_prompts(self) -> list[dict]:
        if self.cfg.instructions == "none":
            return []

        rows = checkers.load_instruction_set(None if self.cfg.instructions == "bundled" else self.cfg.instructions)
        return rows[: self.cfg.instruction_prompts or len(rows)]

    # -- models
    def models(self, rounds: list[int] | None = None) -> list[Model]:
        """The base and every round with an adapter (or just ``rounds``)."""
        out = [Model("base", 0, None)]
        for n in range(1, self.run.last_round() + 1):
            if (self.run.adapter(n) / "adapter_config.json").is_file() and (rounds is None or n in rounds):
                out.append(Model(f"round_{n:03d}", n, self.run.adapter(n)))
        return out

    def previous(self, m: Model) -> Model | None:
        """The model a round is compared with as "the previous round": the newest earlier adapter, else the base."""
        if m.round in (None, 0):
            return None
        prev = self.ctx.policy_adapter(m.round)
        if prev is None:
            return Model("base", 0, None)
        n = int(prev.parent.name.split("_")[1])
        return Model(f"round_{n:03d}", n, prev)

    @property
    def base(self):
        if self._base is None:
            self._base = self.ctx.load(None)
        return self._base

    # -- responses
    def _response_paths(self, m: Model) -> tuple[Path, Path]:
        return self.root / "responses" / f"{m.name}.jsonl", self.root / "responses" / f"{m.name}.meta.json"

    def responses(self, m: Model) -> list[dict]:
        """The model's held-out and instruction responses (cached by adapter sha256 + settings)."""
        path, meta_path = self._response_paths(m)
        meta = {"model": m.name, "adapter": str(m.adapter) if m.adapter else None,
                "adapter_sha256": sha256_dir(m.adapter) if m.adapter else None, "settings": self.settings}
        if path.is_file() and meta_path.is_file() and read_json(meta_path) == meta:
            return read_jsonl(path)
        rows = self._generate(m)
        on_main(self.ctx.state, _write_cached, path, rows, meta_path, meta)  # the others wait for the files
        return rows

    def _generate(self, m: Model) -> list[dict]:
        say(f"eval: {m.name}: answering {len(self.heldout)} held-out prompts x{self.cfg.samples}"
            f" and {len(self.instructions)} instruction prompts x{self.cfg.instruction_samples}")
        model = self.ctx.load(m.adapter) if m.adapter else self.base
        seed = derive_seed(self.recipe.run.seed, "eval")
        rows = []
        for name, prompts, k in (("heldout", self.heldout, self.cfg.samples),
                                 ("instructions", self.instructions, self.cfg.instruction_samples)):
            if not prompts:
                continue
            mine = split(self.ctx.state, prompts)  # with several processes, a share of the prompts each
            for r in gather(self.ctx.state, sample_responses(model, self.ctx.tokenizer, mine, self._gen_cfg(k), seed,
                                                             m.name, name)):
                r["set"] = name
                rows.append(r)
        text_of = {p["id"]: p["prompt"] for p in self.heldout + self.instructions}
        heldout = [r for r in rows if r["set"] == "heldout"]  # the KL estimate's samples
        args = (self.ctx, [text_of[r["prompt_id"]] for r in heldout], [r["token_ids"] for r in heldout],
                self._gen_cfg(self.cfg.samples))
        own = [r["logp"] for r in heldout]  # scored while sampling, by the model that drew them
        base = sample_logprobs_split(self.base, *args) if m.adapter else own
        for r, lp, lb in zip(heldout, own, base):
            r["logp_model"], r["logp_base"] = lp, lb
        for r in rows:
            r.pop("logp", None)
        constraints = {p["id"]: p["constraints"] for p in self.instructions}
        for r in rows:
            r["prompt"] = text_of[r["prompt_id"]]
            if r["set"] == "instructions":
                r["constraints"] = constraints[r["prompt_id"]]
                r["met"] = checkers.check_all(r["text"], r["constraints"])
        return rows

    def _gen_cfg(self, k: int):
        """The recipe's sampling settings, k samples per prompt, with as many sequences per batch as training's."""
        gen = self.recipe.generate
        rows = gen.batch_size * gen.num_candidates
        return gen.model_copy(update={"num_candidates": k, "max_new_tokens": self.max_new_tokens,
                                      "batch_size": max(1, rows // k)})

    # -- head-to-heads
    @property
    def judge(self):
        if self._judge is None:
            cfg = eval_judge_config(self.recipe)
            if cfg.model == "base" and self.ctx.judge_dtype_name == self.ctx.dtype_name:  # the same weights
                model, tokenizer = self.base, self.ctx.tokenizer
            else:
                model, tokenizer, _ = self.ctx.load_judge(0, cfg.model)
            self._judge = build_judge(cfg, model, tokenizer, self.ctx.constitution)
        return self._judge

    def judge_accuracy(self) -> dict:
        """The evaluation judge's accuracy on the labelled judge set (``rlaif/data/judge_set.jsonl``: 126 pairs
        written for this project, one answer plainly better), measured once per judge and cached: a win-rate
        means as much as the judge that called it, so every win-rate is printed beside this number."""
        pairs = load_judge_set()
        key = fingerprint({"judge": self.cfg.judge_model, "mode": self.cfg.judge_mode,
                           "judge_cfg": self.recipe.judge.model_dump(), "pairs": pairs})
        path = self.root / "judge_accuracy.json"
        if path.is_file() and read_json(path).get("key") == key:
            return read_json(path)["accuracy"]
        say(f"eval: measuring the judge ({self.cfg.judge_model}, {self.cfg.judge_mode}) on {len(pairs)} labelled pairs")
        prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in pairs]
        candidates = [{"prompt_id": p["id"], "candidate": i, "text": p[side]}
                      for p in pairs for i, side in enumerate(("better", "worse"))]
        mine = split(self.ctx.state, prompts)  # whole pairs: a share each with several processes
        verdicts = gather(self.ctx.state, judge_candidates(self.judge, self.ctx.constitution, mine, candidates, "all",
                                                           self.recipe.run.seed))
        out = {"accuracy": judge_set_accuracy([v["p_i"] for v in verdicts]), "pairs": len(pairs),
               "set": "rlaif/data/judge_set.jsonl"}
        on_main(self.ctx.state, write_json, path, {"key": key, "accuracy": out})
        return out

    def compare(self, a: Model, b: Model) -> list[dict]:
        """Per held-out prompt and sample i: P(a's i-th sample beats b's i-th), both orders (cached).

        Every sample takes part (``eval.samples`` head-to-heads a prompt, not one): the win-rate's interval
        is the bootstrap over prompts (:func:`rlaif.evaluation.metrics.win_rate` with the prompt as group).
        """
        ra, rb = (self._samples(self.responses(m)) for m in (a, b))
        key = fingerprint({"a": self._response_key(a), "b": self._response_key(b), "judge": self.cfg.judge_model,
                           "mode": self.cfg.judge_mode, "judge_cfg": self.recipe.judge.model_dump(),
                           "pairing": "every sample"})
        path = self.root / "comparisons" / f"{a.name}_vs_{b.name}.jsonl"
        meta_path = path.with_suffix(".meta.json")
        if path.is_file() and meta_path.is_file() and read_json(meta_path).get("key") == key:
            return read_jsonl(path)
        heads = [{"id": f"{p['id']}#{i}", "prompt": p["prompt"], "prompt_id": p["id"], "sample": i}
                 for p in self.heldout for i in range(min(len(ra[p["id"]]), len(rb[p["id"]])))]
        say(f"eval: judging {a.name} vs {b.name}: {len(heads)} head-to-heads on {len(self.heldout)} held-out prompts")
        candidates = [{"prompt_id": h["id"], "candidate": idx, "text": side[h["prompt_id"]][h["sample"]]["text"]}
                      for h in heads for idx, side in enumerate((ra, rb))]
        mine = split(self.ctx.state, heads)  # whole head-to-heads: both answers stay on one process
        verdicts = gather(self.ctx.state, judge_candidates(self.judge, self.ctx.constitution, mine, candidates, "all",
                                                           self.recipe.run.seed))
        of = {h["id"]: h for h in heads}
        rows = [{"prompt_id": of[v["prompt_id"]]["prompt_id"], "sample": of[v["prompt_id"]]["sample"],
                 "p_a_ij": v["p_a_ij"], "p_a_ji": v["p_a_ji"], "p": v["p_i"], "agree": v["agree"],
                 **({"score_a": v["score_i"], "score_b": v["score_j"]} if "score_i" in v else {})}
                for v in verdicts]
        on_main(self.ctx.state, _write_cached, path, rows, meta_path, {"key": key})
        return rows

    def _response_key(self, m: Model) -> dict:
        return read_json(self._response_paths(m)[1])

    @staticmethod
    def _samples(rows: list[dict]) -> dict[str, list[dict]]:
        """Held-out answers by prompt, in sample order."""
        out: dict[str, list[dict]] = {}
        for r in rows:
            if r["set"] == "heldout":
                out.setdefault(r["prompt_id"], []).append(r)
        return out

    # -- one model's row of the table
    def summarize(self, m: Model) -> dict:
        rows = self.responses(m)
        row = {"name": m.name, "round": m.round, "adapter": str(m.adapter.relative_to(self.run.root))
               if m.adapter and m.adapter.is_relative_to(self.run.root) else (str(m.adapter) if m.adapter else None)}
        prev = self.previous(m)
        for label, other in (("base", Model("base", 0, None) if m.adapter else None), ("previous", prev)):
            if other is None:
                row[f"win_rate_vs_{label}"], row[f"win_rate_vs_{label}_ci"] = None, None
                continue
            heads = self.compare(m, other)
            ps = [c["p"] for c in heads]
            rate, ci = win_rate(ps, self.cfg.bootstrap, self.recipe.run.seed, groups=[c["prompt_id"] for c in heads])
            row[f"win_rate_vs_{label}"], row[f"win_rate_vs_{label}_ci"] = rate, ci
            row[f"p_vs_{label}_mean"] = _nanmean(ps)
        if prev is not None:
            row["previous"] = prev.name
        instructions = [r for r in rows if r["set"] == "instructions"]
        row.update(instruction_metrics(instructions))
        if m.adapter and instructions:  # paired with the base's answers to the same prompts
            base_rows = [r for r in self.responses(Model("base", 0, None)) if r["set"] == "instructions"]
            gain, ci = paired_constraint_gain(instructions, base_rows, self.cfg.bootstrap, self.recipe.run.seed)
            row["if_constraint_gain_vs_base"], row["if_constraint_gain_vs_base_ci"] = gain, ci
        row.update(collapse_signals([r for r in rows if r["set"] == "heldout"]))
        return row

    def results(self, models: list[Model]) -> dict:
        out = {
            "rlaif": "eval results",
            "judge": {"model": self.cfg.judge_model, "mode": self.cfg.judge_mode, **self.judge_accuracy()},
            "heldout_prompts": len(self.heldout),
            "samples": self.cfg.samples,
            "instruction_prompts": len(self.instructions),
            "instruction_samples": self.cfg.instruction_samples,
            "max_new_tokens": self.max_new_tokens,
            "models": [self.summarize(m) for m in models],
        }
        on_main(self.ctx.state, write_json, self.root / "results.json", out)
        return out


def load_judge_set() -> list[dict]:
    text = resources.files("rlaif.data").joinpath("judge_set.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _write_cached(path: Path, rows: list[dict], meta_path: Path, meta: dict) -> None:
    """A cached piece: the rows, then the meta file that makes them valid (written last)."""
    write_jsonl(path, rows)
    write_json(meta_path, meta)


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def sample_responses(model, tokenizer, prompts: list[dict], cfg, seed: int, model_name: str, set_name: str) -> list[dict]:
    """``cfg.num_candidates`` sampled responses per prompt, seeded alike for every model.

    ``model_name`` and ``set_name`` say which model and prompt set are answered (the collapse tests
    replace this function to plant a collapsed round). Rows are :func:`generate_candidates`' rows, with
    ``logp``, each sample's log-probability under ``model``.
    """
    return generate_candidates(model, tokenizer, prompts, cfg, derive_seed(seed, set_name))


# ---------------------------------------------------------------- entry points


def evaluate_run(recipe: Recipe, rounds: list[int] | None = None, adapter: Path | None = None) -> dict:
    """``rlaif eval``: the base, each round (or ``rounds``), or one outside ``adapter``, on held-out prompts."""
    ctx = RunContext(recipe)
    run, ev = ctx.run, Evaluator(ctx)
    if adapter is not None:
        adapter = Path(adapter).expanduser().resolve()
        if not (adapter / "adapter_config.json").is_file():
            raise RlaifError(f"--adapter {adapter}: not a LoRA adapter folder (no adapter_config.json)")
        models = [Model("base", 0, None), Model(f"adapter_{sha256_dir(adapter)[:8]}", None, adapter)]
    else:
        models = ev.models(rounds)
        if rounds:
            missing = sorted(set(rounds) - {m.round for m in models})
            if missing:
                raise RlaifError(f"{run.root}: no adapter for round(s) {missing}")
    with main_lock(ctx.state, run):
        return ev.results(models)


def evaluate_round(ctx: RunContext, n: int) -> dict:
    """The evaluate stage: round n against the base and the round before it (cached pieces reused).

    A round without an adapter trained nothing (no pairs survived, and no earlier round trained one: a
    later round carries the previous adapter over as its own), so its policy is still the base: the base
    is what is evaluated, and the result says so (``skipped``); no safeguard rule can break on it.
    """
    ev = Evaluator(ctx)
    base = ev.summarize(Model("base", 0, None))
    adapter = ctx.run.adapter(n)
    if not (adapter / "adapter_config.json").is_file():
        out = {"model": base, "base": base, "skipped": "no adapter: nothing trained, the policy is the base"}
    else:
        out = {"model": ev.summarize(Model(f"round_{n:03d}", n, adapter)), "base": base}
    out["judge"] = {"model": ev.cfg.judge_model, "mode": ev.cfg.judge_mode, **ev.judge_accuracy()}
    on_main(ctx.state, write_json, ctx.run.path(n, "eval.json"), out)
    return out
