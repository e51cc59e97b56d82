"""On a CUDA GPU (skipped elsewhere): every stage runs on the GPU in bfloat16, and the tensors say so.

``model.dtype: auto`` must pick bfloat16 on a bf16 GPU; every model a stage loads (policy, judge, base,
evaluation) and every model a trainer builds must sit on CUDA, with its base weights in bfloat16, and
every forward pass must be fed CUDA tensors. Runs one DPO round (with its held-out evaluation) and one
GRPO round on the tiny model.
"""

import pytest
import torch
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.run import RunContext
from rlaif.rundir import read_json
from rlaif.stages import train_dpo, train_rl

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def placements(monkeypatch):
    """Records (what, parameter devices, base-weight dtypes, input device) for every forward pass."""
    seen: list[tuple] = []

    def watch(model, what: str):
        def hook(module, args, kwargs):
            x = kwargs.get("input_ids", args[0] if args else None)
            seen.append((what, {p.device.type for p in module.parameters()},
                         {p.dtype for n, p in module.named_parameters() if "lora_" not in n},  # peft keeps LoRA in fp32
                         None if x is None else x.device.type))
        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    load = RunContext.load
    # a load in a dtype of its own is a judge's (``judge.dtype``); every other load is in ``model.dtype``
    monkeypatch.setattr(RunContext, "load", lambda self, adapter=None, dtype=None:
                        watch(load(self, adapter, dtype), "stage model" if dtype is None else "judge model"))
    for module in (train_dpo, train_rl):
        make = module.make_trainer

        def traced(*args, _make=make, **kwargs):
            trainer = _make(*args, **kwargs)
            watch(trainer.model, "trainer model")
            return trainer

        monkeypatch.setattr(module, "make_trainer", traced)
    return seen


def check(seen: list[tuple], kinds: set[str]) -> None:
    """Every model on CUDA and fed CUDA tensors; base weights in bf16, the judge's in float32 (``judge.dtype``'s
    default: bf16 cost the judge accuracy, see README)."""
    assert {s[0] for s in seen} == kinds
    for what, devices, dtypes, x in seen:
        assert devices == {"cuda"}, (what, devices)
        assert dtypes == ({torch.float32} if what == "judge model" else {torch.bfloat16}), (what, dtypes)
        assert x in (None, "cuda"), (what, x)


def test_dpo_round_with_evaluation_runs_on_cuda_in_bf16(tiny_model, tmp_path, placements):
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, model={"dtype": "auto"},
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 3, "bootstrap": 100})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    hardware = read_json(tmp_path / "out/manifest.json")["hardware"]
    assert hardware["device"].startswith("cuda") and hardware["dtype"] == "bfloat16"
    assert hardware["judge_dtype"] == "float32"
    check(placements, {"stage model", "judge model", "trainer model"})


def test_grpo_round_runs_on_cuda_in_bf16(tiny_model, tmp_path, placements):
    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, model={"dtype": "auto"},
                         train={"method": "grpo"},
                         grpo={"num_generations": 3, "per_device_train_batch_size": 6, "max_completion_length": 8})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    check(placements, {"judge model", "trainer model"})
