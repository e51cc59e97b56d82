"""Sampling with one random stream per sequence, and a nucleus found without sorting the vocabulary.

``model.generate(do_sample=True)`` draws every row of a batch from one global random stream, so a
candidate depends on the batch it was sampled in: which prompts came before it, the batch size, and,
with several processes, which process drew it. :class:`RowSampler` gives each row its own
``torch.Generator`` (seeded from the run seed, the prompt id and the candidate index; on the CPU
whatever the model's device) and draws one uniform number a row and step: the token is where it falls
in the cumulative distribution of ``softmax(scores)`` (inverse-CDF sampling, an exact draw). Right after
a :class:`TopP` (``nucleus=``), it takes the cumulative distribution over the nucleus TopP already found,
most probable first, instead of over the whole vocabulary in vocabulary order: the same distribution,
without a softmax and a cumulative sum over 49k entries per row and step. Put last in the processors,
after the repetition penalty, temperature, top-k and top-p (:func:`rlaif.stages.generate.sampling_processors`),
it returns a score vector whose maximum is the drawn token (what :func:`rlaif.decoding.decode`, or a greedy
``generate``, takes), so generation samples from the same distribution as transformers' own sampling,
with randomness that belongs to the row.

:class:`TopP` is transformers' ``TopPLogitsWarper`` (the same nucleus: the most probable tokens until
their mass reaches ``top_p``, at least one), computed from the ``first`` most probable tokens in rows
where they hold the nucleus, which is a partial sort, and by a full sort in the other rows. On a 49k vocabulary the full
sort was the largest cost of a sampling step on the CPU after the matrix products.

:class:`LogprobTap` sums, per row, the log-probability of each drawn token under the scores it is placed
after (the repetition penalty and temperature, before top-k/top-p: the KL estimate's distribution, see
:mod:`rlaif.stages.generate`), so the sampled sequences come out of ``generate`` already scored by the model
that drew them, without a second forward pass over them. Both keep per-row state, so both follow
the rows :func:`rlaif.decoding.decode` drops from the batch (``select``), as does
:class:`RowRepetitionPenalty` (transformers' repetition penalty, whose per-row left padding must follow).

What stays shared: the batch's padding can move a logit in its last bits (a different matrix shape),
which changes a sample only where a uniform number falls within that rounding of a boundary.
"""

import torch
from transformers import LogitsProcessor, RepetitionPenaltyLogitsProcessor, TopPLogitsWarper


class RowRepetitionPenalty(RepetitionPenaltyLogitsProcessor):
    """transformers' repetition penalty, whose per-row ``prompt_ignore_length`` (the left padding it skips)
    follows the rows :func:`rlaif.decoding.decode` keeps (``select``)."""

    def select(self, kept: torch.Tensor) -> None:
        if isinstance(self.prompt_ignore_length, torch.Tensor):
            self.prompt_ignore_length = self.prompt_ignore_length[kept.to(self.prompt_ignore_length.device)]


class TopP(LogitsProcessor):
    """Keeps the smallest set of most probable tokens whose mass reaches ``top_p`` (at least one token)."""

    def __init__(self, top_p: float, first: int = 256):
        self.top_p, self.first = top_p, first
        self.full = TopPLogitsWarper(top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.first, scores.shape[-1])
        top, idx = scores.float().softmax(-1).topk(k, dim=-1)  # descending
        keep = (top.cumsum(-1) - top) < self.top_p  # the mass strictly before a token is still short of top_p
        keep[:, 0] = True
        drop = torch.ones_like(scores, dtype=torch.bool).scatter(-1, idx, ~keep)
        out = scores.masked_fill(drop, -float("inf"))
        wide = top.sum(-1) < self.top_p  # rows whose nucleus reaches beyond the first k: a full sort
        if bool(wide.any()):
            out[wide] = self.full(None if input_ids is None else input_ids[wide], scores[wide])
        self.nucleus = (out, idx, keep, wide)  # for a RowSampler right after: it draws among these tokens
        return out


class RowSampler(LogitsProcessor):
    """The last logits processor: draws each row's token from ``softmax(scores)``.

    ``seeds[r]`` seeds row r (prompt-major, K per prompt). Each row draws
    one uniform number per decoding step from its own generator, whatever the batch. Returns scores that
    are 0 at the drawn token and -inf elsewhere.
    """

    def __init__(self, seeds: list[int], tap: "LogprobTap | None" = None, nucleus: TopP | None = None):
        self.seeds = list(seeds)
        self.generators: list[torch.Generator] | None = None
        self.tap, self.nucleus = tap, nucleus

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows to sample, {len(self.seeds)} seeds")
        if self.generators is None:
            self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]).to(scores.device)
        last = getattr(self.nucleus, "nucleus", None)
        if last is not None and last[0] is scores:  # the TopP right before: draw among its first tokens
            _, idx, keep, wide = last
            drawn = idx.gather(-1, self._draw(scores.gather(-1, idx).masked_fill(~keep, -float("inf")), u))
            if bool(wide.any()):  # nucleus wider than its first tokens: over the whole vocabulary
                drawn[wide] = self._draw(scores[wide], u[wide])
        else:
            drawn = self._draw(scores, u)
        if self.tap is not None:
            self.tap.add(drawn.squeeze(-1))
        out = torch.full_like(scores, -float("inf"))
        return out.scatter(-1, drawn, 0.0)

    def select(self, kept: torch.Tensor) -> None:
        """Only rows ``kept`` stay in the batch (:func:`rlaif.decoding.decode` dropped the others)."""
        kept = kept.tolist()
        self.seeds = [self.seeds[i] for i in kept]
        if self.generators is not None:
            self.generators = [self.generators[i] for i in kept]

    @staticmethod
    def _draw(scores: torch.Tensor, u: torch.Tensor) -> torch.LongTensor:
        """Column of each row's draw: the first whose cumulative mass exceeds u (never one of probability 0,
        where the cdf is flat)."""
        cdf = scores.double().softmax(-1).cumsum(-1)
        return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=scores.shape[-1] - 1)


class LogprobTap(LogitsProcessor):
    """Records ``log_softmax(scores)`` where it stands in the processors; :class:`RowSampler` hands it each
    step's drawn tokens, and ``totals[r]`` sums row r's log-probabilities of them up to and including its
    first stop token (after which the row is only padded, so nothing more counts). ``r`` is the row's index
    in the first step's batch, also after rows were dropped from the batch (``select``)."""

    def __init__(self, stop_ids: set[int]):
        self.stop = torch.tensor(sorted(stop_ids), dtype=torch.long)
        self.logp: torch.Tensor | None = None
        self.totals: torch.Tensor | None = None  # on the scores' device: no copy to the host per step
        self.done: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # the first batch's index of each row still in the batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logp = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def add(self, drawn: torch.LongTensor) -> None:
        if self.logp is None:
            raise RuntimeError("LogprobTap: a token was drawn before the tap saw the step's scores")
        if self.totals is None:
            device = self.logp.device
            self.totals = torch.zeros(drawn.shape[0], dtype=torch.float64, device=device)
            self.done = torch.zeros(drawn.shape[0], dtype=torch.bool, device=device)
            self.rows = torch.arange(drawn.shape[0], device=device)
            self.stop = self.stop.to(device)
        drawn = drawn.to(self.logp.device)
        step = self.logp.gather(-1, drawn.unsqueeze(-1)).squeeze(-1).double()
        done = self.done[self.rows]
        self.totals.index_add_(0, self.rows, torch.where(done, 0.0, step))
        self.done[self.rows] = done | torch.isin(drawn, self.stop)
        self.logp = None

    def select(self, kept: torch.Tensor) -> None:
        """Only rows ``kept`` (indices into the current batch) stay in the batch; the others' totals are final."""
        if self.rows is not None:
            self.rows = self.rows[kept.to(self.rows.device)]
