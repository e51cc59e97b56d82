"""Recipes: typed config sections read from YAML, with ``--set section.key=value`` overrides.

A recipe is a YAML mapping of sections. rlaif's own sections are the pydantic models of
``schema``; the ``dpo`` / ``grpo`` / ``rloo`` and ``lora`` sections are TRL's and peft's config
fields, passed through and checked by building those configs (``trainers``). ``recipe`` holds the
``Recipe`` itself, the checks across sections, YAML loading and overrides. Every key is checked: an
unknown key or a value of the wrong type or range is a one-line ``RlaifError`` naming the file and key.
"""

from rlaif.config.recipe import (
    Recipe,
    apply_overrides,
    load_recipe,
    parse_override,
    recipe_from_dict,
    reference_markdown,
)
from rlaif.config.schema import (
    SECTIONS,
    EvalConfig,
    GenerateConfig,
    JudgeConfig,
    ModelConfig,
    PairsConfig,
    PromptsConfig,
    RunConfig,
    SafeguardsConfig,
    TrainConfig,
    WandbConfig,
)
from rlaif.config.trainers import (
    DPO_DEFAULTS,
    GRPO_DEFAULTS,
    LORA_DEFAULTS,
    PASSTHROUGH,
    RLOO_DEFAULTS,
    TRL_DEFAULTS,
    TRL_RESERVED,
    build_lora_config,
    build_trl_config,
    check_trainer_sections,
)

__all__ = [
    "DPO_DEFAULTS",
    "GRPO_DEFAULTS",
    "LORA_DEFAULTS",
    "PASSTHROUGH",
    "RLOO_DEFAULTS",
    "SECTIONS",
    "TRL_DEFAULTS",
    "TRL_RESERVED",
    "EvalConfig",
    "GenerateConfig",
    "JudgeConfig",
    "ModelConfig",
    "PairsConfig",
    "PromptsConfig",
    "Recipe",
    "RunConfig",
    "SafeguardsConfig",
    "TrainConfig",
    "WandbConfig",
    "apply_overrides",
    "build_lora_config",
    "build_trl_config",
    "check_trainer_sections",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "reference_markdown",
]
