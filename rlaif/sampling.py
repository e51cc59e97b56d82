"""Sampling with one random stream per sequence: a candidate does not depend on what shares its batch.

``model.generate(do_sample=True)`` draws every row of a batch from one global random stream, so a
candidate depends on the batch it was sampled in: which prompts came before it, the batch size, and,
with several processes, which process drew it. :class:`RowSeededSampler` gives each row its own
``torch.Generator`` (seeded from the run seed, the prompt id and the candidate index) and samples by the
Gumbel-max trick: ``argmax(logits + Gumbel noise)`` is an exact draw from ``softmax(logits)``, so with
greedy decoding (``do_sample=False``) and this processor last, generation samples from the same
distribution as transformers' own sampling (temperature, then top-k, then top-p, applied by
transformers' own warpers, in its order), with noise that belongs to the row.

What stays shared: the batch's padding can move a logit in its last bits (a different matrix shape), which
changes a sample only where two tokens' noisy scores tie to within that rounding.
"""

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def warpers(temperature: float, top_k: int | None, top_p: float) -> LogitsProcessorList:
    """transformers' sampling warpers for these settings, in the order ``generate`` applies them."""
    out = LogitsProcessorList()
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p))
    return out


class RowSeededSampler(LogitsProcessor):
    """The last logits processor of a greedy ``generate``: warps the scores, then adds each row's Gumbel noise.

    ``seeds[r]`` seeds row r (rows in ``generate``'s order: prompt-major, ``num_return_sequences`` per
    prompt). Each row draws one noise vector per decoding step from its own generator, whatever the batch.
    """

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0):
        self.seeds = list(seeds)
        self.warp = warpers(temperature, top_k, top_p)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows to sample, {len(self.seeds)} seeds")
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        scores = self.warp(input_ids, scores.float())
        noise = torch.empty_like(scores)
        for row, gen in zip(noise, self.generators):
            row.exponential_(generator=gen)  # E ~ Exp(1): -log E is a standard Gumbel variable
        return scores - noise.log()


def sample(model, enc, seeds: list[int], cfg, pad_token_id: int) -> torch.Tensor:
    """``cfg.num_candidates`` samples of each encoded prompt (rows prompt-major), row r drawn with ``seeds[r]``.

    ``cfg``: the generate section (temperature, top_k, top_p, repetition_penalty, max_new_tokens).
    Greedy decoding does not take ``num_return_sequences``, so the prompts are repeated here, as
    ``generate`` would repeat them.
    """
    k = cfg.num_candidates
    sampler = RowSeededSampler(seeds, cfg.temperature, cfg.top_k or None, cfg.top_p)
    return model.generate(
        input_ids=enc["input_ids"].repeat_interleave(k, dim=0),
        attention_mask=enc["attention_mask"].repeat_interleave(k, dim=0),
        do_sample=False,  # the sampler draws; greedy decoding takes its noisy argmax
        logits_processor=LogitsProcessorList([sampler]),
        repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad_token_id,
    )
