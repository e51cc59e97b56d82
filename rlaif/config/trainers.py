"""The `dpo`, `grpo`, `rloo` and `lora` sections: TRL's and peft's own config fields, passed through.

rlaif layers its CPU-friendly defaults (``DPO_DEFAULTS``...) under the user's values and checks each
key against the owner's dataclass: an unknown key, a key rlaif sets itself, or a value that does not
fit the field's annotation is refused by name. The values themselves are then checked the only way
that keeps up with TRL and peft: by building their ``DPOConfig`` / ``GRPOConfig`` / ``RLOOConfig`` and
``LoraConfig`` (``check_trainer_sections``), which needs no weights.

trl and peft are imported inside functions: importing peft costs 3-16 s (torch, transformers) here, and
``rlaif reference`` or a recipe without these sections should not pay it.
"""

import dataclasses
import functools
import math
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from rlaif.errors import RlaifError

if TYPE_CHECKING:
    from rlaif.config.recipe import Recipe

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
TRL_RESERVED = {"output_dir": "run.output_dir", "seed": "run.seed", "report_to": "wandb",
                "save_strategy": "train.checkpoint_steps", "save_steps": "train.checkpoint_steps"}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "task_type": "CAUSAL_LM",
}
PASSTHROUGH = ("dpo", "grpo", "rloo", "lora")


def passthrough_class(section: str) -> type:
    if section == "lora":
        from peft import LoraConfig

        return LoraConfig
    import trl

    return {"dpo": trl.DPOConfig, "grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}[section]


def owner_name(section: str) -> str:
    return "peft's LoraConfig" if section == "lora" else f"TRL's {passthrough_class(section).__name__}"


@functools.cache
def _fields(section: str) -> dict[str, Any]:
    """The owner's init fields and their annotations. peft writes some annotations as strings, and some of its
    Literals are placeholders (``pissa_niter_[number of iters]``): those fields are left to peft to check."""
    return {f.name: f.type for f in dataclasses.fields(passthrough_class(section)) if f.init}


@functools.cache
def _adapter(section: str, key: str) -> TypeAdapter | None:
    """A strict pydantic validator for one field, or None where the annotation is not one pydantic can check
    (an unresolved string, a config class of peft's): the owner's constructor checks those."""
    annotation = _fields(section)[key]
    if isinstance(annotation, str):
        return None
    try:
        return TypeAdapter(annotation, config=ConfigDict(strict=True, arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 (pydantic raises several kinds for types it cannot build a schema of)
        return None


def describe(annotation: Any) -> str:
    """``float``, ``int | None``, ``list[str]``: an annotation as a user reads it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if annotation is type(None):
        return "None"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(describe(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides in the value (lists and mappings included)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return False


def _has_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _check_value(section: str, key: str, value: Any) -> Any:
    """The value checked against the field's annotation, strictly. Where that fails, pydantic's lax reading is
    taken (``"5e-5"`` → 5e-5, ``4.0`` → 4, a list for a tuple) unless a bool is involved on either side: a bool
    is not a number, nor ``1`` or ``"yes"`` a bool."""
    adapter = _adapter(section, key)
    if adapter is not None:
        try:
            adapter.validate_python(value)
        except ValidationError:
            try:
                lax = adapter.validate_python(value, strict=False)
            except ValidationError:
                lax = None
            if lax is None or _has_bool(value) or _has_bool(lax):
                raise ValueError(
                    f"{section}.{key} must be {describe(_fields(section)[key])}, got {value!r}"
                ) from None
            value = lax
    if non_finite(value):
        raise ValueError(f"{section}.{key} must be finite, got {value!r}")
    return value


def check_passthrough(raw: dict[str, Any], section: str) -> dict[str, Any]:
    """The user's keys of one passthrough section, each a field of the owner's config with a fitting value."""
    known = _fields(section)
    out = {}
    for key, value in raw.items():
        if section != "lora" and key in TRL_RESERVED:
            by = TRL_RESERVED[key]
            raise ValueError(f"'{section}.{key}' is set by rlaif" + (f" (use {by})" if by else ""))
        if key not in known:
            raise ValueError(f"unknown key '{section}.{key}' (not a field of {owner_name(section)})")
        out[key] = _check_value(section, key, value)
    return out


def build_trl_config(recipe: "Recipe", method: str, output_dir: str | Path):
    """TRL's DPOConfig / GRPOConfig / RLOOConfig from the recipe's section over rlaif's defaults."""
    cls = passthrough_class(method)
    kwargs = {
        **recipe.trl_kwargs(method),
        "output_dir": str(output_dir),
        "seed": recipe.run.seed,
        "report_to": "none",
        # checkpoints only for resuming a killed stage (rlaif.lora.train); the adapter is saved by rlaif
        **({"save_strategy": "steps", "save_steps": recipe.train.checkpoint_steps} if recipe.train.checkpoint_steps
           else {"save_strategy": "no"}),
        "use_cpu": not _accelerator_available(),
    }
    try:
        with warnings.catch_warnings():
            # transformers renames `gradient_checkpointing` (which TRL's configs still use) and warns on every
            # build: noise on every `rlaif` command, about a field rlaif sets to its TRL name on purpose
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
            return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RlaifError(f"{recipe.source}: section '{method}' rejected by TRL: {exc}") from None


def build_lora_config(recipe: "Recipe"):
    """peft's LoraConfig from the recipe's `lora` section over rlaif's defaults (a rank of 0 is refused here:
    peft accepts it and fails only when the adapter is made)."""
    from peft import LoraConfig

    try:
        config = LoraConfig(**recipe.lora_kwargs())
    except (ValueError, TypeError, ImportError) as exc:  # ImportError: an init_lora_weights that needs scipy
        raise RlaifError(f"{recipe.source}: section 'lora' rejected by peft: {exc}") from None
    if isinstance(config.r, bool) or not isinstance(config.r, int) or config.r < 1:
        raise RlaifError(f"{recipe.source}: lora.r must be at least 1, got {config.r!r}")
    return config


def check_trainer_sections(recipe: "Recipe") -> None:
    """Build the TRL config of the recipe's train.method and the LoRA config: the values TRL and peft refuse
    (an unknown scheduler, a batch that num_generations does not divide...) are found before a run starts."""
    build_trl_config(recipe, recipe.train.method, Path(recipe.run.output_dir) / "check.tmp")
    build_lora_config(recipe)


def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available()
