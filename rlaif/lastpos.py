"""One forward pass per verdict, last position only, with a shared-prefix key/value cache.

Every judge prompt starts with the same system text and constitution instructions, and all the
comparisons of one prompt's candidates also share the user request. Recomputing that prefix for
every view is most of a judge's cost on a CPU, where prefill is compute-bound. With the cache:

1. the prefix common to *every* sequence of the call (system + constitution head) runs once;
2. per group (the caller's key, e.g. one prompt under one principle) the tokens the group shares
   beyond that run once per group, batched over groups, on top of level 1's cache;
3. each sequence's own suffix runs batched on top of its group's cache.

Shared prefixes are longest common prefixes of the *token ids* of the full texts, so the
concatenation of the three segments is exactly the tokenisation of the full text. Segments are
padded (group segments on the right, suffixes on the left, so every row ends in the last column);
pads are masked out and every real token gets its true position id, so a row's tokens see exactly
what they would see without the cache (tested to tolerance in tests/test_judge_modes.py). Logits
are computed only at the last position.
"""

import torch
from transformers import DynamicCache


def lcp_len(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache(kv, rows: torch.Tensor, config) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in kv], config=config)


def _pad_right(segs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in segs))
    ids = torch.full((len(segs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(segs), width), dtype=torch.long)
    for r, s in enumerate(segs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def last_logits_plain(model, seqs: list[list[int]], batch_size: int, pad_id: int):
    """Yields (indices, last-position logits [rows, vocab]) batch by batch; left padding, no cache."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i], dtype=torch.long)
            mask[r, width - len(seqs[i]) :] = 1
        out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), logits_to_keep=1)
        yield idx, out.logits[:, -1].float()


@torch.no_grad()
def last_logits_cached(model, seqs: list[list[int]], groups: list, batch_size: int, pad_id: int):
    """Same contract as :func:`last_logits_plain`, computing shared prefixes once (see module doc)."""
    dev, config = model.device, model.config
    p0 = min(lcp_len(seqs), min(len(s) for s in seqs) - 1)
    if p0 < 1:  # nothing shared: the plain path is the same computation
        yield from last_logits_plain(model, seqs, batch_size, pad_id)
        return
    out0 = model(input_ids=torch.tensor([seqs[0][:p0]], device=dev), use_cache=True, logits_to_keep=1)
    kv0 = _kv(out0.past_key_values)
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    plan = []  # (member indices, group segment length beyond p0)
    for idx in members.values():
        rest = [seqs[i][p0:] for i in idx]
        plan.append((idx, min(lcp_len(rest), min(len(r) for r in rest) - 1) if len(idx) > 1 else 0))
    plan.sort(key=lambda item: max(len(seqs[i]) - p0 - item[1] for i in item[0]))  # similar suffix lengths share a batch
    chunk: list = []
    for item in plan + [None]:
        if item is not None and (not chunk or sum(len(m) for m, _ in chunk) + len(item[0]) <= batch_size):
            chunk.append(item)
            continue
        if chunk:
            yield from _run_chunk(model, seqs, chunk, p0, kv0, pad_id, dev, config)
        chunk = [item] if item is not None else []


def _run_chunk(model, seqs, chunk, p0, kv0, pad_id, dev, config):
    n_groups = len(chunk)
    segs = [seqs[idx[0]][p0 : p0 + g] for idx, g in chunk]
    zeros = torch.zeros(n_groups, dtype=torch.long, device=dev)
    if max(len(s) for s in segs) > 0:
        ids1, m1 = _pad_right(segs, pad_id)
        mask1 = torch.cat([torch.ones(n_groups, p0, dtype=torch.long), m1], dim=1)
        pos1 = p0 + torch.arange(ids1.shape[1]).expand(n_groups, -1)
        out1 = model(
            input_ids=ids1.to(dev), attention_mask=mask1.to(dev), position_ids=pos1.to(dev),
            past_key_values=_cache(kv0, zeros, config), use_cache=True, logits_to_keep=1,
        )
        kv1 = _kv(out1.past_key_values)
    else:
        mask1, kv1 = torch.ones(n_groups, p0, dtype=torch.long), [(k[zeros], v[zeros]) for k, v in kv0]
    rows, row_group, sufs = [], [], []
    for gi, (idx, g) in enumerate(chunk):
        for i in idx:
            rows.append(i)
            row_group.append(gi)
            sufs.append(seqs[i][p0 + g :])
    rg = torch.tensor(row_group, dtype=torch.long)
    # suffixes are left-padded *after* the shared prefix: every row ends in the last column, so the
    # lm head runs on one position; the pads are masked and real tokens keep their true positions
    width = max(len(s) for s in sufs)
    ids2 = torch.full((len(sufs), width), pad_id, dtype=torch.long)
    m2 = torch.zeros((len(sufs), width), dtype=torch.long)
    pos2 = torch.zeros((len(sufs), width), dtype=torch.long)
    for r, s in enumerate(sufs):
        ids2[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        m2[r, width - len(s) :] = 1
        start = p0 + chunk[row_group[r]][1]
        pos2[r, width - len(s) :] = torch.arange(start, start + len(s))
    mask2 = torch.cat([mask1[rg], m2], dim=1)
    out2 = model(
        input_ids=ids2.to(dev), attention_mask=mask2.to(dev), position_ids=pos2.to(dev),
        past_key_values=_cache(kv1, rg.to(dev), config), logits_to_keep=1,
    )
    yield rows, out2.logits[:, -1].float()


def last_logprobs(model, seqs: list[list[int]], token_ids: list[int], batch_size: int, pad_id: int,
                  groups: list | None = None, prefix_cache: bool = True, progress=None) -> torch.Tensor:
    """log-softmax over the vocabulary at each sequence's last token, for ``token_ids``: [N, len(token_ids)]."""
    out = torch.full((len(seqs), len(token_ids)), float("nan"))
    if not seqs:
        return out
    if prefix_cache:
        it = last_logits_cached(model, seqs, groups if groups is not None else [0] * len(seqs), batch_size, pad_id)
    else:
        it = last_logits_plain(model, seqs, batch_size, pad_id)
    ids = torch.tensor(token_ids)
    for idx, logits in it:
        out[torch.tensor(idx)] = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu()
        if progress is not None:
            progress(len(idx))
    return out
