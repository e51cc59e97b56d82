"""DPO without wasted passes: the reference is scored once per round, from the right weights, and no
evaluation pass runs over the pairs; the margins come from the training log."""

import pytest
import torch
from conftest import tiny_recipe
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers import Trainer

from rlaif.config import build_lora_config, build_trl_config, recipe_from_dict
from rlaif.lora import make_trainer
from rlaif.run import RunContext
from rlaif.stages.train_dpo import TokenizedDPOTrainer, to_dataset, train_dpo

PAIRS = [
    {"prompt": "Name three primary colours.", "chosen": "Red, blue and yellow.", "rejected": "Green."},
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "I like trains very much."},
    {"prompt": "Give a synonym for happy.", "chosen": "Glad.", "rejected": "Sad, or maybe a table."},
    {"prompt": "Count from one to three.", "chosen": "One, two, three.", "rejected": "Three."},
    {"prompt": "Write a short greeting.", "chosen": "Hello, and welcome!", "rejected": "No."},
    {"prompt": "Spell the word cat.", "chosen": "C-A-T.", "rejected": "Dog."},
]


def context(tiny_model, tmp_path, **sections) -> RunContext:
    return RunContext(recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out", **sections)))


def test_reference_is_scored_once_and_nothing_evaluates_the_pairs(tiny_model, tmp_path, monkeypatch):
    ctx = context(tiny_model, tmp_path)
    evaluations = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: evaluations.append(1) or evaluate(self, *a, **k))
    rows = {"reference": 0, "policy": 0}
    layers = set()

    def count(module, args):  # every LoRA layer sees each forward once: count the sequences it ran on
        if isinstance(module, LoraLayer) and isinstance(module, torch.nn.Module):
            layers.add(id(module))
            reference = module.disable_adapters or "ref" in module.active_adapters
            rows["reference" if reference else "policy"] += args[0].shape[0]

    handle = register_module_forward_pre_hook(count)
    try:
        metrics, history = train_dpo(ctx, 1, PAIRS, None, tmp_path / "adapter", tmp_path / "work")
    finally:
        handle.remove()
    assert evaluations == []
    epochs = build_trl_config(ctx.recipe, "dpo", tmp_path / "w").num_train_epochs
    assert rows["reference"] == 2 * len(PAIRS) * len(layers), "chosen and rejected, scored once for the round"
    assert rows["policy"] == 2 * len(PAIRS) * epochs * len(layers), "the training steps' own forwards only"

    steps = [h for h in history if "rewards/margins" in h]
    assert len(steps) == metrics["steps"] == epochs * len(PAIRS) // 2
    # round 1 starts at its reference (a fresh adapter): 0 by construction, and the first step measured it so
    assert metrics["reward_margin_before"] == metrics["reward_accuracy_before"] == 0.0
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    last_epoch = [h for h in steps if h["step"] > metrics["steps"] - metrics["steps"] // epochs]
    assert metrics["reward_margin_after"] == pytest.approx(sum(h["rewards/margins"] for h in last_epoch) / len(last_epoch))
    assert metrics["reward_accuracy_after"] == pytest.approx(
        sum(h["rewards/accuracies"] for h in last_epoch) / len(last_epoch))
    assert metrics["reward_margin_after"] > 0.01


def _completion_logps(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return logp[torch.arange(len(targets)), targets][len(prompt_ids) - 1:].sum().item()


@pytest.mark.parametrize("reference", ["base", "previous"])
def test_precomputed_reference_is_the_round_reference(tiny_model, tmp_path, reference):
    """With a start adapter, ``base`` scores the adapter-off base and ``previous`` the start adapter."""
    ctx = context(tiny_model, tmp_path, train={"reference": reference})
    start = tmp_path / "start_adapter"
    peft_model = get_peft_model(ctx.load_base(), build_lora_config(ctx.recipe))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    peft_model.save_pretrained(str(start))
    trainer = make_trainer(TokenizedDPOTrainer, ctx, start, build_trl_config(ctx.recipe, "dpo", tmp_path / "work"),
                           train_dataset=to_dataset(PAIRS, ctx.tokenizer), processing_class=ctx.tokenizer)
    data = trainer.train_dataset
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(data.column_names)
    scorer = ctx.load_base() if reference == "base" else ctx.load(start)
    other = ctx.load(start) if reference == "base" else ctx.load_base()
    for row in data:
        for side in ("chosen", "rejected"):
            want = _completion_logps(scorer, row["prompt_ids"], row[f"{side}_ids"])
            assert row[f"ref_{side}_logps"] == pytest.approx(want, rel=1e-4, abs=1e-3)
            assert abs(_completion_logps(other, row["prompt_ids"], row[f"{side}_ids"]) - want) > 1e-2
