"""LoRA adapters across rounds: the trainer set-up that DPO and GRPO/RLOO share, saving, how far one moved, and
training that resumes from its newest checkpoint after a kill.

Round n ≥ 2 starts its adapter from round n−1's weights. With ``train.reference: base`` (default) TRL
gets the model *path* plus a LoRA config and loads the weights itself with the run context's
``model_init_kwargs`` (device, dtype, attention implementation), so the reference is the adapter-disabled
base and there is never a second copy of the weights; the previous round's weights are then loaded into
the fresh adapter. With ``previous`` TRL gets a trainable ``PeftModel`` of the previous adapter and keeps
a frozen copy of it as its "ref" adapter (iterative DPO / Self-Rewarding LMs train iteration t+1
against M_t).
"""

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft.utils import set_peft_model_state_dict
from transformers import AutoModelForCausalLM, TrainerCallback

from rlaif.config import build_lora_config
from rlaif.distributed import on_main, rank_log, rank_logging, tensors_digest
from rlaif.errors import RlaifError
from rlaif.files import TMP_MARK, _fsync_dir, commit_dir, file_record, read_json, sha256_dir, write_json
from rlaif.models import check_weights, load_adapter, load_adapter_state

# The trainer's work folder, RUN/round_NNN/checkpoints/: TRL saves a checkpoint-N there every
# `train.checkpoint_steps` steps. It has no temporary mark (clean_tmp would delete it on every start): it
# survives a kill, a redone train stage resumes from its newest complete checkpoint, and the loop deletes
# it once the stage is committed (the stage table's `work`).
CHECKPOINTS = "checkpoints"
INPUTS = "inputs.json"  # what the checkpoints were trained on; a work folder for other inputs is deleted
COMPLETE = "rlaif-complete.json"  # written into checkpoint-N once every file of it is on disk


def trainer_model_kwargs(ctx) -> dict:
    """The run context's ``from_pretrained`` arguments as TRL's ``model_init_kwargs`` (dtype as its name)."""
    return {**ctx.model_kwargs(), "dtype": ctx.dtype_name}


def make_trainer(trainer_cls, ctx, start_adapter: Path | None, args, **kwargs):
    """A TRL trainer on a LoRA adapter, started from ``start_adapter`` (None: a fresh adapter)."""
    recipe = ctx.recipe
    check_weights(ctx.model_path)
    if recipe.train.reference == "previous" and start_adapter is not None:
        base = AutoModelForCausalLM.from_pretrained(ctx.model_path, **ctx.model_kwargs())
        model = load_adapter(base, start_adapter, is_trainable=True)
        return trainer_cls(model=model, args=args, **kwargs)
    args.model_init_kwargs = trainer_model_kwargs(ctx)
    trainer = trainer_cls(model=ctx.model_path, args=args, peft_config=build_lora_config(recipe), **kwargs)
    if start_adapter is not None:
        state = load_adapter_state(start_adapter)
        result = set_peft_model_state_dict(trainer.model, state, adapter_name="default")
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter of {start_adapter} does not fit this LoRA config: {result.unexpected_keys[:3]}")
    return trainer


def save_adapter(trainer, out_dir: Path) -> None:
    """The trained adapter only (not TRL's frozen "ref" copy), committed atomically by the main process.

    With several processes every one takes part in collecting the weights (``get_state_dict`` gathers the
    shards under FSDP and DeepSpeed ZeRO-3; under DDP each process holds all of them), the main process
    writes, and the others wait until the adapter is in place.
    """
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    if rank_logging():
        rank_log(acc.state, "adapter", digest=tensors_digest(trainable_state(model)))
    state = acc.get_state_dict(trainer.model) if acc.num_processes > 1 else None
    if acc.is_main_process:
        tmp = out_dir.with_name(f"{out_dir.name}{TMP_MARK}train")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), selected_adapters=["default"], state_dict=state)
        # peft writes target_modules from a set, in an order that changes with each process's hash seed:
        # sorted, the same training gives the same bytes (and adapter_sha256) in every process
        config = read_json(tmp / "adapter_config.json")
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            write_json(tmp / "adapter_config.json", config)
        commit_dir(tmp, out_dir)
    acc.wait_for_everyone()


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def adapter_distance(model, before: dict[str, torch.Tensor]) -> float:
    """L2 distance of the trainable (LoRA) weights from a snapshot."""
    return math.sqrt(sum(((p.detach() - before[n]) ** 2).sum().item() for n, p in model.named_parameters() if n in before))


# ---------------------------------------------------------------- resumable training


def checkpoint_step(folder: Path) -> int:
    """N of a trainer's checkpoint-N folder."""
    return int(folder.name.rsplit("-", 1)[1])


def work_folder(ctx, n: int, reads: tuple[str, ...], start_adapter: Path | None, seed: int) -> tuple[Path, Path | None]:
    """Round n's trainer work folder and its newest complete checkpoint to resume from (None: start afresh).

    Checkpoints count only for the same inputs: the digests of the round's ``reads`` (its pairs or prompts),
    of the adapter the round starts from and the trainer's seed (the recipe cannot change under a run).
    A work folder left by training on other inputs (an earlier stage was redone since) is deleted.
    """
    work = ctx.run.path(n, CHECKPOINTS)

    def prepare() -> None:  # the main process's (with several, the others wait for it)
        inputs = {"files": {name: file_record(ctx.run.path(n, name))["sha256"] for name in reads},
                  "start_adapter": sha256_dir(start_adapter) if start_adapter else None, "seed": seed}
        try:
            same = (work / INPUTS).is_file() and read_json(work / INPUTS) == inputs
        except RlaifError:  # damaged: the checkpoints cannot be trusted
            same = False
        if work.exists() and not same:
            shutil.rmtree(work)
        if not same:
            write_json(work / INPUTS, inputs)

    on_main(ctx.state, prepare, share_result=False)
    complete = [p for p in work.glob("checkpoint-*") if (p / COMPLETE).is_file()]
    return work, max(complete, key=checkpoint_step, default=None)


class CheckpointCommit(TrainerCallback):
    """After the trainer saves checkpoint-N: ``save_extra(folder)`` (what rlaif keeps beside the trainer's
    state), every file fsynced, the checkpoint marked complete, older checkpoints deleted.

    Fault injection for the resume tests: ``RLAIF_TEST_PAUSE_AFTER_CHECKPOINT=<N>`` sleeps once checkpoint-N
    is complete, so a test can kill training mid-way.
    """

    def __init__(self, save_extra: Callable[[Path], None] | None = None):
        self.save_extra = save_extra

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.save_extra is not None:
            self.save_extra(folder)
        for file in (p for p in folder.rglob("*") if p.is_file()):
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(folder)
        write_json(folder / COMPLETE, {"global_step": state.global_step})
        for old in folder.parent.glob("checkpoint-*"):
            if old != folder and checkpoint_step(old) < state.global_step:
                shutil.rmtree(old, ignore_errors=True)
        if os.environ.get("RLAIF_TEST_PAUSE_AFTER_CHECKPOINT") == str(state.global_step):
            print(f"[test] paused after checkpoint {state.global_step}", flush=True)
            time.sleep(600)


def train(trainer, resume: Path | None, save_extra: Callable[[Path], None] | None = None) -> None:
    """``trainer.train()``, from the checkpoint ``resume`` when given (model, optimizer, scheduler, RNG states and
    step count come back; the data already seen is skipped), committing each checkpoint it saves."""
    trainer.add_callback(CheckpointCommit(save_extra))
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
