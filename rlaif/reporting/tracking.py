"""Weights & Biases tracking: one W&B run per run folder, started on the main process only.

Each family of charts has its own x-axis (``define_metric``), and rlaif never passes ``step=`` to
``wandb.log``, so later rounds, a resumed run and ``rlaif eval`` never log against each other's steps:

- ``round/<stage>/<key>`` against ``round``: each round's ``metrics.json``, once the round is complete;
- ``train/<key>`` against ``train/step``: TRL's own log lines (loss, ``rewards/margins``, ``reward``,
  ``kl``, DPO's before/after evaluation as ``train/eval_<key>``), forwarded while the trainer runs by
  :meth:`Tracker.trainer_callback`. ``train/step`` continues across rounds: round n's optimizer steps
  come after those of rounds 1..n−1, counted from their ``train_log.jsonl``, so a resumed run goes on
  where the finished rounds stopped;
- ``eval/<key>`` against ``eval/round`` (0 = base): ``rlaif eval``'s metrics per evaluated round.

TRL's ``report_to="wandb"`` stays off: transformers' ``WandbCallback`` would start or take over the
run with its own step axis, once per round.

Mode: ``wandb.mode: auto`` follows the environment's ``WANDB_MODE`` when it is set, else online when
``WANDB_API_KEY`` is set, offline otherwise (``wandb sync`` uploads an offline run later); ``online``
or ``offline`` in the recipe is used as written. The W&B run id is kept in the manifest, so a resumed
run appends to the same W&B run. ``wandb.enabled: false`` turns it off.

W&B is never worth a run: any exception from W&B (at start, while logging, at finish) is reported as
one line on stderr, and W&B stays off for the rest of the command. A run that cannot start online
(no network, a rejected key) is started offline instead.
"""

import math
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import wandb
from accelerate import PartialState
from transformers import TrainerCallback

from rlaif.config import WandbConfig
from rlaif.rundir import RunDir, read_jsonl

STEP_METRICS = {"round": "round/*", "train/step": "train/*", "eval/round": "eval/*"}


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


def resolve_mode(mode: str) -> str:
    """The mode to start W&B in: the recipe's ``online``/``offline`` as written; ``auto``: the environment's
    ``WANDB_MODE`` when set (it wins), else online when ``WANDB_API_KEY`` is set, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def train_steps_before(run: RunDir, n: int) -> int:
    """Optimizer steps of rounds 1..n−1, from their ``train_log.jsonl`` (TRL stamps each line with its step)."""
    total = 0
    for k in range(1, n):
        path = run.path(k, "train_log.jsonl")
        if path.is_file():
            total += max((int(row.get("step", 0)) for row in read_jsonl(path)), default=0)
    return total


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class Tracker:
    """The run folder's W&B run, or nothing (W&B off, a non-main process, or W&B failed): every method is
    then a no-op."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, run_id: str | None, config: dict):
        self.run = None
        self.folder = RunDir(run_dir)
        if not cfg.enabled or not PartialState().is_main_process:
            return
        self.run = self._start(resolve_mode(cfg.mode), {
            "project": cfg.project, "entity": cfg.entity, "name": cfg.name or Path(run_dir).name,
            "tags": cfg.tags or None, "id": run_id, "resume": "allow", "dir": str(run_dir), "config": config})
        if self.run is not None:
            with self._guard("could not set up its charts"):
                for step, family in STEP_METRICS.items():
                    self.run.define_metric(step)
                    self.run.define_metric(family, step_metric=step)

    def _start(self, mode: str, kwargs: dict):
        """``wandb.init``; an online start that fails is retried offline. None (and one line) if W&B cannot start."""
        try:
            return wandb.init(mode=mode, **kwargs)
        except Exception as exc:  # noqa: BLE001 (whatever W&B raises, the run goes on)
            first = exc
        if mode == "online":
            with suppress(Exception):  # a failed offline start is reported below, with the first error
                run = wandb.init(mode="offline", **kwargs)
                _say(f"W&B could not start online ({_one_line(first)}); logging offline to "
                     f"{Path(kwargs['dir']) / 'wandb'} instead (`wandb sync` uploads it later)")
                return run
        self._off("could not start", first)
        return None

    def _off(self, what: str, exc: BaseException) -> None:
        _say(f"W&B {what} ({_one_line(exc)}); continuing without W&B")
        self.run = None

    @contextmanager
    def _guard(self, what: str):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 (any failure inside W&B: the run goes on without it)
            self._off(what, exc)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _log(self, payload: dict) -> None:
        if self.run is not None:
            with self._guard("could not log"):
                self.run.log(payload)

    def log_round(self, round_n: int, metrics: dict, samples: list[dict] | None = None) -> None:
        """The round's metrics as ``round/<stage>/<key>`` against ``round``, and a table of a few prompts' samples."""
        if self.run is None:
            return
        with self._guard("could not log"):
            payload = {"round": round_n, **flatten(metrics, "round/")}
            if samples:
                payload["samples"] = wandb.Table(columns=list(samples[0]), data=[list(r.values()) for r in samples])
            self.run.log(payload)

    def log_train(self, round_n: int, step: int, logs: dict) -> None:
        """One TRL log line as ``train/<key>`` at ``train/step`` = ``step``."""
        self._log({**flatten(logs, "train/"), "train/step": step, "train/round": round_n})

    def trainer_callback(self, round_n: int) -> TrainerCallback:
        """A transformers ``TrainerCallback`` for round ``round_n``'s trainer: each TRL log line goes to this
        run, at ``train/step`` = the optimizer steps of earlier rounds + the trainer's global step."""
        return TrainLogForwarder(self, round_n, train_steps_before(self.folder, round_n) if self.run else 0)

    def log_eval(self, results: dict) -> None:
        """``rlaif eval``: each evaluated round's metrics against ``eval/round``, the table (one row per model)
        and the numbers in the run summary."""
        if self.run is None:
            return
        with self._guard("could not log"):
            for m in results["models"]:
                if m.get("round") is not None:  # an outside adapter (--adapter) is no point on the axis
                    self.run.log({"eval/round": m["round"],
                                  **flatten({k: v for k, v in m.items() if k not in ("name", "round")}, "eval/")})
            cols = [k for k in results["models"][0] if not k.endswith("_ci")]
            table = wandb.Table(columns=cols, data=[[_cell(m.get(k)) for k in cols] for m in results["models"]])
            self.run.log({"eval/table": table})
            for m in results["models"]:
                self.run.summary.update(flatten({k: v for k, v in m.items() if k not in ("name", "round")},
                                                f"eval/{m['name']}/"))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            with self._guard("could not update the summary"):
                self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            with self._guard("could not finish"):
                self.run.finish()
            self.run = None


class TrainLogForwarder(TrainerCallback):
    """Forwards the trainer's log lines (``on_log``) to a :class:`Tracker`; see :meth:`Tracker.trainer_callback`."""

    def __init__(self, tracker: Tracker, round_n: int, first_step: int):
        self.tracker, self.round_n, self.first_step = tracker, round_n, first_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log_train(self.round_n, self.first_step + state.global_step, logs)


def _say(msg: str) -> None:
    print(f"[rlaif] {msg}", file=sys.stderr, flush=True)


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
