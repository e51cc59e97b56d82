"""Two processes on the CPU (torchrun + gloo): split work, one writer, identical adapters, resumable either way.

``ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m rlaif run RECIPE`` (``accelerate launch --cpu
--num_processes 2`` would silently start one process). Each process records what it did in its own file
(``RLAIF_RANK_LOG``, :func:`rlaif.distributed.rank_log`): the prompts it generated and judged, the reward groups
it judged, and the digest of the adapter weights it ended training with.

Runs: C (1 process, 1 DPO round) and A (2 processes, 1 DPO round) on the same recipe; A resumed to 2 rounds with
1 process (B); C resumed to 2 rounds with 2 processes (D), then given another recipe (both processes stop
with the main process's error); E, one GRPO round with 2 processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate import PartialState
from conftest import REPO, tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.distributed import share, split
from rlaif.rundir import TMP_MARK, read_json, read_jsonl

TORCHRUN = Path(sys.executable).parent / "torchrun"
K = 3  # candidates per prompt
DPO = {"generate": {"num_candidates": K, "batch_size": 2}, "judge": {"mode": "pairwise", "batch_size": 16},
       "wandb": {"enabled": True, "mode": "offline"}}
GRPO = {"train": {"method": "grpo", "truncation_penalty": 0.0},
        # 3 prompts x 4 completions a generation; 6 completions a step: a process's slice ends inside a group
        "grpo": {"num_generations": 4, "per_device_train_batch_size": 3, "generation_batch_size": 12,
                 "max_completion_length": 8, "learning_rate": 5e-3, "num_train_epochs": 1, "num_iterations": 1},
        "wandb": {"enabled": False}}


@pytest.mark.parametrize("n_items", [0, 1, 5, 7, 16])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_shares_are_contiguous_whole_units_that_cover_everything_once(n_items, processes):
    items = list(range(n_items))
    for unit in (1, 2, 3, 8):
        states = [SimpleNamespace(num_processes=processes, process_index=i) for i in range(processes)]
        parts = [split(st, items, unit) for st in states]
        assert [x for p in parts for x in p] == items  # in order, each item once
        assert all(r.start % unit == 0 for r in (share(st, n_items, unit) for st in states) if r)  # cut between units
        sizes = [-(-len(p) // unit) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    for st in states:  # one item a unit: the same shares as accelerate's split_between_processes
        with PartialState.split_between_processes(st, items) as theirs:
            assert split(st, items) == list(theirs)


def recipe(tiny_model, tmp_path, name: str, rounds: int, sections: dict) -> Path:
    r = tiny_recipe(tiny_model, tmp_path / name, run={"rounds": rounds}, **sections)
    return write_recipe(tmp_path / f"{name}-{rounds}.yaml", r)


def torchrun(recipe_path: Path, rank_log: Path, tmp_path: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "RLAIF_RANK_LOG": str(rank_log),
           "WANDB_DIR": str(tmp_path / "wandb-env"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "rlaif", "run", str(recipe_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert proc.stdout.count("done: ") == 1, "the result is printed once, by the main process"
    return proc


def run_here(recipe_path: Path, rank_log: Path, monkeypatch) -> None:
    """One process, in this process."""
    monkeypatch.setenv("RLAIF_RANK_LOG", str(rank_log))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main(["run", str(recipe_path)]) == 0


def events(rank_log: Path, event: str) -> dict[int, list[dict]]:
    """Per rank, its rows of one kind."""
    out: dict[int, list[dict]] = {}
    for path in sorted(rank_log.glob("rank*.jsonl")):
        for row in read_jsonl(path):
            if row["event"] == event:
                out.setdefault(row["rank"], []).append(row)
    return out


def assert_split(rank_log: Path, event: str, n: int, prompt_ids: list[str]) -> None:
    """Two processes each took a non-empty contiguous share; together, every prompt once, in order."""
    rows = events(rank_log, event)
    shares = [next(r["prompts"] for r in rows[rank] if r["round"] == n) for rank in (0, 1)]
    assert all(shares) and shares[0] + shares[1] == prompt_ids, (event, shares)
    assert {r["processes"] for rank in rows for r in rows[rank]} == {2}


def assert_same_adapter(rank_log: Path, trainings: int) -> None:
    rows = events(rank_log, "adapter")
    assert sorted(rows) == [0, 1] and len(rows[0]) == len(rows[1]) == trainings
    assert [r["digest"] for r in rows[0]] == [r["digest"] for r in rows[1]], "ranks ended training with different weights"


def assert_candidates(run: Path, n: int) -> None:
    ids = [p["id"] for p in read_jsonl(run / f"round_{n:03d}/prompts.jsonl")]
    cands = read_jsonl(run / f"round_{n:03d}/candidates.jsonl")
    assert [(c["prompt_id"], c["candidate"]) for c in cands] == [(i, k) for i in ids for k in range(K)]


def wandb_ids(run: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}


def test_two_processes_split_the_work_write_once_and_resume_either_way(tiny_model, tmp_path, monkeypatch):
    # C: one process, the reference
    run_here(recipe(tiny_model, tmp_path, "c", 1, DPO), tmp_path / "ranks-c", monkeypatch)
    # A: two processes, the same recipe
    torchrun(recipe(tiny_model, tmp_path, "a", 1, DPO), tmp_path / "ranks-a", tmp_path)
    a, c = tmp_path / "a", tmp_path / "c"
    ids = [p["id"] for p in read_jsonl(a / "round_001/prompts.jsonl")]
    assert_split(tmp_path / "ranks-a", "generate", 1, ids)
    assert_split(tmp_path / "ranks-a", "judge", 1, ids)
    assert_same_adapter(tmp_path / "ranks-a", 1)
    assert_candidates(a, 1)
    # one set of files, as one process writes them; the samples do not depend on the split
    assert sorted(p.name for p in (a / "round_001").iterdir()) == sorted(p.name for p in (c / "round_001").iterdir())
    assert not [p for p in a.rglob("*") if TMP_MARK in p.name]
    assert (a / "round_001/prompts.jsonl").read_bytes() == (c / "round_001/prompts.jsonl").read_bytes()
    # the same samples; their log-probabilities are summed while sampling, so a split batch moves their last bits
    ca, cc = read_jsonl(a / "round_001/candidates.jsonl"), read_jsonl(c / "round_001/candidates.jsonl")
    logps = ("logp_policy", "logp_base")
    assert [{k: v for k, v in x.items() if k not in logps} for x in ca] == \
           [{k: v for k, v in x.items() if k not in logps} for x in cc]
    for x, y in zip(ca, cc):
        assert x["logp_policy"] == pytest.approx(y["logp_policy"], abs=1e-4)
        assert x["logp_base"] == pytest.approx(y["logp_base"], abs=1e-4)
    # verdicts on the same candidates: the same comparisons, the same numbers up to float rounding (the judge's
    # prefix cache packs different groups into its rows when the prompts are split)
    va, vc = read_jsonl(a / "round_001/verdicts.jsonl"), read_jsonl(c / "round_001/verdicts.jsonl")
    assert [(v["prompt_id"], v["i"], v["j"], v["principle"]) for v in va] == \
           [(v["prompt_id"], v["i"], v["j"], v["principle"]) for v in vc]
    for x, y in zip(va, vc):
        assert x["p_a_ij"] == pytest.approx(y["p_a_ij"], abs=1e-5) and x["p_a_ji"] == pytest.approx(y["p_a_ji"], abs=1e-5)
    spread = max(v["p_a_ij"] for v in vc) - min(v["p_a_ij"] for v in vc)
    assert spread > 1e-3, "the verdicts differ between comparisons by far more than the tolerance"
    # exactly one W&B run, the manifest's, in the run folder; nothing from the other process anywhere else
    assert len(list((a / "wandb").glob("offline-run-*"))) == 1
    assert wandb_ids(a) == {read_json(a / "manifest.json")["wandb_run_id"]}
    assert not (tmp_path / "wandb-env").exists() or not list((tmp_path / "wandb-env").rglob("offline-run-*"))
    assert read_json(a / "manifest.json")["rounds"]["1"]["processes"] == 2

    # B: the run folder A made with two processes continues with one
    run_here(recipe(tiny_model, tmp_path, "a", 2, DPO), tmp_path / "ranks-b", monkeypatch)
    manifest = read_json(a / "manifest.json")
    assert [manifest["rounds"][n]["processes"] for n in ("1", "2")] == [2, 1]
    assert manifest["rounds"]["2"]["policy_adapter"] == "round_001/adapter"
    assert read_json(a / "round_002/state.json")["completed"] == ["prompts", "generate", "judge", "pairs", "train"]
    assert_candidates(a, 2)
    assert wandb_ids(a) == {manifest["wandb_run_id"]}, "the resumed run appends to the same W&B run"

    # D: the run folder C made with one process continues with two
    torchrun(recipe(tiny_model, tmp_path, "c", 2, DPO), tmp_path / "ranks-d", tmp_path)
    manifest = read_json(c / "manifest.json")
    assert [manifest["rounds"][n]["processes"] for n in ("1", "2")] == [1, 2]
    ids2 = [p["id"] for p in read_jsonl(c / "round_002/prompts.jsonl")]
    assert_split(tmp_path / "ranks-d", "generate", 2, ids2)
    assert_split(tmp_path / "ranks-d", "judge", 2, ids2)
    assert_same_adapter(tmp_path / "ranks-d", 1)
    assert_candidates(c, 2)
    assert {r["round"] for r in events(tmp_path / "ranks-d", "generate")[0]} == {2}, "round 1 was not redone"
    assert wandb_ids(c) == {manifest["wandb_run_id"]}

    # a user error found by the main process (another recipe on this folder) stops both processes with its message
    changed = recipe(tiny_model, tmp_path, "c", 3, {**DPO, "generate": {**DPO["generate"], "temperature": 0.5}})
    failed = torchrun(changed, tmp_path / "ranks-f", tmp_path, ok=False)
    assert failed.returncode != 0
    message = "was made by a different recipe (changed: generate.temperature)"
    assert failed.stderr.count(message) == 2, failed.stderr[-3000:]  # one line from each process, no hang


def test_grpo_with_two_processes_judges_every_group_once_whole(tiny_model, tmp_path):
    torchrun(recipe(tiny_model, tmp_path, "e", 1, GRPO), tmp_path / "ranks-e", tmp_path)
    rows = read_jsonl(tmp_path / "e/round_001/completions.jsonl")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["call"], r["group"]), []).append(r)
    assert len(groups) == 3 and all([r["completion"] for r in g] == [0, 1, 2, 3] for g in groups.values())
    assert all(len({r["prompt_id"] for r in g}) == 1 for g in groups.values())
    reward = events(tmp_path / "ranks-e", "reward")
    assert [r["completions"] for r in reward[0]] == [r["completions"] for r in reward[1]] == [6]
    assert reward[0][0]["groups"] + reward[1][0]["groups"] == [0, 1, 2]  # rank 0's 6 completions end inside group 1
    assert_same_adapter(tmp_path / "ranks-e", 1)
    metrics = read_json(tmp_path / "e/round_001/metrics.json")["train"]
    assert metrics["completions"] == 12 and metrics["steps"] == 2
    assert json.loads((tmp_path / "e/round_001/state.json").read_text())["completed"] == ["prompts", "train"]
