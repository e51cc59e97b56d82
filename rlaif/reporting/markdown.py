"""``rlaif report RUN``: ``RUN/report/report.md`` with its tables and the charts of
:mod:`rlaif.reporting.plots` (``RUN/report/*.png``).

The report needs only what the run has: it says what is missing and which command makes it.
Nothing under ``RUN/round_*`` is ever written.
"""

import io
from pathlib import Path

import pandas as pd

from rlaif.reporting.fmt import MISSING, fmt
from rlaif.reporting.loaders import (
    EVAL_COMMAND,
    eval_results,
    eval_table,
    load_verdicts,
    open_run,
    round_table,
    run_result,
    train_log,
)
from rlaif.reporting.plots import (
    is_pointwise,
    plot_collapse,
    plot_instruction_following,
    plot_margins,
    plot_position_bias,
    plot_training,
    plot_win_rates,
)
from rlaif.rundir import read_json, write_bytes_atomic


def _ci(row, key: str) -> str:
    if pd.isna(row.get(key)):
        return MISSING
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return fmt(row[key]) + ("" if pd.isna(lo) or pd.isna(hi) else f" [{fmt(lo)}, {fmt(hi)}]")


def _table(df: pd.DataFrame, columns: list[tuple[str, str, object]]) -> list[str]:
    """Markdown table; columns (header, needed column, row -> cell), kept only where the column exists."""
    cols = [(h, f) for h, need, f in columns if need is None or need in df]
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(f(row) for _, f in cols) + " |")
    return lines


def _g(key, spec=".2f"):
    return lambda row: fmt(row.get(key), spec)


ROUND_COLUMNS = [
    ("round", "round", _g("round", ".0f")),
    ("complete", "complete", _g("complete")),
    ("pairs kept / dropped", "pairs.kept", lambda r: f"{fmt(r.get('pairs.kept'), '.0f')} / {fmt(r.get('pairs.dropped'), '.0f')}"),
    ("mean tokens", "generate.mean_tokens", _g("generate.mean_tokens", ".1f")),
    ("truncated", "generate.truncated_share", _g("generate.truncated_share")),
    ("KL est.", "generate.kl_to_base_estimate", _g("generate.kl_to_base_estimate", ".3g")),
    ("judge margin", "judge.mean_margin", _g("judge.mean_margin", ".3g")),
    ("order agreement", "judge.order_agreement", _g("judge.order_agreement")),
    ("P(first)", "judge.position_bias_p_first", _g("judge.position_bias_p_first")),
    ("length corr", "judge.length_corr", _g("judge.length_corr")),
    ("verifier agreement", "judge.verifier_agreement", _g("judge.verifier_agreement")),
    ("constraints met", "judge.constraints_met_share", _g("judge.constraints_met_share")),
    ("DPO margin before → after", "train.reward_margin_before",
     lambda r: f"{fmt(r.get('train.reward_margin_before'), '.3g')} → {fmt(r.get('train.reward_margin_after'), '.3g')}"),
    ("reward mean ± std", "train.reward_mean",
     lambda r: f"{fmt(r.get('train.reward_mean'), '.3g')} ± {fmt(r.get('train.reward_std'), '.3g')}"),
    ("KL", "train.kl", _g("train.kl", ".3g")),
    ("clip fraction", "train.clip_fraction", _g("train.clip_fraction", ".3f")),
    ("zero-signal groups", "train.zero_signal_share", _g("train.zero_signal_share")),
    ("truncated (train)", "train.completion_mean_length", _g("train.truncated_share")),
    ("seconds", "seconds", _g("seconds", ".0f")),
]

EVAL_COLUMNS = [
    ("model", "name", _g("name")),
    ("round", "round", _g("round", ".0f")),
    ("win vs base [CI]", "win_rate_vs_base", lambda r: _ci(r, "win_rate_vs_base")),
    ("win vs previous [CI]", "win_rate_vs_previous", lambda r: _ci(r, "win_rate_vs_previous")),
    ("IF prompts", "if_prompt_accuracy", _g("if_prompt_accuracy")),
    ("IF constraints", "if_constraint_accuracy", _g("if_constraint_accuracy")),
    ("IF gain vs base [paired CI]", "if_constraint_gain_vs_base", lambda r: _ci(r, "if_constraint_gain_vs_base")),
    ("distinct-1 / -2", "distinct_1", lambda r: f"{fmt(r.get('distinct_1'))} / {fmt(r.get('distinct_2'))}"),
    ("self-similarity", "self_similarity", _g("self_similarity")),
    ("tokens (mean ± std)", "mean_tokens", lambda r: f"{fmt(r.get('mean_tokens'), '.1f')} ± {fmt(r.get('std_tokens'), '.1f')}"),
    ("truncated", "truncated_share", _g("truncated_share")),
    ("KL to base", "kl_to_base", _g("kl_to_base", ".3g")),
]

LOOK_AT = {
    "margins": "Mass piled near 0 means the judge barely separates candidates, so the pairs carry little "
               "signal (raise `pairs.min_margin`, or use a larger judge).",
    "position_bias": "P(first) far from 0.5 and points off the diagonal mean the judge follows position, "
                     "not content; only the two-order average cancels it.",
    "scores": "Scores bunched in one spot mean the rubric does not discriminate between candidates; a shift "
              "between rounds means the policy, or the judge that is its own copy, changed.",
    "win_rate": "A round is a real improvement when its win rate vs base is above 0.5 with the whole CI clear of "
                "0.5; vs previous shows whether the latest round still helped.",
    "instruction_following": "Should rise or hold; a drop means preference training traded instruction following "
                             "for the judge's taste.",
    "collapse": "Falling distinct-n, rising self-similarity, lengths drifting to the limit (truncated share → 1) "
                "or a fast-growing KL are signs of collapse or of the policy gaming its own judge.",
    "training": "DPO: the margin after training should exceed the one before in every round (the adapter "
                "learned its pairs); RL: the reward should rise while KL stays small.",
}
TITLES = {"margins": "Verdict margins", "position_bias": "Position bias", "scores": "Judge scores (pointwise)",
          "win_rate": "Win rate",
          "instruction_following": "Instruction following", "collapse": "Collapse signals",
          "training": "Training"}


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())


def _status_lines(result: dict | None) -> list[str]:
    if result is None:
        return [("No `result.json`: the run has not finished (or predates it); `rlaif run RECIPE` continues it "
                "and writes it at the end.")]
    line = f"Status: **{result.get('status', '?')}**"
    if result.get("reason"):
        line += f" ({result['reason']}"
        line += f", after round {result['stopped_after_round']})" if result.get("stopped_after_round") else ")"
    best = result.get("best_round")
    line += f"; {result.get('rounds_completed', '?')} rounds completed; best round: "
    line += "the base model (0)" if best == 0 else f"{best}"
    if result.get("adapter"):
        line += f" (adapter `{result['adapter']}`)"
    return [line + "."]


def write_report(run: str | Path) -> Path:
    """Write ``RUN/report/report.md`` and its charts (``RUN/report/*.png``); returns the report's path.

    Charts need only what the run has: without ``RUN/eval/results.json`` the win-rate and
    instruction-following charts are left out (the report says to run ``rlaif eval RUN``) and the
    collapse chart uses the training candidates; GRPO/RLOO runs have no verdict charts.
    """
    rd = open_run(run)
    out = rd.root / "report"
    manifest = read_json(rd.manifest_path)
    recipe = manifest.get("recipe", {})
    table, evals, result = round_table(run), eval_table(run), run_result(run)
    verdicts, log = load_verdicts(run), train_log(run)

    charts = {}
    if len(verdicts):
        charts["margins"] = plot_margins(verdicts)
        charts["scores" if is_pointwise(verdicts) else "position_bias"] = plot_position_bias(verdicts)
    if evals is not None:
        charts["win_rate"] = plot_win_rates(evals)
        charts["instruction_following"] = plot_instruction_following(evals)
    charts["collapse"] = plot_collapse(evals, table)
    charts["training"] = plot_training(table, log)
    for name, fig in charts.items():
        _save(fig, out / f"{name}.png")
    for name in set(TITLES) - set(charts):  # a chart an earlier report drew that this one cannot
        (out / f"{name}.png").unlink(missing_ok=True)

    method = recipe.get("train", {}).get("method", "dpo")
    judge = recipe.get("judge", {})
    lines = [f"# rlaif report: {rd.root.name}", "",
             (f"Run folder `{rd.root}`, recipe `{manifest.get('recipe_file')}`; model `{recipe.get('model', {}).get('source')}`, "
             f"{method.upper()}, {judge.get('mode', 'pairwise')} judge ({judge.get('model', 'policy')}), "
             f"{len(table)} of {recipe.get('run', {}).get('rounds', '?')} rounds present."), ""]
    lines += _status_lines(result) + ["", "## Rounds", ""]
    lines += _table(table, ROUND_COLUMNS) if len(table) else ["No rounds yet."]
    lines += ["", "## Evaluation", ""]
    if evals is None:
        lines.append(f"Not evaluated yet (no `eval/results.json`): run `{EVAL_COMMAND.format(run=rd.root)}` for win rates "
                     "against the base, instruction-following accuracy and diversity, then `rlaif report` again.")
    else:
        data = eval_results(run)
        j = data.get("judge") or {}
        lines.append(f"{data.get('heldout_prompts', '?')} held-out prompts, {data.get('instruction_prompts', '?')} "
                     f"instruction prompts; judge `{j.get('model', '?')}` ({j.get('mode', '?')}). Win rates are "
                     "P(model beats the other) with their confidence intervals.")
        lines += [""] + _table(evals, EVAL_COLUMNS)
    lines += ["", "## Charts", ""]
    if not len(verdicts):
        why = "GRPO/RLOO judge inside training" if method != "dpo" else "no round has been judged yet"
        lines += [f"No verdict charts: this run has no verdicts ({why}).", ""]
    for name in charts:
        lines += [f"### {TITLES[name]}", "", f"![{TITLES[name]}]({name}.png)", "", f"What to look at: {LOOK_AT[name]}", ""]
    path = out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).rstrip().encode() + b"\n")
    return path


def report_files(run: str | Path) -> list[Path]:
    """What ``write_report`` wrote: report.md first, then the charts."""
    out = open_run(run).root / "report"
    return [out / "report.md"] + sorted(out.glob("*.png"))
