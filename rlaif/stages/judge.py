"""Stage 3, judge: a constitution-prompted copy of the model judges round n's candidates and ranks them.

The judging machinery (modes, the prefix cache, ranking, reliability) lives in :mod:`rlaif.judging`;
this stage only reads the round's files, asks the run context for the judge model, and writes the
verdicts and rankings. With several processes each judges a contiguous share of the prompts (a prompt's
comparisons stay together) and the verdicts are gathered back in prompt order.
"""

from rlaif.distributed import gather, rank_log, split
from rlaif.judging.judges import build_judge
from rlaif.judging.rank import rank_all
from rlaif.judging.reliability import reference_agreement, reliability_metrics
from rlaif.judging.verdicts import judge_candidates, verdict_metrics
from rlaif.judging.verifier import apply_verifier, constraint_metrics, verifier_metrics
from rlaif.run import RunContext
from rlaif.rundir import read_jsonl, write_jsonl


def run(ctx: RunContext, n: int) -> dict:
    cfg = ctx.recipe.judge
    prompts = read_jsonl(ctx.run.path(n, "prompts.jsonl"))
    candidates = read_jsonl(ctx.run.path(n, "candidates.jsonl"))
    # judge.mode none reads no model: every verdict is a tie for the verifier to decide
    model, tokenizer, adapter = ctx.load_judge(n) if cfg.mode != "none" else (None, None, None)
    judge = build_judge(cfg, model, tokenizer, ctx.constitution)
    seed = ctx.seed(n, "judge")
    mine = split(ctx.state, prompts)  # whole prompts: a prompt's candidates are judged against each other
    rank_log(ctx.state, "judge", round=n, prompts=[p["id"] for p in mine])
    raw = gather(ctx.state, judge_candidates(judge, ctx.constitution, mine, candidates, cfg.principles, seed))
    # on prompts that carry constraints the verifier decides where candidates meet different shares of them
    verdicts = apply_verifier(raw, prompts, candidates, cfg.verifier_weight, cfg.verifier_strength)
    rankings = rank_all(candidates, verdicts)
    if ctx.is_main:
        write_jsonl(ctx.run.path(n, "verdicts.jsonl"), verdicts)
        write_jsonl(ctx.run.path(n, "rankings.jsonl"), rankings)
    lengths = {(c["prompt_id"], c["candidate"]): c["num_tokens"] for c in candidates}
    # the judge's own reliability is measured on its own verdicts (the verifier's certain ones would inflate it)
    metrics = {**verdict_metrics(raw), **reliability_metrics(raw, lengths), **verifier_metrics(verdicts),
               **constraint_metrics(prompts, candidates)}
    if cfg.mode == "none":  # no judge of its own to agree with the verifier or to compare with the base
        metrics["verifier_agreement"] = float("nan")
    if cfg.reference_agreement and cfg.mode != "none":
        if cfg.model == "base" or (cfg.model == "policy" and adapter is None):
            metrics["reference_agreement"] = 1.0  # the judge is the frozen base itself
        else:
            base = build_judge(cfg, ctx.load_base(ctx.judge_dtype_name), ctx.tokenizer, ctx.constitution)
            reference = gather(ctx.state, judge_candidates(base, ctx.constitution, mine, candidates, cfg.principles, seed))
            metrics["reference_agreement"] = reference_agreement(raw, reference)
    return {
        **metrics,
        "mode": cfg.mode,
        "judge_model": cfg.model,
        "judge_adapter": ctx.rel(adapter),
        "constitution": ctx.constitution.name,
    }
