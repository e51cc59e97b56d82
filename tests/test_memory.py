"""The memory estimate (rlaif/memory.py) against the real thing: exact sizes, and one measured DPO step.

Run as a script (``python tests/test_memory.py``) this file is the measured probe: it trains one DPO step
and prints the growth of its peak resident size next to the estimate.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from conftest import REPO, build_tiny_model, tiny_recipe, write_recipe
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from rlaif import memory
from rlaif.cli import main
from rlaif.config import build_lora_config, build_trl_config, recipe_from_dict
from rlaif.lora import make_trainer
from rlaif.run import RunContext
from rlaif.stages.train_dpo import TokenizedDPOTrainer, to_dataset

FACTOR = 1.3  # the measured step must lie within estimate / FACTOR .. estimate * FACTOR
# a model whose step is dominated by what the estimate models: 2048 tokens of activations and a logit tile
PROBE = {"hidden": 128, "intermediate": 512, "layers": 2, "vocab": 8192, "batch": 2, "max_length": 512}


def test_sizes_match_the_instantiated_model(tiny_model, tmp_path):
    """Parameters and LoRA parameters counted on the meta device equal those of the real model with peft on it."""
    for lora in ({"r": 4, "lora_alpha": 8}, {"r": 8, "target_modules": ["q_proj", "v_proj"]}):
        recipe = recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "o", lora=lora))
        s = memory.sizes(recipe)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        assert s.params == sum(p.numel() for p in model.parameters())
        peft_model = get_peft_model(model, build_lora_config(recipe))
        assert s.lora_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert (s.layers, s.hidden, s.intermediate, s.vocab, s.kv_dim) == (2, 32, 64, model.config.vocab_size, 16)


def test_validate_prints_the_estimate(tiny_model, tmp_path, capsys):
    recipe = tiny_recipe(tiny_model, tmp_path / "o")
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = capsys.readouterr().out
    stages = memory.estimate(recipe_from_dict(recipe))
    peak = max(stages, key=lambda e: e.total)
    assert f"estimated peak per process {peak.total / memory.GiB:.2f} GiB in {peak.stage}" in out
    assert all(f"  {e.line()}" in out for e in stages)


def test_one_dpo_step_is_within_the_stated_factor_of_the_estimate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the step's peak is measured from the resident size just before it (the peak was reset there)
    assert got["peak_before"] <= got["before"] + 16 * 2**20
    step = sum(got["estimate"][k] for k in ("adapter", "activations", "logits"))
    assert step / FACTOR <= got["growth"] <= step * FACTOR, (got["growth"] / step, got)


def _status(key: str) -> int:
    """A size from /proc/self/status, in bytes (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{key}:"))


def _reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the current resident size (Linux >= 4.0, /proc/PID/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def probe(folder: Path) -> dict:
    """One DPO step on a random model of PROBE's shape; the growth of peak RSS and the estimate's parts."""
    path = build_tiny_model(folder / "model")
    cfg = AutoConfig.from_pretrained(path)
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = PROBE["hidden"], PROBE["intermediate"], PROBE["layers"]
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size = 4, 2, PROBE["vocab"]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    recipe = recipe_from_dict(tiny_recipe(str(path), folder / "out", dpo={
        "per_device_train_batch_size": PROBE["batch"], "max_length": PROBE["max_length"], "max_steps": 1}))
    estimate = {e.stage: e.parts for e in memory.estimate(recipe)}["train"]  # before the trainer: TRL config resets state
    ctx = RunContext(recipe)
    text = " ".join(["capital letters and numbers"] * PROBE["max_length"])  # every row is cut at max_length
    pairs = [{"prompt": "Say something long.", "chosen": text, "rejected": text[::-1]}] * PROBE["batch"]
    trainer = make_trainer(TokenizedDPOTrainer, ctx, None, build_trl_config(recipe, "dpo", folder / "work"),
                           train_dataset=to_dataset(pairs, ctx.tokenizer), processing_class=ctx.tokenizer)
    _reset_peak()  # what trainer set-up allocated and freed again must not hide the step's own peak
    before, peak_before = _status("VmRSS"), _status("VmHWM")
    trainer.train()
    peak = _status("VmHWM")
    return {"before": before, "peak_before": peak_before, "peak": peak, "growth": peak - before, "estimate": estimate}


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))))
