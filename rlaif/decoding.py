"""The generate stage's decoding: each prompt prefilled once for its K samples, finished rows dropped.

What ``model.generate`` does not do, and what it saves. A decoding step of the bundled model on 2 CPU
cores (fp32) costs a part that does not depend on the batch (in one measurement a batch of 16 rows took
62% of the time of 64) and a part per row (its share of the matrix products and of attention):

- :func:`shared_prefill`: each prompt's key/value cache is computed once and repeated for its K samples,
  in a static cache allocated once for prompt and token budget. ``generate`` given the prompts repeated
  K times runs each prefill K times, and its default cache grows by concatenation, copying every layer's
  keys and values at every step (8% of a step's CPU time in a profile of the quickstart's generation).
  Attention reads only the positions filled so far (:class:`FilledLayer`), not the whole allocation.
  Prompts of similar length are prefilled together (:func:`length_groups`), so a long prompt does not pad
  the short ones to its length (the quickstart's 16 prompts: 908 prompt tokens through the model, not 1,440).
  The scoring pass (:func:`rlaif.stages.generate.sequence_logprobs`) uses it too: a prompt's rows continue
  from one prefill of it.
- :func:`decode`: the sampling loop. A row that has sampled a stop token is dropped from the batch (from
  the cache, the processors' per-row state and the inputs) once at least ``compact`` of the rows still in
  the batch have finished, instead of being fed padding until the longest row ends, as ``generate`` does.

The samples do not depend on either: every row draws from its own random stream
(:class:`rlaif.sampling.RowSampler`), so a row's tokens are those it would draw in any batch, up to the
float rounding a different batch shape can bring (see :mod:`rlaif.sampling`).
"""

import torch
from transformers import LogitsProcessorList, StaticCache
from transformers.cache_utils import StaticLayer

from rlaif.chat import position_ids

PREFILL_WASTE = 0.25  # a prefill group's padding, at most this share of its prompts' tokens
COMPACT = 0.125  # drop finished rows once they are this share of the batch (each drop copies the kept rows' cache)


def shared_prefill(model, ids: torch.Tensor, mask: torch.Tensor, k: int | torch.Tensor, max_new_tokens: int):
    """The key/value cache of every prompt but its last token, computed once and repeated for its K samples,
    in a static cache (preallocated for the whole generation).

    ``k``: each prompt's number of samples (rows come prompt by prompt), or the prompt of each row (indices
    into ``ids``; rows of one prompt need not be adjacent).

    :func:`decode` continues from this cache with the prompts' last tokens. The prompts run in groups of
    similar length (:func:`length_groups`), each padded only to its own longest prompt; their keys and values
    land right-aligned in the batch's left-padded layout (the padding columns stay zero and masked). A model
    whose layers are not all plain attention (sliding windows, recurrent state) runs the batch as it comes
    and keeps the cache type it prefilled with, repeated. None (the whole prompts go through the first
    decoding step) for one-token prompts.
    """
    if ids.shape[1] < 2:
        return None
    positions = position_ids(mask)
    if not _plain_attention(model):
        prefill = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                        use_cache=True, logits_to_keep=1).past_key_values
        if isinstance(k, int):
            prefill.batch_repeat_interleave(k)
        else:
            prefill.batch_select_indices(k)
        return prefill
    prompt_of = torch.arange(len(ids), device=ids.device).repeat_interleave(k) if isinstance(k, int) else k
    width, lengths = ids.shape[1] - 1, mask.sum(-1).tolist()  # width: every column but the last
    keys = values = None
    for rows in length_groups(lengths):
        cols = slice(width + 1 - max(lengths[r] for r in rows), width)  # the group's longest prompt but its last token
        if cols.start == cols.stop:
            continue  # one-token prompts: nothing before their last token
        idx = torch.tensor(rows, device=ids.device)
        done = model(input_ids=ids[idx, cols], attention_mask=mask[idx, cols], position_ids=positions[idx, cols],
                     use_cache=True, logits_to_keep=1).past_key_values
        if keys is None:
            keys = [x.keys.new_zeros(len(ids), x.keys.shape[1], width, x.keys.shape[3]) for x in done.layers]
            values = [x.values.new_zeros(len(ids), x.values.shape[1], width, x.values.shape[3]) for x in done.layers]
        for key, value, layer in zip(keys, values, done.layers):
            key[idx, :, cols], value[idx, :, cols] = layer.keys, layer.values
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
    cache.layers = [FilledLayer(layer.max_cache_len) for layer in cache.layers]
    for layer, key, value in zip(cache.layers, keys, values):
        layer.update(key[prompt_of], value[prompt_of])
    return cache


def length_groups(lengths: list[int], waste: float = PREFILL_WASTE) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar length: sorted by length, a group grows while padding its
    prompts to its longest would add at most ``waste`` of their own tokens."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + waste) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


class FilledLayer(StaticLayer):
    """transformers' static cache layer (allocated once, written in place) whose attention covers only the
    positions filled so far, as the dynamic cache's does, instead of the whole allocation under a mask
    (attention was 13–17% of a decoding step's CPU time in profiles of the quickstart's generation)."""

    filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.filled += key_states.shape[-2]
        return keys[:, :, : self.filled], values[:, :, : self.filled]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0


def _plain_attention(model) -> bool:
    """Every layer full attention (no sliding window, no recurrent state): what a static cache holds as is."""
    types = getattr(model.config.get_text_config(decoder=True), "layer_types", None)
    return all(t == "full_attention" for t in types or ["full_attention"])


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, cache, processors: LogitsProcessorList, stop: set[int],
           max_new_tokens: int, pad_token_id: int, compact: float | None = COMPACT) -> torch.Tensor:
    """Up to ``max_new_tokens`` tokens after each row of the left-padded ``ids``: ``(rows, steps)``, a row's
    tokens up to and including its first stop token, then ``pad_token_id``.

    ``cache`` holds every column of ``ids`` but the last (:func:`shared_prefill`), or is None (the first
    step runs the whole prompts). ``processors`` end with a sampler that leaves its drawn token the row's
    maximum (:class:`rlaif.sampling.RowSampler`). Their per-row state follows the rows: a processor with a
    ``select(kept)`` method is told which rows stay (one with per-row state and no ``select`` would go
    out of step with the batch: :mod:`rlaif.sampling`'s processors all have it). ``compact=None`` keeps finished rows, fed padding, as ``generate`` does.
    """
    n, device = ids.shape[0], ids.device
    out = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # each row's index in ``out``
    stops = torch.tensor(sorted(stop), device=device)
    positions = position_ids(mask)
    step, pos = (ids, positions) if cache is None else (ids[:, -1:], positions[:, -1:])
    done = torch.zeros(n, dtype=torch.bool, device=device)
    can_compact = compact is not None and cache is not None and _selectable(cache)
    steps = 0
    for t in range(max_new_tokens):
        result = model(input_ids=step, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                       logits_to_keep=1)
        cache = result.past_key_values
        token = processors(ids, result.logits[:, -1].float()).argmax(-1)
        token = torch.where(done, pad_token_id, token)
        out[rows, t] = token
        steps = t + 1
        done |= torch.isin(token, stops)
        ids, mask = torch.cat([ids, token[:, None]], -1), torch.cat([mask, mask.new_ones(len(rows), 1)], -1)
        step, pos = token[:, None], pos[:, -1:] + 1
        finished = int(done.sum())
        if finished == len(rows):
            break
        if can_compact and finished >= compact * len(rows):
            kept = (~done).nonzero().squeeze(-1)
            _select_cache(cache, kept)
            for p in processors:
                if hasattr(p, "select"):
                    p.select(kept)
            rows, ids, mask, step, pos, done = rows[kept], ids[kept], mask[kept], step[kept], pos[kept], done[kept]
    return out[:, :steps]


def _selectable(cache) -> bool:
    """Can rows be dropped from this cache: static layers (by :func:`_select_cache`), or layers that select
    their own batch indices (transformers' dynamic ones)."""
    return all(isinstance(layer, StaticLayer) or hasattr(layer, "batch_select_indices")
               for layer in getattr(cache, "layers", [None]))


def _select_cache(cache, kept: torch.Tensor) -> None:
    """Keep only rows ``kept`` of every layer. transformers' ``StaticLayer`` has no ``batch_select_indices``:
    its tensors are replaced by their kept rows (allocated anew, the same length)."""
    for layer in cache.layers:
        if isinstance(layer, StaticLayer):
            layer.keys, layer.values = layer.keys[kept], layer.values[kept]
            layer.batch_size = len(kept)
        else:
            layer.batch_select_indices(kept)
