"""The run context: what every stage of one run shares, and the only owner of the hardware.

A stage is a function ``(ctx, round) -> metrics``. It takes everything it needs from the context:

- the recipe and the run folder (:class:`rlaif.rundir.RunDir`);
- the process state (accelerate's ``PartialState``: rank, world size, device; :mod:`rlaif.distributed`
  says what each process does when there are several) and the dtype the recipe asks for
  (``model.dtype: auto`` is decided by :mod:`rlaif.hardware`);
- the tokenizer and the constitution (loaded once);
- the models: ``load_policy(n)`` (what round n generates with), ``load_judge(n)`` (what round n judges
  with), ``load_base()``, and ``model_kwargs()`` for the trainers, which load the weights themselves.

Every model goes to the context's device in the context's dtype (a judge in ``judge.dtype``); no stage
picks a device or a dtype. Nothing here imports the loop or a stage, so stages and the evaluation can
import it freely.
"""

import sys
from functools import cached_property
from pathlib import Path

from rlaif.config import Recipe
from rlaif.distributed import is_main_process, process_state
from rlaif.hardware import BF16_CPU_FLAGS, DTYPES, cpu_flags, describe, resolve_dtype
from rlaif.judging.constitution import Constitution, load_constitution
from rlaif.models import load_model, load_tokenizer, model_kwargs, resolve_model
from rlaif.rundir import RunDir
from rlaif.seeds import derive_seed

SELF_JUDGES = ("policy", "base")  # judge.model values that mean "these same weights"


def say(msg: str) -> None:
    """A progress line on stderr, from the main process only."""
    if is_main_process():
        print(f"[rlaif] {msg}", file=sys.stderr, flush=True)


class RunContext:
    """What the stages of one run share. Cheap to build: models load only when a stage asks."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.run = RunDir(recipe.run.output_dir)
        self.state = process_state()
        self.device = self.state.device
        self.dtype_name, self.dtype_reason = resolve_dtype(recipe.model.dtype, self.device)
        self.dtype = DTYPES[self.dtype_name]
        self.judge_dtype_name = self.dtype_name if recipe.judge.dtype == "model" else recipe.judge.dtype
        self.tracker = None  # `rlaif run` sets its W&B tracker here; the trainers log their steps to it

    def trainer_callbacks(self, n: int) -> list | None:
        """TrainerCallbacks for round n's trainer: TRL's per-step logs go to the run's W&B tracker, if any."""
        return [self.tracker.trainer_callback(n)] if self.tracker is not None else None

    # -- processes
    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def hardware(self) -> dict:
        """What decided the device and dtype (recorded in the manifest, printed by ``rlaif validate``)."""
        flags = sorted(f for f in BF16_CPU_FLAGS if f in cpu_flags())
        summary = describe(self.device, self.dtype_name, self.dtype_reason)
        if self.judge_dtype_name != self.dtype_name:
            summary += f"; the judge in {self.judge_dtype_name} (judge.dtype)"
        return {"device": str(self.device), "processes": self.state.num_processes, "dtype": self.dtype_name,
                "dtype_reason": self.dtype_reason, "judge_dtype": self.judge_dtype_name, "cpu_bf16_flags": flags,
                "summary": summary}

    # -- shared loads
    @cached_property
    def model_path(self) -> str:
        return resolve_model(self.recipe.model.source, self.recipe.model.cache_dir)

    @cached_property
    def tokenizer(self):
        m = self.recipe.model
        return load_tokenizer(self.model_path, m.revision, m.trust_remote_code)

    @cached_property
    def constitution(self) -> Constitution:
        return load_constitution(self.recipe.judge.constitution)

    def model_kwargs(self, revision: bool = True, dtype: str | None = None) -> dict:
        """``from_pretrained`` arguments for the policy's weights in the context's dtype, or ``dtype`` (TRL's
        model_init_kwargs)."""
        m = self.recipe.model
        return model_kwargs(dtype or self.dtype_name, m.revision if revision else None, m.trust_remote_code,
                            m.attn_implementation)

    # -- models
    def load(self, adapter: Path | None = None, dtype: str | None = None):
        """The base weights, with ``adapter`` merged in when given, on the context's device and dtype (or ``dtype``)."""
        return load_model(self.model_path, self.model_kwargs(dtype=dtype), adapter, self.device)

    def load_base(self, dtype: str | None = None):
        return self.load(None, dtype)

    def policy_adapter(self, n: int) -> Path | None:
        """The adapter round n generates with: the newest adapter of an earlier round (None: the base)."""
        for r in range(n - 1, 0, -1):
            if (self.run.adapter(r) / "adapter_config.json").is_file():
                self.run.verify(r, ["adapter"])  # a swapped or damaged adapter is refused, not used
                return self.run.adapter(r)
        return None

    def load_policy(self, n: int):
        """(model, adapter) that round n generates with."""
        adapter = self.policy_adapter(n)
        return self.load(adapter), adapter

    def judge_adapter(self, n: int, name: str | None = None) -> Path | None:
        """The adapter of round n's judge: the policy's when ``judge.model: policy``, else none."""
        return self.policy_adapter(n) if (name or self.recipe.judge.model) == "policy" else None

    def load_judge(self, n: int, name: str | None = None):
        """(model, tokenizer, adapter) that judges round n: ``judge.model`` (or ``name``) is ``policy`` (the
        same weights with the round's policy adapter), ``base``, or another model with its own tokenizer;
        in the judge's dtype (``judge.dtype``)."""
        name = name or self.recipe.judge.model
        if name in SELF_JUDGES:
            adapter = self.judge_adapter(n, name)
            return self.load(adapter, self.judge_dtype_name), self.tokenizer, adapter
        m = self.recipe.model
        path = resolve_model(name, m.cache_dir)
        kwargs = self.model_kwargs(revision=False, dtype=self.judge_dtype_name)
        return load_model(path, kwargs, None, self.device), load_tokenizer(path, None, m.trust_remote_code), None

    # -- bookkeeping
    def seed(self, n: int, stage: str) -> int:
        return derive_seed(self.recipe.run.seed, n, stage)

    def rel(self, path: Path | None) -> str | None:
        """A path inside the run folder as the manifest records it (relative), None for None."""
        return None if path is None else str(Path(path).relative_to(self.run.root))
