"""LoRA adapters across rounds: the trainer set-up that DPO and GRPO/RLOO share, saving, and how far one moved.

Round n ≥ 2 starts its adapter from round n−1's weights. With ``train.reference: base`` (default) TRL
gets the model *path* plus a LoRA config and loads the weights itself with the run context's
``model_init_kwargs`` (device, dtype, attention implementation), so the reference is the adapter-disabled
base and there is never a second copy of the weights; the previous round's weights are then loaded into
the fresh adapter. With ``previous`` TRL gets a trainable ``PeftModel`` of the previous adapter and keeps
a frozen copy of it as its "ref" adapter (iterative DPO / Self-Rewarding LMs train iteration t+1
against M_t).
"""

import math
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlaif.config import build_lora_config
from rlaif.distributed import rank_log, rank_logging, tensors_digest
from rlaif.rundir import TMP_MARK, commit_dir


def trainer_model_kwargs(ctx) -> dict:
    """The run context's ``from_pretrained`` arguments as TRL's ``model_init_kwargs`` (dtype as its name)."""
    return {**ctx.model_kwargs(), "dtype": ctx.dtype_name}


def make_trainer(trainer_cls, ctx, start_adapter: Path | None, args, **kwargs):
    """A TRL trainer on a LoRA adapter, started from ``start_adapter`` (None: a fresh adapter)."""
    recipe = ctx.recipe
    if recipe.train.reference == "previous" and start_adapter is not None:
        base = AutoModelForCausalLM.from_pretrained(ctx.model_path, **ctx.model_kwargs())
        model = PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)
        return trainer_cls(model=model, args=args, **kwargs)
    args.model_init_kwargs = trainer_model_kwargs(ctx)
    trainer = trainer_cls(model=ctx.model_path, args=args, peft_config=build_lora_config(recipe), **kwargs)
    if start_adapter is not None:
        state = load_file(str(Path(start_adapter) / "adapter_model.safetensors"))
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
        commit_dir(tmp, out_dir)
    acc.wait_for_everyone()


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def adapter_distance(model, before: dict[str, torch.Tensor]) -> float:
    """L2 distance of the trainable (LoRA) weights from a snapshot."""
    return math.sqrt(sum(((p.detach() - before[n]) ** 2).sum().item() for n, p in model.named_parameters() if n in before))
