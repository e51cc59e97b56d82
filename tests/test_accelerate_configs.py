"""The shipped accelerate configs (recipes/accelerate/): each says how to launch it and whether it ran, and
accelerate's own launcher reads it into the settings it promises (no key it would silently ignore)."""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import REPO

CONFIGS = REPO / "recipes" / "accelerate"

# what `accelerate launch` must hand the processes for each config (environment variables it sets)
EXPECTED = {
    "ddp.yaml": {},
    "fsdp.yaml": {"ACCELERATE_USE_FSDP": "true", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                  "FSDP_USE_ORIG_PARAMS": "false", "FSDP_VERSION": "1"},
    "zero2.yaml": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "zero3.yaml": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                   "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"},
}


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


def known_options() -> set[str]:
    """Every option ``accelerate launch`` has (a config key outside these is silently ignored)."""
    return {action.dest for action in launch_command_parser()._actions}


def launch_env(path: Path) -> tuple[dict, dict]:
    """(launch arguments, environment) exactly as ``accelerate launch --config_file PATH -m rlaif run R`` makes them."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "-m", "rlaif", "run", "recipe.yaml"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # what launch_command adds before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return vars(args), prepare_deepspeed_cmd_env(args)[1]
    return vars(args), prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_launches_what_it_says(name):
    path = CONFIGS / name
    text = path.read_text()
    assert text.startswith(f"# accelerate launch --config_file recipes/accelerate/{name} -m rlaif run recipes/"), \
        "the first line is the launch command"
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "Unrun" in header or "Ran" in header, "the header says whether this config was ever run, and where"
    launch_recipe = text.splitlines()[0].split()[-1]
    assert (REPO / launch_recipe).is_file(), f"{launch_recipe} named in the launch command exists"

    raw = yaml.safe_load(text)
    load_config_from_file(str(path))  # accelerate's schema: an unknown top-level key is a TypeError
    args, env = launch_env(path)
    known = known_options()
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            dest = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            assert dest in known, f"{name}: {section}.{key} is not an option accelerate launch knows"
    for key, value in EXPECTED[name].items():
        assert env.get(key) == value, (name, key, env.get(key))
    assert args["num_processes"] >= 2 and args["num_machines"] == 1
    if name == "ddp.yaml":
        assert args["multi_gpu"] and not args["use_fsdp"] and not args["use_deepspeed"]
