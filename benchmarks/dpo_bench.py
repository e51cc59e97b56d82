"""What does a DPO round cost, and does training without the wasted passes give the same adapter?

    python benchmarks/dpo_bench.py RECIPE --round 1 --seeds 0,1 [--set key=value ...]

Reads the round's ``pairs.jsonl`` from the recipe's run folder (make one with ``rlaif run RECIPE --set
run.rounds=1``) and trains that round's adapter from the base (round 1's set-up) with two variants,
taking turns per seed so that other jobs' load falls on both alike:

- ``before``: the train stage as it was: TRL scores the reference in every step
  (``precompute_ref_log_probs: false``) and ``trainer.evaluate()`` runs over the pairs before and
  after training;
- ``after``: the stage as it is (:func:`rlaif.stages.train_dpo.train_dpo`): the reference is scored
  once before training, the margins come from the training log.

Time is reported as wall-clock and as this process's CPU seconds (all threads), which another process
on a shared machine disturbs far less; per step = the ``trainer.train()`` call over its optimizer steps.
Quality: one shared scorer loads every trained adapter and computes its DPO margins on the same pairs,
β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] with the adapter-off base as π_ref;
the spread between seeds of one variant is the noise the variants' difference is compared with.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from trl import DPOTrainer

from rlaif.config import build_trl_config, load_recipe
from rlaif.lora import make_trainer, save_adapter
from rlaif.run import RunContext
from rlaif.rundir import read_jsonl
from rlaif.stages.train_dpo import TokenizedDPOTrainer, to_dataset, train_dpo

TIMED = ("train", "evaluate", "_precompute_ref_logps")


class Clock:
    """Wall and CPU seconds spent inside the DPOTrainer methods in ``TIMED`` (wrappers that only time)."""

    def __init__(self):
        self.seconds = {}
        for name in TIMED:
            original = getattr(DPOTrainer, name)
            setattr(DPOTrainer, name, self._timed(name, original))

    def _timed(self, name, original):
        def wrapper(trainer, *args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(trainer, *args, **kwargs)
            finally:
                w, c = self.seconds.get(name, (0.0, 0.0))
                self.seconds[name] = (w + time.perf_counter() - wall, c + time.process_time() - cpu)
        return wrapper


def train_before(ctx, n, pairs, out_dir, work_dir):
    """The train stage before this change: reference every step, evaluate() before and after."""
    args = build_trl_config(ctx.recipe, "dpo", work_dir)
    args.precompute_ref_log_probs = False
    args.seed = ctx.seed(n, "train")
    data = to_dataset(pairs, ctx.tokenizer)
    ctx.tokenizer.padding_side = "left"
    trainer = make_trainer(TokenizedDPOTrainer, ctx, None, args, train_dataset=data, eval_dataset=data,
                           processing_class=ctx.tokenizer)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    save_adapter(trainer, out_dir)
    return {"reward_margin_before": before["eval_rewards/margins"], "reward_margin_after": after["eval_rewards/margins"],
            "reward_accuracy_after": after["eval_rewards/accuracies"], "steps": trainer.state.global_step}


def train_after(ctx, n, pairs, out_dir, work_dir):
    metrics, _ = train_dpo(ctx, n, pairs, None, out_dir, work_dir)
    return metrics


VARIANTS = {"before": train_before, "after": train_after}


@torch.no_grad()
def completion_logps(model, tokenizer, pairs, side: str) -> list[float]:
    """Summed log-probability of each pair's ``side`` response, tokenised as training tokenises it
    (:func:`rlaif.stages.train_dpo.to_dataset`: a truncated response is left open)."""
    out = []
    for row in to_dataset(pairs, tokenizer):
        prompt, response = row["prompt_ids"], row[f"{side}_ids"]
        x = torch.tensor([prompt + response], device=model.device)
        logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
        targets = x[0, 1:]
        out.append(logp[torch.arange(len(targets)), targets][len(prompt) - 1 :].sum().item())
    return out


def margins(ctx, adapter, pairs, base_logps, beta) -> list[float]:
    model = ctx.load(adapter)
    chosen, rejected = (completion_logps(model, ctx.tokenizer, pairs, s) for s in ("chosen", "rejected"))
    return [beta * ((c - bc) - (r - br)) for c, r, (bc, br) in zip(chosen, rejected, base_logps)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write every number as JSON here")
    ap.add_argument("--work", default=None, help="keep the adapters here; one already there is scored, not retrained")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    probe = RunContext(recipe)
    pairs = read_jsonl(probe.run.path(args.round, "pairs.jsonl"))
    beta = build_trl_config(recipe, "dpo", tempfile.gettempdir()).beta
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dpo_bench-"))
    clock = Clock()
    results = []
    for seed in seeds:
        for variant in variants:
            seeded = load_recipe(args.recipe, [*args.overrides, f"run.seed={seed}"])
            ctx = RunContext(seeded)
            if (work / f"{variant}-{seed}" / "adapter_config.json").is_file():
                results.append({"variant": variant, "seed": seed, "reused": True})
                continue
            clock.seconds = {}
            wall, cpu = time.perf_counter(), time.process_time()
            metrics = VARIANTS[variant](ctx, args.round, pairs, work / f"{variant}-{seed}", work / "trainer")
            row = {"variant": variant, "seed": seed, "stage_wall_s": time.perf_counter() - wall,
                   "stage_cpu_s": time.process_time() - cpu, "steps": metrics["steps"],
                   **{f"{k.strip('_')}_{u}_s": v[i] for k, v in clock.seconds.items() for i, u in enumerate(("wall", "cpu"))},
                   "logged": {k: metrics.get(k) for k in ("reward_margin_before", "reward_margin_after", "reward_accuracy_after")}}
            row["step_wall_s"] = row["train_wall_s"] / row["steps"]
            row["step_cpu_s"] = row["train_cpu_s"] / row["steps"]
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = ctx.load_base()
    base_logps = list(zip(*(completion_logps(base, ctx.tokenizer, pairs, s) for s in ("chosen", "rejected"))))
    del base
    for row in results:
        m = margins(ctx, work / f"{row['variant']}-{row['seed']}", pairs, base_logps, beta)
        row["margins"] = m
        row["margin_mean"], row["accuracy"] = statistics.fmean(m), sum(x > 0 for x in m) / len(m)
    print(f"\n{len(pairs)} pairs of {probe.run.path(args.round, 'pairs.jsonl')}, seeds {seeds}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| variant | seed | steps | stage wall s | stage CPU s | CPU s/step | wall s/step | precompute CPU s | "
          "evaluate CPU s | margin (shared scorer) | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("reused"):
            print(f"| {r['variant']} | {r['seed']} | (trained earlier: scored only) | | | | | | | "
                  f"{r['margin_mean']:.3f} | {r['accuracy']:.2f} |")
            continue
        print(f"| {r['variant']} | {r['seed']} | {r['steps']} | {r['stage_wall_s']:.1f} | {r['stage_cpu_s']:.1f} | "
              f"{r['step_cpu_s']:.2f} | {r['step_wall_s']:.2f} | {r.get('precompute_ref_logps_cpu_s', 0):.1f} | "
              f"{r.get('evaluate_cpu_s', 0):.1f} | {r['margin_mean']:.3f} | {r['accuracy']:.2f} |")
    by = {v: [r for r in results if r["variant"] == v] for v in variants}
    cpu, step = {}, {}
    if {"before", "after"} <= set(by):
        timed = {v: [r for r in rows if not r.get("reused")] for v, rows in by.items()}
        cpu = {v: statistics.fmean(r["stage_cpu_s"] for r in rows) for v, rows in timed.items() if rows}
        step = {v: statistics.fmean(r["step_cpu_s"] for r in rows) for v, rows in timed.items() if rows}
    if len(cpu) == 2:
        print(f"\n- stage: {cpu['before'] / cpu['after']:.2f}x less CPU ({cpu['before']:.1f} -> {cpu['after']:.1f} CPU-s)")
        print(f"- per step: {step['before'] / step['after']:.2f}x less CPU ({step['before']:.2f} -> {step['after']:.2f} CPU-s)")
    if {"before", "after"} <= set(by):
        for seed in seeds:
            a, b = (next(r for r in by[v] if r["seed"] == seed)["margins"] for v in ("before", "after"))
            print(f"- seed {seed}: mean margin before-variant {statistics.fmean(a):.3f}, after-variant "
                  f"{statistics.fmean(b):.3f}; per pair mean |difference| {statistics.fmean(abs(x - y) for x, y in zip(a, b)):.4f}")
        if len(seeds) > 1:
            for v in ("before", "after"):
                a, b = by[v][0]["margins"], by[v][1]["margins"]
                print(f"- noise, variant {v}: seeds {seeds[0]} vs {seeds[1]}: mean margin {statistics.fmean(a):.3f} vs "
                      f"{statistics.fmean(b):.3f}; per pair mean |difference| {statistics.fmean(abs(x - y) for x, y in zip(a, b)):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
