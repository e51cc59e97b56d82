"""`rlaif report`, the report library, `judge_pair`, and the three notebooks, on a real 2-round tiny run.

The evaluation (``RUN/eval/``) is fabricated by :func:`fabricate_eval` to the schema ``rlaif eval``
writes, so these tests do not depend on the evaluator.
"""

import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_recipe, write_recipe
from PIL import Image

from rlaif.cli import main
from rlaif.reporting import loaders, markdown, plots
from rlaif.reporting.fmt import fmt
from rlaif.rundir import read_jsonl, write_json, write_jsonl

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHARTS_WITH_EVAL = ["collapse", "instruction_following", "margins", "position_bias", "training", "win_rate"]


def fabricate_eval(run: Path, rounds: int = 2) -> dict:
    """``RUN/eval/results.json``, responses and comparisons as ``rlaif eval`` writes them (made-up numbers)."""
    prompts = read_jsonl(run / "round_001/prompts.jsonl")
    models = []
    for r in range(rounds + 1):
        name = "base" if r == 0 else f"round_{r:03d}"
        win = None if r == 0 else 0.5 + 0.05 * r
        ci = None if r == 0 else [round(win - 0.12, 2), round(win + 0.12, 2)]
        models.append({
            "name": name, "round": r, "adapter": None if r == 0 else f"{name}/adapter",
            "win_rate_vs_base": win, "win_rate_vs_base_ci": ci, "win_rate_vs_previous": win,
            "win_rate_vs_previous_ci": ci, "if_prompt_accuracy": 0.1 + 0.05 * r,
            "if_constraint_accuracy": 0.3 + 0.05 * r, "distinct_1": 0.41 - 0.05 * r, "distinct_2": 0.78 - 0.05 * r,
            "self_similarity": 0.05 + 0.05 * r, "mean_tokens": 51.2 + 3 * r, "std_tokens": 12.0,
            "truncated_share": 0.6, "kl_to_base": 0.1 * r,
        })
        rows = []
        for k, p in enumerate(prompts):
            rows.append({"set": "heldout", "prompt_id": p["id"], "prompt": p["prompt"], "text": f"answer {r}.{k}",
                         "num_tokens": 3, "truncated": False, "logp_model": -3.0, "logp_base": -3.1})
            rows.append({"set": "instructions", "prompt_id": f"if{k}", "prompt": "Answer in one word: " + p["prompt"],
                         "text": "Yes", "num_tokens": 1, "truncated": False, "logp_model": -1.0, "logp_base": -1.0,
                         "constraints": ["one_word"], "met": [k % 2 == 0]})
        write_jsonl(run / "eval/responses" / f"{name}.jsonl", rows)
        for other in (["base"] if r else []) + ([f"round_{r - 1:03d}"] if r > 1 else []):
            write_jsonl(run / "eval/comparisons" / f"{name}_vs_{other}.jsonl",
                        [{"prompt_id": p["id"], "p_a_ij": 0.6, "p_a_ji": 0.5, "p": 0.55, "agree": True} for p in prompts])
    results = {"rlaif": "eval results", "judge": {"model": "base", "mode": "pairwise"},
               "heldout_prompts": len(prompts), "instruction_prompts": len(prompts), "models": models}
    write_json(run / "eval/results.json", results)
    return results


def digest(root: Path, skip: tuple[str, ...] = ("report",)) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock" and not set(skip) & set(p.parts)}


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """(evaluated run, the same run never evaluated): 2 DPO rounds with the pairwise judge."""
    tmp = tmp_path_factory.mktemp("report")
    recipe = tiny_recipe(tiny_model, tmp / "run", judge={"mode": "pairwise"}, dpo={"num_train_epochs": 1})
    assert main(["run", str(write_recipe(tmp / "recipe.yaml", recipe))]) == 0
    shutil.copytree(tmp / "run", tmp / "noeval")
    (tmp / "noeval/result.json").unlink()  # as if stopped before the loop wrote it
    fabricate_eval(tmp / "run")
    return tmp / "run", tmp / "noeval"


def test_report_writes_every_chart_and_both_tables(runs, capsys):
    run, _ = runs
    before = digest(run)
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    out = run / "report"
    assert printed == [str(out / "report.md")] + [str(out / f"{c}.png") for c in CHARTS_WITH_EVAL]
    for chart in CHARTS_WITH_EVAL:
        with Image.open(out / f"{chart}.png") as img:
            img.verify()
    assert digest(run) == before, "a report never touches the run's own artifacts"
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| 1 | yes |") for line in rows) and any(line.startswith("| 2 | yes |") for line in rows)
    assert "| base | 0 | – |" in md
    assert "| round_001 | 1 | 0.55 [0.43, 0.67] |" in md and "| round_002 | 2 | 0.60 [0.48, 0.72] |" in md
    assert "**completed**" in md and "best round: 2 (adapter `round_002/adapter`)" in md
    for chart in CHARTS_WITH_EVAL:
        assert f"]({chart}.png)" in md
    assert md.count("What to look at:") == len(CHARTS_WITH_EVAL)
    assert "rlaif eval" not in md


def test_report_without_eval_says_how_to_get_it(runs, capsys):
    _, run = runs
    assert main(["report", str(run)]) == 0
    out = run / "report"
    assert sorted(p.stem for p in out.glob("*.png")) == ["collapse", "margins", "position_bias", "training"]
    md = (out / "report.md").read_text()
    assert f"rlaif eval {run}" in md and "No `result.json`" in md
    assert "| 2 | yes |" in md
    assert loaders.eval_table(run) is None and loaders.eval_responses(run) is None


@pytest.mark.parametrize("where", ["empty", "missing", "round"])
def test_report_on_a_folder_that_is_no_run_fails_cleanly(runs, tmp_path, capsys, where):
    target = {"empty": tmp_path, "missing": tmp_path / "nope", "round": runs[1] / "round_001"}[where]
    if where == "empty":
        (tmp_path / "notes.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*")), digest(runs[1], skip=())
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and "manifest.json" in err
    assert (sorted(p.name for p in tmp_path.rglob("*")), digest(runs[1], skip=())) == before


def test_report_of_an_rl_run_draws_reward_not_verdicts(tmp_path):
    """GRPO/RLOO rounds have prompts + train only: reward and KL instead of verdicts and pairs (files as rl.py writes)."""
    run = tmp_path / "grpo"
    write_json(run / "manifest.json", {"recipe_file": "recipes/grpo_cpu.yaml", "rounds": {"1": {}, "2": {}},
                                       "recipe": {"train": {"method": "grpo"}, "judge": {"mode": "pointwise"}}})
    for n in (1, 2):
        write_json(run / f"round_{n:03d}/state.json", {"completed": ["prompts", "train"]})
        write_json(run / f"round_{n:03d}/metrics.json", {"prompts": {"selected": 4, "seconds": 0.1}, "train": {
            "method": "grpo", "reward_mean": 0.1 * n, "reward_std": 0.05, "kl": 0.01 * n, "clip_fraction": 0.0,
            "zero_signal_share": 0.25, "truncated_share": 1.0, "completion_mean_length": 8.0, "seconds": 1.0}})
        write_jsonl(run / f"round_{n:03d}/train_log.jsonl",
                    [{"loss": 0.0, "reward": 0.1 * n + 0.01 * s, "kl": 0.0, "step": s} for s in (1, 2)]
                    + [{"train_loss": 0.0, "step": 2}])
        write_jsonl(run / f"round_{n:03d}/completions.jsonl",
                    [{"step": 0, "call": 1, "prompt_id": "p1", "completion": c, "text": "x", "reward": 0.1,
                      "mean_win": 0.5, "truncated": True} for c in (0, 1)])
    (run / "round_001/adapter").mkdir()  # the result names it: it must hold an adapter's files
    write_json(run / "round_001/adapter/adapter_config.json", {})
    (run / "round_001/adapter/adapter_model.safetensors").write_bytes(b"")
    write_json(run / "result.json", {"status": "stopped", "reason": "win rate vs previous 0.31 < 0.4",
                                     "stopped_after_round": 2, "best_round": 1, "adapter": "round_001/adapter",
                                     "rounds_completed": 2})
    path = markdown.write_report(run)
    assert sorted(p.stem for p in path.parent.glob("*.png")) == ["collapse", "training"]
    md = path.read_text()
    assert "**stopped** (win rate vs previous 0.31 < 0.4, after round 2)" in md
    assert "best round: 1 (adapter `round_001/adapter`)" in md
    assert "| round | complete | reward mean ± std | KL |" in md and "| 2 | yes | 0.2 ± 0.05 | 0.02 |" in md
    assert "GRPO/RLOO judge inside training" in md and "rlaif eval" in md
    assert list(loaders.train_log(run)["global_step"]) == [1, 2, 3, 4]
    rnd = loaders.load_round(run, 1)
    assert rnd.verdicts.empty and list(rnd.candidates["reward"]) == [0.1, 0.1]


def test_loaders_join_ranks_pairs_and_eval(runs):
    run, _ = runs
    rnd = loaders.load_round(run, 1)
    c, pairs = rnd.candidates, read_jsonl(run / "round_001/pairs.jsonl")
    assert len(c) == 12 and {"prompt", "rank", "strength", "mean_win", "chosen", "rejected"} <= set(c.columns)
    for p in pairs:
        rows = c[c["prompt_id"] == p["prompt_id"]].set_index("candidate")
        assert rows.loc[p["chosen_candidate"], "chosen"] and rows.loc[p["rejected_candidate"], "rejected"]
        assert rows.loc[p["chosen_candidate"], "text"] == p["chosen"]
        assert rows.loc[p["chosen_candidate"], "rank"] == 0  # best vs worst
    assert c["chosen"].sum() == len(pairs)
    assert len(rnd.verdicts) == 12 and (rnd.verdicts["round"] == 1).all() and rnd.metrics["judge"]["mode"] == "pairwise"
    table = loaders.round_table(run)
    assert list(table["round"]) == [1, 2] and table["complete"].all()
    assert (table["train.reward_margin_after"] > table["train.reward_margin_before"]).all()
    assert "train.reward_mean" not in table  # DPO run: no RL columns
    evals = loaders.eval_table(run)
    assert list(evals["name"]) == ["base", "round_001", "round_002"]
    assert math.isnan(evals.loc[0, "win_rate_vs_base_lo"]) and evals.loc[1, "win_rate_vs_base_hi"] == 0.67
    assert set(loaders.eval_responses(run)["model"]) == {"base", "round_001", "round_002"}
    assert len(loaders.eval_comparisons(run)) == 3 * 4
    assert loaders.train_log(run)["global_step"].is_monotonic_increasing


def test_pointwise_verdicts_plot_score_distribution():
    v = pd.DataFrame({"round": [1, 1], "prompt_id": ["p", "p"], "i": [0, 0], "j": [1, 2], "score_i": [2.0, 2.0],
                      "score_j": [3.0, 1.0], "p_i": [0.4, 0.6], "p_a_ij": [math.nan] * 2, "p_a_ji": [math.nan] * 2,
                      "p_first": [math.nan] * 2, "failed": [False, False]})
    fig = plots.plot_position_bias(v)
    assert fig.axes[0].get_title() == "Pointwise judge: score distribution"
    assert fig.axes[0].patches  # the histogram is drawn


def test_an_outside_adapter_is_tabled_but_not_plotted(tmp_path):
    """`rlaif eval RUN --adapter DIR` evaluates a model that is no round of the run (round None)."""
    write_json(tmp_path / "manifest.json", {"recipe": {}})
    none = {"win_rate_vs_base": None, "win_rate_vs_base_ci": None, "win_rate_vs_previous": None,
            "win_rate_vs_previous_ci": None, "if_prompt_accuracy": None, "mean_tokens": 5.0}
    write_json(tmp_path / "eval/results.json", {"models": [
        {"name": "base", "round": 0, "adapter": None, **none},
        {"name": "adapter_89fca6cc", "round": None, "adapter": "/elsewhere", **none,
         "win_rate_vs_base": 0.6, "win_rate_vs_base_ci": [0.5, 0.7]}]})
    evals = loaders.eval_table(tmp_path)
    assert list(evals["name"]) == ["base", "adapter_89fca6cc"] and evals.loc[1, "win_rate_vs_base_hi"] == 0.7
    assert plots.plot_win_rates(evals).axes[0].texts[0].get_text() == "no evaluated rounds"
    assert list(plots.collapse_frame(evals)["round"]) == [0]
    md = markdown.write_report(tmp_path).read_text()
    assert "| adapter_89fca6cc | – | 0.60 [0.50, 0.70] | – |" in md and "No rounds yet." in md


def test_loaders_leave_matplotlib_and_fmt_leaves_pandas_unimported():
    code = "import sys, rlaif, rlaif.cli, rlaif.reporting.loaders; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    code = ("import sys, rlaif.reporting.fmt; "
            "assert not {'pandas', 'matplotlib', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_fmt_is_the_one_number_format():
    assert [fmt(None), fmt(math.nan), fmt(np.float32("nan")), fmt(np.float64(0.125), ".2f")] == ["–", "–", "–", "0.12"]
    assert [fmt(True), fmt(np.bool_(False)), fmt(3, ".0f"), fmt(0.0412, ".3g"), fmt("dpo")] == ["yes", "no", "3", "0.0412", "dpo"]


def test_judge_pair_returns_both_orders(tiny_model):
    from rlaif.judging.judges import judge_pair
    from rlaif.models import load_model, load_tokenizer

    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    v = judge_pair(model, tok, "What is 2+2?", "4", "It is five.", principle="Prefer the correct sum.")
    assert v["principle"] == "Prefer the correct sum." and v["principle_id"] == "custom"
    for key in ("p_a_ij", "p_a_ji", "p_i", "p_first", "label_mass"):
        assert math.isfinite(v[key]) and 0 <= v[key] <= 1, key
    assert v["p_i"] == pytest.approx((v["p_a_ij"] + 1 - v["p_a_ji"]) / 2)
    assert v["p_i"] == pytest.approx((v["order_ab"] + v["order_ba"]) / 2)
    assert v["winner"] == ("a" if v["p_i"] > 0.5 else "b")
    swapped = judge_pair(model, tok, "What is 2+2?", "It is five.", "4", principle="Prefer the correct sum.")
    assert swapped["p_a_ij"] == pytest.approx(v["p_a_ji"], abs=1e-5)  # the same two views, roles exchanged
    assert judge_pair(model, tok, "What is 2+2?", "4", "5", principle="honest")["principle"].startswith("Choose")
    scored = judge_pair(model, tok, "What is 2+2?", "4", "It is five.", mode="pointwise")
    assert math.isfinite(scored["score_a"]) and math.isfinite(scored["p_i"]) and len(scored["probs_a"]) == 6
    assert plots.plot_pair(v).axes and plots.plot_pair(scored).axes


def test_notebooks_run_end_to_end(runs, tiny_model, monkeypatch):
    """All three notebooks, executed at once (one kernel each) on the tiny run and the tiny model."""
    import asyncio

    import nbformat
    from nbclient import NotebookClient

    assert [p.name for p in NOTEBOOKS] == ["01_explore_run.ipynb", "02_rounds_and_collapse.ipynb",
                                           "03_judge_your_own_pair.ipynb"]
    notebooks = {p.stem: nbformat.read(p, as_version=4) for p in NOTEBOOKS}
    for name, nb in notebooks.items():
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
            f"{name}: commit notebooks without outputs"
        nb.cells.append(nbformat.v4.new_code_cell("import sys, rlaif; print(sys.executable); print(rlaif.__file__)"))
    monkeypatch.setenv("RLAIF_RUN", str(runs[0]))
    monkeypatch.setenv("RLAIF_MODEL", tiny_model)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's rlaif

    async def execute_all():
        clients = [NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}})
                   for nb in notebooks.values()]
        return await asyncio.gather(*(c.async_execute() for c in clients), return_exceptions=True)

    results = dict(zip(notebooks, asyncio.run(execute_all())))
    failed = {name: str(r)[-2000:] for name, r in results.items() if isinstance(r, BaseException)}
    assert not failed, failed
    for name, nb in notebooks.items():
        outputs = [o for c in nb.cells for o in c.get("outputs", [])]
        assert any(o["output_type"] == "display_data" and "image/png" in o["data"] for o in outputs), f"{name}: no chart"
        executable, module = nb.cells[-1]["outputs"][0]["text"].split()
        assert Path(executable).resolve() == Path(sys.executable).resolve(), f"{name}: kernel runs {executable}"
        assert Path(module).resolve() == (REPO / "rlaif/__init__.py").resolve(), f"{name}: imported {module}"
