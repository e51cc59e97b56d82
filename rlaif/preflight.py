"""Preflight: everything a run can check before it touches its folder, shared by ``rlaif validate``,
``rlaif run`` and the one-stage commands (issue 12, point 2).

A recipe that fails here leaves no folder and records nothing: each failure is a one-line
:class:`~rlaif.errors.RlaifError`, raised before :meth:`rlaif.rundir.RunDir.lock` creates the folder.
What is checked, in order:

- the recipe: keys, types, ranges, and TRL's and peft's configs built (done when it is loaded);
- the run folder: a new or empty folder, or an rlaif run (:meth:`RunDir.check_usable`);
- the prompt set: it loads, at least one training prompt fits ``prompts.max_prompt_tokens`` under the
  chat template, and, when every round is evaluated, at least one held-out prompt does too;
- the model: its tokenizer loads with a chat template, and a local folder holds safetensors weights
  (a hub id is checked by transformers when the weights download);
- the judges in use (the round judge, and the evaluation judge when rounds are evaluated): each is
  built with no model, so its own constructor checks the constitution's sections for its mode and that
  every label it reads is a single token after its prompt under its model's tokenizer.

No weights are loaded, with one exception: the bundled model is converted to safetensors once, on
first use, and that conversion loads it.
"""

from pathlib import Path

from rlaif.config import Recipe
from rlaif.evaluation.checks import load_instruction_set
from rlaif.evaluation.evaluate import eval_judge_config, heldout_prompts
from rlaif.judging.judges import build_judge
from rlaif.models import check_model_source, check_weights, load_tokenizer, resolve_model
from rlaif.pipeline import evaluates_rounds
from rlaif.run import SELF_JUDGES, RunContext
from rlaif.stages.prompts import load_pool, select_round


def judge_tokenizer(ctx: RunContext, name: str):
    """The tokenizer a judge named ``name`` reads with (its weights checked too when it is another model)."""
    if name in SELF_JUDGES:
        return ctx.tokenizer
    m = ctx.recipe.model
    path = resolve_model(name, m.cache_dir)
    check_weights(path)
    return load_tokenizer(path, None, m.trust_remote_code)


def check_judge(ctx: RunContext, cfg, what: str) -> str:
    """Build the judge ``cfg`` asks for, with no model: its constructor checks the labels it will read."""
    if cfg.mode == "none":
        return f"{what}: none (no soft judge; the verifier alone decides, on prompts that carry constraints)"
    judge = build_judge(cfg, None, judge_tokenizer(ctx, cfg.model), ctx.constitution)
    labels = judge.rubric.labels if judge.pointwise else ctx.constitution.labels
    return (f"{what}: {cfg.mode}{' with critique' if cfg.critique else ''}, model {cfg.model}, "
            f"labels {list(labels)} one token each" + ("" if cfg.prefix_cache else ", no prefix cache"))


def run_folder_line(ctx: RunContext) -> str:
    ctx.run.check_usable()
    root = ctx.run.root
    if ctx.run.is_run():
        return f"run folder {root}: an rlaif run (continued)"
    return f"run folder {root}: {'empty' if root.exists() else 'new'}"


def preflight(ctx: RunContext) -> list[str]:
    """Check everything the recipe's run needs before its folder is touched; return what was checked, one
    line each (``rlaif validate`` prints them). Raises RlaifError on the first problem."""
    recipe: Recipe = ctx.recipe
    lines = [f"recipe {recipe.source}: keys and types ok; {recipe.train.method} and lora sections accepted by TRL and peft",
             run_folder_line(ctx)]
    lines.append(f"model: {check_model_source(recipe.model.source, recipe.model.cache_dir)}")
    check_weights(ctx.model_path)
    tokenizer = ctx.tokenizer
    lines.append(f"tokenizer of {ctx.model_path}: {len(tokenizer)} tokens, chat template present"
                 + ("; safetensors weights present" if Path(ctx.model_path).is_dir() else ""))

    cfg = recipe.prompts
    pool = load_pool(cfg)
    _, counts = select_round(pool, tokenizer, 1, cfg.per_round, cfg.max_prompt_tokens, recipe.run.seed)
    lines.append(f"prompts: {pool.counts['train']} training ({counts['too_long']} over prompts.max_prompt_tokens="
                 f"{cfg.max_prompt_tokens}), {pool.counts['heldout']} held out "
                 f"({pool.counts['duplicates']} duplicates, {pool.counts['empty']} empty skipped)"
                 + (f"; {pool.counts['no_reference']} without a reference answer" if "no_reference" in pool.counts else ""))

    c = ctx.constitution
    lines.append(f"constitution {c.source}: {len(c.principles)} principles, labels {list(c.labels)}"
                 + (f", pointwise scores {list(c.pointwise.labels)}" if c.pointwise else "")
                 + (", critique" if c.critique else ""))
    lines.append(check_judge(ctx, recipe.judge, "judge"))

    e, g = recipe.eval, recipe.safeguards
    each_round = evaluates_rounds(recipe)
    heldout = e.heldout_prompts or "all"
    if each_round:  # the evaluate stage needs held-out prompts that fit, and its own judge
        heldout = len(heldout_prompts(pool, tokenizer, cfg.max_prompt_tokens, e.heldout_prompts))
        lines.append(check_judge(ctx, eval_judge_config(recipe), "eval judge"))
    n_if = len(load_instruction_set(None if e.instructions == "bundled" else e.instructions)) \
        if e.instructions != "none" else 0
    rules = [f"{k}={v}" for k, v in g.model_dump().items() if v is not None]
    lines.append(f"eval: {heldout} of {pool.counts['heldout']} "
                 f"held-out prompts x{e.samples}, "
                 + (f"{e.instruction_prompts or n_if} of {n_if} instruction prompts" if n_if else "no instruction prompts")
                 + f", judge {e.judge_model} ({e.judge_mode}); "
                 + ("every round" if each_round else "on `rlaif eval` only")
                 + (f"; safeguards: {', '.join(rules)}" if rules else ""))
    lines.append(f"hardware: {ctx.hardware()['summary']}")
    return lines

