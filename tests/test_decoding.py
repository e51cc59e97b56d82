"""The decoding loop: the samples and log-probabilities of transformers' ``generate``, with finished rows dropped."""

import pytest
import torch
from transformers import LogitsProcessorList

from rlaif import chat, decoding
from rlaif.config import GenerateConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.sampling import LogprobTap, RowSampler
from rlaif.stages.generate import _top_p, sampling_processors

PROMPTS = ["Say hello.", "Explain rain to a child in one sentence please.", "List three colours."]
K, BUDGET = 4, 12


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


def _common_tokens(model, tok, ids) -> set[int]:
    """Stop tokens that end rows at different steps: the random model's most frequent next tokens."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1]
    return set(logits.topk(3, dim=-1).indices.flatten().tolist()) | {tok.eos_token_id}


def _run(model, tok, how: str, stop: set[int] | None = None, compact=decoding.COMPACT):
    cfg = GenerateConfig(num_candidates=K, max_new_tokens=BUDGET, temperature=1.0, top_p=0.95, repetition_penalty=1.3)
    ids, mask, pads = chat.left_pad([chat.prompt_ids(tok, p) for p in PROMPTS], tok.pad_token_id, model.device)
    stop = stop or _common_tokens(model, tok, ids)
    tap = LogprobTap(stop)
    processors = sampling_processors(cfg, pads.repeat_interleave(K), tap=tap)
    processors.append(RowSampler(list(range(100, 100 + K * len(PROMPTS))), tap, nucleus=_top_p(processors)))
    rows_fed = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows_fed.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        if how == "generate":  # transformers' loop: greedy over the same processors, finished rows padded
            full = model.generate(input_ids=ids.repeat_interleave(K, 0), attention_mask=mask.repeat_interleave(K, 0),
                                  do_sample=False, repetition_penalty=1.0, logits_processor=LogitsProcessorList(processors),
                                  max_new_tokens=BUDGET, pad_token_id=tok.pad_token_id, eos_token_id=sorted(stop))
            out = full[:, ids.shape[1]:]
        else:
            cache = decoding.shared_prefill(model, ids, mask, K, BUDGET)
            out = decoding.decode(model, ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0), cache, processors,
                                  stop, BUDGET, tok.pad_token_id, compact=compact)
    finally:
        hook.remove()
    return out.tolist(), tap.totals.tolist(), rows_fed, stop


def test_decode_samples_what_generate_samples_and_drops_finished_rows(tiny):
    model, tok = tiny
    theirs, theirs_logp, _, stop = _run(model, tok, "generate")
    padded, padded_logp, padded_fed, _ = _run(model, tok, "decode", stop, compact=None)
    ours, ours_logp, fed, _ = _run(model, tok, "decode", stop)
    ends = [next((i for i, t in enumerate(row) if t in stop), None) for row in theirs]
    assert len({e for e in ends if e is not None}) >= 3 and None in ends, "rows end at several steps, some never"
    assert padded == theirs and ours == theirs  # to the same width (the longest row), padded after each stop
    assert padded_logp == pytest.approx(theirs_logp, abs=1e-5) and ours_logp == pytest.approx(theirs_logp, abs=1e-5)
    assert len(fed) == len(padded_fed) and fed[0] == padded_fed[0] == len(PROMPTS), "the prefill, once a prompt"
    assert set(padded_fed[1:]) == {K * len(PROMPTS)}, "without compaction every row runs every step"
    assert fed[1] == K * len(PROMPTS) and fed[-1] < fed[1] and fed[1:] == sorted(fed[1:], reverse=True)
    live = [sum(e is None or e >= t for e in ends) for t in range(len(fed) - 1)]  # rows not yet finished per step
    assert all(f >= n for f, n in zip(fed[1:], live)), "a row is dropped only after its stop token"
    assert sum(fed[1:]) < sum(padded_fed[1:])


def test_one_token_prompts_and_caches_that_cannot_drop_rows(tiny, monkeypatch):
    """Without a prefill (one-token prompts), or with a cache of the model's own type, the samples are the same."""
    model, tok = tiny
    base, base_logp, _, stop = _run(model, tok, "decode")
    monkeypatch.setattr(decoding, "shared_prefill", lambda *a: None)
    assert _run(model, tok, "decode", stop)[:2] == (base, pytest.approx(base_logp, abs=1e-5))
    monkeypatch.undo()
    monkeypatch.setattr(decoding, "_plain_attention", lambda m: False)
    own, own_logp, fed, _ = _run(model, tok, "decode", stop)
    assert own == base and own_logp == pytest.approx(base_logp, abs=1e-5)
    assert fed[-1] < fed[1], "transformers' dynamic cache drops rows too"
