"""Weights & Biases tracking: one W&B run per run folder, one step per round.

Online when ``WANDB_API_KEY`` is set (or ``wandb.mode: online``), offline otherwise, so a run on a
machine without network still keeps its charts (``wandb sync`` uploads them later). The W&B run id is
kept in the manifest, so a resumed run appends to the same W&B run. ``wandb.enabled: false`` turns it
off.
"""

import math
import os
from pathlib import Path

from rlaif.config import WandbConfig
from rlaif.rundir import RunDir, read_jsonl


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"judge": {"mean_margin": 0.1}}`` → ``{"judge/mean_margin": 0.1}`` (numbers only)."""
    out = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = value
    return out


class Tracker:
    def __init__(self, cfg: WandbConfig, run_dir: Path, run_id: str | None, config: dict):
        self.run = None
        if not cfg.enabled:
            return
        import wandb

        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or Path(run_dir).name,
            tags=cfg.tags or None,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config,
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log_round(self, round_n: int, metrics: dict, samples: list[dict] | None = None) -> None:
        """The round's metrics as charts (one step per round), and a table of a few prompts' samples."""
        if self.run is None:
            return
        import wandb

        payload = {"round": round_n, **flatten(metrics)}
        if samples:
            payload["samples"] = wandb.Table(columns=list(samples[0]), data=[list(r.values()) for r in samples])
        self.run.log(payload, step=round_n)

    def log_eval(self, results: dict) -> None:
        """``rlaif eval``'s table (one row per model) and its numbers in the run summary."""
        if self.run is None:
            return
        import wandb

        cols = [k for k in results["models"][0] if not k.endswith("_ci")]
        table = wandb.Table(columns=cols, data=[[_cell(m.get(k)) for k in cols] for m in results["models"]])
        self.run.log({"eval/table": table})
        for m in results["models"]:
            self.summary(flatten({k: v for k, v in m.items() if k not in ("name", "round")}, f"eval/{m['name']}/"))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _cell(value):
    return value if isinstance(value, (int, float, str, type(None))) else str(value)


def sample_rows(run: RunDir, n: int, prompts: int) -> list[dict]:
    """Rows of the W&B samples table: the first ``prompts`` prompts of round n, one row per candidate.

    Each row has the candidate's text, its rank and ranking score, whether it became the chosen or
    the rejected answer of a pair, and its verdicts (pairwise: P(A) in both orders and the combined
    P; pointwise: the rubric score). RL rounds show their sampled completions with their rewards.
    """
    if prompts < 1:
        return []
    if run.path(n, "completions.jsonl").is_file():
        prompts_of = {p["id"]: p["prompt"] for p in read_jsonl(run.path(n, "prompts.jsonl"))}
        rows = [r for r in read_jsonl(run.path(n, "completions.jsonl")) if r["call"] == 1]  # the first batch sampled
        keep = list(dict.fromkeys(r["prompt_id"] for r in rows))[:prompts]
        return [{"round": n, "prompt_id": r["prompt_id"], "prompt": prompts_of.get(r["prompt_id"], ""),
                 "completion": r["completion"], "text": r["text"], "truncated": r["truncated"],
                 "mean_win": r["mean_win"], "reward": r["reward"]} for r in rows if r["prompt_id"] in keep]
    if not run.path(n, "rankings.jsonl").is_file():
        return []
    prompts_of = {p["id"]: p["prompt"] for p in read_jsonl(run.path(n, "prompts.jsonl"))}
    rankings = read_jsonl(run.path(n, "rankings.jsonl"))[:prompts]
    cands = {(c["prompt_id"], c["candidate"]): c for c in read_jsonl(run.path(n, "candidates.jsonl"))}
    verdicts: dict[str, list[dict]] = {}
    for v in read_jsonl(run.path(n, "verdicts.jsonl")):
        verdicts.setdefault(v["prompt_id"], []).append(v)
    roles = {}
    if run.path(n, "pairs.jsonl").is_file():
        for p in read_jsonl(run.path(n, "pairs.jsonl")):
            roles[(p["prompt_id"], p.get("chosen_candidate"))] = "chosen"
            roles[(p["prompt_id"], p.get("rejected_candidate"))] = "rejected"
    out = []
    for ranking in rankings:
        pid = ranking["prompt_id"]
        for rank, idx in enumerate(ranking["order"], 1):
            c = cands[(pid, idx)]
            out.append({
                "round": n, "prompt_id": pid, "prompt": prompts_of.get(pid, ""), "candidate": idx, "text": c["text"],
                "tokens": c["num_tokens"], "truncated": c["truncated"], "rank": rank,
                "mean_win": ranking["mean_win"][idx], "role": roles.get((pid, idx), ""),
                "verdicts": _verdict_text(idx, verdicts.get(pid, [])),
            })
    return out


def _verdict_text(idx: int, verdicts: list[dict]) -> str:
    parts = []
    for v in verdicts:
        if idx not in (v["i"], v["j"]):
            continue
        other, p = (v["j"], v["p_i"]) if v["i"] == idx else (v["i"], 1 - v["p_i"])
        if "score_i" in v:
            score = v["score_i"] if v["i"] == idx else v["score_j"]
            parts.append(f"vs {other}: P={p:.2f} (score {score:.2f})")
        else:
            first, second = (v["p_a_ij"], 1 - v["p_a_ji"]) if v["i"] == idx else (v["p_a_ji"], 1 - v["p_a_ij"])
            parts.append(f"vs {other}: P={p:.2f} (shown first {first:.2f}, shown second {second:.2f})")
    return "; ".join(parts)
