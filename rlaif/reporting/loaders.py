"""A run folder read into pandas DataFrames, for the report, the charts and the notebooks.

- :func:`load_round`: one round's candidates, joined with their rank and chosen/rejected flags, and
  its verdicts; :func:`load_verdicts`: every round's verdicts;
- :func:`round_table`: one row per round, each stage's headline metrics;
- :func:`train_log`: TRL's per-step log of every round on one step axis;
- :func:`eval_table`, :func:`eval_responses`, :func:`eval_comparisons`: ``RUN/eval/`` as written by
  ``rlaif eval``; :func:`run_result`: ``RUN/result.json``.

Everything copes with what a run lacks (no evaluation, no result.json, an RL run without verdicts):
a loader returns None or an empty frame, never raises for a missing optional file. Nothing is
written.
"""

import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from rlaif.errors import RlaifError
from rlaif.rundir import RunDir, read_json, read_jsonl, read_result

EVAL_COMMAND = "rlaif eval {run}"
HEADLINE = {
    "generate": ("candidates", "mean_tokens", "std_tokens", "truncated_share", "empty_share", "kl_to_base_estimate"),
    "judge": ("mode", "mean_margin", "order_agreement", "position_bias_p_first", "intransitive_share", "length_corr",
              "longer_preferred", "label_mass", "failed_verdicts", "reference_agreement", "verifier_agreement",
              "constraint_prompts", "constraints_met_share"),
    "pairs": ("kept", "dropped", "mean_margin_kept"),
    "train": ("method", "pairs", "steps", "loss_first", "loss_last", "reward_margin_before", "reward_margin_after",
              "reward_accuracy_after", "adapter_delta_norm", "reward_mean", "reward_std", "kl", "clip_fraction",
              "zero_signal_share", "truncated_share", "completion_mean_length"),
}
EVAL_CI = ("win_rate_vs_base", "win_rate_vs_previous")


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
    recorded = read_json(rd.manifest_path).get("rounds", {})  # the loop records a round once all its stages are done
    rows = []
    for n in rounds(run):
        m = rd.metrics(n)
        row = {"round": n, "complete": str(n) in recorded,
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
    """``RUN/result.json`` (status, reason, best round) as written by ``rlaif run``; None if absent. One naming
    an adapter that cannot be loaded is refused (:func:`rlaif.rundir.read_result`)."""
    return read_result(open_run(run).root)

