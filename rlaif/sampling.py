"""Sampling with one random stream per sequence: a candidate does not depend on what shares its batch.

``model.generate(do_sample=True)`` draws every row of a batch from one global random stream, so a
candidate depends on the batch it was sampled in: which prompts came before it, the batch size, and,
with several processes, which process drew it. :class:`RowNoise` gives each row its own
``torch.Generator`` (seeded from the run seed, the prompt id and the candidate index) and samples by the
Gumbel-max trick: ``argmax(scores + Gumbel noise)`` is an exact draw from ``softmax(scores)``. Put last in
a greedy ``generate``'s processors (``do_sample=False``), after the repetition penalty, temperature, top-k
and top-p (:func:`rlaif.stages.generate.sampling_processors`), it samples from the same distribution as
transformers' own sampling, with noise that belongs to the row.

What stays shared: the batch's padding can move a logit in its last bits (a different matrix shape), which
changes a sample only where two tokens' noisy scores tie to within that rounding.
"""

import torch
from transformers import LogitsProcessor


class RowNoise(LogitsProcessor):
    """Adds each row's own Gumbel noise to the (already warped) scores.

    ``seeds[r]`` seeds row r (rows in ``generate``'s order: prompt-major, K per prompt). Each row draws one
    noise vector per decoding step from its own generator, whatever the batch.
    """

    def __init__(self, seeds: list[int]):
        self.seeds = list(seeds)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows to sample, {len(self.seeds)} seeds")
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        scores = scores.float()
        noise = torch.empty_like(scores)
        for row, gen in zip(noise, self.generators):
            row.exponential_(generator=gen)  # E ~ Exp(1): -log E is a standard Gumbel variable
        return scores - noise.log()
