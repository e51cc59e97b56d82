"""Stage 2, generate: the current policy samples K candidates per prompt.

Prompts go through the model's chat template (:mod:`rlaif.chat`: a prompt that writes a control token
gets its characters, never the token), batched with left padding and attention masks. Each candidate
is sampled from its own random stream, seeded from (run seed, round, prompt id, candidate index)
(:mod:`rlaif.sampling`), so a redone stage reproduces the same samples, and neither the batch size nor
the number of processes the prompts are split across changes them (with several processes each
generates a contiguous share of the prompts). Each candidate keeps the token ids it was sampled as
(``token_ids``, ending with the stop token only when the sample really stopped), and the summed
log-probability of those ids under the policy (summed while sampling, from the scores generation computed:
:class:`rlaif.sampling.LogprobTap`) and under the adapter-off base (a forward pass over them,
:func:`sample_logprobs`; from round 2 on): their difference, averaged, is a Monte-Carlo estimate
of KL(policy ‖ base) on the policy's own samples, and it is the evidence that a round's candidates
came from the previous round's adapter.

Sampling and scoring share one list of logits processors (:func:`sampling_processors`): repetition
penalty, temperature, top-k, top-p, in transformers' order. :func:`rlaif.decoding.decode` runs that list
followed by :class:`rlaif.sampling.RowSampler`, which draws the token, and drops finished rows from the
batch as it goes (each prompt prefilled once for its K samples: :func:`rlaif.decoding.shared_prefill`).
Nothing from a model's ``generation_config`` (Qwen's ``top_k: 20``, or transformers' default ``top_k: 50``
when ``generate.top_k`` is 0) changes the distribution behind rlaif's back, and the repetition penalty
does not count left padding as repeated tokens.

Deviation, on purpose: the KL is taken between the two models' distributions *at the sampling
temperature and repetition penalty, without the top-k/top-p cut*. The KL between the two truncated
samplers is +∞ as soon as one sampled token lies outside the base's nucleus, which happens on most
rounds (a token near the policy's cut is often just beyond the base's), so a leash on it
(``safeguards.max_kl``) would trip on noise. Without a cut (``top_p: 1``, ``top_k: 0``) the estimate
is the unbiased Monte-Carlo estimate of the exact KL of the sampler; with one, samples come from the
truncated sampler, so the estimate averages log π_T/b_T over what the policy actually emits
(tests/test_kl.py checks both against enumeration). ``sequence_logprobs(..., truncate=True)`` scores
under the full sampler, equal to the sampling log-probability of each sequence.
"""

import statistics

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from rlaif import chat
from rlaif.chat import left_pad
from rlaif.config import GenerateConfig
from rlaif.decoding import decode, shared_prefill
from rlaif.distributed import gather, rank_log, share, split
from rlaif.packed import packed_linears
from rlaif.run import RunContext, say
from rlaif.rundir import read_jsonl, sha256_dir, write_jsonl
from rlaif.sampling import LogprobTap, RowRepetitionPenalty, RowSampler, TopP
from rlaif.seeds import derive_seed


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return ids


def sampling_processors(cfg: GenerateConfig, pads: torch.Tensor | None = None, truncate: bool = True,
                        tap: LogprobTap | None = None) -> LogitsProcessorList:
    """The processors candidates are sampled with, in transformers' order.

    ``pads``: left-padding tokens per row, which the repetition penalty skips. ``truncate=False``
    leaves out top-k and top-p (the distributions the KL estimate compares). ``tap`` goes after the
    penalty and temperature, before top-k and top-p: it sees the KL estimate's distribution.
    """
    out = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        out.append(RowRepetitionPenalty(cfg.repetition_penalty, prompt_ignore_length=pads))
    if cfg.temperature != 1.0:
        out.append(TemperatureLogitsWarper(cfg.temperature))
    if tap is not None:
        out.append(tap)
    if truncate and cfg.top_k:
        out.append(TopKLogitsWarper(cfg.top_k))
    if truncate and cfg.top_p < 1.0:
        out.append(TopP(cfg.top_p))
    return out


def _top_p(processors: LogitsProcessorList) -> TopP | None:
    """The nucleus processor when it is the last one (the sampler after it can draw among its tokens)."""
    return processors[-1] if processors and isinstance(processors[-1], TopP) else None


@torch.no_grad()
def generate_candidates(model, tokenizer, prompts: list[dict], cfg: GenerateConfig, seed: int) -> list[dict]:
    """Rows ``{prompt_id, candidate, text, num_tokens, truncated, token_ids, logp}``, K per prompt, in prompt order.

    ``logp`` is the summed log-probability of ``token_ids`` under ``model`` at the sampling temperature and
    repetition penalty, without the top-k/top-p cut (what :func:`sample_logprobs` computes with a second
    forward pass), taken from the scores generation already computed (:class:`rlaif.sampling.LogprobTap`).
    """
    stop, rows = eos_ids(model, tokenizer), []
    bar = tqdm(total=len(prompts) * cfg.num_candidates, desc="generate", unit="cand")
    with packed_linears(model, rows=cfg.batch_size * cfg.num_candidates):  # faster on a CPU in float32
        for b in range(0, len(prompts), cfg.batch_size):
            rows += _candidates(model, tokenizer, prompts[b : b + cfg.batch_size], cfg, seed, stop)
            bar.update(len(prompts[b : b + cfg.batch_size]) * cfg.num_candidates)
    bar.close()
    return rows


def _candidates(model, tokenizer, batch: list[dict], cfg: GenerateConfig, seed: int, stop: set[int]) -> list[dict]:
    """:func:`generate_candidates`' rows for one batch of prompts."""
    ids, mask, pads = left_pad([chat.prompt_ids(tokenizer, p["prompt"]) for p in batch], tokenizer.pad_token_id, model.device)
    k = cfg.num_candidates
    seeds = [derive_seed(seed, "generate", p["id"], c) for p in batch for c in range(k)]
    tap = LogprobTap(stop)  # sums each row's log-probabilities of its drawn tokens: the KL's distribution
    processors = sampling_processors(cfg, pads.repeat_interleave(k), tap=tap)
    processors.append(RowSampler(seeds, tap, nucleus=_top_p(processors)))  # draws: the row's maximum
    out = decode(model, ids.repeat_interleave(k, dim=0), mask.repeat_interleave(k, dim=0),
                 shared_prefill(model, ids, mask, k, cfg.max_new_tokens), processors, stop, cfg.max_new_tokens,
                 tokenizer.pad_token_id)
    rows = []
    for s, (tokens, logp) in enumerate(zip(out.tolist(), tap.totals.tolist())):
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        kept = tokens if end is None else tokens[:end]
        rows.append(
            {
                "prompt_id": batch[s // k]["id"],
                "candidate": s % k,
                "text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                "num_tokens": len(kept),
                "truncated": end is None,
                "token_ids": tokens if end is None else tokens[: end + 1],  # as sampled: the stop token if any
                "logp": logp,  # of token_ids, under the model that drew them (no top-k/top-p cut)
            }
        )
    return rows


@torch.no_grad()
def sequence_logprobs(model, prompts: list[list[int]], sequences: list[list[int]], cfg: GenerateConfig,
                      batch_size: int = 8, truncate: bool = False) -> list[float]:
    """Summed log-probability of each sampled sequence after its prompt, under ``cfg``'s processors.

    Every sampled token counts (the stop token too, when the sample ended with one); nothing is
    appended. Rows are left-padded to a common prompt width with explicit position ids, so every
    sequence starts in the same column, and the vocabulary projection runs only over the last
    ``longest sequence + 1`` positions. Within a batch each distinct prompt is prefilled once
    (:func:`rlaif.decoding.shared_prefill`), and its rows continue from that cache: the K samples of a prompt
    do not each recompute it.
    """
    with packed_linears(model):
        return _sequence_logprobs(model, prompts, sequences, cfg, batch_size, truncate)


def _sequence_logprobs(model, prompts, sequences, cfg, batch_size, truncate) -> list[float]:
    out = []
    for b in range(0, len(sequences), batch_size):
        ps, ss = prompts[b : b + batch_size], sequences[b : b + batch_size]
        steps = max(len(s) for s in ss)
        if steps == 0:
            out += [0.0] * len(ss)
            continue
        width = max(len(p) for p in ps)
        ids, mask, pads = left_pad([p + s + [0] * (steps - len(s)) for p, s in zip(ps, ss)], 0, model.device)
        for r, s in enumerate(ss):  # the right padding after a short sequence is not attended to
            mask[r, mask.shape[1] - (steps - len(s)) :] = 0
        positions = chat.position_ids(mask)
        distinct = list(dict.fromkeys(map(tuple, ps)))  # a prompt's samples share one prefill of it
        prompt_ids, prompt_mask, _ = left_pad([list(p) for p in distinct], 0, model.device)
        which = torch.tensor([distinct.index(tuple(p)) for p in ps], device=model.device)
        cache = shared_prefill(model, prompt_ids, prompt_mask, which, steps)
        if cache is None:  # one-token prompts: nothing to prefill
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=steps + 1).logits
        else:  # the prompts' last tokens and the sequences, after their cached prefixes
            logits = model(input_ids=ids[:, width - 1 :], attention_mask=mask, position_ids=positions[:, width - 1 :],
                           cache=cache, use_cache=True).logits
        processors = sampling_processors(cfg, pads, truncate)
        lens = torch.tensor([len(s) for s in ss], device=model.device)
        total = torch.zeros(len(ss), dtype=torch.float64, device=model.device)
        for t in range(steps):
            col = width + t  # the column of step t's token (every row starts its sequence here)
            scores = processors(ids[:, :col], logits[:, t].float())
            logp = torch.log_softmax(scores, dim=-1).gather(-1, ids[:, col, None]).squeeze(-1)
            total += torch.where(t < lens, logp.double(), 0.0)
        out += total.tolist()
    return out


def sample_logprobs_split(model, ctx: RunContext, prompt_texts: list[str], token_ids: list[list[int]],
                          cfg: GenerateConfig, batch_size: int = 8) -> list[float]:
    """:func:`sample_logprobs` of each process's share, gathered in order. Shares are whole batches, so
    every number is computed in the same batch (the same padding) as one process would compute it."""
    r = share(ctx.state, len(token_ids), batch_size)
    part = sample_logprobs(model, ctx.tokenizer, prompt_texts[r.start : r.stop], token_ids[r.start : r.stop], cfg, batch_size)
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
    args = (ctx, [text_of[r["prompt_id"]] for r in rows], [r["token_ids"] for r in rows], ctx.recipe.generate)
    policy = [r.pop("logp") for r in rows]  # scored while sampling, by the policy that drew them
    base = sample_logprobs_split(ctx.load_base(), *args) if adapter else policy
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


def sample_logprobs(model, tokenizer, prompt_texts: list[str], token_ids: list[list[int]], cfg: GenerateConfig,
                    batch_size: int = 8) -> list[float]:
    """The KL estimate's log-probabilities of sampled ``token_ids`` after their (templated) prompts."""
    prompts = [chat.prompt_ids(tokenizer, t) for t in prompt_texts]
    return sequence_logprobs(model, prompts, token_ids, cfg, batch_size, truncate=False)
