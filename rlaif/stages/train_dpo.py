"""Stage 5, train: TRL's DPOTrainer updates a peft LoRA adapter on the round's pairs.

The LoRA set-up across rounds lives in :mod:`rlaif.lora` (shared with :mod:`rlaif.stages.train_rl`).

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
- **No wasted passes.** The reference is fixed within a round (the adapter-off base, or the frozen
  copy of the starting adapter), so its log-probs are computed once before training (TRL's
  ``precompute_ref_log_probs``, on in ``DPO_DEFAULTS``) instead of in every step of every epoch.
- **Evidence, from the training log.** TRL logs ``rewards/margins`` (β·[(log π − log π_ref)(chosen) −
  (…)(rejected)]) and ``rewards/accuracies`` for every step, each measured on the step's batch just
  before the update; rlaif does not run separate evaluation passes over the pairs. ``before`` is 0
  by construction where the policy starts as its own reference (a fresh adapter, or ``previous``);
  otherwise (``base`` from round 2 on) it is the first logged step, the only measurement no update
  has touched (exact with ``logging_steps: 1``, but on one batch). ``after`` is the mean over the
  last epoch's steps: every pair, each measured before the trainer's last update on it, so it lags
  the final adapter a little. Both err toward understating what the round's training did. (Where
  the margin is 0, TRL's first-step accuracy is the sign of float rounding: the reference was
  scored in other batches.) The adapter's distance from where the round started is recorded too.
"""

import shutil
from pathlib import Path

from datasets import Dataset, load_from_disk
from trl import DPOTrainer

from rlaif import chat
from rlaif.config import build_trl_config
from rlaif.distributed import on_main
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
from rlaif.rundir import TMP_MARK, commit_dir, read_jsonl, sha256_dir, write_jsonl


def to_dataset(pairs: list[dict], tokenizer):
    """Tokenised preference rows for :class:`TokenizedDPOTrainer` (see the module doc).

    The prompt is the common prefix of the two templated exchanges, as TRL splits it; a response
    marked truncated in the pair is left open (no end-of-turn token).
    """
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


def logged_windows(history: list[dict]) -> tuple[dict, dict]:
    """(first logged step, mean over the last epoch's logged steps) of TRL's per-step training logs."""
    steps = [h for h in history if "rewards/margins" in h and "loss" in h]
    if not steps:
        return {}, {}
    last_epoch = [h for h in steps if h["epoch"] > steps[-1]["epoch"] - 1 + 1e-9]
    keys = ("rewards/margins", "rewards/accuracies")
    return ({k: steps[0][k] for k in keys},
            {k: sum(h[k] for h in last_epoch) / len(last_epoch) for k in keys})


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
    work, resume = work_folder(ctx, n, ("pairs.jsonl",), start, ctx.seed(n, "train"))
    if resume is not None:
        say(f"round {n}: training resumes from {ctx.rel(resume)}")
    metrics, history = train_dpo(ctx, n, pairs, start, out, work, resume)
    write_jsonl(ctx.run.path(n, "train_log.jsonl"), history)
    return {**metrics, "start_adapter": ctx.rel(start), "adapter_sha256": sha256_dir(out),
            "resumed_from_step": checkpoint_step(resume) if resume else None}


def shared_dataset(ctx: RunContext, dataset: Dataset, folder: Path) -> Dataset:
    """With several processes, the dataset saved by the main process and read back from disk by every one.

    TRL 1.16 caches the precomputed reference log-probs in a file beside the dataset's own cache files, which
    the main process writes and every process reads; an in-memory dataset has none, so each process would
    look in its own temporary folder and all but the main one fail. One process keeps it in memory.
    """
    if ctx.state.num_processes == 1:
        return dataset

    def save() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        dataset.save_to_disk(str(folder))

    on_main(ctx.state, save, share_result=False)
    return load_from_disk(str(folder))


def train_dpo(ctx: RunContext, n: int, pairs: list[dict], start_adapter, out_dir, work_dir, resume=None):
    """Train one round's adapter and save it to ``out_dir`` (atomically), from the checkpoint ``resume`` when
    given (:func:`rlaif.lora.train`). Returns (metrics, log_history)."""
    recipe, tokenizer = ctx.recipe, ctx.tokenizer
    dataset = shared_dataset(ctx, to_dataset(pairs, tokenizer), work_dir / "pairs_dataset")
    tokenizer.padding_side = "left"
    args = build_trl_config(recipe, "dpo", work_dir)
    args.seed = ctx.seed(n, "train")  # each round's trainer draws its own stream
    trainer = make_trainer(
        TokenizedDPOTrainer, ctx, start_adapter, args,
        train_dataset=dataset, processing_class=tokenizer, callbacks=ctx.trainer_callbacks(n),
    )
    before_state = trainable_state(trainer.model)
    train(trainer, resume)
    save_adapter(trainer, out_dir)
    history = list(trainer.state.log_history)
    before, after = logged_windows(history)
    if start_adapter is None or recipe.train.reference == "previous":  # the policy starts as its reference
        before = {"rewards/margins": 0.0, "rewards/accuracies": 0.0}
    train_logs = [h for h in history if "loss" in h]
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "loss_first": train_logs[0]["loss"] if train_logs else None,
        "loss_last": train_logs[-1]["loss"] if train_logs else None,
        "reward_margin_before": before.get("rewards/margins"),
        "reward_margin_after": after.get("rewards/margins"),
        "reward_accuracy_before": before.get("rewards/accuracies"),
        "reward_accuracy_after": after.get("rewards/accuracies"),
        "adapter_delta_norm": adapter_distance(trainer.model, before_state),
        "reference": recipe.train.reference,
    }
    return metrics, history
