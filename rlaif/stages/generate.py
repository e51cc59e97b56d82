"""Stage 2, generate: the current policy samples K candidates per prompt.

Prompts go through the model's chat template, batched with left padding and attention masks. Each
candidate is sampled from its own random stream, seeded from (run seed, round, prompt id, candidate index)
(:mod:`rlaif.sampling`), so a redone stage reproduces the same samples, and neither the batch size nor the
number of processes the prompts are split across changes them.
Every candidate also gets its summed log-probability under the policy and under the adapter-off
base: their difference, averaged, is a Monte-Carlo estimate of KL(policy ‖ base) on its own samples,
and it is the evidence that a round's candidates came from the previous round's adapter.
"""

import statistics

import torch
from tqdm.auto import tqdm

from rlaif.config import GenerateConfig
from rlaif.distributed import gather, rank_log, share, split
from rlaif.run import RunContext, say
from rlaif.rundir import read_jsonl, sha256_dir, write_jsonl
from rlaif.sampling import sample
from rlaif.seeds import derive_seed


def chat_prefix(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate_candidates(model, tokenizer, prompts: list[dict], cfg: GenerateConfig, seed: int) -> list[dict]:
    """Rows ``{prompt_id, candidate, text, num_tokens, truncated}``, K per prompt, in prompt order."""
    stop = eos_ids(model, tokenizer)
    rows = []
    bar = tqdm(total=len(prompts) * cfg.num_candidates, desc="generate", unit="cand")
    for b in range(0, len(prompts), cfg.batch_size):
        batch = prompts[b : b + cfg.batch_size]
        enc = tokenizer(
            [chat_prefix(tokenizer, p["prompt"]) for p in batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        seeds = [derive_seed(seed, "generate", p["id"], c) for p in batch for c in range(cfg.num_candidates)]
        out = sample(model, enc, seeds, cfg, tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        for s, tokens in enumerate(new):
            prompt = batch[s // cfg.num_candidates]
            end = next((i for i, t in enumerate(tokens) if t in stop), None)
            kept = tokens if end is None else tokens[:end]
            rows.append(
                {
                    "prompt_id": prompt["id"],
                    "candidate": s % cfg.num_candidates,
                    "text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    "num_tokens": len(kept),
                    "truncated": end is None,
                }
            )
        bar.update(len(new))
    bar.close()
    return rows


@torch.no_grad()
def response_logprobs(model, tokenizer, prompt_texts: list[str], responses: list[str], batch_size: int = 8) -> list[float]:
    """Summed log-probability of each response (plus its end-of-turn token) after its chat prompt.

    Rows are left-padded with explicit position ids, so every response ends in the last column and
    the vocabulary projection runs only over the last ``longest response + 1`` positions (the logits
    of a 49k vocabulary dominate the cost otherwise).
    """
    out = []
    pad = tokenizer.pad_token_id
    for b in range(0, len(responses), batch_size):
        ids, lens = [], []
        for prompt, response in zip(prompt_texts[b : b + batch_size], responses[b : b + batch_size]):
            p = tokenizer(chat_prefix(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(p + r)
            lens.append(len(r))
        width, keep = max(len(x) for x in ids), max(lens) + 1
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=model.device)
        masks = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
        positions = (masks.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=masks, position_ids=positions, logits_to_keep=keep).logits
        targets = input_ids[:, width - keep + 1 :]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        for i, n in enumerate(lens):
            out.append(logp[i, keep - 1 - n :].sum().item())
    return out


def logprobs_split(ctx: RunContext, model, prompt_texts: list[str], responses: list[str], batch_size: int = 8):
    """:func:`response_logprobs` of each process's share, gathered in order. Shares are whole batches, so
    every number is computed in the same batch (the same padding) as one process would compute it."""
    r = share(ctx.state, len(responses), batch_size)
    part = response_logprobs(model, ctx.tokenizer, prompt_texts[r.start : r.stop], responses[r.start : r.stop], batch_size)
    return gather(ctx.state, part)


def run(ctx: RunContext, n: int) -> dict:
    """The generate stage: round n's policy writes K candidates per prompt, scored under policy and base."""
    prompts = read_jsonl(ctx.run.path(n, "prompts.jsonl"))
    model, adapter = ctx.load_policy(n)
    say(f"round {n}: policy = base" + (f" + {ctx.rel(adapter)}" if adapter else ""))
    mine = split(ctx.state, prompts)  # this process's prompts (all of them when it is the only one)
    rank_log(ctx.state, "generate", round=n, prompts=[p["id"] for p in mine])
    rows = gather(ctx.state, generate_candidates(model, ctx.tokenizer, mine, ctx.recipe.generate, ctx.seed(n, "generate")))
    text_of = {p["id"]: p["prompt"] for p in prompts}
    args = ([text_of[r["prompt_id"]] for r in rows], [r["text"] for r in rows])
    policy = logprobs_split(ctx, model, *args)
    base = logprobs_split(ctx, ctx.load_base(), *args) if adapter else policy
    for row, lp, lb in zip(rows, policy, base):
        row["logp_policy"], row["logp_base"] = lp, lb
    if ctx.is_main:
        write_jsonl(ctx.run.path(n, "candidates.jsonl"), rows)
    lengths = [r["num_tokens"] for r in rows]
    return {
        "candidates": len(rows),
        "mean_tokens": statistics.fmean(lengths),
        "std_tokens": statistics.pstdev(lengths),
        "truncated_share": sum(r["truncated"] for r in rows) / len(rows),
        "empty_share": sum(not r["text"] for r in rows) / len(rows),
        "kl_to_base_estimate": statistics.fmean(r["logp_policy"] - r["logp_base"] for r in rows),
        "policy_adapter": ctx.rel(adapter),
        "policy_adapter_sha256": sha256_dir(adapter) if adapter else None,
    }
