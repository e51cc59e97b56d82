"""On-policy RL with the constitution judge as the reward: TRL's GRPOTrainer and RLOOTrainer on LoRA.

TRL 1.16 has no ``PPOTrainer`` (its value-head PPO was removed upstream). What rlaif calls its PPO
path is TRL's ``GRPOTrainer`` (Shao et al. 2024): PPO's clipped surrogate (``epsilon``), several
updates per batch of generations (``num_iterations`` > 1 reuses them under the clipped ratio) and a
KL penalty to a reference (``beta``), but no learned value model: the baseline of each completion is
the mean reward of its prompt's group of ``num_generations`` completions. ``RLOOTrainer`` (Ahmadian
et al. 2024) uses the leave-one-out mean of the group instead. We wrap both; the loss is theirs.

What is ours, and where it deviates:

- **The reward** is the same judge as the DPO path (``judge.mode``): within each prompt's group,
  every pair of completions gets a soft verdict P(i better) (pairwise: both orders averaged;
  pointwise: from the two expected rubric scores), and a completion's reward is its mean win
  probability against the rest of its group (a Borda score on soft wins, in [0, 1]). Bradley–Terry
  strengths would rank the same way but are not bounded; a bounded reward keeps the group baseline
  meaningful. In pointwise mode the reward is a monotone function of the rubric score differences.
- **The judge does not chase the policy inside a round.** By default (``train.rl_judge:
  round_start``) it scores with the adapter as it was when the round began, as the self-rewarding
  papers judge iteration t+1's samples with M_t; ``live`` scores with the adapter being trained.
- **Truncated completions** (no end-of-turn within ``max_completion_length``) keep their place in
  the group but lose ``train.truncation_penalty`` reward, instead of being masked: with short
  completions on a small model most samples would be masked and the signal lost.
- **Zero-signal groups** (all rewards equal) produce zero advantages under a group baseline; they
  are counted, not hidden.
"""

import math
import resource
import shutil
import statistics
import time
from pathlib import Path

import trl
from datasets import Dataset

from rlaif.config import build_trl_config
from rlaif.distributed import gather, process_state, rank_log, sharded_weights, split
from rlaif.errors import RlaifError
from rlaif.judging.constitution import Constitution
from rlaif.judging.judges import PairJudge, build_judge, judge_candidates
from rlaif.judging.rank import mean_wins, win_matrix
from rlaif.lora import adapter_distance, make_trainer, save_adapter, trainable_state
from rlaif.run import RunContext, say
from rlaif.rundir import TMP_MARK, read_jsonl, sha256_dir, write_jsonl


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"]
    return completion


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    return prompt


class JudgeReward:
    """A TRL ``reward_funcs`` callable: scores each prompt's group of completions with the judge.

    TRL passes completions flattened, ``num_generations`` consecutive ones per prompt, plus every
    extra dataset column (we pass ``prompt_id``) repeated to match. Groups are checked to share one
    prompt id, so a reward never lands on another prompt's completion. All the groups of a reward step
    go to the judge in one call (one batched pass over every comparison, instead of a call per group).

    With several processes TRL's ``RepeatSampler`` spreads a prompt's group *across* processes (each
    process holds a contiguous slice of the step's completions, and a slice need not end on a group
    boundary), so each call first gathers the whole step, judges a contiguous share of its groups on
    this process, and gathers the rewards back: every process returns the rewards of its own slice,
    and every group is judged once, by one process, whole. Group ids, and so the principle sampled
    for each comparison, are the same for any number of processes.
    """

    __name__ = "constitution_judge"

    def __init__(self, judge: PairJudge, constitution: Constitution, num_generations: int, principles: str,
                 seed: int, eos_token_id: int, truncation_penalty: float, state=None):
        self.judge, self.constitution, self.k = judge, constitution, num_generations
        self.principles, self.seed, self.eos, self.penalty = principles, seed, eos_token_id, truncation_penalty
        self.state = state or process_state()
        self.records: list[dict] = []  # this process's judged groups (gather them for the round's file)
        self.calls = 0

    def __call__(self, prompts, completions, prompt_id, completion_ids=None, **kwargs) -> list[float]:
        self.calls += 1
        step = getattr(kwargs.get("trainer_state"), "global_step", None)
        local = [
            (_prompt_text(p), _text(c), pid, completion_ids is not None and self.eos not in list(completion_ids[i]))
            for i, (p, c, pid) in enumerate(zip(prompts, completions, prompt_id))
        ]
        sizes = gather(self.state, [len(local)])
        items = gather(self.state, local)  # the whole step, in TRL's order (process slices concatenated)
        if len(items) % self.k:
            raise ValueError(f"{len(items)} completions do not split into groups of {self.k}")
        groups = list(range(len(items) // self.k))
        mine = split(self.state, groups)
        rank_log(self.state, "reward", call=self.calls, completions=len(local), groups=mine)
        rewards = gather(self.state, self._judge_groups(items, mine, step))
        first = sum(sizes[: self.state.process_index])
        return rewards[first : first + len(local)]

    def _judge_groups(self, items: list[tuple], groups: list[int], step) -> list[float]:
        """Rewards of the completions of ``groups`` (indices into ``items``, K apiece), in one judge call."""
        prompts, cands = [], []
        for g in groups:
            members = items[g * self.k : (g + 1) * self.k]
            ids = {m[2] for m in members}
            if len(ids) != 1:
                raise ValueError(f"a group of {self.k} completions mixes prompts {sorted(ids)}")
            group_id = f"{members[0][2]}@{self.calls}:{g}"
            prompts.append({"id": group_id, "prompt": members[0][0]})
            cands += [{"prompt_id": group_id, "candidate": i, "text": m[1]} for i, m in enumerate(members)]
        verdicts = judge_candidates(self.judge, self.constitution, prompts, cands, self.principles, self.seed) if cands else []
        by_group: dict[str, list[dict]] = {p["id"]: [] for p in prompts}
        for v in verdicts:
            by_group[v["prompt_id"]].append(v)
        rewards: list[float] = []
        for g, p in zip(groups, prompts):
            members = items[g * self.k : (g + 1) * self.k]
            wins = mean_wins(win_matrix(self.k, by_group[p["id"]]))
            group = [w - (self.penalty if m[3] else 0.0) for w, m in zip(wins, members)]
            for i, (m, r, w) in enumerate(zip(members, group, wins)):
                self.records.append({"step": step, "call": self.calls, "group": g, "prompt_id": m[2], "completion": i,
                                     "text": m[1], "reward": r, "mean_win": w, "truncated": m[3]})
            rewards += group
        return rewards


def zero_signal(records: list[dict]) -> tuple[int, int]:
    """(groups, groups whose rewards are all equal): under a group baseline the latter teach nothing."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["call"], r["group"]), []).append(r["reward"])
    return len(groups), sum(max(g) - min(g) < 1e-6 for g in groups.values())


def to_prompt_dataset(prompts: list[dict]):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}], "prompt_id": p["id"]} for p in prompts])


def _mean_logged(history: list[dict], *keys: str) -> float | None:
    for key in keys:
        vals = [h[key] for h in history if key in h and isinstance(h[key], (int, float)) and not math.isnan(h[key])]
        if vals:
            return statistics.fmean(vals)
    return None


def run(ctx: RunContext, n: int) -> dict:
    """The train stage of a GRPO/RLOO round: sample, judge and update inside TRL's trainer."""
    recipe, cfg = ctx.recipe, ctx.recipe.judge
    prompts = read_jsonl(ctx.run.path(n, "prompts.jsonl"))
    start = ctx.policy_adapter(n)
    if cfg.model == "policy" and recipe.train.rl_judge == "live":
        judge_adapter, judge = "live", None
    else:
        model, tokenizer, adapter = ctx.load_judge(n)
        judge_adapter, judge = ctx.rel(adapter), build_judge(cfg, model, tokenizer, ctx.constitution)
    say(f"round {n}: {recipe.train.method} from " + (ctx.rel(start) or "a fresh adapter")
        + f", judge = {judge_adapter or cfg.model}")
    work = ctx.run.round_dir(n) / f"trainer{TMP_MARK}work"
    metrics, history, records = train_rl(ctx, prompts, judge, start, ctx.run.adapter(n), work, ctx.seed(n, "judge"))
    if ctx.is_main:
        shutil.rmtree(work, ignore_errors=True)
        write_jsonl(ctx.run.path(n, "completions.jsonl"), records)
        write_jsonl(ctx.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": ctx.rel(start), "judge_adapter": judge_adapter,
            "adapter_sha256": sha256_dir(ctx.run.adapter(n))}


def train_rl(ctx: RunContext, prompts: list[dict], judge, start_adapter: Path | None, out_dir: Path, work_dir: Path,
             seed: int):
    """One round of GRPO or RLOO. ``judge`` None: judge with the adapter being trained (rl_judge=live).

    Returns (metrics, log_history, completion records).
    """
    recipe, tokenizer, constitution = ctx.recipe, ctx.tokenizer, ctx.constitution
    method = recipe.train.method
    trainer_cls = trl.GRPOTrainer if method == "grpo" else trl.RLOOTrainer
    args = build_trl_config(recipe, method, work_dir)
    reward = JudgeReward(judge, constitution, args.num_generations, recipe.judge.principles, seed,
                         tokenizer.eos_token_id, recipe.train.truncation_penalty, ctx.state)
    tokenizer.padding_side = "left"
    trainer = make_trainer(trainer_cls, ctx, start_adapter, args, reward_funcs=[reward],
                           train_dataset=to_prompt_dataset(prompts), processing_class=tokenizer)
    if judge is None:
        if sharded_weights(trainer.accelerator):
            raise RlaifError("train.rl_judge: live judges with the weights being trained, which FSDP / DeepSpeed ZeRO-3 "
                             "shard across processes; use rl_judge: round_start, or DDP / ZeRO-2")
        model = trainer.accelerator.unwrap_model(trainer.model)
        reward.judge = _LiveJudge(build_judge(recipe.judge, model, tokenizer, constitution), model)
    before = trainable_state(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    save_adapter(trainer, out_dir)
    history = list(trainer.state.log_history)
    records = sorted(gather(ctx.state, reward.records), key=lambda r: (r["call"], r["group"], r["completion"]))
    rewards = [r["reward"] for r in records]
    groups, flat = zero_signal(records)
    steps = trainer.state.global_step
    metrics = {
        "method": method,
        "prompts": len(prompts),
        "steps": steps,
        "completions": len(rewards),
        "reward_mean": statistics.fmean(rewards) if rewards else None,
        "reward_std": statistics.pstdev(rewards) if rewards else None,
        "reward_min": min(rewards, default=None),
        "reward_max": max(rewards, default=None),
        "zero_signal_groups": flat,
        "zero_signal_share": flat / groups if groups else None,
        "truncated_share": statistics.fmean(float(r["truncated"]) for r in records) if rewards else None,
        "kl": _mean_logged(history, "kl"),
        "clip_fraction": _mean_logged(history, "clip_ratio/region_mean", "clip_ratio"),
        "completion_mean_length": _mean_logged(history, "completions/mean_length"),
        "loss_mean": _mean_logged(history, "loss"),
        "adapter_delta_norm": adapter_distance(trainer.model, before),
        "seconds_per_step": seconds / steps if steps else None,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "reference": recipe.train.reference,
        "rl_judge": recipe.train.rl_judge,
    }
    return metrics, history, records


class _LiveJudge:
    """``rl_judge: live``: the judge reads the adapter being trained (in eval mode, no gradients)."""

    def __init__(self, judge, model):
        self.inner, self.model = judge, model

    def __getattr__(self, name):  # pointwise, rubric, last_label_mass, ... of the wrapped judge
        return getattr(self.inner, name)

    def __call__(self, items):
        was_training = self.model.training
        self.model.eval()
        try:
            return self.inner(items)
        finally:
            self.model.train(was_training)
