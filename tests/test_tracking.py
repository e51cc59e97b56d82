"""W&B tracking: TRL's per-step log and the round metrics in one run, each on its own axis; the mode;
W&B failures that never stop a run; the main process only. Offline runs are read back from their
``.wandb`` log with ``wandb leet inspect --json`` (the reader wandb ships)."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.config import WandbConfig
from rlaif.reporting import tracking
from rlaif.reporting.tracking import Tracker, resolve_mode, train_steps_before
from rlaif.rundir import RunDir, read_json, read_jsonl, write_jsonl

WANDB_CLI = Path(sys.executable).parent / "wandb"


def records(run_dir: Path) -> list[dict]:
    out = subprocess.run([str(WANDB_CLI), "leet", "inspect", "--json", str(run_dir)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B's own folders under tmp_path, no API key, no WANDB_MODE (conftest sets it to disabled)."""
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_CONFIG_DIR", "wandb_config"), ("WANDB_DATA_DIR", "wandb_data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_offline_run_resumed_keeps_train_steps_and_rounds_on_their_own_axes(tiny_model, tmp_path, monkeypatch,
                                                                            wandb_env, capfd):
    """Round 1 in one invocation, round 2 in a second (W&B resumes the run by id): TRL's log lines are
    ``train/*`` against one ``train/step`` axis that continues across the two, the round metrics are
    ``round/*`` against ``round``, and wandb warns about no step."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    recipe = tiny_recipe(tiny_model, out, run={"rounds": 1}, wandb={"enabled": True, "mode": "offline"},
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 4, "bootstrap": 100})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    recipe["run"]["rounds"] = 2
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    err = capfd.readouterr().err

    run_id = read_json(out / "manifest.json")["wandb_run_id"]
    runs = sorted((out / "wandb").glob("offline-run-*"))  # named by start time: invocation order
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs), "one W&B run, resumed by its id"
    recs = [r for run in runs for r in records(run)]
    metric_defs = {m["metric"].get("glob_name"): m["metric"].get("step_metric") for m in recs if m["type"] == "metric"}
    assert {k: metric_defs[k] for k in ("train/*", "round/*", "eval/*")} == {
        "train/*": "train/step", "round/*": "round", "eval/*": "eval/round"}
    history = [r["history"]["item"] for r in recs if r["type"] == "history"]

    # TRL's per-step lines: train/step counts optimizer steps across both rounds, 1..total, strictly increasing
    steps = [read_json(out / f"round_{n:03d}/metrics.json")["train"]["steps"] for n in (1, 2)]
    logged = [h for h in history if "train/loss" in h]
    assert [h["train/step"] for h in logged] == list(range(1, sum(steps) + 1))
    assert [h["train/round"] for h in logged] == [1] * steps[0] + [2] * steps[1]
    trl_lines = [row for n in (1, 2) for row in read_jsonl(out / f"round_{n:03d}/train_log.jsonl") if "loss" in row]
    assert [h["train/loss"] for h in logged] == pytest.approx([row["loss"] for row in trl_lines])
    assert [h["train/rewards/margins"] for h in logged] == pytest.approx([row["rewards/margins"] for row in trl_lines])
    evals = [h for h in history if "train/eval_loss" in h]  # DPO runs no evaluation passes over its pairs
    assert evals == []
    assert train_steps_before(RunDir(out), 3) == sum(steps)

    # the round metrics: one line per round, against round, equal to metrics.json
    rounds = [h for h in history if "round" in h]
    assert [h["round"] for h in rounds] == [1, 2]
    assert not any(k.startswith("train/") for h in rounds for k in h)
    assert not any(k.startswith("round") for h in history if "train/step" in h for k in h)
    for h in rounds:
        metrics = read_json(out / f"round_{h['round']:03d}/metrics.json")
        for key in ("generate/mean_tokens", "judge/mean_margin", "judge/length_corr", "pairs/kept",
                    "train/loss_last", "train/reward_margin_after", "train/reward_accuracy_after",
                    "evaluate/model/win_rate_vs_base", "evaluate/model/distinct_2", "evaluate/base/mean_tokens"):
            stage, *path = key.split("/")
            want = metrics[stage]
            for name in path:
                want = want[name]
            if isinstance(want, float) and math.isnan(want):  # e.g. length_corr of equal-length candidates
                assert f"round/{key}" not in h, key
            else:
                assert h[f"round/{key}"] == pytest.approx(want), key

    # wandb saw no step out of order (it would warn, and drop the line)
    logs = "".join(p.read_text(errors="replace") for run in runs for p in (run / "logs").glob("*.log"))
    for text in (err, logs):
        assert "less than the current step" not in text and "step must" not in text.lower()
    assert "[rlaif] W&B" not in err

    # the samples table: every candidate of the first prompts, with rank, role and both orders' verdicts
    (table,) = runs[0].glob("files/media/table/samples_*.table.json")
    data = json.loads(table.read_text())
    rows = [dict(zip(data["columns"], r)) for r in data["data"]]
    ranking = read_jsonl(out / "round_001/rankings.jsonl")[0]
    first = [r for r in rows if r["prompt_id"] == ranking["prompt_id"]]
    assert [r["candidate"] for r in first] == ranking["order"] and [r["rank"] for r in first] == [1, 2, 3]
    pair = read_jsonl(out / "round_001/pairs.jsonl")[0]
    roles = {r["candidate"]: r["role"] for r in rows if r["prompt_id"] == pair["prompt_id"]}
    assert roles[pair["chosen_candidate"]] == "chosen" and roles[pair["rejected_candidate"]] == "rejected"
    assert "verdicts" in data["columns"]


def test_grpo_rounds_log_their_trl_lines_too(tiny_model, tmp_path, monkeypatch, wandb_env):
    """The RL path wires the same forwarder: GRPO's per-step reward and KL on the train/step axis."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    grpo = {"num_generations": 3, "per_device_train_batch_size": 6, "max_completion_length": 8}
    recipe = tiny_recipe(tiny_model, out, run={"rounds": 1}, train={"method": "grpo"}, grpo=grpo,
                         wandb={"enabled": True, "mode": "auto"})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    (run,) = (out / "wandb").glob("offline-run-*")
    history = [r["history"]["item"] for r in records(run) if r["type"] == "history"]
    trl_lines = [row for row in read_jsonl(out / "round_001/train_log.jsonl") if "reward" in row]
    logged = [h for h in history if "train/reward" in h]
    assert [h["train/step"] for h in logged] == [row["step"] for row in trl_lines]
    assert len(logged) >= 2
    assert [h["train/reward"] for h in logged] == pytest.approx([row["reward"] for row in trl_lines])
    assert [h["round"] for h in history if "round" in h] == [1]


def test_a_wandb_that_cannot_start_never_stops_the_run(tiny_model, tmp_path, monkeypatch, wandb_env, capfd):
    calls = []

    def init(**kwargs):
        calls.append(kwargs["mode"])
        raise wandb.errors.CommError("Network error (ConnectionError), entering retry loop.\nmore detail")

    monkeypatch.setattr(wandb, "init", init)
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, wandb={"enabled": True, "mode": "online"})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    assert calls == ["online", "offline"], "an online start that fails is retried offline once"
    said = [line for line in capfd.readouterr().err.splitlines() if "W&B" in line]
    assert said == [("[rlaif] W&B could not start (CommError: Network error (ConnectionError), entering retry loop.); "
                     "continuing without W&B")]
    assert read_json(tmp_path / "out/result.json")["status"] == "completed"
    assert read_json(tmp_path / "out/manifest.json")["wandb_run_id"] is None
    assert not (tmp_path / "out/wandb").exists()


class FakeRun:
    """Stands in for a wandb Run whose ``log`` fails (as on a dead connection)."""

    id = "fake"

    def __init__(self, fails: bool = True):
        self.logged, self.defined, self.fails, self.summarized = [], [], fails, {}
        self.summary = SimpleNamespace(update=self.fail if fails else self.summarized.update)

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, payload, **kwargs):
        assert not kwargs, "rlaif never passes step= (or anything else) to wandb.log"
        self.logged.append(payload)
        if self.fails:
            raise wandb.errors.CommError("connection reset")

    def fail(self, *args):
        raise AssertionError("W&B was turned off: nothing more is sent")

    finish = fail


def test_a_failing_log_turns_wandb_off_after_one_line(tmp_path, monkeypatch, capsys):
    fake = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda **kw: fake)
    tracker = Tracker(WandbConfig(enabled=True, mode="offline"), tmp_path, None, {})
    assert fake.defined == [("round", None), ("round/*", "round"), ("train/step", None), ("train/*", "train/step"),
                            ("eval/round", None), ("eval/*", "eval/round")]
    callback = tracker.trainer_callback(1)
    callback.on_log(None, SimpleNamespace(global_step=3, is_world_process_zero=True), None, logs={"loss": 0.5})
    tracker.log_round(1, {"pairs": {"kept": 2}})
    callback.on_log(None, SimpleNamespace(global_step=4, is_world_process_zero=True), None, logs={"loss": 0.4})
    tracker.summary({"best_round": 1})
    tracker.finish()
    assert fake.logged == [{"train/loss": 0.5, "train/step": 3, "train/round": 1}]
    assert capsys.readouterr().err == "[rlaif] W&B could not log (CommError: connection reset); continuing without W&B\n"
    assert tracker.run is None


def test_rlaif_eval_logs_each_evaluated_round_against_eval_round(tmp_path, monkeypatch):
    fake = FakeRun(fails=False)
    monkeypatch.setattr(wandb, "init", lambda **kw: fake)
    tracker = Tracker(WandbConfig(enabled=True, mode="offline"), tmp_path, None, {})
    models = [{"name": "base", "round": 0, "win_rate_vs_base": None, "distinct_2": 0.8},
              {"name": "round_001", "round": 1, "win_rate_vs_base": 0.6, "win_rate_vs_base_ci": [0.5, 0.7],
               "distinct_2": 0.7},
              {"name": "adapter_x", "round": None, "win_rate_vs_base": 0.55, "distinct_2": 0.75}]
    tracker.log_eval({"models": models})
    assert fake.logged[:2] == [{"eval/round": 0, "eval/distinct_2": 0.8},
                               {"eval/round": 1, "eval/win_rate_vs_base": 0.6, "eval/distinct_2": 0.7}]
    assert list(fake.logged[2]) == ["eval/table"] and len(fake.logged) == 3
    assert fake.summarized["eval/adapter_x/win_rate_vs_base"] == 0.55


def test_an_online_start_that_fails_continues_offline(tmp_path, monkeypatch, capsys):
    fake = FakeRun()

    def init(mode, **kwargs):
        if mode == "online":
            raise wandb.errors.AuthenticationError("API key is invalid")
        return fake

    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(WandbConfig(enabled=True, mode="online"), tmp_path, None, {})
    assert tracker.run is fake and tracker.run_id == "fake"
    assert capsys.readouterr().err == (f"[rlaif] W&B could not start online (AuthenticationError: API key is invalid); "
                                       f"logging offline to {tmp_path / 'wandb'} instead (`wandb sync` uploads it later)\n")


@pytest.mark.parametrize(("mode", "env", "want"), [
    ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "x"}, "offline"),  # the environment wins over auto
    ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}, "disabled"),
    ("auto", {"WANDB_API_KEY": "x"}, "online"),
    ("auto", {}, "offline"),
    ("online", {"WANDB_MODE": "offline"}, "online"),  # the recipe's explicit mode is used as written
    ("offline", {"WANDB_API_KEY": "x"}, "offline"),
])
def test_mode(mode, env, want, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert resolve_mode(mode) == want


def test_wandb_mode_offline_with_an_api_key_starts_offline(tmp_path, monkeypatch, wandb_env):
    """An offline machine with a key set: WANDB_MODE=offline keeps ``auto`` offline (no network, no error)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    modes = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: modes.append(kw["mode"]) or real_init(**kw))
    tracker = Tracker(WandbConfig(enabled=True, mode="auto"), tmp_path, None, {})
    try:
        assert modes == ["offline"] and tracker.run is not None and tracker.run.settings._offline
    finally:
        tracker.finish()
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_only_the_main_process_starts_wandb(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "PartialState", lambda: SimpleNamespace(is_main_process=False))
    monkeypatch.setattr(wandb, "init", lambda **kw: pytest.fail("wandb.init on a non-main process"))
    tracker = Tracker(WandbConfig(enabled=True, mode="offline"), tmp_path, None, {})
    assert tracker.run is None and tracker.run_id is None
    tracker.trainer_callback(1).on_log(None, SimpleNamespace(global_step=1, is_world_process_zero=True), None,
                                       logs={"loss": 1.0})
    tracker.log_round(1, {"pairs": {"kept": 1}})
    tracker.finish()


def test_train_steps_before_counts_earlier_rounds_optimizer_steps(tmp_path):
    run = RunDir(tmp_path)
    write_jsonl(run.path(1, "train_log.jsonl"), [{"eval_loss": 1.0, "step": 0}] + [{"loss": 1.0, "step": s} for s in (1, 2, 3)]
                + [{"eval_loss": 0.9, "step": 3}, {"train_loss": 1.0, "step": 3}])
    write_jsonl(run.path(2, "train_log.jsonl"), [])  # a round without pairs trains nothing
    write_jsonl(run.path(3, "train_log.jsonl"), [{"loss": 1.0, "step": s} for s in (2, 4)])  # logging_steps=2
    assert [train_steps_before(run, n) for n in (1, 2, 3, 4, 5)] == [0, 3, 3, 7, 7]
