"""Stage 5, train: TRL's DPOTrainer updates a peft LoRA adapter on the round's pairs.

The LoRA set-up across rounds lives in :mod:`rlaif.lora` (shared with :mod:`rlaif.stages.train_rl`).

rlaif wraps the trainer; it does not reimplement DPO (Rafailov et al. 2023). What we decide:

- **Reference model.** ``train.reference: base`` (default): the reference is the base model with the
  adapter disabled, so there is never a second copy of the weights, and every round is anchored to
  the same base (a KL leash against drift across rounds). Round n ≥ 2 starts its adapter from round
  n−1's weights. ``previous``: the reference is a frozen copy of the adapter the round starts from
  (TRL's "ref" adapter), as in iterative DPO / Self-Rewarding LMs, where iteration t+1 is trained
  against M_t.
- **Evidence.** TRL's own evaluation runs on the round's pairs before and after training; its
  ``rewards/margins`` (β·[(log π − log π_ref)(chosen) − (…)(rejected)]) must move toward the chosen
  responses. The adapter's distance from where the round started is recorded too.
"""

import shutil

from datasets import Dataset
from trl import DPOTrainer

from rlaif.config import build_trl_config
from rlaif.distributed import train_after_evaluate
from rlaif.lora import adapter_distance, make_trainer, save_adapter, trainable_state
from rlaif.run import RunContext, say
from rlaif.rundir import TMP_MARK, commit_dir, read_jsonl, sha256_dir, write_jsonl


def to_dataset(pairs: list[dict]):
    """Conversational preference rows for TRL: the chat template is applied by the trainer."""
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def _eval_metrics(trainer) -> dict:
    out = trainer.evaluate()
    keep = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen", "eval_rewards/rejected")
    return {k.removeprefix("eval_"): out[k] for k in keep if k in out}


def run(ctx: RunContext, n: int) -> dict:
    """The train stage of a DPO round: the round's pairs train the adapter that round n+1 starts from."""
    pairs = read_jsonl(ctx.run.path(n, "pairs.jsonl"))
    start = ctx.policy_adapter(n)
    out = ctx.run.adapter(n)
    if not pairs:
        say(f"round {n}: no preference pairs survived the filters; the policy is carried over unchanged")
        if not ctx.is_main:
            return {"pairs": 0, "skipped": "no pairs", "start_adapter": ctx.rel(start)}
        if start is not None:
            tmp = out.with_name(out.name + TMP_MARK + "copy")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(start, tmp)
            commit_dir(tmp, out)
        write_jsonl(ctx.run.path(n, "train_log.jsonl"), [])
        return {"pairs": 0, "skipped": "no pairs", "start_adapter": ctx.rel(start)}
    work = ctx.run.round_dir(n) / f"trainer{TMP_MARK}work"
    metrics, history = train_dpo(ctx, pairs, start, out, work)  # under DDP with several processes
    if ctx.is_main:
        shutil.rmtree(work, ignore_errors=True)
        write_jsonl(ctx.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": ctx.rel(start), "adapter_sha256": sha256_dir(out)}


def train_dpo(ctx: RunContext, pairs: list[dict], start_adapter, out_dir, work_dir):
    """Train one round's adapter and save it to ``out_dir`` (atomically). Returns (metrics, log_history)."""
    recipe, tokenizer = ctx.recipe, ctx.tokenizer
    dataset = to_dataset(pairs)
    tokenizer.padding_side = "left"
    trainer = make_trainer(
        DPOTrainer, ctx, start_adapter, build_trl_config(recipe, "dpo", work_dir),
        train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer,
    )
    before_state = trainable_state(trainer.model)
    before = _eval_metrics(trainer)
    train_after_evaluate(trainer)
    trainer.train()
    after = _eval_metrics(trainer)
    save_adapter(trainer, out_dir)
    history = list(trainer.state.log_history)
    train_logs = [h for h in history if "loss" in h and "eval_loss" not in h]
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "loss_first": train_logs[0]["loss"] if train_logs else None,
        "loss_last": train_logs[-1]["loss"] if train_logs else None,
        "reward_margin_before": before.get("rewards/margins"),
        "reward_margin_after": after.get("rewards/margins"),
        "reward_accuracy_before": before.get("rewards/accuracies"),
        "reward_accuracy_after": after.get("rewards/accuracies"),
        "eval_loss_before": before.get("loss"),
        "eval_loss_after": after.get("loss"),
        "adapter_delta_norm": adapter_distance(trainer.model, before_state),
        "reference": recipe.train.reference,
    }
    return metrics, history
