"""The loop: rounds of the stages in :mod:`rlaif.pipeline`'s table, resumable at stage granularity.

Each stage is a function ``(ctx, round) -> metrics`` that reads its inputs from the run folder and
writes its outputs there; the loop only decides which stage runs next, checks that the stages it reads
from are complete, and records what completed. A stage whose files are not all committed is not marked
complete, so ``rlaif run`` on an existing run folder redoes at most the stage that was interrupted and
then continues. Stages hold no global state (the model is loaded per stage, ~1 s after the one-time
conversion).

With several processes (``torchrun``/``accelerate launch``, :mod:`rlaif.distributed`) every process runs
this loop: all of them read the run folder's state to decide what runs next (so they agree), the main
process alone takes the lock, writes and tracks, and every write is a point where the others wait for it.
"""

import json
import shutil
import time
from pathlib import Path

from rlaif.config import Recipe, WandbConfig
from rlaif.distributed import main_lock, on_main
from rlaif.errors import RlaifError
from rlaif.evaluation.safeguards import round_verdict, write_result
from rlaif.pipeline import Stage, later_stages, producers, stage_named, stages_for
from rlaif.preflight import preflight
from rlaif.reporting.fmt import fmt
from rlaif.reporting.tracking import Tracker, sample_rows
from rlaif.run import RunContext, say
from rlaif.rundir import RunDir, package_versions, sha256_dir, write_json


def round_summary(m: dict) -> str:
    """One line of a round's headline numbers."""
    t = m.get("train", {})
    if "pairs" in m:
        j = m.get("judge", {})
        order = (f"order agreement {fmt(j.get('order_agreement'))}, P(first shown) {fmt(j.get('position_bias_p_first'))}"
                 if j.get("mode") != "pointwise" else f"mean |P-0.5| {fmt(j.get('mean_margin'), '.3f')}")
        return (f"{m['pairs'].get('kept', 0)} pairs kept, {m['pairs'].get('dropped', 0)} dropped; "
                f"{j.get('mode', 'pairwise')} judge {order}; "
                f"DPO reward margin {fmt(t.get('reward_margin_before'))} -> {fmt(t.get('reward_margin_after'))}")
    return (f"reward {fmt(t.get('reward_mean'))} ± {fmt(t.get('reward_std'))}, KL {fmt(t.get('kl'), '.4f')}, "
            f"clip fraction {fmt(t.get('clip_fraction'), '.3f')}, {fmt(t.get('seconds_per_step'), '.1f')} s/step")


def verify_rounds(ctx: RunContext) -> None:
    """On resume: every committed file of every round still has the digest and row count recorded for it."""
    for n in range(1, ctx.run.last_round() + 1):
        ctx.run.verify(n)


def check_inputs(ctx: RunContext, n: int, stage: Stage) -> None:
    """Before a stage reads its inputs: every stage it reads from is complete (and the previous round, where
    the table says so)."""
    if stage.after_previous_round and n > 1:
        last = stages_for(ctx.recipe)[-1].name
        ctx.run.require(n - 1, last, stage.name)
    for producer, files in producers(ctx.recipe, stage):
        ctx.run.require(n, producer.name, stage.name)
        ctx.run.verify(n, files)


def run_stage(ctx: RunContext, n: int, stage: Stage) -> dict:
    """One stage: on every process (each its share) where the table says so, else on the main process."""
    say(f"round {n}: {stage.name} …")
    check_inputs(ctx, n, stage)
    t0 = time.perf_counter()
    metrics = stage.run(ctx, n) if stage.every_process else on_main(ctx.state, stage.run, ctx, n)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    on_main(ctx.state, _commit_stage, ctx, n, stage, metrics)
    say(f"round {n}: {stage.name} done in {metrics['seconds']:.1f}s")
    return metrics


def _commit_stage(ctx: RunContext, n: int, stage: Stage, metrics: dict) -> None:
    ctx.run.write_metrics(n, stage.name, metrics)
    ctx.run.mark_done(n, stage.name, [f for f in stage.writes if ctx.run.path(n, f).exists()], stage.redo)
    for name in stage.work:  # kept across a kill until the stage is committed (training checkpoints)
        shutil.rmtree(ctx.run.path(n, name), ignore_errors=True)


# ---------------------------------------------------------------- manifest


# what may change between invocations on one run folder: more rounds, tracking, the safeguard
# thresholds (a stopped run can be continued by loosening the rule that stopped it), how often training
# checkpoints (they do not change what is trained: tests/test_resume.py); and where the folder is: the
# folder is the run's identity, so a run folder copied, moved or named by a relative path resumes
IGNORED_ON_RESUME = {("run", "rounds"), ("run", "output_dir"), ("wandb",), ("safeguards",), ("train", "checkpoint_steps")}


def _comparable(recipe_dict: dict) -> dict:
    out = {}
    for section, values in recipe_dict.items():
        if (section,) in IGNORED_ON_RESUME:
            continue
        out[section] = {k: v for k, v in values.items() if (section, k) not in IGNORED_ON_RESUME}
    return out


def open_manifest(s: RunContext) -> dict:
    """Create the manifest of a new run, or check that a resumed run uses the same recipe."""
    resolved = s.recipe.to_dict()
    path = s.run.manifest_path
    if path.is_file():
        manifest = s.run.read_manifest()
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
                "use another run.output_dir, or put the old values back (only run.rounds, train.checkpoint_steps, wandb and safeguards may change)"
            )
        manifest["recipe"] = _jsonable(resolved)
        manifest["hardware"] = s.hardware()
    else:
        manifest = {
            "rlaif": "run manifest",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe_file": s.recipe.source,
            "recipe": _jsonable(resolved),
            "seed": s.recipe.run.seed,
            "versions": package_versions(),
            "model": {"source": s.recipe.model.source},
            "hardware": s.hardware(),
            "rounds": {},
            "wandb_run_id": None,
        }
    write_json(path, manifest)
    return manifest


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def record_round(s: RunContext, n: int) -> None:
    """Provenance of a completed round in the manifest."""
    manifest = s.run.read_manifest()
    metrics = s.run.metrics(n)
    policy = s.policy_adapter(n)
    manifest["model"]["resolved"] = s.model_path
    manifest["rounds"][str(n)] = {
        "method": s.recipe.train.method,
        "policy_adapter": s.rel(policy),
        "policy_adapter_sha256": sha256_dir(policy) if policy else None,
        "judge_adapter": metrics.get("judge", metrics.get("train", {})).get("judge_adapter"),
        "adapter": s.rel(s.run.adapter(n)) if s.run.adapter(n).exists() else None,
        "adapter_sha256": metrics.get("train", {}).get("adapter_sha256"),
        "seeds": {"generate": s.seed(n, "generate"), "judge": s.seed(n, "judge"), "train": s.seed(n, "train")},
        "processes": s.state.num_processes,
    }
    write_json(s.run.manifest_path, manifest)


# ---------------------------------------------------------------- entry points


def run_all(recipe: Recipe) -> tuple[RunDir, dict]:
    """All rounds of the recipe, continuing from the last completed stage of an existing run folder.

    Returns the run folder and its result (``RUN/result.json``): completed, or stopped by a safeguard.
    """
    s = RunContext(recipe)
    on_main(s.state, preflight, s)  # the main process converts the bundled model once; the others reuse it
    with main_lock(s.state, s.run):
        tracker = on_main(s.state, _open_run, s, share_result=False) or Tracker(WandbConfig(enabled=False), s.run.root,
                                                                                 None, {})
        s.tracker = tracker
        try:
            result = _rounds(s, tracker)
        finally:
            tracker.finish()
    return s.run, result


def _open_run(s: RunContext) -> Tracker:
    """The main process's start of ``rlaif run``: leftovers cleaned, the manifest opened, the W&B run started."""
    s.run.clean_tmp()
    manifest = open_manifest(s)
    verify_rounds(s)
    tracker = Tracker(s.recipe.wandb, s.run.root, manifest.get("wandb_run_id"), manifest["recipe"])
    if tracker.run_id and tracker.run_id != manifest.get("wandb_run_id"):
        manifest["wandb_run_id"] = tracker.run_id
        write_json(s.run.manifest_path, manifest)
    return tracker


def _rounds(s: RunContext, tracker) -> dict:
    """Every round not yet complete, then the safeguards' check of each evaluated round, in order."""
    recipe, stages = s.recipe, stages_for(s.recipe)
    names = [stage.name for stage in stages]
    done = 0
    for n in range(1, recipe.run.rounds + 1):
        # decided by the main process, so that every process runs the same stages (their collectives match)
        todo = on_main(s.state, lambda n=n: [i for i, st in enumerate(stages) if not s.run.is_done(n, st.name)])
        for i in todo:
            run_stage(s, n, stages[i])
        on_main(s.state, _finish_round, s, tracker, n)
        done = n
        broken = on_main(s.state, round_verdict, recipe.safeguards, s.run, n) if "evaluate" in names else None
        if broken:
            result = on_main(s.state, write_result, s.run, done, n, broken, healthy=n - 1)
            say(f"stopped after round {n} by a safeguard: {result['reason']}. The result is "
                f"{result['adapter'] or 'the base model (no adapter)'}; every round stays in {s.run.root}")
            tracker.summary({"stopped_after_round": n, "stop_reason": result["reason"], "best_round": result["best_round"]})
            return result
    return on_main(s.state, write_result, s.run, done, None, [], healthy=None)


def _finish_round(s: RunContext, tracker: Tracker, n: int) -> None:
    """Provenance comes from the files: a round the manifest lacks (just completed, or killed after its last
    stage, before this) is logged and recorded now; logged first, so a kill in between logs it twice, never
    not at all."""
    if str(n) in s.run.read_manifest()["rounds"]:
        return
    tracker.log_round(n, s.run.metrics(n), sample_rows(s.run, n, s.recipe.wandb.sample_prompts))
    record_round(s, n)
    say(f"round {n} complete: {s.run.round_dir(n)}: {round_summary(s.run.metrics(n))}")


def _open_stage_run(s: RunContext) -> None:
    s.run.clean_tmp()
    open_manifest(s)
    verify_rounds(s)


def _record_if_complete(s: RunContext, n: int) -> None:
    if s.run.is_complete(n, [st.name for st in stages_for(s.recipe)]):
        record_round(s, n)


def run_one_stage(recipe: Recipe, name: str, n: int | None) -> tuple[int, dict, Path | None]:
    """One stage of one round (``rlaif generate|judge|pairs|train``), redoing it if it was done.

    Redoing a stage moves its old outputs, and everything that depended on them, to
    ``RUN/superseded/<time>/`` first: nothing is deleted.
    """
    stage = stage_named(recipe, name)
    if stage is None:
        raise RlaifError(
            f"train.method={recipe.train.method} has no '{name}' stage "
            f"(its stages: {', '.join(s.name for s in stages_for(recipe))})"
        )
    s = RunContext(recipe)
    on_main(s.state, preflight, s)
    with main_lock(s.state, s.run):
        on_main(s.state, _open_stage_run, s, share_result=False)
        if n is None:  # the main process decides, so that every process runs the same round
            n = on_main(s.state, lambda: next((r for r in range(1, recipe.run.rounds + 1) if not s.run.is_done(r, name)),
                                              recipe.run.rounds))
        if n < 1:
            raise RlaifError(f"--round must be at least 1, got {n}")
        check_inputs(s, n, stage)
        moved = on_main(s.state, s.run.supersede, n,
                        {st.name: st.writes for st in later_stages(recipe, name, include_self=True)})
        metrics = run_stage(s, n, stage)
        on_main(s.state, _record_if_complete, s, n)
    return n, metrics, moved
