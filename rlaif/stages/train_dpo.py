"""Stage 5, train: TRL's DPOTrainer updates a peft LoRA adapter on the round's pairs.

The helpers here (base model, LoRA set-up across rounds, saving, how far the adapter moved) are
shared with the on-policy RL path in :mod:`rlaif.stages.train_rl`.

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

import math
import shutil
from pathlib import Path

import torch

from rlaif.config import Recipe, build_lora_config, build_trl_config
from rlaif.models import check_weights, load_adapter, load_adapter_state
from rlaif.rundir import TMP_MARK, commit_dir


def to_dataset(pairs: list[dict]):
    """Conversational preference rows for TRL: the chat template is applied by the trainer."""
    from datasets import Dataset

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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def adapter_distance(model, before: dict[str, torch.Tensor]) -> float:
    """L2 distance of the trainable (LoRA) weights from a snapshot."""
    return math.sqrt(sum(((p.detach() - before[n]) ** 2).sum().item() for n, p in model.named_parameters() if n in before))


def make_trainer(trainer_cls, recipe: Recipe, model_path: str, start_adapter: Path | None, **kwargs):
    """A TRL trainer on a LoRA adapter, started from ``start_adapter`` (None: a fresh adapter).

    With ``train.reference: base`` TRL gets the base model plus a LoRA config, so its reference is
    the adapter-disabled base, and the previous round's weights are loaded into the fresh adapter.
    With ``previous`` TRL gets a trainable PeftModel and keeps a frozen copy as its "ref" adapter.
    """
    from peft.utils import set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    check_weights(model_path)
    base = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code,
        use_safetensors=True,
    )
    if recipe.train.reference == "previous" and start_adapter is not None:
        model = load_adapter(base, start_adapter, is_trainable=True)
        return trainer_cls(model=model, **kwargs)
    trainer = trainer_cls(model=base, peft_config=build_lora_config(recipe), **kwargs)
    if start_adapter is not None:
        state = load_adapter_state(start_adapter)
        result = set_peft_model_state_dict(trainer.model, state, adapter_name="default")
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter of {start_adapter} does not fit this LoRA config: {result.unexpected_keys[:3]}")
    return trainer


def save_adapter(trainer, out_dir: Path) -> None:
    """The trained adapter only (not TRL's frozen "ref" copy), committed atomically."""
    tmp = out_dir.with_name(out_dir.name + TMP_MARK + "train")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    commit_dir(tmp, out_dir)


def _eval_metrics(trainer) -> dict:
    out = trainer.evaluate()
    keep = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen", "eval_rewards/rejected")
    return {k.removeprefix("eval_"): out[k] for k in keep if k in out}


def train_dpo(recipe: Recipe, model_path: str, tokenizer, pairs: list[dict], start_adapter: Path | None, out_dir: Path, work_dir: Path):
    """Train one round's adapter and save it to ``out_dir`` (atomically). Returns (metrics, log_history)."""
    from trl import DPOTrainer

    dataset = to_dataset(pairs)
    tokenizer.padding_side = "left"
    trainer = make_trainer(
        DPOTrainer, recipe, model_path, start_adapter, args=build_trl_config(recipe, "dpo", work_dir),
        train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer,
    )
    before_state = trainable_state(trainer.model)
    before = _eval_metrics(trainer)
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
