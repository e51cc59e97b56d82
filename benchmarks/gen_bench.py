"""How fast is the generate stage, next to the library it wraps and to llama.cpp on the same weights?

    python benchmarks/gen_bench.py                          # quickstart settings, bundled model
    python benchmarks/gen_bench.py RECIPE --repeats 2 --threads 1 --set generate.batch_size=8

Prints, from one run, tokens per second of

- **stage**: :func:`rlaif.stages.generate.generate_candidates` at the recipe's ``generate`` settings;
- **plain**: ``model.generate`` on the same prompts, the same batches of ``generate.batch_size``
  prompts with ``num_return_sequences=K``, the same sampling settings and model (what the stage
  called before it shared each prompt's prefill among its K samples);
- **llama.cpp**: one stream through ``llama-cpp-python`` on the bundled GGUF file (Q4_1), the same
  chat prompts, K completions each, the same temperature / top-p / top-k and token budget. It is an
  optional benchmark dependency (``pip install llama-cpp-python``): without it the line says so.

and their ratios. The prompts are the first ``prompts.per_round`` of the bundled training prompts (or
``--prompts-file``, e.g. a run's ``round_001/prompts.jsonl``). A token is a generated token up to the
end of turn, counted alike for all three (a sequence that finished early and waits for its batch is
not counted). stage and plain take turns ``--repeats`` times, so other jobs' load falls on both alike;
time is wall-clock and this process's CPU seconds. The stage's log-prob pass
(:func:`rlaif.stages.generate.response_logprobs` over the candidates, once per model it scores under)
is timed too: it is part of the stage but not of generation.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rlaif.config import load_recipe
from rlaif.models import BUNDLED_NAMES, bundled_gguf
from rlaif.run import RunContext
from rlaif.seeds import derive_seed
from rlaif.stages.generate import chat_prefix, eos_ids, generate_candidates, response_logprobs

HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE.parent / "recipes" / "quickstart_cpu.yaml"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def plain_generate(model, tokenizer, prompts, cfg, seed) -> int:
    """``model.generate`` as the stage called it: batches of prompts, K return sequences each. Returns tokens."""
    stop, tokens = eos_ids(model, tokenizer), 0
    for b in range(0, len(prompts), cfg.batch_size):
        enc = tokenizer([chat_prefix(tokenizer, p["prompt"]) for p in prompts[b : b + cfg.batch_size]],
                        return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        torch.manual_seed(derive_seed(seed, "generate", b))
        out = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             top_k=cfg.top_k or None, repetition_penalty=cfg.repetition_penalty,
                             max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.num_candidates,
                             pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            tokens += next((i for i, t in enumerate(row) if t in stop), len(row))
    return tokens


def llama_cpp_generate(prompts, cfg, tokenizer, threads: int, seed: int):
    """One llama.cpp stream over every prompt, K completions each. Returns tokens, or a reason it cannot run."""
    try:
        from llama_cpp import Llama  # optional benchmark dependency: imported only when it is installed
    except ImportError:
        return None, "llama-cpp-python is not installed (optional: pip install llama-cpp-python)"
    llm = Llama(model_path=str(bundled_gguf()), n_ctx=1024, n_threads=threads, n_batch=512, seed=seed, verbose=False)

    def run():
        tokens = 0
        for p in prompts:
            text = chat_prefix(tokenizer, p["prompt"])
            for _ in range(cfg.num_candidates):
                out = llm.create_completion(text, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                            top_p=cfg.top_p, top_k=cfg.top_k, repeat_penalty=cfg.repetition_penalty,
                                            stop=[tokenizer.eos_token])
                tokens += out["usage"]["completion_tokens"]
        return tokens
    return run, None


def rate(tokens, seconds):
    return tokens / seconds if seconds else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--prompts-file", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch (and llama.cpp) threads")
    ap.add_argument("--no-logprobs", action="store_true", help="skip timing the stage's log-prob pass")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    cfg, ctx = recipe.generate, RunContext(recipe)
    source = Path(args.prompts_file) if args.prompts_file else HERE.parent / "rlaif/data/prompts.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    prompts = [r for r in rows if r.get("split", "train") == "train"][: recipe.prompts.per_round]
    model, tokenizer = ctx.load_base(), ctx.tokenizer
    print(f"{len(prompts)} prompts x K={cfg.num_candidates}, batch {cfg.batch_size} prompts, max_new_tokens "
          f"{cfg.max_new_tokens}, T={cfg.temperature} top_p={cfg.top_p} top_k={cfg.top_k}; {ctx.hardware()['summary']}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    timings = {"stage": [], "plain": []}
    candidates = None
    for rep in range(args.repeats):
        candidates, w, c = timed(lambda rep=rep: generate_candidates(model, tokenizer, prompts, cfg, seed=rep))
        timings["stage"].append((sum(r["num_tokens"] for r in candidates), w, c))
        tokens, w, c = timed(lambda rep=rep: plain_generate(model, tokenizer, prompts, cfg, seed=rep))
        timings["plain"].append((tokens, w, c))
        print(f"repeat {rep}: " + ", ".join(f"{k} {t[-1][0]} tokens {t[-1][1]:.1f} s wall {t[-1][2]:.1f} CPU-s"
                                            for k, t in timings.items()), file=sys.stderr, flush=True)

    llama_note = None
    if recipe.model.source in BUNDLED_NAMES:
        run, llama_note = llama_cpp_generate(prompts, cfg, tokenizer, torch.get_num_threads(), 0)
        if run is not None:
            tokens, w, c = timed(run)
            timings["llama.cpp"] = [(tokens, w, c)]
    else:
        llama_note = "llama.cpp runs only on the bundled model's GGUF file"

    logprob = None
    if not args.no_logprobs and candidates:
        text_of = {p["id"]: p["prompt"] for p in prompts}
        _, w, c = timed(lambda: response_logprobs(model, tokenizer, [text_of[r["prompt_id"]] for r in candidates],
                                                  [r["text"] for r in candidates]))
        logprob = (w, c)

    def summary(name):
        t = timings[name]
        tokens, wall, cpu = (sum(x[i] for x in t) for i in range(3))
        return {"tokens": tokens / len(t), "wall": wall / len(t), "cpu": cpu / len(t),
                "tok_s": rate(tokens, wall), "tok_cpu_s": rate(tokens, cpu)}

    s = {k: summary(k) for k in timings}
    print("\n| generator | tokens | wall s | CPU s | tokens/s | tokens/CPU-s |\n|---|---|---|---|---|---|")
    for k, v in s.items():
        print(f"| {k} | {v['tokens']:.0f} | {v['wall']:.1f} | {v['cpu']:.1f} | {v['tok_s']:.1f} | {v['tok_cpu_s']:.1f} |")
    print()
    ratios = [("stage", "plain")] + ([("stage", "llama.cpp"), ("plain", "llama.cpp")] if "llama.cpp" in s else [])
    for a, b in ratios:
        print(f"- {a} / {b}: {s[a]['tok_s'] / s[b]['tok_s']:.2f}x tokens/s (wall), "
              f"{s[a]['tok_cpu_s'] / s[b]['tok_cpu_s']:.2f}x tokens/CPU-s")
    if llama_note:
        print(f"- llama.cpp: skipped: {llama_note}")
    if logprob:
        per_model = logprob[1]
        print(f"- the stage's log-prob pass over the candidates: {logprob[0]:.1f} s wall, {per_model:.1f} CPU-s per model "
              f"scored ({per_model / s['stage']['cpu']:.0%} of generation's CPU; round 1 scores under one model, "
              f"later rounds under two); the stage with it: "
              f"{s['stage']['tokens'] / (s['stage']['cpu'] + per_model):.1f} tokens/CPU-s in round 1")
    print("- spread over repeats (tokens/CPU-s): " + ", ".join(
        f"{k} {statistics.pstdev(x[0] / x[2] for x in t):.1f}" for k, t in timings.items() if len(t) > 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
