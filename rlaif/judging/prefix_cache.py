"""One forward pass per verdict, last position only, with a shared-prefix key/value cache.

Every judge prompt starts with the same system text and constitution instructions, and all the
comparisons of one prompt's candidates also share the user request. Recomputing that prefix for
every view is most of a judge's cost on a CPU, where prefill is compute-bound. With the cache:

1. the prefix common to *every* sequence of the call (system + constitution head) runs once;
2. per group (the caller's key, e.g. one prompt under one principle) the tokens the group shares
   beyond that, and
3. each sequence's own suffix

run together in one *packed* row per ``batch_size`` sequences, on top of level 1's cache: each
group's segment, then its members' suffixes, one after another. A custom attention mask lets each
token see level 1, its own group's segment and its own suffix (causally) and nothing else, and
every token gets its true position id, so a sequence's last token sees exactly what it would see
without the cache (tested to tolerance in tests/test_judge_modes.py). Packing feeds no padding
(suffix lengths vary a lot: an answer can be 5 tokens or 60) and shares level 1's cache across the
row instead of copying it per sequence; the price is attention over the whole row, which the mask
then discards, small next to the matrix products at these lengths. Logits are computed only at the
sequences' last positions.

Level 1 can also outlive the call: a judge passes a :class:`PrefixStore`, which keeps the last
call's level-1 key/values and lends their common part to the next call, for as long as the model's
weights are unchanged (:func:`weights_key`).

Shared prefixes are longest common prefixes of the *token ids* of the full texts, so the
concatenation of the three segments is exactly the tokenisation of the full text.

The cache checks itself (:func:`cache_check`) on its first call for a model: it is off, with a logged
reason, where the attention cannot take the packed custom mask (flash attention and other kernels
without one, sliding-window attention, which the mask does not express), and where its verdicts on
the call's first views differ from the plain path's. Off means the plain path: the same verdicts at
full cost.
"""

import math
import sys
import weakref

import torch
from transformers import DynamicCache

MASKED_ATTENTION = ("sdpa", "eager")  # kernels that take the packed custom mask
_checked: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()


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


def _prefill(model, ids: list[int], start: int, past) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Key/values of ``ids`` (positions 0..len-1), computing ``ids[start:]`` on top of ``past`` (``start`` tokens)."""
    dev = model.device
    out = model(
        input_ids=torch.tensor([ids[start:]], device=dev),
        position_ids=torch.arange(start, len(ids), device=dev)[None],
        past_key_values=DynamicCache(ddp_cache_data=past, config=model.config) if past else None,
        use_cache=True, logits_to_keep=1,
    )
    return _kv(out.past_key_values)


def weights_key(model) -> tuple:
    """What the model computes with, cheaply: every parameter's storage and version counter (an
    optimizer step, a ``load_state_dict`` or any in-place update bumps it); when only some weights
    train (an adapter on a frozen base), their sum, which also catches updates through ``.data`` (they
    skip the counter); the active adapters, whether adapters are disabled, and train/eval mode."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    adapter_sum = sum(float(p.detach().double().sum()) for p in trainable) if len(trainable) < len(params) else 0.0
    return (
        id(model), model.training,
        tuple((p.data_ptr(), p._version) for p in params),
        adapter_sum,
        str(getattr(model, "active_adapters", None)),
        tuple(m.disable_adapters for m in model.modules() if isinstance(getattr(m, "disable_adapters", None), bool)),
    )


class PrefixStore:
    """The shared prefix's key/value cache, kept between calls of one judge.

    A judge is called many times with the same head (system prompt + constitution): once per prompt
    group as a GRPO/RLOO reward, once per head-to-head batch in evaluation, once per chunk in the
    benchmark. The store keeps the last call's level-1 prefix and, on the next call, reuses its
    longest common prefix with the new one (the rest is computed on top). It is dropped whenever
    :func:`weights_key` changes, so a judge that reads the adapter being trained (``rl_judge: live``)
    recomputes after every optimizer step and never reads stale keys.
    """

    def __init__(self):
        self.ids: list[int] = []
        self.kv = None
        self.key = None
        self.reused = 0  # tokens taken from the store, summed over calls

    def prefix(self, model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = weights_key(model)
        m = lcp_len([self.ids, ids]) if self.kv is not None and key == self.key else 0
        past = [(k[:, :, :m], v[:, :, :m]) for k, v in self.kv] if m else None
        kv = past if m == len(ids) else _prefill(model, ids, m, past)
        self.ids, self.kv, self.key = list(ids), kv, key
        self.reused += m
        return kv


@torch.no_grad()
def last_logits_cached(model, seqs: list[list[int]], groups: list, batch_size: int, pad_id: int,
                       store: PrefixStore | None = None):
    """Same contract as :func:`last_logits_plain`, computing shared prefixes once (see module doc);
    with a ``store``, the level-1 prefix is also kept for the next call."""
    dev, config = model.device, model.config
    p0 = min(lcp_len(seqs), min(len(s) for s in seqs) - 1)
    if p0 < 1 or config._attn_implementation not in MASKED_ATTENTION:
        # nothing shared, or an attention kernel that takes no custom mask: the plain path is the same computation
        yield from last_logits_plain(model, seqs, batch_size, pad_id)
        return
    kv0 = store.prefix(model, seqs[0][:p0]) if store is not None else _prefill(model, seqs[0][:p0], 0, None)
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    chunk: list = []  # (member indices, group segment length beyond p0); at most batch_size sequences a pass
    for idx in members.values():
        if chunk and sum(len(m) for m, _ in chunk) + len(idx) > batch_size:
            yield _run_packed(model, seqs, chunk, p0, kv0, dev, config)
            chunk = []
        rest = [seqs[i][p0:] for i in idx]
        chunk.append((idx, min(lcp_len(rest), min(len(r) for r in rest) - 1) if len(idx) > 1 else 0))
    if chunk:
        yield _run_packed(model, seqs, chunk, p0, kv0, dev, config)


ROW_TOKENS = 512  # packed row length to aim for: attention cost grows with it, per-pass overhead shrinks


def _pack_rows(seqs, chunk, p0) -> list[list[tuple[list[int], int]]]:
    """Groups into rows of about ROW_TOKENS tokens, balanced so that little padding is needed
    (longest group first, each into the shortest row so far; a group is never split)."""
    sizes = [g + sum(len(seqs[i]) - p0 - g for i in idx) for idx, g in chunk]
    n_rows = min(len(chunk), max(1, -(-sum(sizes) // ROW_TOKENS)))
    rows: list[list] = [[] for _ in range(n_rows)]
    fill = [0] * n_rows
    for k in sorted(range(len(chunk)), key=lambda k: -sizes[k]):
        r = fill.index(min(fill))
        rows[r].append(chunk[k])
        fill[r] += sizes[k]
    return rows


def _run_packed(model, seqs, chunk, p0, kv0, dev, config):
    """Rows of groups, each group's segment then its members' suffixes, on top of the level-1 cache.

    A custom attention mask lets each token see the level-1 prefix, its group's segment and its own
    suffix (causally), nothing else; position ids restart after the group segment for each suffix.
    Rows are right-padded to the longest (pads see only themselves and are never read).
    """
    packed = _pack_rows(seqs, chunk, p0)
    rows_ids, rows_pos, rows_block, rows_path, order = [], [], [], [], []
    for row in packed:
        ids, pos, block, path = [], [], [], []
        for b, (idx, g) in enumerate(row):
            ids += seqs[idx[0]][p0 : p0 + g]
            pos += range(p0, p0 + g)
            block += [b] * g
            path += [-1] * g
            for i in idx:
                suf = seqs[i][p0 + g :]
                ids += suf
                pos += range(p0 + g, p0 + g + len(suf))
                block += [b] * len(suf)
                path += [i] * len(suf)
                order.append((len(rows_ids), len(ids) - 1, i))
        rows_ids.append(ids), rows_pos.append(pos), rows_block.append(block), rows_path.append(path)
    n_rows, width = len(packed), max(len(r) for r in rows_ids)
    ids_t = torch.zeros(n_rows, width, dtype=torch.long)
    pos_t = torch.zeros(n_rows, width, dtype=torch.long)
    block_t = torch.full((n_rows, width), -1, dtype=torch.long)  # pads: a block of their own
    path_t = torch.full((n_rows, width), -2, dtype=torch.long)
    for r in range(n_rows):
        m = len(rows_ids[r])
        ids_t[r, :m], pos_t[r, :m] = torch.tensor(rows_ids[r]), torch.tensor(rows_pos[r])
        block_t[r, :m], path_t[r, :m] = torch.tensor(rows_block[r]), torch.tensor(rows_path[r])
        if m < width:  # pads continue the positions; they attend to themselves only
            pos_t[r, m:] = torch.arange(p0, p0 + width - m)
            path_t[r, m:] = -3 - torch.arange(width - m)
    same_block = block_t[:, :, None] == block_t[:, None, :]
    see = same_block & ((path_t[:, None, :] == -1) | (path_t[:, None, :] == path_t[:, :, None]))
    see &= torch.ones(width, width, dtype=torch.bool).tril()
    see = torch.cat([torch.ones(n_rows, width, p0, dtype=torch.bool), see], dim=2)[:, None]
    if config._attn_implementation == "eager":  # eager attention adds the mask to the scores
        see = torch.zeros(see.shape, dtype=model.dtype).masked_fill(~see, torch.finfo(model.dtype).min)
    keep = torch.zeros(n_rows, width, dtype=torch.bool)
    for r, col, _ in order:
        keep[r, col] = True
    kv = [(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1)) for k, v in kv0]
    out = model(
        input_ids=ids_t.to(dev), attention_mask=see.to(dev), position_ids=pos_t.to(dev),
        past_key_values=DynamicCache(ddp_cache_data=kv, config=config), logits_to_keep=keep.to(dev),
    )
    # logits come out row by row, columns in order: the order ``order`` was built in
    return [i for _, _, i in order], out.logits.reshape(-1, out.logits.shape[-1]).float()


def last_logprobs(model, seqs: list[list[int]], token_ids: list[int], batch_size: int, pad_id: int,
                  groups: list | None = None, prefix_cache: bool = True, progress=None,
                  store: PrefixStore | None = None) -> torch.Tensor:
    """log-softmax over the vocabulary at each sequence's last token, for ``token_ids``: [N, len(token_ids)]."""
    out = torch.full((len(seqs), len(token_ids)), float("nan"))
    if not seqs:
        return out
    if prefix_cache and cache_check(model, seqs, token_ids, groups, batch_size, pad_id) is not None:
        prefix_cache = False
    if prefix_cache:
        it = last_logits_cached(model, seqs, groups if groups is not None else [0] * len(seqs), batch_size, pad_id, store)
    else:
        it = last_logits_plain(model, seqs, batch_size, pad_id)
    ids = torch.tensor(token_ids)
    for idx, logits in it:
        out[torch.tensor(idx)] = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu()
        if progress is not None:
            progress(len(idx))
    return out


def unsafe_reason(config) -> str | None:
    """Why the packed custom mask cannot reproduce this model's attention (None: it can)."""
    impl = getattr(config, "_attn_implementation", None)
    if impl not in MASKED_ATTENTION:
        return f"attention implementation {impl!r} takes no custom mask"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        return f"sliding-window attention (window {window}) is not what the packed mask expresses"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return "some layers do not use full attention"
    return None


def cache_check(model, seqs, token_ids, groups, batch_size: int, pad_id: int) -> str | None:
    """None where the prefix cache is safe for ``model``, else the reason it is off (checked once per model).

    Besides :func:`unsafe_reason`, the first call's first views (up to two groups, four sequences) go
    through both paths: a difference in log-probabilities beyond rounding (1e-3 in float32, 5e-2 in
    16-bit) turns the cache off for this model.
    """
    if model in _checked:
        return _checked[model]
    reason = unsafe_reason(model.config)
    if reason is None:
        groups = groups if groups is not None else [0] * len(seqs)
        first = list(dict.fromkeys(groups))[:2]
        idx = [i for i, g in enumerate(groups) if g in first][:4]
        sample, sample_groups = [seqs[i] for i in idx], [groups[i] for i in idx]
        ids = torch.tensor(token_ids)

        def logps(it) -> torch.Tensor:
            res = torch.empty(len(sample), len(token_ids))
            for rows, logits in it:
                res[torch.tensor(rows)] = torch.log_softmax(logits.float(), dim=-1)[:, ids.to(logits.device)].cpu()
            return res

        plain = logps(last_logits_plain(model, sample, batch_size, pad_id))
        cached = logps(last_logits_cached(model, sample, sample_groups, batch_size, pad_id))
        diff = (plain - cached).abs().max().item()
        tol = 1e-3 if model.dtype == torch.float32 else 5e-2
        if not math.isfinite(diff) or diff > tol:
            reason = f"its log-probabilities differed from the plain path's by {diff:.2g} on the first views"
    _checked[model] = reason
    if reason is not None:
        print(f"[rlaif] judge prefix cache off for this model: {reason}; judging takes the plain path "
              "(same verdicts, full cost)", file=sys.stderr, flush=True)
    return reason
