"""How fast is the generate stage, next to the library it wraps and to llama.cpp on the same weights?

    python benchmarks/gen_bench.py                        # quickstart settings, bundled model
    python benchmarks/gen_bench.py --repeats 1 --set prompts.per_round=8 --out gen.json

Prints, from one run, generated tokens per second of

- **stage**: :func:`rlaif.stages.generate.generate_candidates` at the recipe's ``generate`` settings
  (each candidate its own random stream, each prompt prefilled once for its K samples, prompts prefilled
  in groups of similar length, finished rows dropped from the batch, linear layers through oneDNN with
  packed weights on a CPU in float32: :mod:`rlaif.packed`);
- **stage_unpacked**: the same stage with every linear layer through PyTorch's own ``linear`` (what the
  packing alone brings: their ratio);
- **plain**: ``model.generate(do_sample=True, num_return_sequences=K)`` on the same batches of prompts,
  with the same temperature, top-p, top-k, repetition penalty, stop tokens and token budget, applied by
  transformers' own warpers;
- **llama.cpp**: one stream through ``llama-cpp-python`` on the bundled GGUF file (Q4_1), the same chat
  prompts, K completions each, the same sampling settings and budget. It is an optional benchmark
  dependency (``pip install llama-cpp-python``, which compiles llama.cpp): without it the line says so.

and the ratios stage/plain and stage/llama.cpp. A token is a generated token before the end of turn,
counted alike for all. They take turns ``--repeats`` times (stage, stage_unpacked, plain, llama.cpp,
then again), so other load falls on all alike; a figure is the mean of its turns' tokens/s. Times are
wall-clock, with the process's CPU-seconds beside them. The stage's figure includes
scoring its samples under the policy (summed while sampling, for the KL estimate). The log-prob pass the
stage still runs from round 2 on (the same samples under the adapter-off base) is timed on its own,
packed and not.
The CPU's flags that decide bf16 are printed with the figures.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from rlaif import chat, packed
from rlaif.config import load_recipe
from rlaif.hardware import SPEED_CPU_FLAGS, cpu_flags
from rlaif.models import BUNDLED_NAMES, bundled_gguf
from rlaif.run import RunContext
from rlaif.seeds import derive_seed
from rlaif.stages.generate import eos_ids, generate_candidates, sample_logprobs
from rlaif.stages.prompts import load_pool

REPO = Path(__file__).resolve().parents[1]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def plain(model, tokenizer, prompts: list[dict], cfg, seed: int) -> int:
    """Tokens ``model.generate`` samples for the prompts, batched as the stage batches them."""
    stop, tokens = eos_ids(model, tokenizer), 0
    for b in range(0, len(prompts), cfg.batch_size):
        batch = prompts[b : b + cfg.batch_size]
        ids, mask, _ = chat.left_pad([chat.prompt_ids(tokenizer, p["prompt"]) for p in batch],
                                        tokenizer.pad_token_id, model.device)
        torch.manual_seed(derive_seed(seed, "plain", b))
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=cfg.num_candidates,
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             repetition_penalty=cfg.repetition_penalty, max_new_tokens=cfg.max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))
        for row in out[:, ids.shape[1] :].tolist():
            tokens += next((i for i, t in enumerate(row) if t in stop), len(row))
    return tokens


def unpacked():
    """The stage as it runs without :mod:`rlaif.packed` (every linear layer through PyTorch's own ``linear``)."""
    return mock.patch.object(packed, "supported", lambda: False)


def packed_count(model) -> int:
    """How many linear layers :mod:`rlaif.packed` packs for this model here (0: the stage runs unpacked)."""
    with torch.no_grad(), packed.packed_linears(model) as n:
        return n


def load_llama(recipe, threads: int):
    """llama.cpp on the bundled GGUF file, or why it cannot run."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return "not run: llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)"
    if recipe.model.source not in BUNDLED_NAMES:
        return "not run: only the bundled model has a GGUF file"
    return Llama(model_path=str(bundled_gguf()), n_ctx=1024, n_threads=threads, seed=0, verbose=False)


def llama_cpp(llm, prompts: list[dict], cfg) -> int:
    """Tokens llama.cpp samples for the prompts, one stream, K completions a prompt."""
    tokens = 0
    for p in prompts:
        for _ in range(cfg.num_candidates):
            out = llm.create_chat_completion([{"role": "user", "content": p["prompt"]}], temperature=cfg.temperature,
                                             top_p=cfg.top_p, top_k=cfg.top_k, repeat_penalty=cfg.repetition_penalty,
                                             max_tokens=cfg.max_new_tokens)
            tokens += out["usage"]["completion_tokens"]
    return tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes/quickstart_cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["wandb.enabled=false", *args.set])
    ctx, cfg = RunContext(recipe), recipe.generate
    prompts = load_pool(recipe.prompts).train[: recipe.prompts.per_round]
    model, tok = ctx.load(), ctx.tokenizer
    threads = torch.get_num_threads()
    flags = sorted(cpu_flags() & SPEED_CPU_FLAGS)
    print(f"{len(prompts)} prompts x {cfg.num_candidates}, batch {cfg.batch_size} prompts, {cfg.max_new_tokens} new "
          f"tokens, T={cfg.temperature}, top-p {cfg.top_p}, {ctx.dtype_name}, {threads} torch threads, CPU flags {flags}",
          flush=True)
    llm = load_llama(recipe, threads)
    runs = {"stage": [], "stage_unpacked": [], "plain": []} | ({} if isinstance(llm, str) else {"llama.cpp": []})
    for r in range(args.repeats):
        rows, wall, cpu = timed(lambda: generate_candidates(model, tok, prompts, cfg, ctx.seed(1, "generate")))
        runs["stage"].append({"tokens": sum(x["num_tokens"] for x in rows), "wall_s": wall, "cpu_s": cpu})
        with unpacked():
            again, wall, cpu = timed(lambda: generate_candidates(model, tok, prompts, cfg, ctx.seed(1, "generate")))
        runs["stage_unpacked"].append({"tokens": sum(x["num_tokens"] for x in again), "wall_s": wall, "cpu_s": cpu})
        n, wall, cpu = timed(lambda: plain(model, tok, prompts, cfg, ctx.seed(1, "generate")))
        runs["plain"].append({"tokens": n, "wall_s": wall, "cpu_s": cpu})
        if not isinstance(llm, str):
            n, wall, cpu = timed(lambda: llama_cpp(llm, prompts, cfg))
            runs["llama.cpp"].append({"tokens": n, "wall_s": wall, "cpu_s": cpu})
        print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs.items()), flush=True)
    text_of = {p["id"]: p["prompt"] for p in prompts}
    args_lp = ([text_of[x["prompt_id"]] for x in rows], [x["token_ids"] for x in rows], cfg)
    _, lp_wall, _ = timed(lambda: sample_logprobs(model, tok, *args_lp))
    with unpacked():
        _, lp_unpacked, _ = timed(lambda: sample_logprobs(model, tok, *args_lp))
    rate = {k: statistics.fmean(x["tokens"] / x["wall_s"] for x in v) for k, v in runs.items()}
    llama = llm if isinstance(llm, str) else None
    out = {"settings": {"prompts": len(prompts), "k": cfg.num_candidates, "batch_size": cfg.batch_size,
                        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                        "dtype": ctx.dtype_name, "torch_threads": threads, "cpu_flags": flags,
                        "load_average": os.getloadavg()},
           "runs": runs, "tokens_per_s": rate, "base_logprob_pass_s": lp_wall,
           "base_logprob_pass_unpacked_s": lp_unpacked, "packed_layers": packed_count(model),
           "stage_over_plain": rate["stage"] / rate["plain"],
           "stage_over_stage_unpacked": rate["stage"] / rate["stage_unpacked"],
           "stage_over_llama_cpp": rate["stage"] / rate["llama.cpp"] if "llama.cpp" in rate else llama}
    for k, v in rate.items():
        print(f"{k:>10}: {v:7.1f} tokens/s")
    print(f"stage / plain: {out['stage_over_plain']:.2f}x; stage / llama.cpp: "
          + (f"{out['stage_over_llama_cpp']:.2f}x" if "llama.cpp" in rate else llama))
    print(f"stage / stage without packed layers: {out['stage_over_stage_unpacked']:.2f}x "
          f"({out['packed_layers']} layers packed)")
    print(f"a log-prob pass over the {len(rows)} candidates (the base's, from round 2 on): {lp_wall:.1f}s "
          f"({lp_unpacked:.1f}s without packed layers)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
