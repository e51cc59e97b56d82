"""One preflight for `rlaif validate`, `rlaif run` and the one-stage commands (issue 12, point 2): every input
that would fail mid-run fails before the run folder exists, with the same one-line error in all three."""

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.stages.prompts import _is_heldout


def constitution(tmp_path: Path, name: str, **changes) -> str:
    """The default constitution with ``changes`` (``pointwise_labels`` goes into its pointwise section)."""
    raw = yaml.safe_load(resources.files("rlaif.data").joinpath("constitution.yaml").read_text(encoding="utf-8"))
    if "pointwise_labels" in changes:
        raw["pointwise"]["labels"] = changes.pop("pointwise_labels")
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def weightless_model(tiny_model: str, tmp_path: Path) -> str:
    """The tiny model's config and tokenizer, without its weights."""
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    return str(folder)


def cases(tiny_model: str, tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """name: (recipe sections over the tiny recipe, the error's text)."""
    no_heldout = tmp_path / "no-heldout.jsonl"
    no_heldout.write_text("".join(f'{{"prompt": "Say {i}."}}\n' for i in range(6)))
    # short training prompts, long held-out ones (the split is a hash of the text)
    short = [f"Say {i}." for i in range(40) if not _is_heldout(f"Say {i}.", 0.5)][:3]
    long = [f"Say {i} " + "and again " * 20 for i in range(40) if _is_heldout(f"Say {i} " + "and again " * 20, 0.5)][:3]
    long_heldout = tmp_path / "long-heldout.jsonl"
    long_heldout.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in short + long))
    ten = constitution(tmp_path, "ten", pointwise_labels=["0", "5", "10"])  # "10" is two tokens for the tiny model
    return {
        "pointwise label of two tokens": (
            {"judge": {"mode": "pointwise", "constitution": ten}},
            f"constitution {ten}: label '10' is not a single token for this tokenizer after the pointwise.answer_prefix",
        ),
        "pairwise labels of several tokens": (
            {"judge": {"mode": "pairwise",
                       "constitution": (ab := constitution(tmp_path, "ab", labels=["Answer A", "Answer B"]))}},
            f"constitution {ab}: label 'Answer A' is not a single token for this tokenizer after the judge prompt",
        ),
        "eval judge's labels, when rounds are evaluated": (
            {"judge": {"mode": "pairwise", "constitution": ten},
             "eval": {"each_round": True, "judge_mode": "pointwise", "instructions": "none"}},
            f"constitution {ten}: label '10' is not a single token",
        ),
        "model folder without weights": (
            {"model": {"source": (folder := weightless_model(tiny_model, tmp_path))}},
            f"model folder {folder} has no weights (no *.safetensors file)",
        ),
        "every prompt too long": (
            {"prompts": {"max_prompt_tokens": 5}},
            "the prompt set is empty: all 277 training prompts are longer than prompts.max_prompt_tokens=5",
        ),
        "no held-out split when every round is evaluated": (
            {"prompts": {"source": "file", "path": str(no_heldout)}, "eval": {"each_round": True, "instructions": "none"}},
            "no held-out prompts to evaluate on: the prompt set's held-out split is empty",
        ),
        "held-out prompts all too long when every round is evaluated": (
            {"prompts": {"source": "file", "path": str(long_heldout), "heldout_fraction": 0.5, "max_prompt_tokens": 30},
             "eval": {"each_round": True, "instructions": "none"}},
            "no held-out prompts to evaluate on: all 3 held-out prompts are longer than prompts.max_prompt_tokens=30",
        ),
        # the config cases: refused when the recipe is loaded, by every command alike
        "temperature nan": ({"generate": {"temperature": float("nan")}}, "generate.temperature must be"),
        "top_k -1": ({"generate": {"top_k": -1}}, "generate.top_k must be 0 or more"),
        "repetition penalty 0": ({"generate": {"repetition_penalty": 0}}, "generate.repetition_penalty must be"),
        "seed -1": ({"run": {"seed": -1}}, "run.seed must be"),
        "lora rank 0": ({"lora": {"r": 0}}, "lora.r must be at least 1"),
        "unknown scheduler": ({"dpo": {"lr_scheduler_type": "bogus"}}, "section 'dpo' rejected by TRL"),
    }


CASES = ["pointwise label of two tokens", "pairwise labels of several tokens", "eval judge's labels, when rounds are evaluated",
         "model folder without weights", "every prompt too long", "no held-out split when every round is evaluated",
         "held-out prompts all too long when every round is evaluated", "temperature nan", "top_k -1",
         "repetition penalty 0", "seed -1", "lora rank 0", "unknown scheduler"]


@pytest.mark.parametrize("name", CASES)
def test_a_preflight_failure_is_one_line_in_every_command_and_leaves_no_folder(tiny_model, tmp_path, capsys, name):
    all_cases = cases(tiny_model, tmp_path)
    assert sorted(all_cases) == sorted(CASES)
    sections, message = all_cases[name]
    out = tmp_path / "out"
    recipe = tiny_recipe(tiny_model, out, run={"rounds": 1})
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    for command in (["validate"], ["run"], ["generate", "--round", "1"]):
        assert main([command[0], str(path), *command[1:]]) == 2, command
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (command, err)
        assert message in err, (command, err)
        assert not out.exists(), command


def test_validate_lists_each_check_and_creates_nothing(tiny_model, tmp_path, capsys):
    """The same checks accept what the judge can read: validate lists each check and creates nothing."""
    labels = constitution(tmp_path, "one-token", pointwise_labels=["0", "5", "9"])
    out = tmp_path / "out"
    recipe = tiny_recipe(tiny_model, out, judge={"mode": "pointwise", "constitution": labels},
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 3})
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "ok" and not out.exists()
    assert f"run folder {out}: new" in lines
    assert f"tokenizer of {tiny_model}: 600 tokens, chat template present; safetensors weights present" in lines
    assert "judge: pointwise, model policy, labels ['0', '5', '9'] one token each" in lines
    assert "eval judge: pointwise, model base, labels ['0', '5', '9'] one token each" in lines
    assert any(line.startswith("prompts: 277 training (0 over prompts.max_prompt_tokens=200), 66 held out")
               for line in lines)
    assert any(line.startswith("eval: 3 of 66 held-out prompts x2, no instruction prompts") for line in lines)
