from pathlib import Path

import pytest
from conftest import REPO

from rlaif.config import (
    DPO_DEFAULTS,
    build_dpo_config,
    build_lora_config,
    load_recipe,
    recipe_from_dict,
    reference_markdown,
)
from rlaif.errors import RlaifError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_builds_trl_configs(path, tmp_path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# rlaif run recipes/"), "a recipe starts with the command that runs it"
    assert path.name in first
    recipe = load_recipe(path)
    dpo = build_dpo_config(recipe, tmp_path)
    assert dpo.beta == recipe.dpo_kwargs()["beta"]
    build_lora_config(recipe)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "judge:\n  batchsize: 8\n")
    with pytest.raises(RlaifError, match=r"r\.yaml: unknown key 'judge\.batchsize'"):
        load_recipe(p)


def test_unknown_section(tmp_path):
    with pytest.raises(RlaifError, match="unknown section 'jugde'"):
        load_recipe(write(tmp_path, "jugde: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(RlaifError, match=r"generate\.num_candidates must be int, got 'four'"):
        load_recipe(write(tmp_path, "generate:\n  num_candidates: four\n"))
    with pytest.raises(RlaifError, match=r"pairs\.drop_empty must be bool"):
        load_recipe(write(tmp_path, "pairs:\n  drop_empty: 3\n"))
    with pytest.raises(RlaifError, match=r"judge\.model must be `policy`, `base`, a hub id"):
        load_recipe(write(tmp_path, "judge:\n  model: other\n"))


def test_dpo_section_is_trl_fields(tmp_path):
    # YAML reads 5e-5 as a string; rlaif reads it as the float the user meant
    recipe = load_recipe(write(tmp_path, "dpo:\n  learning_rate: 5e-5\n  beta: 0.2\n"))
    cfg = build_dpo_config(recipe, tmp_path)
    assert cfg.learning_rate == 5e-5 and cfg.beta == 0.2
    assert cfg.gradient_checkpointing is DPO_DEFAULTS["gradient_checkpointing"]
    with pytest.raises(RlaifError, match=r"unknown key 'dpo\.betta' \(not a field of TRL's DPOConfig\)"):
        load_recipe(write(tmp_path, "dpo:\n  betta: 0.1\n"))
    with pytest.raises(RlaifError, match=r"dpo\.beta must be float"):
        load_recipe(write(tmp_path, "dpo:\n  beta: high\n"))
    with pytest.raises(RlaifError, match=r"'dpo\.output_dir' is set by rlaif"):
        load_recipe(write(tmp_path, "dpo:\n  output_dir: x\n"))
    with pytest.raises(RlaifError, match=r"unknown key 'lora\.rank'"):
        load_recipe(write(tmp_path, "lora:\n  rank: 4\n"))


def test_overrides(tmp_path):
    p = write(tmp_path, "judge:\n  batch_size: 4\n")
    r = load_recipe(p, ["judge.batch_size=12", "dpo.beta=0.3", "run.output_dir=elsewhere"])
    assert r.judge.batch_size == 12 and r.dpo["beta"] == 0.3 and r.run.output_dir == "elsewhere"
    with pytest.raises(RlaifError, match="unknown key 'judge.size'"):
        load_recipe(p, ["judge.size=3"])
    with pytest.raises(RlaifError, match="expected section.key=value"):
        load_recipe(p, ["judge.batch_size"])


def test_malformed_and_empty(tmp_path):
    with pytest.raises(RlaifError, match="malformed YAML at line 3, column 1"):
        load_recipe(write(tmp_path, "run:\n  rounds: [1\n"))
    with pytest.raises(RlaifError, match="the recipe is empty"):
        load_recipe(write(tmp_path, "# nothing\n"))
    with pytest.raises(RlaifError, match="must be a mapping of sections"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RlaifError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_value_ranges():
    with pytest.raises(RlaifError, match="num_candidates must be at least 2"):
        recipe_from_dict({"generate": {"num_candidates": 1}})
    with pytest.raises(RlaifError, match="prompts.path is required"):
        recipe_from_dict({"prompts": {"source": "file"}})


def test_reference_covers_every_field_and_readme_has_it():
    ref = reference_markdown()
    readme = (REPO / "README.md").read_text()
    for line in ref.splitlines()[2:]:
        key = line.split("|")[1].strip()
        assert key in readme, f"README's recipe reference lacks {key}"
