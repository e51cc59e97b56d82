"""Charts of a run: each function takes the frames of :mod:`rlaif.reporting.loaders` (or one
:func:`rlaif.judging.judges.judge_pair` verdict) and returns a matplotlib ``Figure`` on an Agg
canvas, with no pyplot state, so a notebook can display it and the report can save it.

A chart with nothing to show says so in its panel (and which command makes the data) rather than
failing. Importing this module imports matplotlib (about 0.7 s); the loaders do not.
"""

import math

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlaif.reporting.loaders import EVAL_COMMAND


def _figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 3.8):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, list(axes)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def is_pointwise(verdicts: pd.DataFrame) -> bool:
    return "score_i" in verdicts and verdicts["score_i"].notna().any()


def plot_margins(verdicts: pd.DataFrame) -> Figure:
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


def plot_position_bias(verdicts: pd.DataFrame) -> Figure:
    """Pairwise: P(first shown wins) per verdict, and P(i better) with i shown first vs second.
    Pointwise (no order to be biased by): the distribution of candidates' expected rubric scores."""
    ok = verdicts[~verdicts["failed"].astype(bool)] if len(verdicts) else verdicts
    if ok.empty:
        fig, (ax,) = _figure()
        _empty(ax, "no verdicts (GRPO/RLOO runs judge inside training)")
        return fig
    if is_pointwise(ok):
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


def plot_win_rates(evals: pd.DataFrame) -> Figure:
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


def plot_instruction_following(evals: pd.DataFrame) -> Figure:
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


def plot_collapse(evals: pd.DataFrame | None, rounds_df: pd.DataFrame | None = None) -> Figure:
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


def plot_training(rounds_df: pd.DataFrame, log: pd.DataFrame | None = None) -> Figure:
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


def plot_pair(verdict: dict) -> Figure:
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

