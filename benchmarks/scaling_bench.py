"""One round with 1 process and with N processes: round time, generation tokens/s, verdicts/s, and the work per process.

    python benchmarks/scaling_bench.py                                  # bundled model, small DPO round, 1 vs 2
    python benchmarks/scaling_bench.py --processes 1,2,4 --set prompts.per_round=32 --out scaling.json

Each configuration is a fresh run folder and a fresh launch of one DPO round of ``--recipe`` (default
recipes/quickstart_cpu.yaml, made smaller by ``SMALL`` and any ``--set``): ``python -m rlaif run`` for one
process, ``torchrun --standalone --nproc_per_node N -m rlaif run`` for more (with ``ACCELERATE_USE_CPU=1``
where there is no GPU), every process with ``OMP_NUM_THREADS`` = ``--threads``. The numbers come from the
run folder: each stage's ``seconds`` in ``metrics.json`` (timed on the main process, from its start to the
last process's results), tokens generated, verdicts written; the per-process work from each process's own
record (``RLAIF_RANK_LOG``). Ratios are against the 1-process run of the same invocation.

On a machine with fewer free cores than processes the processes share cores, so the wall-clock ratio is
not the speed-up more hardware would give; the work per process is what halves.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlaif.rundir import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
SMALL = ["run.rounds=1", "prompts.per_round=8", "generate.max_new_tokens=32", "generate.batch_size=8",
         "dpo.num_train_epochs=1", "eval.each_round=false", "wandb.enabled=false"]


def launch(recipe: Path, overrides: list[str], processes: int, threads: int, rank_log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RLAIF_RANK_LOG": str(rank_log), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    sets = [x for o in overrides for x in ("--set", o)]  # checked by the CLI as a user's would be
    if processes == 1:
        cmd = [sys.executable, "-m", "rlaif", "run", str(recipe), *sets]
    else:
        env.setdefault("ACCELERATE_USE_CPU", "0" if torch.cuda.is_available() else "1")
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(processes),
               "-m", "rlaif", "run", str(recipe), *sets]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def measure(run: Path, rank_log: Path, wall: float) -> dict:
    m = read_json(run / "round_001/metrics.json")
    tokens = sum(c["num_tokens"] for c in read_jsonl(run / "round_001/candidates.jsonl"))
    work: dict[int, dict] = {}
    for path in sorted(rank_log.glob("rank*.jsonl")):
        for row in read_jsonl(path):
            if row["event"] in ("generate", "judge"):
                work.setdefault(row["rank"], {})[row["event"]] = len(row["prompts"])
    stages = ("prompts", "generate", "judge", "pairs", "train")
    return {
        "wall_s": round(wall, 1),  # the launch: imports and model loading included
        "round_s": round(sum(m[s]["seconds"] for s in stages), 1),
        **{f"{s}_s": m[s]["seconds"] for s in ("generate", "judge", "train")},
        "gen_tokens_per_s": tokens / m["generate"]["seconds"],
        "verdicts_per_s": m["judge"]["verdicts"] / m["judge"]["seconds"],
        "dpo_steps": m["train"].get("steps"),
        "prompts_generated_per_process": [work[r].get("generate") for r in sorted(work)],
        "prompts_judged_per_process": [work[r].get("judge") for r in sorted(work)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes/quickstart_cpu.yaml"))
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the baseline")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    counts = [int(x) for x in args.processes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rlaif-scaling-"))
    results = {}
    try:
        for n in counts:
            overrides = [*SMALL, *args.overrides, f"run.output_dir={work / f'run-{n}'}"]
            print(f"[bench] {n} process(es) …", file=sys.stderr, flush=True)
            wall = launch(Path(args.recipe), overrides, n, args.threads, work / f"ranks-{n}")
            results[n] = measure(work / f"run-{n}", work / f"ranks-{n}", wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[counts[0]]
    keys = ("round_s", "generate_s", "judge_s", "train_s", "gen_tokens_per_s", "verdicts_per_s")
    print(f"{'processes':>10} " + " ".join(f"{k:>16}" for k in keys) + "   prompts generated / judged per process")
    for n in counts:
        r = results[n]
        cells = [f"{r[k]:10.2f} ({r[k] / base[k]:4.2f}x)" if base[k] else f"{r[k]:16}" for k in keys]
        print(f"{n:>10} " + " ".join(f"{c:>16}" for c in cells)
              + f"   {r['prompts_generated_per_process']} / {r['prompts_judged_per_process']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"recipe": args.recipe, "overrides": SMALL + args.overrides,
                                              "threads": args.threads, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
