"""Resume and records (issue 12, points 3 and 9): provenance comes from the files, a round with no pairs is an
outcome, a result never names an adapter without weights, and a killed train stage resumes from its newest
checkpoint to the same adapter, byte for byte."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.config import load_recipe
from rlaif.errors import RlaifError
from rlaif.evaluation.safeguards import write_result
from rlaif.lora import CHECKPOINTS, COMPLETE, INPUTS, work_folder
from rlaif.reporting.loaders import run_result
from rlaif.reporting.tracking import Tracker
from rlaif.run import RunContext
from rlaif.rundir import TMP_MARK, RunDir, read_json, read_jsonl, write_json
from rlaif.stages.train_rl import rl_args

# 3 epochs of 2 steps: checkpoint 3 falls inside an epoch, so resuming must skip the batches already seen
CHECKPOINTED = {"run": {"rounds": 1}, "train": {"checkpoint_steps": 1}, "dpo": {"num_train_epochs": 3}}


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """One uninterrupted round with checkpoints every step."""
    tmp = tmp_path_factory.mktemp("resume")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_recipe(tiny_model, tmp / "out", **CHECKPOINTED))
    assert main(["run", str(recipe)]) == 0
    return tmp / "out", recipe


def copy_of(reference, tmp_path: Path) -> tuple[Path, Path]:
    src, recipe = reference
    out = tmp_path / "out"
    shutil.copytree(src, out)
    text = recipe.read_text().replace(str(src), str(out))
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    manifest = read_json(out / "manifest.json")
    manifest["recipe_file"] = str(path)
    write_json(out / "manifest.json", manifest)
    return out, path


# ---------------------------------------------------------------- provenance from files


def test_a_round_missing_from_the_manifest_is_recorded_and_logged_on_rerun(reference, tmp_path, monkeypatch):
    """As after a kill between the round's last mark_done and record_round."""
    out, recipe = copy_of(reference, tmp_path)
    manifest = read_json(out / "manifest.json")
    recorded = manifest["rounds"].pop("1")
    write_json(out / "manifest.json", manifest)
    logged = []
    monkeypatch.setattr(Tracker, "log_round", lambda self, n, metrics, samples=None: logged.append((n, metrics)))
    assert main(["run", str(recipe)]) == 0
    assert read_json(out / "manifest.json")["rounds"]["1"] == recorded
    assert logged == [(1, read_json(out / "round_001/metrics.json"))]
    assert main(["run", str(recipe)]) == 0
    assert len(logged) == 1, "a recorded round is not logged again"


# ---------------------------------------------------------------- result.json names a loadable adapter


def test_result_naming_an_adapter_without_weights_is_refused(reference, tmp_path):
    out, _ = copy_of(reference, tmp_path)
    assert run_result(out)["adapter"] == "round_001/adapter"
    (out / "round_001/adapter/adapter_model.safetensors").unlink()
    with pytest.raises(RlaifError) as info:
        run_result(out)
    assert str(info.value) == (
        f"{out / 'result.json'} names an adapter that cannot be used: LoRA adapter {out / 'round_001/adapter'} has no "
        "adapter_model.safetensors (rlaif loads safetensors only); if it is a run's round_NNN/adapter, redo that "
        "round's training: rlaif train RECIPE --round NNN"
    )
    with pytest.raises(RlaifError, match="has no adapter_model.safetensors"):
        write_result(RunDir(out), 1, None, [], healthy=None)


# ---------------------------------------------------------------- zero pairs is an outcome


def test_rounds_with_no_pairs_are_reported_and_the_run_goes_on(tiny_model, tmp_path):
    """pairs.min_margin=0.49 leaves no pair on the tiny model; each round is still evaluated (the base: nothing
    was trained) and the run completes with the base as its result."""
    out = tmp_path / "out"
    recipe = tiny_recipe(tiny_model, out, pairs={"min_margin": 0.49},
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 2, "samples": 1,
                               "bootstrap": 100})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    for n in (1, 2):
        metrics = read_json(out / f"round_{n:03d}/metrics.json")
        assert metrics["pairs"]["kept"] == 0 and metrics["pairs"]["dropped"] > 0
        assert metrics["train"]["pairs"] == 0 and metrics["train"]["skipped"] == "no pairs"
        assert not (out / f"round_{n:03d}/adapter").exists()
        ev = read_json(out / f"round_{n:03d}/eval.json")
        assert ev["skipped"] == "no adapter: nothing trained, the policy is the base"
        assert ev["model"] == ev["base"] and ev["model"]["name"] == "base"
        assert metrics["evaluate"]["skipped"] == ev["skipped"]
    result = read_json(out / "result.json")
    assert result == {"status": "completed", "reason": None, "stopped_after_round": None, "best_round": 2,
                      "adapter": None, "rounds_completed": 2, "rounds_without_pairs": [1, 2]}
    assert set(read_json(out / "manifest.json")["rounds"]) == {"1", "2"}


# ---------------------------------------------------------------- training resumes inside its stage


def test_work_folder_of_other_inputs_is_deleted(reference, tmp_path):
    out, recipe = copy_of(reference, tmp_path)
    ctx = RunContext(load_recipe(recipe))
    work, resume = work_folder(ctx, 1, ("pairs.jsonl",), None, 7)
    assert resume is None and read_json(work / INPUTS)["seed"] == 7
    for step in (1, 2):
        (work / f"checkpoint-{step}").mkdir()
        write_json(work / f"checkpoint-{step}" / COMPLETE, {"global_step": step})
    (work / "checkpoint-3").mkdir()  # killed while it was saved: never marked complete
    assert work_folder(ctx, 1, ("pairs.jsonl",), None, 7) == (work, work / "checkpoint-2")
    (out / "round_001/pairs.jsonl").write_text("")  # the pairs were redone since
    assert work_folder(ctx, 1, ("pairs.jsonl",), None, 7) == (work, None)
    assert sorted(p.name for p in work.iterdir()) == [INPUTS]


def kill_after_checkpoint(recipe: Path, step: int) -> None:
    """Run the recipe in a process that is SIGKILLed once checkpoint ``step`` is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "run", str(recipe)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled", "RLAIF_TEST_PAUSE_AFTER_CHECKPOINT": str(step)})
    deadline = time.time() + 500
    for line in proc.stdout:
        if f"[test] paused after checkpoint {step}" in line:  # tqdm's progress bar may share the line
            break
        assert time.time() < deadline, f"never reached checkpoint {step}"
    else:
        pytest.fail(f"training ended without pausing after checkpoint {step}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def rerun(recipe: Path, *args: str) -> str:
    final = subprocess.run([sys.executable, "-m", "rlaif.cli", "run", str(recipe), *args], check=False, cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    return final.stderr


def test_training_killed_after_a_checkpoint_resumes_from_it_to_the_same_adapter(reference, tiny_model, tmp_path):
    ref, _ = reference
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_model, out, **CHECKPOINTED))
    kill_after_checkpoint(recipe, 3)
    work = out / "round_001" / CHECKPOINTS
    assert TMP_MARK not in work.name and sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "round_001/adapter").exists()
    # checkpoint_steps may change on resume: checkpoints do not change what is trained
    stderr = rerun(recipe, "--set", "train.checkpoint_steps=2")
    assert "[rlaif] round 1: training resumes from round_001/checkpoints/checkpoint-3" in stderr
    metrics = read_json(out / "round_001/metrics.json")["train"]
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6
    steps = [row["step"] for row in read_jsonl(out / "round_001/train_log.jsonl") if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6], "each step is logged once: the resumed trainer continued at step 4"
    keys = ("step", "loss", "grad_norm", "rewards/margins")
    want = [{k: row[k] for k in keys} for row in read_jsonl(ref / "round_001/train_log.jsonl") if "loss" in row]
    got = [{k: row[k] for k in keys} for row in read_jsonl(out / "round_001/train_log.jsonl") if "loss" in row]
    assert got == want
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / "round_001/adapter" / name).read_bytes() == (ref / "round_001/adapter" / name).read_bytes()
    assert not work.exists(), "the work folder goes once the stage is committed"


def test_grpo_killed_after_a_checkpoint_resumes_to_the_same_adapter_and_completions(tiny_model, tmp_path):
    """Within an epoch (rlaif's RL default is one) a resumed GRPO round is the uninterrupted one, byte for byte:
    checkpoints fall where a batch of generations is used up, and the reward's records come back."""
    sections = {"run": {"rounds": 1}, "prompts": {"per_round": 8}, "train": {"method": "grpo", "checkpoint_steps": 1},
                "grpo": {"num_generations": 3, "per_device_train_batch_size": 6, "max_completion_length": 8,
                         "learning_rate": 5e-3}}
    ref = write_recipe(tmp_path / "ref.yaml", tiny_recipe(tiny_model, tmp_path / "ref", **sections))
    args = rl_args(load_recipe(ref), RunContext(load_recipe(ref)).tokenizer, tmp_path / "unused")
    assert (args.num_iterations, args.steps_per_generation, args.save_steps) == (2, 1, 2)  # 1 rounded up to 2
    assert main(["run", str(ref)]) == 0
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_model, tmp_path / "out", **sections))
    kill_after_checkpoint(recipe, 4)  # 8 steps: the middle of the epoch
    assert "training resumes from round_001/checkpoints/checkpoint-4" in rerun(recipe)
    assert read_json(tmp_path / "out/round_001/metrics.json")["train"]["resumed_from_step"] == 4
    for name in ("adapter/adapter_model.safetensors", "completions.jsonl"):
        assert (tmp_path / "out/round_001" / name).read_bytes() == (tmp_path / "ref/round_001" / name).read_bytes()
