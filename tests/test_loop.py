"""The whole loop on a tiny random model: artifacts, provenance, training evidence, resume, bad input."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_recipe, write_recipe
from safetensors.torch import load_file

from rlaif.cli import main
from rlaif.pipeline import REDO_STAGES
from rlaif.rundir import read_json, read_jsonl

ROUND_FILES = ["prompts.jsonl", "candidates.jsonl", "verdicts.jsonl", "rankings.jsonl", "pairs.jsonl",
               "pairs_dropped.jsonl", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
               "train_log.jsonl", "metrics.json", "state.json"]
JSONL = ["prompts.jsonl", "candidates.jsonl", "verdicts.jsonl", "rankings.jsonl", "pairs.jsonl", "pairs_dropped.jsonl"]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_recipe(tiny_model, tmp / "out"))
    assert main(["run", str(recipe)]) == 0
    return tmp / "out", recipe


def test_two_rounds_write_every_artifact(finished_run):
    out, _ = finished_run
    for n in (1, 2):
        for name in ROUND_FILES:
            assert (out / f"round_{n:03d}" / name).is_file(), name
        assert read_json(out / f"round_{n:03d}/state.json")["completed"] == list(REDO_STAGES)
        cands = read_jsonl(out / f"round_{n:03d}/candidates.jsonl")
        assert len(cands) == 4 * 3
        assert len(read_jsonl(out / f"round_{n:03d}/verdicts.jsonl")) == 4 * 3  # 3 pairs per prompt
        import pandas as pd  # artifacts open in pandas and datasets

        assert len(pd.read_json(out / f"round_{n:03d}/candidates.jsonl", lines=True)) == 12
    r1 = {p["id"] for p in read_jsonl(out / "round_001/prompts.jsonl")}
    r2 = {p["id"] for p in read_jsonl(out / "round_002/prompts.jsonl")}
    assert not r1 & r2, "rounds draw new prompts"
    manifest = read_json(out / "manifest.json")
    assert manifest["versions"]["trl"] and manifest["recipe"]["dpo"]["learning_rate"] == 5e-3
    assert manifest["seed"] == 0


def test_round_two_generates_with_round_one_adapter(finished_run):
    out, _ = finished_run
    manifest = read_json(out / "manifest.json")
    assert manifest["rounds"]["1"]["policy_adapter"] is None
    assert manifest["rounds"]["2"]["policy_adapter"] == "round_001/adapter"
    assert manifest["rounds"]["2"]["policy_adapter_sha256"] == manifest["rounds"]["1"]["adapter_sha256"]
    assert manifest["rounds"]["2"]["judge_adapter"] == "round_001/adapter"
    r1 = read_jsonl(out / "round_001/candidates.jsonl")
    r2 = read_jsonl(out / "round_002/candidates.jsonl")
    assert all(c["logp_policy"] == c["logp_base"] for c in r1)  # round 1: the base itself
    diffs = [abs(c["logp_policy"] - c["logp_base"]) for c in r2]
    assert max(diffs) > 1e-3, "round 1's adapter must change the policy's log-probs"


def test_training_moves_the_adapter_and_the_reward_margin(finished_run):
    out, _ = finished_run
    for n in (1, 2):
        m = read_json(out / f"round_{n:03d}/metrics.json")["train"]
        assert m["pairs"] > 0 and m["steps"] > 0
        assert m["adapter_delta_norm"] > 0
        assert m["reward_margin_after"] > m["reward_margin_before"]
    weights = load_file(out / "round_001/adapter/adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b), "LoRA B starts at zero; training must move it"
    w2 = load_file(out / "round_002/adapter/adapter_model.safetensors")
    assert any((w2[k] - weights[k]).abs().max() > 0 for k in weights)


def test_rerun_is_a_no_op_and_more_rounds_continue(finished_run):
    out, recipe = finished_run
    before = tree_digest(out)
    assert main(["run", str(recipe)]) == 0
    assert tree_digest(out) == before
    assert read_json(out / "result.json")["best_round"] == 2
    assert main(["run", str(recipe), "--set", "run.rounds=3"]) == 0
    after = tree_digest(out)
    run_level = ("manifest.json", "result.json")  # they describe the whole run: round 3 is added
    assert {k: v for k, v in after.items() if k in before and k not in run_level} == {
        k: v for k, v in before.items() if k not in run_level
    }
    assert read_json(out / "manifest.json")["rounds"]["3"]["policy_adapter"] == "round_002/adapter"
    assert read_json(out / "result.json")["best_round"] == 3


def test_changed_recipe_on_existing_run_is_refused(finished_run, capsys):
    out, recipe = finished_run
    before = tree_digest(out)
    assert main(["run", str(recipe), "--set", "judge.batch_size=3"]) == 2
    assert "changed: judge.batch_size" in capsys.readouterr().err
    assert tree_digest(out) == before


def test_stage_command_redoes_and_moves_stale_outputs_aside(tmp_path, tiny_model):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_model, out, run={"rounds": 1}))
    assert main(["run", str(recipe)]) == 0
    old_pairs = (out / "round_001/pairs.jsonl").read_text()
    assert main(["judge", str(recipe), "--round", "1"]) == 0
    assert read_json(out / "round_001/state.json")["completed"] == ["prompts", "generate", "judge"]
    moved = list((out / "superseded").glob("*/round_001"))
    assert len(moved) == 1 and (moved[0] / "pairs.jsonl").read_text() == old_pairs
    assert (moved[0] / "verdicts.jsonl").is_file() and (moved[0] / "adapter").is_dir()
    assert main(["pairs", str(recipe)]) == 0  # default round: the first without pairs
    assert (out / "round_001/pairs.jsonl").is_file()
    assert main(["generate", str(recipe), "--round", "2"]) == 2  # round 2 needs round 1 trained first


# ---------------------------------------------------------------- subprocess: errors and signals


def rlaif(*args, env=None, **kw):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *args], check=False, capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=600, **kw)


def test_bad_input_is_a_short_error_and_touches_nothing(finished_run, tiny_model, tmp_path):
    out, _ = finished_run
    before = tree_digest(out)
    (tmp_path / "empty.jsonl").write_text("")
    base = tiny_recipe(tiny_model, out)
    cases = {
        "malformed": ("run:\n  rounds: [2\n", "malformed YAML at line"),
        "unknown key": (base | {"judge": {"batchsize": 4}}, "unknown key 'judge.batchsize'"),
        "missing prompt file": (base | {"prompts": {"source": "file", "path": str(tmp_path / "nope.jsonl")}},
                                "prompt file not found"),
        "empty prompt set": (base | {"prompts": {"source": "file", "path": str(tmp_path / "empty.jsonl")}},
                             "the prompt set is empty"),
        "missing model": (base | {"model": {"source": str(tmp_path / "no-such-model")}}, "model not found"),
        "missing hub model": (base | {"model": {"source": "nobody-here/no-such-model"}}, "could not load the tokenizer"),
        "missing constitution": (base | {"judge": {"constitution": str(tmp_path / "c.yaml")}}, "constitution not found"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        result = rlaif("run", str(path))
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert message in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, name
        assert len(result.stderr.strip().splitlines()) <= 3, (name, result.stderr)
    assert tree_digest(out) == before
    fresh = tiny_recipe(tiny_model, tmp_path / "never-made") | {"model": {"source": str(tmp_path / "no-such-model")}}
    assert rlaif("run", str(write_recipe(tmp_path / "fresh.yaml", fresh))).returncode == 2
    assert not (tmp_path / "never-made").exists()


@pytest.mark.parametrize("victims", [["prompts.jsonl", "candidates.jsonl", "rankings.jsonl", "pairs_dropped.jsonl",
                                      "adapter", "metrics.json"]])
def test_kill_during_each_stage_then_rerun_gives_the_same_artifacts(finished_run, tiny_model, tmp_path, victims):
    """SIGKILL lands while each stage's file is half-committed; every rerun resumes; the end matches a clean run."""
    reference, _ = finished_run
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_model, out))
    for victim in victims:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif.cli", "run", str(recipe)], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "WANDB_MODE": "disabled", "RLAIF_TEST_PAUSE_BEFORE_COMMIT": victim},
        )
        deadline = time.time() + 300
        for line in proc.stdout:
            if line.startswith("[test] paused before committing"):
                break
            assert time.time() < deadline, f"never reached {victim}"
        else:
            pytest.fail(f"run ended without pausing at {victim}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert list(out.rglob(f"{victim}.tmp-*")), f"the kill should leave a temporary {victim} behind"
    final = rlaif("run", str(recipe))
    assert final.returncode == 0, final.stderr[-3000:]
    assert not [p for p in out.rglob("*.tmp-*")], "temporary files are cleaned up"
    for n in (1, 2):
        assert read_json(out / f"round_{n:03d}/state.json")["completed"] == list(REDO_STAGES)
        for name in JSONL:
            got = read_jsonl(out / f"round_{n:03d}" / name)
            want = read_jsonl(reference / f"round_{n:03d}" / name)
            assert len(got) == len(want), (n, name)
            assert got == want, (n, name)  # same rows: nothing duplicated, lost or changed
    for n in (1, 2):
        got = load_file(out / f"round_{n:03d}/adapter/adapter_model.safetensors")
        want = load_file(reference / f"round_{n:03d}/adapter/adapter_model.safetensors")
        assert got.keys() == want.keys()
        assert all((got[k] - want[k]).abs().max() < 1e-5 for k in got)


def test_wandb_offline_without_api_key(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, wandb={"enabled": True, "mode": "auto"},
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 4, "bootstrap": 100})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    runs = list((tmp_path / "out/wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no API key: the W&B run is offline, inside the run folder"
    assert read_json(tmp_path / "out/manifest.json")["wandb_run_id"] in runs[0].name
    wandb_cli = Path(sys.executable).parent / "wandb"
    records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(runs[0])], check=False, capture_output=True,
                             text=True, timeout=120).stdout
    history = [json.loads(line)["history"]["item"] for line in records.splitlines() if '"type":"history"' in line]
    assert len(history) == 1 and history[0]["round"] == 1
    metrics = read_json(tmp_path / "out/round_001/metrics.json")
    for key in ("generate/mean_tokens", "judge/mean_margin", "judge/length_corr", "pairs/kept",
                "train/loss_last", "train/reward_margin_after", "train/reward_accuracy_after",
                "evaluate/model/win_rate_vs_base", "evaluate/model/distinct_2", "evaluate/base/mean_tokens"):
        stage, *path = key.split("/")
        want = metrics[stage]
        for name in path:
            want = want[name]
        if isinstance(want, float) and math.isnan(want):  # e.g. length_corr when every candidate has one length
            assert key not in history[0], key  # a NaN is not logged
            continue
        assert history[0][key] == pytest.approx(want), key
    # the samples table: every candidate of the first prompts, with rank, role and both orders' verdicts
    (table,) = runs[0].glob("files/media/table/samples_*.table.json")
    data = json.loads(table.read_text())
    cols = data["columns"]
    assert {"prompt", "text", "rank", "role", "verdicts"} <= set(cols)
    rows = [dict(zip(cols, r)) for r in data["data"]]
    ranking = read_jsonl(tmp_path / "out/round_001/rankings.jsonl")[0]
    first = [r for r in rows if r["prompt_id"] == ranking["prompt_id"]]
    assert [r["candidate"] for r in first] == ranking["order"] and [r["rank"] for r in first] == [1, 2, 3]
    pair = read_jsonl(tmp_path / "out/round_001/pairs.jsonl")[0]
    roles = {r["candidate"]: r["role"] for r in rows if r["prompt_id"] == pair["prompt_id"]}
    assert roles[pair["chosen_candidate"]] == "chosen" and roles[pair["rejected_candidate"]] == "rejected"


def test_previous_reference_and_frozen_base_judge(tiny_model, tmp_path):
    """train.reference=previous: round 2 starts equal to its reference (margin 0); judge.model=base: no adapter."""
    recipe = tiny_recipe(tiny_model, tmp_path / "out", train={"reference": "previous"}, judge={"model": "base"})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    r2 = read_json(tmp_path / "out/round_002/metrics.json")
    assert r2["train"]["reference"] == "previous" and r2["train"]["start_adapter"] == "round_001/adapter"
    assert r2["train"]["reward_margin_before"] == pytest.approx(0.0, abs=1e-6)
    assert r2["train"]["reward_margin_after"] > 0
    assert r2["judge"]["judge_adapter"] is None and r2["generate"]["policy_adapter"] == "round_001/adapter"
    saved = load_file(tmp_path / "out/round_002/adapter/adapter_model.safetensors")
    assert not any(".ref." in k for k in saved), "only the trained adapter is saved, not TRL's frozen copy"


def test_base_reference_round_two_starts_away_from_its_reference(finished_run):
    out, _ = finished_run
    r2 = read_json(out / "round_002/metrics.json")["train"]
    assert r2["reference"] == "base" and r2["start_adapter"] == "round_001/adapter"
    assert abs(r2["reward_margin_before"]) > 1e-6  # round 1's adapter already differs from the base


def test_anchor_pairs_from_reference_answers_are_trained_on(tiny_model, tmp_path, capsys):
    """pairs.anchor_share=1: every prompt with a reference answer gets a (reference, worst candidate) pair."""
    rows = [{"task": {"q": q}, "answer": a} for q, a in [
        ("Name three primary colours.", "Red, blue and yellow."),
        ("What is the capital of France?", "Paris."),
        ("Give a synonym for happy.", "Glad."),
        ("Count from one to three.", ""),  # no reference: no anchor pair, counted
    ]]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(
        tiny_model, out, run={"rounds": 1},
        prompts={"source": "file", "path": str(tmp_path / "qa.jsonl"), "column": "task.q", "reference_column": "answer"},
        pairs={"anchor_share": 1.0, "length_tiebreak": 0.05},
    ))
    assert main(["run", str(recipe)]) == 0
    reference = {r["task"]["q"]: r["answer"] for r in rows if r["answer"]}
    prompts = read_jsonl(out / "round_001/prompts.jsonl")
    assert {p["prompt"]: p["reference"] for p in prompts if "reference" in p} == reference
    pairs = read_jsonl(out / "round_001/pairs.jsonl")
    anchors = [p for p in pairs if p["source"] == "reference"]
    assert anchors and all(p["chosen"] == reference[p["prompt"]] for p in anchors)
    metrics = read_json(out / "round_001/metrics.json")
    counts = metrics["pairs"]
    assert counts["anchor_pairs"] == len(anchors) and counts["anchor_missing_reference"] == 1
    assert counts["kept"] == len(pairs) and counts["dropped"] == len(read_jsonl(out / "round_001/pairs_dropped.jsonl"))
    assert metrics["train"]["pairs"] == len(pairs) and metrics["train"]["steps"] > 0
    assert metrics["train"]["adapter_delta_norm"] > 0
    before = tree_digest(out)
    assert main(["run", str(recipe), "--set", "pairs.anchor_share=0.5"]) == 2  # a changed pairs.* is refused
    assert "changed: pairs.anchor_share" in capsys.readouterr().err
    assert tree_digest(out) == before
