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
- **Tokenisation is ours.** TRL 1.16's DPOTrainer tokenises conversational rows itself, parsing
  control tokens in content and closing every response with the end-of-turn token. We hand it rows
  already tokenised by :mod:`rlaif.chat` (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, split as
  TRL splits them) through :class:`TokenizedDPOTrainer`: content that writes ``<|im_end|>`` stays
  text, and a candidate cut off at ``max_new_tokens`` (``chosen_truncated`` / ``rejected_truncated``
  in pairs.jsonl) is left open, so DPO never teaches the model to end a turn mid-sentence.
- **Evidence.** TRL's own evaluation runs on the round's pairs before and after training; its
  ``rewards/margins`` (β·[(log π − log π_ref)(chosen) − (…)(rejected)]) must move toward the chosen
  responses. The adapter's distance from where the round started is recorded too.
"""

import math
import shutil
from pathlib import Path

import torch
from trl import DPOTrainer

from rlaif import chat
from rlaif.config import Recipe, build_lora_config, build_trl_config
from rlaif.rundir import commit_dir


def to_dataset(pairs: list[dict], tokenizer):
    """Tokenised preference rows for :class:`TokenizedDPOTrainer` (see the module doc).

    The prompt is the common prefix of the two templated exchanges, as TRL splits it; a response
    marked truncated in the pair is left open (no end-of-turn token).
    """
    from datasets import Dataset

    rows = []
    for p in pairs:
        prompt, chosen = chat.response_ids(tokenizer, p["prompt"], p["chosen"], not p.get("chosen_truncated", False))
        prompt_r, rejected = chat.response_ids(tokenizer, p["prompt"], p["rejected"], not p.get("rejected_truncated", False))
        n = chat.common_prefix(prompt, prompt_r)
        rows.append({"prompt_ids": prompt[:n], "chosen_ids": prompt[n:] + chosen, "rejected_ids": prompt_r[n:] + rejected})
    return Dataset.from_list(rows)


class TokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer on rows that are already tokenised (``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    TRL 1.16 always re-tokenises in ``_prepare_dataset`` (its ``evaluate`` comment calls that method
    idempotent on tokenised data; it is not). This keeps what TRL does after tokenising: dropping rows
    whose prompt alone fills ``max_length`` under ``keep_start`` truncation.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset


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
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code
    )
    if recipe.train.reference == "previous" and start_adapter is not None:
        model = PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)
        return trainer_cls(model=model, **kwargs)
    trainer = trainer_cls(model=base, peft_config=build_lora_config(recipe), **kwargs)
    if start_adapter is not None:
        state = load_file(str(Path(start_adapter) / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(trainer.model, state, adapter_name="default")
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter of {start_adapter} does not fit this LoRA config: {result.unexpected_keys[:3]}")
    return trainer


def save_adapter(trainer, out_dir: Path) -> None:
    """The trained adapter only (not TRL's frozen "ref" copy), committed atomically."""
    tmp = out_dir.with_name(out_dir.name + ".tmp-train")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    commit_dir(tmp, out_dir)


def _eval_metrics(trainer) -> dict:
    out = trainer.evaluate()
    keep = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen", "eval_rewards/rejected")
    return {k.removeprefix("eval_"): out[k] for k in keep if k in out}


def train_dpo(recipe: Recipe, model_path: str, tokenizer, pairs: list[dict], start_adapter: Path | None, out_dir: Path,
              work_dir: Path, seed: int | None = None):
    """Train one round's adapter and save it to ``out_dir`` (atomically). Returns (metrics, log_history).

    ``seed``: the trainer's seed (the loop derives one per round); None keeps ``run.seed``.
    """
    dataset = to_dataset(pairs, tokenizer)
    tokenizer.padding_side = "left"
    args = build_trl_config(recipe, "dpo", work_dir)
    if seed is not None:
        args.seed = seed
    trainer = make_trainer(
        TokenizedDPOTrainer, recipe, model_path, start_adapter, args=args,
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
