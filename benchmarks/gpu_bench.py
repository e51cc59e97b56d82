"""One DPO round of a GPU recipe on a randomly initialised model of the recipe's architecture, on one GPU.

    python benchmarks/gpu_bench.py --tokenizer TOKENIZER_DIR --out gpu_bench.json
    python benchmarks/gpu_bench.py --tokenizer DIR --arch smollm2-135m --set prompts.per_round=16   # quicker

The weights are random (no hub access where the GPU is lent), the architecture and the recipe's sizes are
real, so speed and memory are those of the real model: a random model never ends an answer early, so
every candidate runs to ``generate.max_new_tokens`` (the worst case for generation, log-probs and DPO).
What the numbers say nothing about is quality. ``--arch smollm2-1.7b`` (the default) is SmolLM2-1.7B's
configuration, which shares its tokenizer with the bundled SmolLM2-135M (pass that tokenizer's folder).

The round runs stage by stage through :func:`rlaif.loop.run_one_stage`, as ``rlaif STAGE RECIPE`` does,
with the CUDA allocator's peak reset before each stage. Printed and written: each stage's seconds, the
generate stage's tokens/s (sampling plus the KL estimate's log-prob pass), the judge's verdicts/s, DPO's
seconds per optimizer step, each stage's peak GPU memory (allocated and reserved), and ``rlaif validate``'s
estimate of each stage's peak beside it.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rlaif import loop, memory
from rlaif.config import load_recipe
from rlaif.rundir import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
ARCHS = {  # the published configurations (config.json of each model on the hub)
    "smollm2-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
                     "num_key_value_heads": 32, "max_position_embeddings": 8192, "rope_theta": 130000.0,
                     "rms_norm_eps": 1e-5},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                     "rms_norm_eps": 1e-5},
}
STAGES = ("prompts", "generate", "judge", "pairs", "train")
# every candidate is kept, so every prompt gives a pair and DPO trains on full-length rows
BENCH = ["run.rounds=1", "prompts.per_round=64", "wandb.enabled=false", "model.dtype=auto",
         "pairs.drop_truncated=false", "pairs.drop_empty=false", "pairs.drop_identical=false", "pairs.min_margin=0"]


def build_model(arch: str, tokenizer_dir: Path, out: Path) -> int:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **ARCHS[arch])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes/gpu_smollm2-1.7b.yaml"))
    ap.add_argument("--arch", default="smollm2-1.7b", choices=sorted(ARCHS))
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder (SmolLM2's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlaif-gpu-bench-"))
    try:
        t0 = time.perf_counter()
        params = build_model(args.arch, Path(args.tokenizer), work / "model")
        print(f"{args.arch}: {params / 1e9:.2f}B parameters, random, built in {time.perf_counter() - t0:.0f}s", flush=True)
        recipe = load_recipe(args.recipe, [f"model.source={work / 'model'}", f"run.output_dir={work / 'run'}",
                                           *BENCH, *args.set])
        estimates = {e.stage: e for e in memory.estimate(recipe)}
        stages = {}
        for name in STAGES:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            loop.run_one_stage(recipe, name, 1)
            row = {"wall_s": round(time.perf_counter() - t, 2)}
            if torch.cuda.is_available():
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            stages[name] = row
            print(name, row, flush=True)
        run = work / "run"
        metrics = {name: read_json(run / "round_001/metrics.json")[name] for name in STAGES}
        cands = read_jsonl(run / "round_001/candidates.jsonl")
        verdicts = read_jsonl(run / "round_001/verdicts.jsonl")
        log = read_jsonl(run / "round_001/train_log.jsonl")
        runtime = next((h["train_runtime"] for h in log if "train_runtime" in h), None)
        steps = metrics["train"]["steps"]
        tokens = sum(c["num_tokens"] for c in cands)
        out = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "arch": args.arch, "params": params, "recipe": args.recipe, "overrides": [*BENCH, *args.set],
            "dtype": read_json(run / "manifest.json")["hardware"]["dtype"],
            "prompts": len(read_jsonl(run / "round_001/prompts.jsonl")), "candidates": len(cands),
            "generated_tokens": tokens,
            "generate_tokens_per_s": round(tokens / metrics["generate"]["seconds"], 1),
            "verdicts": len(verdicts), "judge_verdicts_per_s": round(len(verdicts) / metrics["judge"]["seconds"], 2),
            "pairs": metrics["pairs"].get("kept"), "dpo_steps": steps,
            "dpo_train_runtime_s": runtime,
            "dpo_seconds_per_step": round(runtime / steps, 3) if runtime and steps else None,
            "stage_seconds": {name: metrics[name]["seconds"] for name in STAGES},
            "stages": stages,
            "estimate_gib": {name: round(e.total / 2**30, 2) for name, e in estimates.items()},
            "estimate_parts_gib": {name: {k: round(v / 2**30, 2) for k, v in e.parts.items()} for name, e in estimates.items()},
        }
        print(json.dumps(out, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
