"""``rlaif``: a thin command line over the library.

    rlaif run RECIPE [--set section.key=value ...]        all rounds (continues an existing run)
    rlaif validate RECIPE [--set ...]                      check a recipe without running it
    rlaif prompts|generate|judge|pairs|train RECIPE [--round N] [--set ...]
                                                           one stage of one round (redoes it)
    rlaif eval RUN|RECIPE [--rounds 1,2] [--adapter DIR] [--set eval.key=value ...]
                                                           held-out evaluation table (base and rounds)
    rlaif reference                                        the recipe reference (Markdown)
    rlaif report RUN                                       RUN/report/report.md and its charts

A problem with the user's input prints ``error: ...`` and exits with status 2. ``rlaif run`` exits
with status 3 when a safeguard stopped the run (``RUN/result.json`` says why and names the result).
"""

import argparse
import os
import sys
from pathlib import Path

from rlaif import loop, memory
from rlaif.config import apply_overrides, load_recipe, recipe_from_dict, reference_markdown
from rlaif.distributed import is_main_process, quiet_other_processes
from rlaif.errors import RlaifError
from rlaif.evaluation.evaluate import evaluate_run
from rlaif.pipeline import REDO_STAGES
from rlaif.preflight import preflight
from rlaif.reporting.fmt import format_table
from rlaif.reporting.tracking import Tracker
from rlaif.run import RunContext
from rlaif.rundir import read_json


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaif", description="Self-judging RLAIF training with LoRA and TRL.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_recipe(p):
        p.add_argument("recipe", help="YAML recipe, e.g. recipes/quickstart_cpu.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one recipe field (repeatable)")
        return p

    with_recipe(sub.add_parser("run", help="run every round of a recipe (resumes an existing run folder)"))
    with_recipe(sub.add_parser("validate", help="check a recipe as `rlaif run` does before it starts: keys, types, "
                                                "prompts, labels, tokenizer, weights, run folder"))
    for stage in REDO_STAGES:
        p = with_recipe(sub.add_parser(stage, help=f"run (or redo) the {stage} stage of one round"))
        p.add_argument("--round", type=int, default=None, help="round number (default: the first round without it)")
    ev = sub.add_parser("eval", help="evaluate a run's rounds (or one adapter) on held-out prompts")
    ev.add_argument("target", help="a run folder (with manifest.json) or a recipe (its run.output_dir)")
    ev.add_argument("--rounds", default=None, metavar="N,M", help="only these rounds (default: every round)")
    ev.add_argument("--adapter", default=None, help="evaluate this LoRA adapter folder against the base instead")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                    help="override an eval setting (repeatable)")
    sub.add_parser("reference", help="print the recipe reference as Markdown")
    sub.add_parser("report", help="write RUN/report/report.md and charts of a run folder").add_argument(
        "run", help="run folder, e.g. runs/quickstart")
    return parser


def validate(recipe) -> list[str]:
    """What `rlaif run` checks before it touches the run folder (:mod:`rlaif.preflight`), one line per check,
    and the estimate of peak memory per process (:mod:`rlaif.memory`). Loads the tokenizer, no weights."""
    return preflight(RunContext(recipe)) + memory.summary(recipe)


def eval_recipe(target: str, overrides: list[str]):
    """The recipe ``rlaif eval`` works under: a run folder's own (from its manifest) or a recipe file's."""
    for text in overrides:
        if not text.startswith("eval."):
            raise RlaifError(f"--set {text!r}: rlaif eval only takes eval.* settings (the run's recipe fixes the rest)")
    path = Path(target)
    if path.is_dir():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise RlaifError(f"{path} is not a run folder (no manifest.json); pass a run folder or a recipe")
        raw = read_json(manifest)["recipe"]
        raw["run"]["output_dir"] = str(path)
        return recipe_from_dict(apply_overrides(raw, overrides), source=str(manifest))
    return load_recipe(path, overrides)


def run_eval(args) -> int:
    recipe = eval_recipe(args.target, args.overrides)
    rounds = None
    if args.rounds:
        try:
            rounds = [int(x) for x in args.rounds.split(",") if x.strip()]
        except ValueError:
            raise RlaifError(f"--rounds {args.rounds!r}: expected round numbers like 1,2") from None
    results = evaluate_run(recipe, rounds, Path(args.adapter) if args.adapter else None)
    print(format_table(results))
    root = Path(recipe.run.output_dir)
    print(f"written: {root / 'eval' / 'results.json'}")
    manifest = root / "manifest.json"
    if recipe.wandb.enabled and manifest.is_file() and is_main_process():
        tracker = Tracker(recipe.wandb, root, read_json(manifest).get("wandb_run_id"), {})
        try:
            tracker.log_eval(results)
        finally:
            tracker.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_other_processes()  # under torchrun / accelerate launch, the main process prints
    try:
        if args.command == "reference":
            print(reference_markdown())
            return 0
        if args.command == "eval":
            return run_eval(args)
        if args.command == "report":
            # the only late import: pandas and matplotlib add seconds (measured: 6-8 s cold on 2 cores)
            # to every other command
            from rlaif.reporting.markdown import report_files, write_report

            write_report(args.run)
            for path in report_files(args.run):
                print(path)
            return 0
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "validate":
            for line in validate(recipe):
                print(line)
            print("ok")
            return 0
        if args.command == "run":
            run, result = loop.run_all(recipe)
            if result["status"] == "stopped":
                print(f"stopped after round {result['stopped_after_round']} by a safeguard: {result['reason']}")
                print(f"result: {run.root / (result['adapter'] or '')} (round {result['best_round']}); "
                      f"nothing was deleted")
                return 3
            print(f"done: {run.root}")
            return 0
        n, metrics, moved = loop.run_one_stage(recipe, args.command, args.round)
        if moved:
            print(f"earlier outputs this redo replaces were moved to {moved}")
        print(f"round {n} {args.command}: " + ", ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)))
        return 0
    except RlaifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue from the last completed stage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
