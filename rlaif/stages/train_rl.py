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
  completions on a small model most samples would be masked and the signal lost. A completion has
  ended when it holds any id TRL stops on (:func:`rlaif.stages.generate.eos_ids`: the tokenizer's
  EOS and every id of ``generation_config.eos_token_id``, as Qwen2.5 and Llama-3 list several).
- **Prompts are content.** TRL tokenises the prompts; ``chat_template_kwargs`` has it use
  transformers' ``sanitize_control_tokens`` with :mod:`rlaif.chat`'s control tokens, so a prompt
  that writes ``<|im_end|>`` gets its characters, never the token. Completions reach the judge as
  decoded text and are marked there.
- **Zero-signal groups** (all rewards equal) produce zero advantages under a group baseline; they
  are counted, not hidden.
- **Resuming a killed round** (``train.checkpoint_steps``): checkpoints fall only where a batch of
  generations is used up (TRL does not save the generations it reuses for ``num_iterations`` updates),
  and the reward's records are kept beside each one. Within an epoch (the default is one) the resumed
  round equals the uninterrupted one byte for byte; over several epochs the later epochs' prompt order
  differs after a resume (TRL's ``RepeatSampler`` draws each epoch's order from one generator, which a
  resume starts afresh).
"""

import json
import math
import resource
import statistics
import time
from pathlib import Path

import trl
from datasets import Dataset

from rlaif import chat
from rlaif.config import Recipe, build_trl_config
from rlaif.distributed import gather, process_state, rank_log, sharded_weights, split
from rlaif.errors import RlaifError
from rlaif.judging.constitution import Constitution
from rlaif.judging.judges import NoJudge, build_judge
from rlaif.judging.rank import mean_wins, win_matrix
from rlaif.judging.verdicts import PairJudge, judge_candidates
from rlaif.judging.verifier import apply_verifier
from rlaif.lora import (
    adapter_distance,
    checkpoint_step,
    make_trainer,
    save_adapter,
    train,
    trainable_state,
    work_folder,
)
from rlaif.run import RunContext, say
from rlaif.rundir import read_json, read_jsonl, sha256_dir, write_json, write_jsonl
from rlaif.stages.generate import eos_ids


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"]
    return completion


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    return prompt


REWARD_RECORDS, REWARD_COUNTS = "rlaif_reward_records.jsonl", "rlaif_reward_counts.json"  # in a checkpoint


class JudgeReward:
    """A TRL ``reward_funcs`` callable: scores each prompt's group of completions with the judge.

    TRL passes completions flattened, ``num_generations`` consecutive ones per prompt, plus every
    extra dataset column (we pass ``prompt_id``) repeated to match. Groups are checked to share one
    prompt id, so a reward never lands on another prompt's completion. ``eos_token_ids``: every id
    that ends a completion (:func:`rlaif.stages.generate.eos_ids`). All the groups of a reward step go
    to the judge in one call (one batched pass over every comparison, instead of a call per group).

    With several processes TRL's ``RepeatSampler`` spreads a prompt's group *across* processes (each
    process holds a contiguous slice of the step's completions, and a slice need not end on a group
    boundary), so each call first gathers the whole step, judges a contiguous share of its groups on
    this process, and gathers the mean wins back: every process returns the rewards of its own slice,
    every group is judged once, by one process, whole, and every process keeps the same records (so
    the main process's checkpoint holds all of them). Group ids, and so the principle sampled for each
    comparison, are the same for any number of processes.
    """

    __name__ = "constitution_judge"

    def __init__(self, judge: PairJudge, constitution: Constitution, num_generations: int, principles: str,
                 seed: int, eos_token_ids, truncation_penalty: float, verifier_weight: float = 1.0,
                 verifier_strength: float = 1.0, state=None):
        self.state = state or process_state()
        self.judge, self.constitution, self.k = judge, constitution, num_generations
        self.verifier = (verifier_weight, verifier_strength)
        self.principles, self.seed, self.eos, self.penalty = principles, seed, set(eos_token_ids), truncation_penalty
        self.records: list[dict] = []
        self.groups = 0
        self.zero_signal_groups = 0
        self.calls = 0

    def save(self, checkpoint: Path) -> None:
        """Keep the records and counts so far beside a trainer checkpoint (a resumed round continues them)."""
        write_jsonl(checkpoint / REWARD_RECORDS, self.records)
        write_json(checkpoint / REWARD_COUNTS, {"groups": self.groups, "zero_signal_groups": self.zero_signal_groups,
                                                "calls": self.calls})

    def restore(self, checkpoint: Path) -> None:
        self.records = read_jsonl(checkpoint / REWARD_RECORDS)
        counts = read_json(checkpoint / REWARD_COUNTS)
        self.groups, self.zero_signal_groups, self.calls = counts["groups"], counts["zero_signal_groups"], counts["calls"]

    def __call__(self, prompts, completions, prompt_id, completion_ids=None, constraints=None, **kwargs) -> list[float]:
        self.calls += 1
        step = getattr(kwargs.get("trainer_state"), "global_step", None)
        local = [(_prompt_text(p), _text(c), pid,
                  completion_ids is not None and not self.eos.intersection(list(completion_ids[i])),
                  constraints[i] if constraints else "")
                 for i, (p, c, pid) in enumerate(zip(prompts, completions, prompt_id))]
        sizes = gather(self.state, [len(local)])
        items = gather(self.state, local)  # the whole step, in TRL's order (process slices concatenated)
        if len(items) % self.k:
            raise ValueError(f"{len(items)} completions do not split into groups of {self.k}")
        groups = list(range(len(items) // self.k))
        for g in groups:
            ids = {m[2] for m in items[g * self.k : (g + 1) * self.k]}
            if len(ids) != 1:
                raise ValueError(f"a group of {self.k} completions mixes prompts {sorted(ids)}")
        mine = split(self.state, groups)
        rank_log(self.state, "reward", call=self.calls, completions=len(local), groups=mine)
        wins = gather(self.state, self._mean_wins(items, mine))  # every group's, in item order
        rewards: list[float] = []
        for g in groups:
            members, w = items[g * self.k : (g + 1) * self.k], wins[g * self.k : (g + 1) * self.k]
            group = [x - (self.penalty if m[3] else 0.0) for x, m in zip(w, members)]
            self.groups += 1
            if max(group) - min(group) < 1e-6:
                self.zero_signal_groups += 1
            for i, (m, r, x) in enumerate(zip(members, group, w)):
                self.records.append({"step": step, "call": self.calls, "group": g, "prompt_id": m[2], "completion": i,
                                     "text": m[1], "reward": r, "mean_win": x, "truncated": m[3]})
            rewards += group
        first = sum(sizes[: self.state.process_index])
        return rewards[first : first + len(local)]

    def _mean_wins(self, items: list[tuple], groups: list[int]) -> list[float]:
        """Each completion's mean win within its group, for ``groups`` (indices into ``items``, K apiece),
        from one judge call over all their comparisons; the verifier decides as on the DPO path."""
        prompts, cands = [], []
        for g in groups:
            members = items[g * self.k : (g + 1) * self.k]
            group_id = f"{members[0][2]}@{self.calls}:{g}"
            prompts.append({"id": group_id, "prompt": members[0][0],
                            "constraints": json.loads(members[0][4]) if members[0][4] else []})
            cands += [{"prompt_id": group_id, "candidate": i, "text": m[1]} for i, m in enumerate(members)]
        if not cands:
            return []
        verdicts = judge_candidates(self.judge, self.constitution, prompts, cands, self.principles, self.seed)
        verdicts = apply_verifier(verdicts, prompts, cands, *self.verifier)
        by_group: dict[str, list[dict]] = {p["id"]: [] for p in prompts}
        for v in verdicts:
            by_group[v["prompt_id"]].append(v)
        return [w for p in prompts for w in mean_wins(win_matrix(self.k, by_group[p["id"]]))]


def to_prompt_dataset(prompts: list[dict]):
    """TRL's prompt rows; a prompt's constraints travel as JSON text (Arrow would merge their differing shapes)."""
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}], "prompt_id": p["id"],
                               "constraints": json.dumps(p.get("constraints") or [])} for p in prompts])


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
    if cfg.mode == "none":  # the verifier alone: no judge model to load
        judge_adapter, judge = None, NoJudge()
    elif cfg.model == "policy" and recipe.train.rl_judge == "live":
        judge_adapter, judge = "live", None
    else:
        model, tokenizer, adapter = ctx.load_judge(n)
        judge_adapter, judge = ctx.rel(adapter), build_judge(cfg, model, tokenizer, ctx.constitution)
    say(f"round {n}: {recipe.train.method} from " + (ctx.rel(start) or "a fresh adapter")
        + f", judge = {judge_adapter or cfg.model}")
    work, resume = work_folder(ctx, n, ("prompts.jsonl",), start, ctx.seed(n, "train"))
    if resume is not None:
        say(f"round {n}: training resumes from {ctx.rel(resume)}")
    metrics, history, records = train_rl(ctx, n, prompts, judge, start, ctx.run.adapter(n), work, resume)
    if ctx.is_main:
        write_jsonl(ctx.run.path(n, "completions.jsonl"), records)
        write_jsonl(ctx.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": ctx.rel(start), "judge_adapter": judge_adapter,
            "adapter_sha256": sha256_dir(ctx.run.adapter(n))}


def rl_args(recipe: Recipe, tokenizer, work_dir: Path, seed: int | None = None):
    """TRL's GRPOConfig / RLOOConfig for a round: the recipe's, with the round's trainer ``seed``
    (None keeps ``run.seed``) and prompts tokenised with control tokens in content kept as text."""
    args = build_trl_config(recipe, recipe.train.method, work_dir)
    if seed is not None:
        args.seed = seed
    if args.save_strategy == "steps":
        # checkpoints only where a batch of generations is used up: TRL does not save the generations it
        # reuses for num_iterations updates, and regenerates them on resume
        cycle = args.steps_per_generation * args.num_iterations  # in micro-batches
        every = cycle // math.gcd(cycle, args.gradient_accumulation_steps)  # in optimizer steps
        args.save_steps = math.ceil(args.save_steps / every) * every
    args.chat_template_kwargs = {**(args.chat_template_kwargs or {}), **chat.trl_chat_kwargs(tokenizer)}
    return args


def build_rl_trainer(ctx: RunContext, n: int, prompts: list[dict], judge, start_adapter: Path | None, work_dir: Path):
    """(TRL trainer, its :class:`JudgeReward`) for round n of GRPO or RLOO, not yet trained.

    ``judge`` None: judge with the adapter being trained (rl_judge=live). The judge samples its principles
    with the round's judge seed; the trainer gets the round's own seed.
    """
    recipe, tokenizer, constitution = ctx.recipe, ctx.tokenizer, ctx.constitution
    trainer_cls = trl.GRPOTrainer if recipe.train.method == "grpo" else trl.RLOOTrainer
    args = rl_args(recipe, tokenizer, work_dir, ctx.seed(n, "train"))
    reward = JudgeReward(judge, constitution, args.num_generations, recipe.judge.principles, ctx.seed(n, "judge"),
                         {tokenizer.eos_token_id}, recipe.train.truncation_penalty, recipe.judge.verifier_weight,
                         recipe.judge.verifier_strength, ctx.state)
    tokenizer.padding_side = "left"
    trainer = make_trainer(trainer_cls, ctx, start_adapter, args, reward_funcs=[reward],
                           train_dataset=to_prompt_dataset(prompts), processing_class=tokenizer,
                           callbacks=ctx.trainer_callbacks(n))
    reward.eos = eos_ids(trainer.model, tokenizer)  # the ids TRL stops generation on
    if judge is None:
        if sharded_weights(trainer.accelerator):
            raise RlaifError("train.rl_judge: live judges with the weights being trained, which FSDP / DeepSpeed ZeRO-3 "
                             "shard across processes; use rl_judge: round_start, or DDP / ZeRO-2")
        model = trainer.accelerator.unwrap_model(trainer.model)
        reward.judge = _LiveJudge(build_judge(recipe.judge, model, tokenizer, constitution), model)
    return trainer, reward


def train_rl(ctx: RunContext, n: int, prompts: list[dict], judge, start_adapter: Path | None, out_dir: Path,
             work_dir: Path, resume: Path | None = None):
    """One round of GRPO or RLOO (:func:`build_rl_trainer`), saved to ``out_dir``, from the checkpoint
    ``resume`` when given (the reward's records up to it are kept in the checkpoint).

    Returns (metrics, log_history, completion records).
    """
    recipe, method = ctx.recipe, ctx.recipe.train.method
    trainer, reward = build_rl_trainer(ctx, n, prompts, judge, start_adapter, work_dir)
    before = trainable_state(trainer.model)
    if resume is not None:
        reward.restore(resume)
    t0 = time.perf_counter()
    train(trainer, resume, reward.save)
    seconds = time.perf_counter() - t0
    save_adapter(trainer, out_dir)
    history = list(trainer.state.log_history)
    rewards = [r["reward"] for r in reward.records]
    steps, skipped = trainer.state.global_step, checkpoint_step(resume) if resume else 0
    metrics = {
        "method": method,
        "prompts": len(prompts),
        "steps": steps,
        "completions": len(rewards),
        "reward_mean": statistics.fmean(rewards) if rewards else None,
        "reward_std": statistics.pstdev(rewards) if rewards else None,
        "reward_min": min(rewards, default=None),
        "reward_max": max(rewards, default=None),
        "zero_signal_groups": reward.zero_signal_groups,
        "zero_signal_share": reward.zero_signal_groups / reward.groups if reward.groups else None,
        "truncated_share": statistics.fmean(float(r["truncated"]) for r in reward.records) if rewards else None,
        "kl": _mean_logged(history, "kl"),
        "clip_fraction": _mean_logged(history, "clip_ratio/region_mean", "clip_ratio"),
        "completion_mean_length": _mean_logged(history, "completions/mean_length"),
        "loss_mean": _mean_logged(history, "loss"),
        "adapter_delta_norm": adapter_distance(trainer.model, before),
        "seconds_per_step": seconds / (steps - skipped) if steps > skipped else None,
        "resumed_from_step": skipped or None,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "reference": recipe.train.reference,
        "rl_judge": recipe.train.rl_judge,
    }
    return metrics, history, reward.records


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
