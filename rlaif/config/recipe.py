"""The recipe: its sections, the checks across them, YAML files, ``--set`` overrides and one-line errors.

pydantic validates; this module turns the first of its errors into the one line rlaif prints
(``recipes/x.yaml: generate.top_k must be at least 0, got -1``), naming the file, the section and
the key, and for a range the range itself, read from the field's constraints.
"""

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

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
    LORA_DEFAULTS,
    PASSTHROUGH,
    TRL_DEFAULTS,
    check_passthrough,
    check_trainer_sections,
    describe,
    non_finite,
    passthrough_class,
)
from rlaif.errors import RlaifError


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    safeguards: SafeguardsConfig = Field(default_factory=SafeguardsConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    dpo: dict[str, Any] = Field(default_factory=dict)  # user's DPOConfig fields, defaults not merged
    grpo: dict[str, Any] = Field(default_factory=dict)  # user's GRPOConfig fields
    rloo: dict[str, Any] = Field(default_factory=dict)  # user's RLOOConfig fields
    lora: dict[str, Any] = Field(default_factory=dict)  # user's LoraConfig fields, defaults not merged
    source: str = "<recipe>"

    @field_validator(*PASSTHROUGH)
    @classmethod
    def _trainer_section(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_passthrough(value, info.field_name)

    @model_validator(mode="after")
    def _across_sections(self):
        """The collapse safeguards: anchoring needs reference answers and DPO pairs; the tie-break needs pairs;
        an instruction-drop rule needs instruction prompts."""
        p, method = self.pairs, self.train.method
        if method != "dpo":
            for key in ("anchor_share", "length_tiebreak"):
                if getattr(p, key) > 0:
                    raise ValueError(
                        f"pairs.{key} applies to DPO preference pairs, and train.method={method} builds "
                        f"none; set pairs.{key}: 0 or train.method: dpo"
                    )
        if p.anchor_share > 0 and not self.prompts.reference_column:
            raise ValueError(
                f"pairs.anchor_share={p.anchor_share} needs prompts.reference_column (the column of a "
                "human-written reference answer); the bundled prompt set has no reference answers, so use a "
                "prompt file or hub dataset that has them"
            )
        if self.judge.mode == "none" and (self.prompts.constraint_share == 0 or self.judge.verifier_weight == 0):
            raise ValueError("judge.mode: none leaves the verifier as the only source of verdicts, so it needs "
                             "prompts.constraint_share above 0 and judge.verifier_weight above 0")
        if self.safeguards.max_instruction_drop is not None and self.eval.instructions == "none":
            raise ValueError("safeguards.max_instruction_drop needs instruction prompts (eval.instructions is `none`)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: every section with its defaults filled in (written to the manifest)."""
        out = {name: getattr(self, name).model_dump() for name in SECTIONS}
        out[self.train.method] = self.trl_kwargs(self.train.method)
        out["lora"] = self.lora_kwargs()
        return out

    def trl_kwargs(self, method: str) -> dict[str, Any]:
        """rlaif's defaults for a TRL trainer's config, under the recipe's own section."""
        return {**TRL_DEFAULTS[method], **getattr(self, method)}

    def lora_kwargs(self) -> dict[str, Any]:
        return {**LORA_DEFAULTS, **self.lora}


# ---------------------------------------------------------------- pydantic's errors as one line


def _range(info: FieldInfo) -> str:
    """``at least 1``, ``0 or more``, ``in (0, 1]``: the range a field's constraints allow."""
    b = {name: getattr(m, name) for m in info.metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        if lo[0] == "(":
            return f"> {lo[1]}"
        return "0 or more" if lo[1] == 0 else f"at least {lo[1]}"
    return f"at most {hi[1]}" if hi[0] == "]" else f"< {hi[1]}"


def _one_line(exc: ValidationError, raw: dict[str, dict], source: str) -> str:
    """The first error, as ``FILE: section.key must be ..., got VALUE``."""
    err = exc.errors(include_url=False)[0]
    loc, kind = err["loc"], err["type"]
    if kind == "value_error":  # our own validators write the whole sentence
        return f"{source}: {err['ctx']['error']}"
    cls = SECTIONS.get(loc[0]) if loc else None
    if cls is None or len(loc) < 2:
        return f"{source}: {'.'.join(map(str, loc))}: {err['msg']}"
    section, key = loc[0], loc[1]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{section}.{key}' (known: {', '.join(sorted(cls.model_fields))})"
    info, value = cls.model_fields[key], raw[section][key]
    where = f"{source}: {section}.{key}"
    if non_finite(err.get("input")):
        return f"{where} must be finite, got {value!r}"
    if kind == "literal_error":
        return f"{where} must be one of {list(typing.get_args(info.annotation))}, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where} must be {_range(info)}, got {value!r}"
    if kind == "string_too_short":
        return f"{where} must not be empty (leave it out for the default)"
    return f"{where} must be {describe(info.annotation)}, got {value!r}"


def recipe_from_dict(raw: Any, source: str = "<recipe>") -> Recipe:
    """A checked ``Recipe`` from a mapping of sections, with TRL's and peft's configs built once to check them."""
    if raw is None:
        raise RlaifError(f"{source}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RlaifError(f"{source}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS and name not in PASSTHROUGH:
            raise RlaifError(f"{source}: unknown section '{name}' (known: {', '.join([*SECTIONS, *PASSTHROUGH])})")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise RlaifError(f"{source}: section '{name}' must be a mapping of keys, got {type(values).__name__}")
        sections[name] = values
    try:
        recipe = Recipe.model_validate({**sections, "source": source})
    except ValidationError as exc:
        raise RlaifError(_one_line(exc, sections, source)) from None
    check_trainer_sections(recipe)
    return recipe


# ---------------------------------------------------------------- files and overrides


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is refused (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: the safe loader refuses it itself
                    continue
        return super().construct_mapping(node, deep)


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
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)
    except _DuplicateKey as exc:
        raise RlaifError(
            f"{path}: duplicate key {exc.key!r} at line {exc.line} (first at line {exc.first}); write each key once"
        ) from None
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


def reference_markdown() -> str:
    """The recipe reference table for README, generated from the schema's help texts."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, cls in SECTIONS.items():
        for key, info in cls.model_fields.items():
            lines.append(f"| `{name}.{key}` | `{info.get_default(call_default_factory=True)!r}` | {info.description} |")
    for section, defaults in TRL_DEFAULTS.items():
        owner = f"TRL {passthrough_class(section).__name__}"
        for key, value in defaults.items():
            lines.append(f"| `{section}.{key}` | `{value!r}` | {owner} field; rlaif's default. |")
        lines.append(f"| `{section}.*` | TRL's | Any other field of {owner}. |")
    for key, value in LORA_DEFAULTS.items():
        lines.append(f"| `lora.{key}` | `{value!r}` | peft LoraConfig field; rlaif's default. |")
    lines.append("| `lora.*` | peft's | Any other field of peft's `LoraConfig`. |")
    return "\n".join(lines)
