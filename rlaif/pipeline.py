"""The stage table: the one place that lists rlaif's stages, the files each reads and writes, and its function.

Everything else is derived from it: which stages a recipe runs and in what order, which stage must be
complete before another may read its files (and which files to verify), what ``state.json`` records,
which files a redo moves to ``superseded/``, and the CLI's one-stage commands. Adding a stage is one
entry here.

With several processes (:mod:`rlaif.distributed`), a stage marked ``every_process`` runs on every
process, each doing its share of the prompts (or its share of the training batch, under DDP), and writes
on the main process only; the others (prompts, pairs: cheap) run on the main process while the rest wait.

A stage reads files of its own round only; ``after_previous_round`` says that it also waits for the
previous round to be complete (round n's prompts come after round n−1's adapter).
"""

from collections.abc import Callable
from dataclasses import dataclass

from rlaif.config import Recipe
from rlaif.evaluation.evaluate import evaluate_round
from rlaif.lora import CHECKPOINTS
from rlaif.run import RunContext
from rlaif.stages import generate, judge, pairs, prompts, train_dpo, train_rl

ALL_METHODS = ("dpo", "grpo", "rloo")


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # files of the same round, written by earlier stages
    writes: tuple[str, ...]  # files (or folders) this stage commits; "optional" ones may be absent
    run: Callable[[RunContext, int], dict]
    methods: tuple[str, ...] = ALL_METHODS
    redo: bool = True  # a CLI command runs (or redoes) it alone: `rlaif NAME RECIPE --round N`
    after_previous_round: bool = False
    optional: tuple[str, ...] = ()  # written only in some cases (train: the adapter when there were no pairs)
    work: tuple[str, ...] = ()  # folders kept across a kill and deleted once the stage is committed
    every_process: bool = False  # with several processes, each runs it on its share (else the main one runs it)


STAGES: tuple[Stage, ...] = (
    Stage("prompts", (), ("prompts.jsonl",), prompts.run, after_previous_round=True),
    Stage("generate", ("prompts.jsonl",), ("candidates.jsonl",), generate.run, methods=("dpo",), every_process=True),
    Stage("judge", ("prompts.jsonl", "candidates.jsonl"), ("verdicts.jsonl", "rankings.jsonl"), judge.run,
          methods=("dpo",), every_process=True),
    Stage("pairs", ("prompts.jsonl", "candidates.jsonl", "verdicts.jsonl", "rankings.jsonl"),
          ("pairs.jsonl", "pairs_dropped.jsonl"), pairs.run, methods=("dpo",)),
    Stage("train", ("pairs.jsonl",), ("adapter", "train_log.jsonl"), train_dpo.run, methods=("dpo",),
          optional=("adapter",), work=(CHECKPOINTS,), every_process=True),
    Stage("train", ("prompts.jsonl",), ("adapter", "train_log.jsonl", "completions.jsonl"), train_rl.run,
          methods=("grpo", "rloo"), work=(CHECKPOINTS,), every_process=True),
    Stage("evaluate", ("adapter",), ("eval.json",), evaluate_round, redo=False, every_process=True),
)

STAGE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(s.name for s in STAGES))
REDO_STAGES: tuple[str, ...] = tuple(dict.fromkeys(s.name for s in STAGES if s.redo))


def evaluates_rounds(recipe: Recipe) -> bool:
    """Each round ends with a held-out evaluation when ``eval.each_round`` is on or a safeguard rule is set."""
    return recipe.eval.each_round or recipe.safeguards.active()


def stages_for(recipe: Recipe) -> tuple[Stage, ...]:
    """The stages a recipe runs, in order: DPO runs every stage; GRPO/RLOO sample and judge inside training."""
    return tuple(s for s in STAGES if recipe.train.method in s.methods
                 and (s.name != "evaluate" or evaluates_rounds(recipe)))


def stage_named(recipe: Recipe, name: str) -> Stage | None:
    return next((s for s in stages_for(recipe) if s.name == name), None)


def producers(recipe: Recipe, stage: Stage) -> list[tuple[Stage, tuple[str, ...]]]:
    """The earlier stages whose files ``stage`` reads, each with the files it reads of them."""
    out = []
    for s in stages_for(recipe):
        if s is stage:
            break
        files = tuple(f for f in stage.reads if f in s.writes)
        if files:
            out.append((s, files))
    return out


def later_stages(recipe: Recipe, name: str, include_self: bool) -> tuple[Stage, ...]:
    """What a redo of stage ``name`` makes stale in its round (itself too when ``include_self``)."""
    names = [s.name for s in stages_for(recipe)]
    start = names.index(name) + (0 if include_self else 1)
    return stages_for(recipe)[start:]
