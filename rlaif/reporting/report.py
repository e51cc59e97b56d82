"""Reports: a run folder's rounds and evaluation as tables, charts and one Markdown page.

Three layers, so a notebook can stop at any of them:

- **loaders** read the run folder into pandas DataFrames: :func:`load_round` (one round's candidates,
  joined with their rank and chosen/rejected flags, and its verdicts), :func:`round_table` (one row per
  round, each stage's headline metrics), :func:`eval_table` (one row per evaluated model, from
  ``RUN/eval/results.json``), :func:`train_log`, :func:`eval_responses`, :func:`eval_comparisons`;
- **plots** take those frames and return a matplotlib ``Figure`` (Agg canvas, no pyplot state);
- :func:`write_report` writes ``RUN/report/*.png`` and ``RUN/report/report.md`` (``rlaif report RUN``).

Everything copes with what a run lacks (no evaluation, no result.json, an RL run without verdicts):
it says what is missing and which command makes it. Nothing under ``RUN/round_*`` is ever written.
matplotlib is imported only when a chart is drawn.
"""

import io
import json
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from rlaif.errors import RlaifError
from rlaif.rundir import RunDir, read_json, read_jsonl, write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVAL_COMMAND = "rlaif eval {run}"
HEADLINE = {
    "generate": ("candidates", "mean_tokens", "std_tokens", "truncated_share", "empty_share", "kl_to_base_estimate"),
    "judge": ("mode", "mean_margin", "order_agreement", "position_bias_p_first", "intransitive_share", "length_corr",
              "longer_preferred", "label_mass", "failed_verdicts", "reference_agreement"),
    "pairs": ("kept", "dropped", "mean_margin_kept"),
    "train": ("method", "pairs", "steps", "loss_first", "loss_last", "reward_margin_before", "reward_margin_after",
              "reward_accuracy_after", "adapter_delta_norm", "reward_mean", "reward_std", "kl", "clip_fraction",
              "zero_signal_share", "truncated_share", "completion_mean_length"),
}
EVAL_CI = ("win_rate_vs_base", "win_rate_vs_previous")


# ---------------------------------------------------------------- loaders


def open_run(run: str | Path) -> RunDir:
    """The run folder, or an ``RlaifError`` naming the path if it is not one (no manifest.json)."""
    rd = RunDir(run)
    if not rd.manifest_path.is_file():
        raise RlaifError(f"{rd.root} is not an rlaif run folder (no manifest.json); "
                         "make one with `rlaif run RECIPE`")
    return rd


def rounds(run: str | Path) -> list[int]:
    """Round numbers that have a folder, in order."""
    rd = open_run(run)
    return sorted(int(p.name.split("_")[1]) for p in rd.root.glob("round_[0-9][0-9][0-9]") if p.is_dir())


def _jsonl(path: Path) -> pd.DataFrame:
    # read_jsonl (json.loads) accepts the NaN that verdict rows carry; pandas' reader may not
    return pd.DataFrame(read_jsonl(path)) if path.is_file() else pd.DataFrame()


class Round(NamedTuple):
    """One round's data: ``candidates`` (rank 0 = best, ``chosen``/``rejected`` flags), ``verdicts``, ``metrics``."""

    candidates: pd.DataFrame
    verdicts: pd.DataFrame
    metrics: dict


def load_round(run: str | Path, n: int) -> Round:
    """Round ``n``'s candidates joined with their prompt, ranking position and pair flags, and its verdicts.

    ``candidates`` columns: the candidate rows plus ``prompt``, ``rank`` (0 = ranked best),
    ``strength`` and ``mean_win`` (Bradley–Terry), ``chosen`` / ``rejected`` (in a kept training pair).
    GRPO/RLOO rounds have no candidates stage: ``candidates`` is then ``completions.jsonl`` (with its
    ``reward``) and ``verdicts`` is empty.
    """
    rd = open_run(run)
    if not rd.round_dir(n).is_dir():
        raise RlaifError(f"{rd.root} has no round {n} (rounds: {', '.join(map(str, rounds(run))) or 'none'})")
    prompts = {p["id"]: p["prompt"] for p in (read_jsonl(rd.path(n, "prompts.jsonl"))
                                               if rd.path(n, "prompts.jsonl").is_file() else [])}
    cands = _jsonl(rd.path(n, "candidates.jsonl"))
    if cands.empty and rd.path(n, "completions.jsonl").is_file():
        cands = _jsonl(rd.path(n, "completions.jsonl")).rename(columns={"completion": "candidate"})
    if not cands.empty:
        cands.insert(1, "prompt", cands["prompt_id"].map(prompts))
        cands.insert(0, "round", n)
        ranks = {}
        for r in read_jsonl(rd.path(n, "rankings.jsonl")) if rd.path(n, "rankings.jsonl").is_file() else []:
            for pos, c in enumerate(r["order"]):
                ranks[(r["prompt_id"], c)] = (pos, r["strength"][c], r["mean_win"][c])
        keys = list(zip(cands["prompt_id"], cands["candidate"]))
        nan3 = (math.nan, math.nan, math.nan)
        for k, col in enumerate(("rank", "strength", "mean_win")):
            if col not in cands:
                cands[col] = [ranks.get(key, nan3)[k] for key in keys]
        pairs = read_jsonl(rd.path(n, "pairs.jsonl")) if rd.path(n, "pairs.jsonl").is_file() else []
        chosen = {(p["prompt_id"], p.get("chosen_candidate")) for p in pairs}
        rejected = {(p["prompt_id"], p.get("rejected_candidate")) for p in pairs}
        cands["chosen"] = [key in chosen for key in keys]
        cands["rejected"] = [key in rejected for key in keys]
    verdicts = _jsonl(rd.path(n, "verdicts.jsonl"))
    if not verdicts.empty:
        verdicts.insert(0, "round", n)
    return Round(cands, verdicts, rd.metrics(n))


def load_verdicts(run: str | Path) -> pd.DataFrame:
    """Every round's verdicts in one frame, with a ``round`` column (empty for GRPO/RLOO runs)."""
    rd = open_run(run)
    frames = [_jsonl(rd.path(n, "verdicts.jsonl")).assign(round=n) for n in rounds(run)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def round_table(run: str | Path) -> pd.DataFrame:
    """One row per round: ``round``, ``complete``, ``seconds`` and each stage's headline metrics as
    ``stage.key`` columns (only keys some round has: a DPO run has no ``train.reward_mean``)."""
    rd = open_run(run)
    method = read_json(rd.manifest_path).get("recipe", {}).get("train", {}).get("method", "dpo")
    stages = ("prompts", "generate", "judge", "pairs", "train") if method == "dpo" else ("prompts", "train")
    rows = []
    for n in rounds(run):
        m = rd.metrics(n)
        row = {"round": n, "complete": all(rd.is_done(n, s) for s in stages),
               "seconds": sum(v.get("seconds", 0) for v in m.values() if isinstance(v, dict))}
        for stage, keys in HEADLINE.items():
            for k in keys:
                if k in m.get(stage, {}):
                    row[f"{stage}.{k}"] = m[stage][k]
        rows.append(row)
    return pd.DataFrame(rows)


def train_log(run: str | Path) -> pd.DataFrame:
    """TRL's per-step log history of every round (``round``, ``step``, ``global_step`` + TRL's keys)."""
    rd = open_run(run)
    frames, offset = [], 0
    for n in rounds(run):
        rows = [r for r in (read_jsonl(rd.path(n, "train_log.jsonl")) if rd.path(n, "train_log.jsonl").is_file() else [])
                if "loss" in r]  # the final summary row has train_loss, not loss
        if rows:
            f = pd.DataFrame(rows).assign(round=n)
            f["global_step"] = f["step"] + offset
            offset = int(f["global_step"].max())
            frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_eval(rd: RunDir) -> dict | None:
    path = rd.root / "eval" / "results.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RlaifError(f"{path} is not valid JSON ({exc}); redo it with `{EVAL_COMMAND.format(run=rd.root)}`") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise RlaifError(f"{path} has no 'models' list; redo it with `{EVAL_COMMAND.format(run=rd.root)}`")
    return data


def eval_results(run: str | Path) -> dict | None:
    """``RUN/eval/results.json`` as written by ``rlaif eval`` (None if the run was not evaluated)."""
    return _read_eval(open_run(run))


def eval_table(run: str | Path) -> pd.DataFrame | None:
    """One row per evaluated model (``name``, ``round``: 0 = base, metrics), or None without an evaluation.

    Each confidence interval ``X_ci`` becomes two columns ``X_lo`` and ``X_hi`` (NaN where absent).
    """
    data = eval_results(run)
    if data is None:
        return None
    rows = []
    for model in data["models"]:
        row = {k: v for k, v in model.items() if not k.endswith("_ci")}
        for key in EVAL_CI:
            ci = model.get(f"{key}_ci") or (None, None)
            row[f"{key}_lo"], row[f"{key}_hi"] = (math.nan if x is None else x for x in ci)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["name", "round"])
    return pd.DataFrame(rows).sort_values("round", kind="stable").reset_index(drop=True)


def eval_responses(run: str | Path) -> pd.DataFrame | None:
    """Every evaluated model's responses (``RUN/eval/responses/<name>.jsonl``) with a ``model`` column."""
    folder = open_run(run).root / "eval" / "responses"
    frames = [_jsonl(p).assign(model=p.stem) for p in sorted(folder.glob("*.jsonl"))]
    return pd.concat(frames, ignore_index=True) if frames else None


def eval_comparisons(run: str | Path) -> pd.DataFrame | None:
    """Head-to-head verdicts (``RUN/eval/comparisons/<model>_vs_<other>.jsonl``), ``p`` = P(model wins)."""
    folder = open_run(run).root / "eval" / "comparisons"
    frames = []
    for p in sorted(folder.glob("*_vs_*.jsonl")):
        model, other = p.stem.split("_vs_", 1)
        frames.append(_jsonl(p).assign(model=model, other=other))
    return pd.concat(frames, ignore_index=True) if frames else None


def run_result(run: str | Path) -> dict | None:
    """``RUN/result.json`` (status, reason, best round) as written by ``rlaif run``; None if absent."""
    path = open_run(run).root / "result.json"
    return read_json(path) if path.is_file() else None


# ---------------------------------------------------------------- plots


def _figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, list(axes)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _is_pointwise(verdicts: pd.DataFrame) -> bool:
    return "score_i" in verdicts and verdicts["score_i"].notna().any()


def plot_margins(verdicts: pd.DataFrame) -> "Figure":
    """Histogram of verdict margins |P(i better) − 0.5|, one outline per round (``round`` column)."""
    fig, (ax,) = _figure()
    ok = verdicts[~verdicts["failed"].astype(bool)] if len(verdicts) else verdicts
    if ok.empty:
        _empty(ax, "no verdicts (GRPO/RLOO runs judge inside training)")
        return fig
    margins = (ok["p_i"] - 0.5).abs()
    hi = max(float(margins.max()), 1e-12)
    for n, m in margins.groupby(ok["round"]):
        ax.hist(m, bins=20, range=(0, hi), histtype="step", linewidth=1.5, label=f"round {n} (mean {m.mean():.3g})")
    ax.set(xlabel="margin |P(i better) − 0.5|", ylabel="verdicts", title="How decisive is the judge?")
    ax.legend()
    return fig


def plot_position_bias(verdicts: pd.DataFrame) -> "Figure":
    """Pairwise: P(first shown wins) per verdict, and P(i better) with i shown first vs second.
    Pointwise (no order to be biased by): the distribution of candidates' expected rubric scores."""
    ok = verdicts[~verdicts["failed"].astype(bool)] if len(verdicts) else verdicts
    if ok.empty:
        fig, (ax,) = _figure()
        _empty(ax, "no verdicts (GRPO/RLOO runs judge inside training)")
        return fig
    if _is_pointwise(ok):
        fig, (ax,) = _figure()
        for n, g in ok.groupby("round"):
            scores = pd.concat([g[["prompt_id", "i", "score_i"]].set_axis(["p", "c", "s"], axis=1),
                                g[["prompt_id", "j", "score_j"]].set_axis(["p", "c", "s"], axis=1)])
            s = scores.drop_duplicates(["p", "c"])["s"]
            ax.hist(s, bins=20, histtype="step", linewidth=1.5, label=f"round {n} (mean {s.mean():.2f})")
        ax.set(xlabel="expected rubric score", ylabel="candidates", title="Pointwise judge: score distribution")
        ax.legend()
        return fig
    fig, (left, right) = _figure(ncols=2)
    for n, g in ok.groupby("round"):
        left.hist(g["p_first"], bins=20, range=(0, 1), histtype="step", linewidth=1.5,
                  label=f"round {n} (mean {g['p_first'].mean():.2f})")
        right.scatter(g["p_a_ij"], 1 - g["p_a_ji"], s=12, alpha=0.6, label=f"round {n}")
    left.axvline(0.5, color="0.5", linestyle="--")
    left.set(xlabel="P(answer shown first wins)", ylabel="verdicts", title="Position bias (0.5 = none)")
    left.legend()
    right.plot([0, 1], [0, 1], color="0.5", linestyle="--")
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="P(i better), i shown first", ylabel="P(i better), i shown second",
              title="Both orders (diagonal = consistent)")
    right.legend()
    return fig


def _round_axis(ax, xs, label: str = "round (0 = base)") -> None:
    ax.set_xticks(sorted({int(x) for x in xs}))
    ax.set_xlabel(label)


def _by_round(evals: pd.DataFrame | None) -> pd.DataFrame | None:
    """The evaluated models that are rounds of the run (not an outside ``rlaif eval --adapter``)."""
    return None if evals is None or not len(evals) else evals[evals["round"].notna()]


def plot_win_rates(evals: pd.DataFrame) -> "Figure":
    """Win rate vs the base and vs the previous round, per round, with confidence intervals."""
    fig, (ax,) = _figure()
    evals = _by_round(evals)
    rows = evals[evals["round"] > 0] if evals is not None else None
    if rows is None or rows.empty:
        _empty(ax, "no evaluated rounds")
        return fig
    for key, label, dx in (("win_rate_vs_base", "vs base", -0.04), ("win_rate_vs_previous", "vs previous round", 0.04)):
        y = rows[key].astype(float)
        err = [(y - rows[f"{key}_lo"]).clip(lower=0).fillna(0), (rows[f"{key}_hi"] - y).clip(lower=0).fillna(0)]
        ax.errorbar(rows["round"] + dx, y, yerr=err, marker="o", capsize=4, label=label)
    ax.axhline(0.5, color="0.5", linestyle="--")
    ax.set(ylim=(0, 1), ylabel="win rate", title="Head-to-head win rate (held-out prompts)")
    _round_axis(ax, rows["round"])
    ax.legend()
    return fig


def plot_instruction_following(evals: pd.DataFrame) -> "Figure":
    """Instruction-following accuracy per round: every constraint met (prompt) and per constraint."""
    fig, (ax,) = _figure()
    evals = _by_round(evals)
    if evals is None or evals.empty:
        _empty(ax, "no evaluation")
        return fig
    for key, label in (("if_prompt_accuracy", "prompts (all constraints met)"), ("if_constraint_accuracy", "constraints")):
        if key in evals:
            ax.plot(evals["round"], evals[key].astype(float), marker="o", label=label)
    ax.set(ylim=(0, 1), ylabel="accuracy", title="Instruction following")
    _round_axis(ax, evals["round"])
    ax.legend()
    return fig


def collapse_frame(evals: pd.DataFrame | None, rounds_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Collapse signals per policy (``round`` 0 = base): from the evaluation when there is one, else from
    the training candidates (round n's candidates come from round n−1's policy; no distinct-n then)."""
    evals = _by_round(evals)
    if evals is not None and len(evals):
        cols = ["round", "distinct_1", "distinct_2", "self_similarity", "mean_tokens", "std_tokens",
                "truncated_share", "kl_to_base"]
        return evals.reindex(columns=cols).assign(source="eval")
    if rounds_df is None or rounds_df.empty:
        return pd.DataFrame()

    def col(*names):
        for name in names:
            if name in rounds_df:
                return rounds_df[name]
        return pd.Series(math.nan, index=rounds_df.index)

    return pd.DataFrame({
        "round": rounds_df["round"] - 1,
        "mean_tokens": col("generate.mean_tokens", "train.completion_mean_length"),
        "std_tokens": col("generate.std_tokens"),
        "truncated_share": col("generate.truncated_share", "train.truncated_share"),
        "kl_to_base": col("generate.kl_to_base_estimate", "train.kl"),
        "source": "training candidates",
    })


def plot_collapse(evals: pd.DataFrame | None, rounds_df: pd.DataFrame | None = None) -> "Figure":
    """Four panels per policy: distinct-n and self-similarity, mean length ± std, truncated share, KL to base."""
    data = collapse_frame(evals, rounds_df)
    fig, axes = _figure(ncols=2, nrows=2, width=5.0, height=3.2)
    if data.empty:
        for ax in axes:
            _empty(ax, "no data")
        return fig
    x = data["round"]
    div, length, trunc, kl = axes
    if "distinct_1" in data:
        for key in ("distinct_1", "distinct_2", "self_similarity"):
            div.plot(x, data[key].astype(float), marker="o", label=key.replace("_", "-"))
        div.set(ylim=(0, 1), title="Diversity")
        div.legend()
    else:
        _empty(div, f"distinct-n and self-similarity\nneed an evaluation:\n{EVAL_COMMAND.format(run='RUN')}")
    length.errorbar(x, data["mean_tokens"].astype(float), yerr=data["std_tokens"].astype(float).fillna(0),
                    marker="o", capsize=4)
    length.set(title="Response length (mean ± std)", ylabel="tokens")
    trunc.plot(x, data["truncated_share"].astype(float), marker="o")
    trunc.set(ylim=(0, 1.05), title="Truncated share (hit the token limit)")
    kl.plot(x, data["kl_to_base"].astype(float), marker="o")
    kl.set(title="KL to base (estimate)")
    label = "round (0 = base)" if data["source"].iloc[0] == "eval" else "policy (round n's samples: n−1; 0 = base)"
    for ax in axes:
        if ax is not div or "distinct_1" in data:
            _round_axis(ax, x, label)
    fig.suptitle(f"Collapse signals (from {data['source'].iloc[0]})")
    return fig


def plot_training(rounds_df: pd.DataFrame, log: pd.DataFrame | None = None) -> "Figure":
    """Per round: DPO implicit reward margin before/after training (or RL reward mean ± std); per step:
    TRL's ``rewards/margins`` (DPO) or ``reward`` (RL) across rounds."""
    fig, (summary, steps) = _figure(ncols=2)
    r = rounds_df if rounds_df is not None else pd.DataFrame()
    if "train.reward_margin_before" in r:
        summary.plot(r["round"], r["train.reward_margin_before"].astype(float), marker="o", label="before training")
        summary.plot(r["round"], r["train.reward_margin_after"].astype(float), marker="o", label="after training")
        summary.set(title="DPO reward margin on the round's pairs", ylabel="margin")
        summary.legend()
    elif "train.reward_mean" in r:
        summary.errorbar(r["round"], r["train.reward_mean"].astype(float),
                         yerr=r.get("train.reward_std", pd.Series(0, index=r.index)).astype(float).fillna(0),
                         marker="o", capsize=4)
        summary.set(title="RL reward (mean ± std)", ylabel="reward")
    else:
        _empty(summary, "no trained rounds")
    if len(r):
        summary.set_xticks(sorted(r["round"]))
        summary.set_xlabel("round")
    key = next((k for k in ("rewards/margins", "reward") if log is not None and k in log), None)
    if key is None:
        _empty(steps, "no training log")
    else:
        for n, g in log.groupby("round"):
            steps.plot(g["global_step"], g[key].astype(float), marker=".", label=f"round {n}")
        steps.set(title=f"per step: {key}", xlabel="step (all rounds)")
        steps.legend()
    return fig


def plot_pair(verdict: dict) -> "Figure":
    """One :func:`rlaif.judging.judges.judge_pair` verdict: P(answer A better) in each order and averaged
    (pairwise), or both answers' score distributions (pointwise)."""
    fig, (ax,) = _figure(width=5.5, height=3.4)
    if verdict.get("mode") == "pointwise":
        labels = verdict.get("score_labels") or [str(i) for i in range(len(verdict["probs_a"]))]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], verdict["probs_a"], width=0.4, label=f"answer A (E = {verdict['score_a']:.2f})")
        ax.bar([x + 0.2 for x in xs], verdict["probs_b"], width=0.4, label=f"answer B (E = {verdict['score_b']:.2f})")
        ax.set_xticks(list(xs), labels)
        ax.set(xlabel="score", ylabel="probability", title=f"Rubric scores: P(A better) = {verdict['p_i']:.3f}")
        ax.legend()
        return fig
    names = ["A shown first", "A shown second", "both orders"]
    values = [verdict["order_ab"], verdict["order_ba"], verdict["p_i"]]
    bars = ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:green"])
    ax.bar_label(bars, fmt="%.3f")
    ax.axhline(0.5, color="0.5", linestyle="--")
    ax.set(ylim=(0, 1), ylabel="P(answer A better)",
           title=f"P(first shown wins) = {verdict['p_first']:.2f}; orders {'agree' if verdict['agree'] else 'disagree'}")
    return fig


# ---------------------------------------------------------------- report


def _fmt(x, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or type(x).__name__ == "bool_":  # numpy's bool is not a bool
        return "yes" if x else "no"
    return format(x, spec) if isinstance(x, numbers.Number) else str(x)


def _ci(row, key: str) -> str:
    if pd.isna(row.get(key)):
        return "–"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return _fmt(row[key]) + ("" if pd.isna(lo) or pd.isna(hi) else f" [{_fmt(lo)}, {_fmt(hi)}]")


def _table(df: pd.DataFrame, columns: list[tuple[str, str, object]]) -> list[str]:
    """Markdown table; columns (header, needed column, row -> cell), kept only where the column exists."""
    cols = [(h, f) for h, need, f in columns if need is None or need in df]
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(f(row) for _, f in cols) + " |")
    return lines


def _g(key, spec=".2f"):
    return lambda row: _fmt(row.get(key), spec)


ROUND_COLUMNS = [
    ("round", "round", _g("round", ".0f")),
    ("complete", "complete", _g("complete")),
    ("pairs kept / dropped", "pairs.kept", lambda r: f"{_fmt(r.get('pairs.kept'), '.0f')} / {_fmt(r.get('pairs.dropped'), '.0f')}"),
    ("mean tokens", "generate.mean_tokens", _g("generate.mean_tokens", ".1f")),
    ("truncated", "generate.truncated_share", _g("generate.truncated_share")),
    ("KL est.", "generate.kl_to_base_estimate", _g("generate.kl_to_base_estimate", ".3g")),
    ("judge margin", "judge.mean_margin", _g("judge.mean_margin", ".3g")),
    ("order agreement", "judge.order_agreement", _g("judge.order_agreement")),
    ("P(first)", "judge.position_bias_p_first", _g("judge.position_bias_p_first")),
    ("length corr", "judge.length_corr", _g("judge.length_corr")),
    ("DPO margin before → after", "train.reward_margin_before",
     lambda r: f"{_fmt(r.get('train.reward_margin_before'), '.3g')} → {_fmt(r.get('train.reward_margin_after'), '.3g')}"),
    ("reward mean ± std", "train.reward_mean",
     lambda r: f"{_fmt(r.get('train.reward_mean'), '.3g')} ± {_fmt(r.get('train.reward_std'), '.3g')}"),
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
    ("distinct-1 / -2", "distinct_1", lambda r: f"{_fmt(r.get('distinct_1'))} / {_fmt(r.get('distinct_2'))}"),
    ("self-similarity", "self_similarity", _g("self_similarity")),
    ("tokens (mean ± std)", "mean_tokens", lambda r: f"{_fmt(r.get('mean_tokens'), '.1f')} ± {_fmt(r.get('std_tokens'), '.1f')}"),
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
        charts["scores" if _is_pointwise(verdicts) else "position_bias"] = plot_position_bias(verdicts)
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
