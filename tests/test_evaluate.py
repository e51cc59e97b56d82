"""Held-out evaluation and the safeguards: metric maths, the eval command, and a planted collapse."""

import json
import math

import pytest
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.config import SafeguardsConfig, recipe_from_dict
from rlaif.evaluation import evaluate
from rlaif.evaluation.metrics import (
    collapse_signals,
    distinct_n,
    judge_set_accuracy,
    paired_constraint_gain,
    self_similarity,
    win_rate,
)
from rlaif.evaluation.safeguards import broken_rules
from rlaif.run import RunContext
from rlaif.rundir import read_json, read_jsonl

# ---------------------------------------------------------------- metric maths


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # "a b" twice
    assert distinct_n(["the the the the"], 2) == pytest.approx(1 / 3)
    assert math.isnan(distinct_n(["", "one"], 2))  # no bigram at all


def test_self_similarity_is_one_for_identical_samples_and_zero_for_disjoint():
    assert self_similarity([["a b c", "a b c"], ["x y", "x y"]]) == pytest.approx(1.0)
    assert self_similarity([["a b c", "d e f"]]) == pytest.approx(0.0)
    assert self_similarity([["a b c d", "a b c e"]]) == pytest.approx(2 / 4)  # {ab, bc, cd} vs {ab, bc, ce}
    assert math.isnan(self_similarity([["only one sample"]]))


def test_win_rate_counts_ties_as_half_and_brackets_the_estimate():
    rate, (lo, hi) = win_rate([0.9, 0.8, 0.1, 0.5, math.nan, 0.7], resamples=500, seed=0)
    assert rate == pytest.approx((1 + 1 + 0 + 0.5 + 0.5 + 1) / 6)
    assert lo <= rate <= hi and hi - lo > 0.1
    rate, (lo, hi) = win_rate([0.9] * 20, resamples=500, seed=0)
    assert rate == lo == hi == 1.0


def test_win_rate_bootstraps_whole_prompts():
    # 20 prompts x 5 samples; a prompt's samples all win or all lose: 20 draws of evidence, not 100
    ps = [0.9 if i % 2 else 0.1 for i in range(20) for _ in range(5)]
    groups = [i for i in range(20) for _ in range(5)]
    rate, (lo, hi) = win_rate(ps, resamples=2000, seed=0, groups=groups)
    _, (flo, fhi) = win_rate(ps, resamples=2000, seed=0)
    assert rate == pytest.approx(0.5)
    assert hi - lo > 1.8 * (fhi - flo)  # about sqrt(5) wider
    assert lo < 0.33 and hi > 0.67


def test_paired_constraint_gain_is_paired_and_weights_constraints():
    # 40 prompts of mixed difficulty: easy ones (both meet everything), hard ones (neither meets anything);
    # the model gains one constraint on 4 prompts of 2 constraints each: +4/80 = +0.05 of all constraints
    base = [{"prompt_id": f"e{i}", "met": [True, True]} for i in range(20)]
    base += [{"prompt_id": f"h{i}", "met": [False, False]} for i in range(20)]
    model = [dict(r) for r in base]
    for i in range(4):
        model[20 + i] = {"prompt_id": f"h{i}", "met": [True, False]}
    gain, (lo, hi) = paired_constraint_gain(model, base, resamples=2000, seed=0)
    assert gain == pytest.approx(0.05)
    # paired: the easy/hard spread is shared and cancels, so the interval stays above 0 (each model's own
    # accuracy moves by about 0.08 between resamples, more than the gain)
    assert 0 < lo < gain < hi
    # a second sample per prompt counts; rows of prompts the base did not answer are left out
    more = model + [{"prompt_id": "h0", "met": [False, False]}, {"prompt_id": "x", "met": [True]}]
    gain2, _ = paired_constraint_gain(more, base, resamples=200, seed=0)
    assert gain2 == pytest.approx(44 / 82 - 40 / 80)  # the model: 40 + 4 met of 80 + 2; the base: 40 of 80
    # no gain: identical answers give exactly 0 with a zero-width interval
    assert paired_constraint_gain(base, base, resamples=200, seed=0) == (0.0, [0.0, 0.0])
    assert math.isnan(paired_constraint_gain(model, [], resamples=100, seed=0)[0])


def test_collapse_signals_see_repetition_and_kl():
    rows = [{"prompt_id": "p", "text": "the the the the", "num_tokens": 4, "truncated": True, "logp_model": -1.0,
             "logp_base": -3.0} for _ in range(2)]
    s = collapse_signals(rows)
    assert s["self_similarity"] == 1.0 and s["distinct_2"] == pytest.approx(1 / 6)
    assert s["kl_to_base"] == pytest.approx(2.0) and s["truncated_share"] == 1.0 and s["std_tokens"] == 0.0


def test_judge_set_accuracy_counts_ties_and_failures_as_half():
    assert judge_set_accuracy([0.9, 0.2, 0.5, math.nan, 0.51]) == pytest.approx((1 + 0 + 0.5 + 0.5 + 1) / 5)
    assert math.isnan(judge_set_accuracy([]))


def test_the_evaluation_judge_is_the_more_accurate_pointwise_one_by_default():
    assert recipe_from_dict({}).eval.judge_mode == "pointwise"


def test_judge_accuracy_is_measured_on_the_labelled_pairs_and_cached(tiny_model, tmp_path, monkeypatch):
    """The accuracy is the share of the 126 pairs whose better answer the judge prefers, from its own verdicts."""
    recipe = recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out", eval=EVAL))
    ev = evaluate.Evaluator(RunContext(recipe))
    planted = [0.9 if i % 3 else 0.1 for i in range(126)]  # a judge right on 2 pairs of 3
    calls = []

    def judge_candidates(judge, constitution, prompts, candidates, principles, seed):
        calls.append((len(prompts), len(candidates)))
        assert [c["text"] for c in candidates[:2]] == [evaluate.load_judge_set()[0][k] for k in ("better", "worse")]
        return [{"prompt_id": p["id"], "i": 0, "j": 1, "p_i": q} for p, q in zip(prompts, planted)]

    monkeypatch.setattr(evaluate, "judge_candidates", judge_candidates)
    first = ev.judge_accuracy()
    assert first == {"accuracy": pytest.approx(84 / 126), "pairs": 126, "set": "rlaif/data/judge_set.jsonl"}
    assert ev.judge_accuracy() == first and calls == [(126, 252)]  # cached: measured once


def test_safeguard_rules_name_the_numbers_that_broke_them():
    base = {"distinct_2": 0.8, "mean_tokens": 40.0, "if_constraint_accuracy": 0.6}
    healthy = {"distinct_2": 0.75, "mean_tokens": 44.0, "if_constraint_accuracy": 0.55, "win_rate_vs_previous": 0.5,
               "kl_to_base": 0.1, "previous": "round_001"}
    cfg = SafeguardsConfig(min_win_rate_vs_previous=0.4, max_diversity_drop=0.2, max_length_drift=0.25,
                           max_instruction_drop=0.1, max_kl=1.0)
    assert broken_rules(cfg, healthy, base) == []
    collapsed = {**healthy, "distinct_2": 0.4, "mean_tokens": 60.0, "if_constraint_accuracy": 0.3,
                 "win_rate_vs_previous": 0.2, "kl_to_base": 2.5}
    reasons = broken_rules(cfg, collapsed, base)
    assert len(reasons) == 5
    assert "distinct-2 0.400 is 50% below" in reasons[1] and "+50%" in reasons[2] and "round_001 0.20" in reasons[0]
    assert broken_rules(SafeguardsConfig(), collapsed, base) == []  # no rule set: nothing breaks


# ---------------------------------------------------------------- the eval command and the loop


EVAL = {"instructions": "none", "heldout_prompts": 6, "samples": 2, "bootstrap": 200, "judge_mode": "pairwise"}


@pytest.fixture(scope="module")
def evaluated_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    recipe = tiny_recipe(tiny_model, tmp / "out", eval={**EVAL, "each_round": True})
    assert main(["run", str(write_recipe(tmp / "r.yaml", recipe))]) == 0
    return tmp / "out"


def test_each_round_is_evaluated_against_base_and_previous(evaluated_run):
    out = evaluated_run
    for n in (1, 2):
        ev = read_json(out / f"round_{n:03d}/eval.json")
        assert ev["model"]["name"] == f"round_{n:03d}" and ev["base"]["name"] == "base"
        assert 0 <= ev["model"]["win_rate_vs_base"] <= 1 and ev["model"]["win_rate_vs_base_ci"][0] <= ev["model"]["win_rate_vs_base"]
        assert read_json(out / f"round_{n:03d}/metrics.json")["evaluate"]["model"]["name"] == f"round_{n:03d}"
    assert read_json(out / "round_002/eval.json")["model"]["previous"] == "round_001"
    heldout = {r["prompt_id"] for r in read_jsonl(out / "eval/responses/base.jsonl")}
    trained = {p["id"] for n in (1, 2) for p in read_jsonl(out / f"round_{n:03d}/prompts.jsonl")}
    assert len(heldout) == 6 and not heldout & trained, "evaluation prompts are never training prompts"
    h2h = read_jsonl(out / "eval/comparisons/round_002_vs_round_001.jsonl")
    assert len(h2h) == 12  # every sample: 6 prompts x 2 samples, sample i against sample i
    assert sorted((c["prompt_id"], c["sample"]) for c in h2h) == sorted((p, i) for p in heldout for i in (0, 1))
    for c in h2h:  # both orders judged; p is P(round 2 wins) averaged over them
        assert c["p"] == pytest.approx((c["p_a_ij"] + 1 - c["p_a_ji"]) / 2)
    assert read_json(out / "result.json") == {
        "status": "completed", "reason": None, "stopped_after_round": None, "best_round": 2,
        "adapter": "round_002/adapter", "rounds_completed": 2, "rounds_without_pairs": [],
    }


def test_eval_command_prints_the_table_and_reuses_cached_work(evaluated_run, capsys, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in (evaluated_run / "eval").rglob("*.jsonl")}

    def no_generation(*args, **kwargs):
        raise AssertionError("cached responses must be reused")

    monkeypatch.setattr(evaluate, "sample_responses", no_generation)
    assert main(["eval", str(evaluated_run)]) == 0
    table = capsys.readouterr().out
    for name in ("base", "round_001", "round_002"):
        assert name in table
    assert "win vs base" in table and "6 held-out prompts x2 samples" in table
    judge = read_json(evaluated_run / "eval/judge_accuracy.json")["accuracy"]
    assert judge["pairs"] == 126 and f"judge acc {judge['accuracy']:.2f}" in table.splitlines()[0]
    assert f"accuracy {judge['accuracy']:.2f} on 126 labelled pairs" in table
    results = read_json(evaluated_run / "eval/results.json")
    assert [m["name"] for m in results["models"]] == ["base", "round_001", "round_002"]
    assert {p: p.stat().st_mtime_ns for p in (evaluated_run / "eval").rglob("*.jsonl")} == before
    r2 = results["models"][2]
    assert r2 == {**r2, **read_json(evaluated_run / "round_002/eval.json")["model"]}


def test_eval_of_an_outside_adapter_and_bad_targets(evaluated_run, tmp_path, capsys):
    assert main(["eval", str(evaluated_run), "--adapter", str(evaluated_run / "round_001/adapter")]) == 0
    names = [m["name"] for m in read_json(evaluated_run / "eval/results.json")["models"]]
    assert names[0] == "base" and names[1].startswith("adapter_") and len(names) == 2
    capsys.readouterr()
    for argv, msg in (
        (["eval", str(tmp_path)], "not a run folder"),
        (["eval", str(evaluated_run), "--rounds", "7"], "no adapter for round(s) [7]"),
        (["eval", str(evaluated_run), "--adapter", str(tmp_path)], "not a LoRA adapter folder"),
        (["eval", str(evaluated_run), "--set", "dpo.beta=0.2"], "only takes eval.* settings"),
        (["eval", str(evaluated_run), "--set", "eval.judge_model=policy"], "must not move"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err, (argv, err)


def test_planted_collapse_stops_the_loop_and_keeps_round_one(tiny_model, tmp_path, monkeypatch, capsys):
    """Round 2's held-out answers are planted to collapse (the same repetitive text, run to the token
    limit): the diversity rule stops the run after round 2 and the result is round 1's adapter."""
    real = evaluate.sample_responses

    def planted(model, tokenizer, prompts, cfg, seed, model_name, set_name):
        rows = real(model, tokenizer, prompts, cfg, seed, model_name, set_name)
        if model_name == "round_002":
            for r in rows:
                r.update(text=" ".join(["great"] * cfg.max_new_tokens), num_tokens=cfg.max_new_tokens, truncated=True)
        return rows

    monkeypatch.setattr(evaluate, "sample_responses", planted)
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 3}, eval=EVAL,
                         safeguards={"max_diversity_drop": 0.5})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path)]) == 3
    out = capsys.readouterr().out
    assert "stopped after round 2 by a safeguard: distinct-2" in out and "round_001/adapter" in out
    result = read_json(tmp_path / "out/result.json")
    assert result["status"] == "stopped" and result["stopped_after_round"] == 2
    assert result["best_round"] == 1 and result["adapter"] == "round_001/adapter"
    assert "below the base's" in result["reason"]
    r2 = read_json(tmp_path / "out/round_002/eval.json")["model"]
    assert r2["self_similarity"] == 1.0 and r2["distinct_2"] < 0.1
    assert (tmp_path / "out/round_002/adapter/adapter_config.json").is_file(), "the collapsed round is kept"
    assert not (tmp_path / "out/round_003").exists()
    # running again stops again at once; loosening the rule continues where it left off
    assert main(["run", str(path)]) == 3 and not (tmp_path / "out/round_003").exists()
    assert main(["run", str(path), "--set", "safeguards.max_diversity_drop=1.0"]) == 0
    assert read_json(tmp_path / "out/result.json")["best_round"] == 3


def test_eval_config_errors(tiny_model, tmp_path, capsys):
    for section, msg in (
        ({"eval": {"judge_model": "policy"}}, "eval.judge_model cannot be `policy`"),
        ({"eval": {"samples": 0}}, "eval.samples must be at least 1"),
        ({"eval": {"instructions": str(tmp_path / "missing.jsonl")}}, "eval.instructions file not found"),
        ({"safeguards": {"min_win_rate_vs_previous": 1.5}}, "must be in [0, 1]"),
        ({"safeguards": {"max_length_drift": -0.1}}, "must be 0 or more"),
        ({"safeguards": {"max_instruction_drop": 0.1}, "eval": {"instructions": "none"}}, "needs instruction prompts"),
    ):
        recipe = tiny_recipe(tiny_model, tmp_path / "out", **section)
        assert main(["validate", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
        assert msg in capsys.readouterr().err, section
    assert not (tmp_path / "out").exists()


def test_no_heldout_split_is_a_clear_error(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(6)))
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, eval=EVAL,
                         prompts={"source": "file", "path": str(prompts), "per_round": 2})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    assert main(["eval", str(tmp_path / "out")]) == 2
    assert "held-out split is empty" in capsys.readouterr().err


def test_constraint_gain_over_the_base_is_paired_by_prompt(evaluated_run, capsys):
    sets = ["--set", "eval.instructions=bundled", "--set", "eval.instruction_prompts=6",
            "--set", "eval.instruction_samples=2"]
    assert main(["eval", str(evaluated_run), "--rounds", "2", *sets]) == 0
    table = capsys.readouterr().out
    assert "IF gain vs base [paired 95% CI]" in table and "6 instruction prompts x2" in table
    results = read_json(evaluated_run / "eval/results.json")
    base, r2 = results["models"]
    assert "if_constraint_gain_vs_base" not in base
    rows = {m: [r for r in read_jsonl(evaluated_run / f"eval/responses/{m}.jsonl") if r["set"] == "instructions"]
            for m in ("base", "round_002")}
    assert all(len(v) == 12 for v in rows.values()), "6 prompts x 2 samples"
    met = {m: [x for r in v for x in r["met"]] for m, v in rows.items()}
    assert r2["if_constraint_gain_vs_base"] == pytest.approx(
        sum(met["round_002"]) / len(met["round_002"]) - sum(met["base"]) / len(met["base"]))
    lo, hi = r2["if_constraint_gain_vs_base_ci"]
    assert lo <= r2["if_constraint_gain_vs_base"] <= hi
