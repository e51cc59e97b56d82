"""The loop: rounds of prompts → generate → judge → pairs → train, resumable at stage granularity.

Each stage is a function ``(session, round) -> metrics`` that reads its inputs from the run folder and
writes its outputs there; the loop only decides which stage runs next. A stage whose files are not
all committed is not marked complete, so ``rlaif run`` on an existing run folder redoes at most the
stage that was interrupted and then continues. The stage functions hold no global state (the model
is loaded per stage, ~1 s after the one-time conversion), which keeps them ready to be sharded later.
"""

import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from rlaif import rundir as artifacts
from rlaif.rundir import RunDir, read_json, read_jsonl, sha256_dir, write_json, write_jsonl
from rlaif.config import Recipe
from rlaif.judging.constitution import load_constitution
from rlaif.errors import RlaifError


def say(msg: str) -> None:
    print(f"[rlaif] {msg}", file=sys.stderr, flush=True)


@dataclass
class Session:
    """What the stages of one run share: the recipe and the run folder (plus cheap cached loads)."""

    recipe: Recipe
    run: RunDir = field(init=False)

    def __post_init__(self):
        self.run = RunDir(self.recipe.run.output_dir)

    @cached_property
    def model_path(self) -> str:
        from rlaif.models import resolve_model

        return resolve_model(self.recipe.model.source, self.recipe.model.cache_dir)

    @cached_property
    def tokenizer(self):
        from rlaif.models import load_tokenizer

        return load_tokenizer(self.model_path, self.recipe.model.revision, self.recipe.model.trust_remote_code)

    @cached_property
    def constitution(self):
        return load_constitution(self.recipe.judge.constitution)

    def load(self, adapter: Path | None):
        from rlaif.models import load_model

        m = self.recipe.model
        return load_model(self.model_path, m.dtype, adapter, m.revision, m.trust_remote_code)

    def seed(self, n: int, stage: str) -> int:
        from rlaif.stages.generate import derive_seed

        return derive_seed(self.recipe.run.seed, n, stage)


def policy_adapter(run: RunDir, n: int) -> Path | None:
    """The adapter round n generates with: the newest adapter of an earlier round (None: the base)."""
    for r in range(n - 1, 0, -1):
        if (run.adapter(r) / "adapter_config.json").is_file():
            return run.adapter(r)
    return None


def _rel(run: RunDir, path: Path | None) -> str | None:
    return None if path is None else str(Path(path).relative_to(run.root))


# ---------------------------------------------------------------- stages


def stage_prompts(s: Session, n: int) -> dict:
    from rlaif.stages.prompts import load_pool, select_round

    if n > 1:
        s.run.require(n - 1, "train", "prompts")
    pool = load_pool(s.recipe.prompts)
    cfg = s.recipe.prompts
    chosen, counts = select_round(pool, s.tokenizer, n, cfg.per_round, cfg.max_prompt_tokens, s.recipe.run.seed)
    write_jsonl(s.run.path(n, "prompts.jsonl"), chosen)
    return counts


def stage_generate(s: Session, n: int) -> dict:
    from rlaif.stages.generate import generate_candidates, sample_logprobs

    s.run.require(n, "prompts", "generate")
    prompts = read_jsonl(s.run.path(n, "prompts.jsonl"))
    adapter = policy_adapter(s.run, n)
    say(f"round {n}: policy = base" + (f" + {_rel(s.run, adapter)}" if adapter else ""))
    model = s.load(adapter)
    rows = generate_candidates(model, s.tokenizer, prompts, s.recipe.generate, s.seed(n, "generate"))
    text_of = {p["id"]: p["prompt"] for p in prompts}
    args = (s.tokenizer, [text_of[r["prompt_id"]] for r in rows], [r["token_ids"] for r in rows], s.recipe.generate)
    policy = sample_logprobs(model, *args)
    base = sample_logprobs(s.load(None), *args) if adapter else policy
    for row, lp, lb in zip(rows, policy, base):
        row["logp_policy"], row["logp_base"] = lp, lb
    write_jsonl(s.run.path(n, "candidates.jsonl"), rows)
    lengths = [r["num_tokens"] for r in rows]
    return {
        "candidates": len(rows),
        "mean_tokens": statistics.fmean(lengths),
        "std_tokens": statistics.pstdev(lengths),
        "truncated_share": sum(r["truncated"] for r in rows) / len(rows),
        "empty_share": sum(not r["text"] for r in rows) / len(rows),
        "kl_to_base_estimate": statistics.fmean(r["logp_policy"] - r["logp_base"] for r in rows),
        "policy_adapter": _rel(s.run, adapter),
        "policy_adapter_sha256": sha256_dir(adapter) if adapter else None,
    }


def stage_judge(s: Session, n: int) -> dict:
    from rlaif.judging.judges import build_judge, judge_candidates, verdict_metrics
    from rlaif.judging.rank import rank_all
    from rlaif.judging.reliability import reference_agreement, reliability_metrics

    s.run.require(n, "generate", "judge")
    cfg = s.recipe.judge
    prompts = read_jsonl(s.run.path(n, "prompts.jsonl"))
    candidates = read_jsonl(s.run.path(n, "candidates.jsonl"))
    adapter = policy_adapter(s.run, n) if cfg.model == "policy" else None
    model, tokenizer = _judge_model(s, cfg.model, adapter)
    judge = build_judge(cfg, model, tokenizer, s.constitution)
    seed = s.seed(n, "judge")
    verdicts = judge_candidates(judge, s.constitution, prompts, candidates, cfg.principles, seed)
    rankings = rank_all(candidates, verdicts)
    write_jsonl(s.run.path(n, "verdicts.jsonl"), verdicts)
    write_jsonl(s.run.path(n, "rankings.jsonl"), rankings)
    lengths = {(c["prompt_id"], c["candidate"]): c["num_tokens"] for c in candidates}
    metrics = {**verdict_metrics(verdicts), **reliability_metrics(verdicts, lengths)}
    if cfg.reference_agreement:
        if cfg.model == "base" or (cfg.model == "policy" and adapter is None):
            metrics["reference_agreement"] = 1.0  # the judge is the frozen base itself
        else:
            base = build_judge(cfg, s.load(None), s.tokenizer, s.constitution)
            reference = judge_candidates(base, s.constitution, prompts, candidates, cfg.principles, seed)
            metrics["reference_agreement"] = reference_agreement(verdicts, reference)
    return {
        **metrics,
        "mode": cfg.mode,
        "judge_model": cfg.model,
        "judge_adapter": _rel(s.run, adapter),
        "constitution": s.constitution.name,
    }


def _judge_model(s: Session, name: str, adapter: Path | None):
    """(model, tokenizer) for ``judge.model``: the policy or base weights, or another model entirely."""
    if name in ("policy", "base"):
        return s.load(adapter), s.tokenizer
    from rlaif.models import load_model, load_tokenizer, resolve_model

    m = s.recipe.model
    path = resolve_model(name, m.cache_dir)
    return load_model(path, m.dtype, None, None, m.trust_remote_code), load_tokenizer(path, None, m.trust_remote_code)


def stage_pairs(s: Session, n: int) -> dict:
    from rlaif.stages.pairs import build_pairs

    s.run.require(n, "judge", "pairs")
    prompts, candidates, verdicts, rankings = (
        read_jsonl(s.run.path(n, name)) for name in ("prompts.jsonl", "candidates.jsonl", "verdicts.jsonl", "rankings.jsonl")
    )
    pairs, dropped, counts = build_pairs(prompts, candidates, verdicts, rankings, s.recipe.pairs, s.recipe.run.seed, n)
    write_jsonl(s.run.path(n, "pairs.jsonl"), pairs)
    write_jsonl(s.run.path(n, "pairs_dropped.jsonl"), dropped)
    judged = [p["margin"] for p in pairs if p["source"] == "judge"]  # anchor pairs have no judge margin
    counts["mean_margin_kept"] = statistics.fmean(judged) if judged else None
    return counts


def stages_for(recipe: Recipe) -> tuple[str, ...]:
    """DPO runs every stage; GRPO/RLOO sample and judge inside training: prompts → train.

    Each round ends with a held-out evaluation when ``eval.each_round`` is on or a safeguard rule is
    set (the rules need it).
    """
    stages = artifacts.REDO_STAGES if recipe.train.method == "dpo" else ("prompts", "train")
    return (*stages, "evaluate") if evaluates_rounds(recipe) else stages


def evaluates_rounds(recipe: Recipe) -> bool:
    return recipe.eval.each_round or recipe.safeguards.active()


def stage_train(s: Session, n: int) -> dict:
    from rlaif.stages.train_dpo import train_dpo

    if s.recipe.train.method != "dpo":
        return stage_train_rl(s, n)
    s.run.require(n, "pairs", "train")
    pairs = read_jsonl(s.run.path(n, "pairs.jsonl"))
    start = policy_adapter(s.run, n)
    out = s.run.adapter(n)
    if not pairs:
        say(f"round {n}: no preference pairs survived the filters; the policy is carried over unchanged")
        if start is not None:
            tmp = out.with_name(out.name + artifacts.TMP_MARK + "copy")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(start, tmp)
            artifacts.commit_dir(tmp, out)
        write_jsonl(s.run.path(n, "train_log.jsonl"), [])
        return {"pairs": 0, "skipped": "no pairs", "start_adapter": _rel(s.run, start)}
    work = s.run.round_dir(n) / f"trainer{artifacts.TMP_MARK}work"
    metrics, history = train_dpo(s.recipe, s.model_path, s.tokenizer, pairs, start, out, work, s.seed(n, "train"))
    shutil.rmtree(work, ignore_errors=True)
    write_jsonl(s.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": _rel(s.run, start), "adapter_sha256": sha256_dir(out)}


def stage_train_rl(s: Session, n: int) -> dict:
    from rlaif.stages.train_rl import train_rl

    s.run.require(n, "prompts", "train")
    from rlaif.judging.judges import build_judge

    prompts = read_jsonl(s.run.path(n, "prompts.jsonl"))
    start = policy_adapter(s.run, n)
    cfg = s.recipe.judge
    if cfg.model == "policy" and s.recipe.train.rl_judge == "live":
        judge_adapter, judge = "live", None
    else:
        adapter = start if cfg.model == "policy" else None
        model, tokenizer = _judge_model(s, cfg.model, adapter)
        judge_adapter, judge = _rel(s.run, adapter), build_judge(cfg, model, tokenizer, s.constitution)
    say(f"round {n}: {s.recipe.train.method} from " + (_rel(s.run, start) or "a fresh adapter")
        + f", judge = {judge_adapter or cfg.model}")
    work = s.run.round_dir(n) / f"trainer{artifacts.TMP_MARK}work"
    metrics, history, records = train_rl(
        s.recipe, s.model_path, s.tokenizer, prompts, judge, s.constitution, start, s.run.adapter(n), work,
        s.seed(n, "judge"), s.seed(n, "train"),
    )
    shutil.rmtree(work, ignore_errors=True)
    write_jsonl(s.run.path(n, "completions.jsonl"), records)
    write_jsonl(s.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": _rel(s.run, start), "judge_adapter": judge_adapter,
            "adapter_sha256": sha256_dir(s.run.adapter(n))}


def stage_evaluate(s: Session, n: int) -> dict:
    from rlaif.evaluation.evaluate import evaluate_round

    s.run.require(n, "train", "evaluate")
    return evaluate_round(s, n)


STAGE_FUNCS = {
    "prompts": stage_prompts,
    "generate": stage_generate,
    "judge": stage_judge,
    "pairs": stage_pairs,
    "train": stage_train,
    "evaluate": stage_evaluate,
}


def round_summary(m: dict) -> str:
    """One line of a round's headline numbers."""

    def f(x, spec=".2f"):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    t = m.get("train", {})
    if "pairs" in m:
        j = m.get("judge", {})
        order = (f"order agreement {f(j.get('order_agreement'))}, P(first shown) {f(j.get('position_bias_p_first'))}"
                 if j.get("mode") != "pointwise" else f"mean |P-0.5| {f(j.get('mean_margin'), '.3f')}")
        return (f"{m['pairs'].get('kept', 0)} pairs kept, {m['pairs'].get('dropped', 0)} dropped; "
                f"{j.get('mode', 'pairwise')} judge {order}; "
                f"DPO reward margin {f(t.get('reward_margin_before'))} -> {f(t.get('reward_margin_after'))}")
    return (f"reward {f(t.get('reward_mean'))} ± {f(t.get('reward_std'))}, KL {f(t.get('kl'), '.4f')}, "
            f"clip fraction {f(t.get('clip_fraction'), '.3f')}, {f(t.get('seconds_per_step'), '.1f')} s/step")


def run_stage(s: Session, n: int, stage: str) -> dict:
    say(f"round {n}: {stage} …")
    t0 = time.perf_counter()
    metrics = STAGE_FUNCS[stage](s, n)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    s.run.write_metrics(n, stage, metrics)
    s.run.mark_done(n, stage)
    say(f"round {n}: {stage} done in {metrics['seconds']:.1f}s")
    return metrics


# ---------------------------------------------------------------- manifest


# what may change between invocations on one run folder: more rounds, tracking, and the safeguard
# thresholds (a stopped run can be continued by loosening the rule that stopped it)
IGNORED_ON_RESUME = {("run", "rounds"), ("wandb",), ("safeguards",)}


def _comparable(recipe_dict: dict) -> dict:
    out = {}
    for section, values in recipe_dict.items():
        if (section,) in IGNORED_ON_RESUME:
            continue
        out[section] = {k: v for k, v in values.items() if (section, k) not in IGNORED_ON_RESUME}
    return out


def open_manifest(s: Session) -> dict:
    """Create the manifest of a new run, or check that a resumed run uses the same recipe."""
    resolved = s.recipe.to_dict()
    path = s.run.manifest_path
    if path.is_file():
        manifest = read_json(path)
        old, new = _comparable(manifest["recipe"]), _comparable(_jsonable(resolved))
        # a key the manifest lacks (written by an older rlaif) had its default value then
        defaults = _comparable(_jsonable(Recipe().to_dict()))
        changed = [
            f"{sec}.{k}"
            for sec in sorted(set(old) | set(new))
            for k in sorted(set(old.get(sec, {})) | set(new.get(sec, {})))
            if old.get(sec, {}).get(k, defaults.get(sec, {}).get(k)) != new.get(sec, {}).get(k)
        ]
        if changed:
            raise RlaifError(
                f"{s.run.root} was made by a different recipe (changed: {', '.join(changed)}); "
                "use another run.output_dir, or put the old values back (only run.rounds, wandb and safeguards may change)"
            )
        manifest["recipe"] = _jsonable(resolved)
    else:
        manifest = {
            "rlaif": "run manifest",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe_file": s.recipe.source,
            "recipe": _jsonable(resolved),
            "seed": s.recipe.run.seed,
            "versions": artifacts.package_versions(),
            "model": {"source": s.recipe.model.source},
            "rounds": {},
            "wandb_run_id": None,
        }
    write_json(path, manifest)
    return manifest


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))


def record_round(s: Session, n: int) -> None:
    """Provenance of a completed round in the manifest."""
    manifest = read_json(s.run.manifest_path)
    metrics = s.run.metrics(n)
    policy = policy_adapter(s.run, n)
    manifest["model"]["resolved"] = s.model_path
    manifest["rounds"][str(n)] = {
        "method": s.recipe.train.method,
        "policy_adapter": _rel(s.run, policy),
        "policy_adapter_sha256": sha256_dir(policy) if policy else None,
        "judge_adapter": metrics.get("judge", metrics.get("train", {})).get("judge_adapter"),
        "adapter": _rel(s.run, s.run.adapter(n)) if s.run.adapter(n).exists() else None,
        "adapter_sha256": metrics.get("train", {}).get("adapter_sha256"),
        "seeds": {"generate": s.seed(n, "generate"), "judge": s.seed(n, "judge"), "train": s.seed(n, "train")},
    }
    write_json(s.run.manifest_path, manifest)


# ---------------------------------------------------------------- entry points


def preflight(s: Session) -> None:
    """Fail on bad input before the run folder is touched: model, tokenizer, prompts, constitution."""
    from rlaif.judging.judges import label_token_ids
    from rlaif.stages.prompts import load_pool

    load_pool(s.recipe.prompts)
    label_token_ids(s.tokenizer, s.constitution)  # also loads the model source's tokenizer
    judge_model = s.recipe.judge.model
    if judge_model not in ("policy", "base"):  # a separate judge model: its tokenizer must fit the labels too
        from rlaif.models import load_tokenizer, resolve_model

        m = s.recipe.model
        label_token_ids(load_tokenizer(resolve_model(judge_model, m.cache_dir), None, m.trust_remote_code), s.constitution)


def run_all(recipe: Recipe) -> tuple[RunDir, dict]:
    """All rounds of the recipe, continuing from the last completed stage of an existing run folder.

    Returns the run folder and its result (``RUN/result.json``): completed, or stopped by a safeguard.
    """
    from rlaif.reporting.tracking import Tracker

    s = Session(recipe)
    preflight(s)
    with s.run.lock():
        s.run.clean_tmp()
        manifest = open_manifest(s)
        tracker = Tracker(recipe.wandb, s.run.root, manifest.get("wandb_run_id"), manifest["recipe"])
        if tracker.run_id and tracker.run_id != manifest.get("wandb_run_id"):
            manifest["wandb_run_id"] = tracker.run_id
            write_json(s.run.manifest_path, manifest)
        try:
            result = _rounds(s, tracker)
        finally:
            tracker.finish()
    return s.run, result


def _rounds(s: Session, tracker) -> dict:
    """Every round not yet complete, then the safeguards' check of each evaluated round, in order."""
    from rlaif.evaluation.safeguards import round_verdict, write_result
    from rlaif.reporting.tracking import sample_rows

    recipe, stages = s.recipe, stages_for(s.recipe)
    done = 0
    for n in range(1, recipe.run.rounds + 1):
        if len(s.run.completed(n)) != len(stages):
            for stage in stages:
                if not s.run.is_done(n, stage):
                    run_stage(s, n, stage)
            record_round(s, n)
            tracker.log_round(n, s.run.metrics(n), sample_rows(s.run, n, recipe.wandb.sample_prompts))
            say(f"round {n} complete: {s.run.round_dir(n)}: {round_summary(s.run.metrics(n))}")
        done = n
        broken = round_verdict(recipe.safeguards, s.run, n) if "evaluate" in stages else None
        if broken:
            result = write_result(s.run, done, n, broken, healthy=n - 1)
            say(f"stopped after round {n} by a safeguard: {result['reason']}. The result is "
                f"{result['adapter'] or 'the base model (no adapter)'}; every round stays in {s.run.root}")
            tracker.summary({"stopped_after_round": n, "stop_reason": result["reason"], "best_round": result["best_round"]})
            return result
    return write_result(s.run, done, None, [], healthy=None)


def run_one_stage(recipe: Recipe, stage: str, n: int | None) -> tuple[int, dict, Path | None]:
    """One stage of one round (``rlaif generate|judge|pairs|train``), redoing it if it was done.

    Redoing a stage moves its old outputs, and everything that depended on them, to
    ``RUN/superseded/<time>/`` first: nothing is deleted.
    """
    if stage not in stages_for(recipe):
        raise RlaifError(
            f"train.method={recipe.train.method} has no '{stage}' stage (its stages: {', '.join(stages_for(recipe))})"
        )
    s = Session(recipe)
    preflight(s)
    with s.run.lock():
        s.run.clean_tmp()
        open_manifest(s)
        if n is None:
            n = next((r for r in range(1, recipe.run.rounds + 1) if not s.run.is_done(r, stage)), recipe.run.rounds)
        if n < 1:
            raise RlaifError(f"--round must be at least 1, got {n}")
        moved = s.run.supersede_from(n, stage, include_self=True)
        metrics = run_stage(s, n, stage)
        if len(s.run.completed(n)) == len(stages_for(recipe)):
            record_round(s, n)
    return n, metrics, moved
