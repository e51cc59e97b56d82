"""Does the loop make the model better, and what does the self-judge contribute? Issue 11's part D, one run.

    python benchmarks/improve_bench.py                                   # recipes/improve_cpu.yaml, 3 arms
    python benchmarks/improve_bench.py --arms both --out improve.json    # just the recipe as written

Every arm is a fresh run of ``--recipe`` on the same budget (same rounds, prompts, candidates and training),
differing only in who decides the preference pairs:

- ``both``: the recipe as written. On prompts that carry constraints the verifier decides where two
  candidates meet different shares of them and the self-judge breaks its ties; other prompts are judged by
  the self-judge alone.
- ``judge``: the self-judge alone everywhere (``judge.verifier_weight=0``); the prompts still carry their
  constraints, in words, so only the source of the verdicts differs.
- ``verifier``: the verifier alone (``judge.mode=none``): ties stay ties, so prompts whose candidates all meet
  the same share, and prompts without constraints, give no pair.

Each arm is then measured by ``rlaif eval --rounds LAST`` (the base and the last round): held-out win-rate
against the base by the frozen base judge, the share of instruction constraints met on rlaif's 155
held-out instruction prompts with the paired bootstrap interval of its gain over the base, distinct-2,
length and the KL estimate. The base's answers are the same in every arm (same seed and settings), so they
are computed once and copied into the other arms' eval caches, where ``rlaif eval`` checks their settings
before reading them. Nothing here trains on an evaluation prompt: training draws only from the prompt set's
training split (tested in tests/test_verifier_loop.py).

Prints one table row per arm and the issue's acceptance checks, and writes every number to ``--out``. This
is a benchmark, not a timed test: each arm takes about as long as the recipe (minutes per round on 2 CPU
cores), and the machine's other load moves the times, not the verdicts.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlaif.hardware import SPEED_CPU_FLAGS, cpu_flags

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "both": [],
    "judge": ["judge.verifier_weight=0"],
    "verifier": ["judge.mode=none"],
}


def rlaif(*args: str, threads: int) -> float:
    """Run the CLI in a fresh process (as a user would); returns its wall-clock seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlaif", *args], env=env, check=True)
    return time.perf_counter() - start


def share_base(src: Path, dst: Path) -> None:
    """Copy the base's cached eval answers (and the judge's cached accuracy) from one arm to another."""
    for name in ("responses/base.jsonl", "responses/base.meta.json", "judge_accuracy.json"):
        if (src / "eval" / name).is_file():
            (dst / "eval" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / "eval" / name, dst / "eval" / name)


def round_metrics(run: Path) -> list[dict]:
    out = []
    for rd in sorted(run.glob("round_*")):
        m = json.loads((rd / "metrics.json").read_text()) if (rd / "metrics.json").is_file() else {}
        out.append({"round": int(rd.name.split("_")[1]),
                    "pairs": m.get("pairs", {}).get("kept"),
                    "verifier_agreement": m.get("judge", {}).get("verifier_agreement"),
                    "decided_by_verifier": m.get("judge", {}).get("decided_by_verifier"),
                    "constraints_met_share": m.get("judge", {}).get("constraints_met_share"),
                    "truncated_share": m.get("generate", {}).get("truncated_share"),
                    "seconds": {k: v.get("seconds") for k, v in m.items() if isinstance(v, dict) and "seconds" in v}})
    return out


def checks(base: dict, final: dict) -> dict:
    """Issue 11's acceptance points for one arm (booleans, with the numbers they are read from)."""
    gain, lo = final["if_constraint_gain_vs_base"], final["if_constraint_gain_vs_base_ci"][0]
    return {
        "constraint_gain_ge_5_points": gain >= 0.05,
        "constraint_gain_ci_excludes_0": lo > 0,
        "win_rate_vs_base_ge_0.5": final["win_rate_vs_base"] >= 0.5,
        "distinct_2_ge_0.9_base": final["distinct_2"] >= 0.9 * base["distinct_2"],
        "length_within_30pct": abs(final["mean_tokens"] / base["mean_tokens"] - 1) <= 0.30,
        "kl_reported": final.get("kl_to_base") is not None,
    }


def f(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def table(results: dict) -> str:
    head = ("| arm | minutes (run + eval) | pairs | verifier agreement | IF constraints base → last | gain [paired 95% CI] "
            "| win vs base [95% CI] | distinct-2 vs base | tokens vs base | KL | all checks |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, r in results["arms"].items():
        b, m = r["base"], r["final"]
        agree = [x["verifier_agreement"] for x in r["rounds"] if x["verifier_agreement"] is not None
                 and x["verifier_agreement"] == x["verifier_agreement"]]
        g, (lo, hi) = m["if_constraint_gain_vs_base"], m["if_constraint_gain_vs_base_ci"]
        w, (wl, wh) = m["win_rate_vs_base"], m["win_rate_vs_base_ci"]
        lines.append(
            f"| {arm} | {f(r['run_seconds'] / 60, '.0f')} + {f(r['eval_seconds'] / 60, '.0f')} "
            f"| {sum(x['pairs'] or 0 for x in r['rounds'])} | {f(sum(agree) / len(agree)) if agree else '—'} "
            f"| {f(b['if_constraint_accuracy'], '.3f')} → {f(m['if_constraint_accuracy'], '.3f')} "
            f"| {g:+.3f} [{lo:+.3f}, {hi:+.3f}] | {f(w)} [{f(wl)}, {f(wh)}] "
            f"| {f(m['distinct_2'])} / {f(b['distinct_2'])} | {f(m['mean_tokens'], '.1f')} / {f(b['mean_tokens'], '.1f')} "
            f"| {f(m['kl_to_base'], '.3f')} | {'yes' if all(r['checks'].values()) else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "improve_cpu.yaml"))
    ap.add_argument("--arms", default="both,judge,verifier", help="comma-separated, from: " + ", ".join(ARMS))
    ap.add_argument("--root", default="runs/improve_bench", help="one run folder per arm under this")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="SECTION.KEY=VALUE for every arm")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    ap.add_argument("--out", default="benchmarks/results_improve_cpu.json")
    ap.add_argument("--reuse", action="store_true",
                    help="keep an arm's run folder when its run completed (result.json), and only evaluate it")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"error: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    root = Path(args.root)
    results = {"recipe": args.recipe, "overrides": args.overrides, "threads": args.threads,
               "cpu_flags": sorted(cpu_flags() & SPEED_CPU_FLAGS), "arms": {}}
    first = None
    for arm in arms:
        run = root / arm
        done = run / "result.json"
        if args.reuse and done.is_file() and json.loads(done.read_text()).get("status") == "completed":
            run_seconds = sum(sum(r["seconds"].values()) for r in round_metrics(run))  # the stages' own times
            print(f"[improve_bench] {arm}: reusing the completed run in {run}", flush=True)
        else:
            if run.exists():
                shutil.rmtree(run)  # every arm is a fresh run
            sets = [x for o in [f"run.output_dir={run}", "wandb.enabled=false", *args.overrides, *ARMS[arm]]
                    for x in ("--set", o)]
            print(f"[improve_bench] {arm}: rlaif run {args.recipe} {' '.join(sets)}", flush=True)
            run_seconds = rlaif("run", args.recipe, *sets, threads=args.threads)
        last = max(int(p.name.split("_")[1]) for p in run.glob("round_*"))
        if first is not None:
            share_base(first, run)
        eval_seconds = rlaif("eval", str(run), "--rounds", str(last), threads=args.threads)
        first = first or run
        ev = json.loads((run / "eval" / "results.json").read_text())
        base = next(m for m in ev["models"] if m["name"] == "base")
        final = next(m for m in ev["models"] if m["round"] == last and m["name"] != "base")
        results["arms"][arm] = {"overrides": ARMS[arm], "run_seconds": run_seconds, "eval_seconds": eval_seconds,
                                "rounds": round_metrics(run), "judge": ev["judge"], "base": base, "final": final,
                                "checks": checks(base, final), "eval": {k: v for k, v in ev.items() if k != "models"}}
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))  # after every arm: nothing lost
    print(table(results))
    for arm, r in results["arms"].items():
        print(f"{arm}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["checks"].items()))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
