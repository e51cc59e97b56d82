import math

import pytest
import torch
from transformers import StaticCache

from rlaif import chat, decoding
from rlaif.config import GenerateConfig
from rlaif.errors import RlaifError
from rlaif.judging.constitution import constitution_from_dict, load_constitution
from rlaif.judging.judges import ModelJudge, label_token_ids
from rlaif.judging.verdicts import Comparison
from rlaif.models import load_model, load_tokenizer
from rlaif.stages import generate
from rlaif.stages.generate import generate_candidates, sample_logprobs

PROMPTS = [{"id": "a", "prompt": "Say hello."}, {"id": "b", "prompt": "Explain rain to a child in one sentence please."}]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


def test_generate_k_candidates_per_prompt_deterministically(tiny):
    model, tok = tiny
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=8, batch_size=2)
    rows = generate_candidates(model, tok, PROMPTS, cfg, seed=7)
    assert [(r["prompt_id"], r["candidate"]) for r in rows] == [(p, k) for p in "ab" for k in range(3)]
    assert all(0 <= r["num_tokens"] <= 8 and isinstance(r["text"], str) for r in rows)
    assert any(r["truncated"] for r in rows)  # a random model rarely says <|im_end|> within 8 tokens
    assert all(r["truncated"] == (r["num_tokens"] == 8) for r in rows)
    assert rows == generate_candidates(model, tok, PROMPTS, cfg, seed=7)
    assert rows != generate_candidates(model, tok, PROMPTS, cfg, seed=8)
    assert len({r["text"] for r in rows}) > 2  # sampling, not greedy


def test_left_padding_does_not_change_a_prompts_samples(tiny):
    model, tok = tiny
    cfg = GenerateConfig(num_candidates=2, max_new_tokens=6, batch_size=1, temperature=1e-4)
    alone = generate_candidates(model, tok, PROMPTS[:1], cfg, seed=1)
    batched = generate_candidates(model, tok, PROMPTS, GenerateConfig(num_candidates=2, max_new_tokens=6, batch_size=2, temperature=1e-4), seed=1)
    assert [r["text"] for r in alone] == [r["text"] for r in batched[:2]]  # near-greedy: same tokens with padding


def test_a_candidate_does_not_depend_on_the_batch_it_was_sampled_in(tiny):
    """Each candidate has its own random stream (prompt id, candidate index): sampled at full temperature,
    prompts alone, together, or in the other order give the same candidates (what lets several processes
    split the prompts without changing a run)."""
    model, tok = tiny
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=8, batch_size=2, temperature=1.0, top_p=0.9)
    together = generate_candidates(model, tok, PROMPTS, cfg, seed=3)
    alone = [r for p in PROMPTS for r in generate_candidates(model, tok, [p], cfg, seed=3)]
    swapped = generate_candidates(model, tok, PROMPTS[::-1], cfg, seed=3)
    key = lambda r: (r["prompt_id"], r["candidate"])
    assert [r["token_ids"] for r in together] == [r["token_ids"] for r in alone]
    assert sorted(map(key, swapped)) == sorted(map(key, together))
    assert {key(r): r["token_ids"] for r in swapped} == {key(r): r["token_ids"] for r in together}
    assert len({tuple(r["token_ids"]) for r in together}) > 3  # sampled: the streams differ


def test_each_prompt_is_prefilled_once_for_its_k_samples(tiny, monkeypatch):
    """The prompts run through the model once, not K times, and the samples are those of the plain path
    (the prompts repeated K times, each prefilled K times): each candidate draws from its own stream."""
    model, tok = tiny
    fed, prefill = [], decoding.shared_prefill
    hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=5, batch_size=2, temperature=1.0)
    try:
        rows = generate_candidates(model, tok, PROMPTS, cfg, seed=5)
        shared = list(fed)
        fed.clear()
        monkeypatch.setattr(generate, "shared_prefill", lambda *args: None)
        plain = generate_candidates(model, tok, PROMPTS, cfg, seed=5)
    finally:
        hook.remove()
    width = max(len(chat.prompt_ids(tok, p["prompt"])) for p in PROMPTS)
    assert shared[0] == 2 * (width - 1), "the first pass is the prefill: 2 prompts, once each, all but the last token"
    assert fed[0] == 3 * 2 * width, "the plain path prefills every prompt K times"
    assert sum(shared) == sum(fed) - (3 - 1) * 2 * (width - 1), "decoding is the same; K-1 prefills are saved"
    assert [r["token_ids"] for r in rows] == [r["token_ids"] for r in plain]
    assert [r["logp"] for r in rows] == pytest.approx([r["logp"] for r in plain], abs=1e-4)
    ids, mask, _ = chat.left_pad([chat.prompt_ids(tok, p["prompt"]) for p in PROMPTS], tok.pad_token_id, model.device)
    cache = prefill(model, ids, mask, 3, 5)
    assert isinstance(cache, StaticCache), "preallocated: no concatenation per decoding step"
    assert cache.get_seq_length() == width - 1 and cache.layers[0].keys.shape[0] == 3 * 2
    assert cache.layers[0].keys.shape[2] == width + 5  # room for the last prompt token and every new one


def test_prompts_of_different_lengths_are_prefilled_in_groups_with_the_same_samples(tiny, monkeypatch):
    """A long prompt gets its own prefill pass instead of padding the short ones to its length; the samples
    are those of one padded pass."""
    model, tok = tiny
    prompts = PROMPTS + [{"id": "c", "prompt": "Tell me about " + "rain and snow, " * 20}]
    lengths = [len(chat.prompt_ids(tok, p["prompt"])) for p in prompts]
    assert decoding.length_groups(lengths) == [[0, 1], [2]]
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    cfg = GenerateConfig(num_candidates=2, max_new_tokens=5, batch_size=3, temperature=1.0)
    try:
        grouped = generate_candidates(model, tok, prompts, cfg, seed=4)
        prefills = [s for s in shapes if s[1] > 1]
        monkeypatch.setattr(decoding, "length_groups", lambda lengths: [list(range(len(lengths)))])
        shapes.clear()
        one = generate_candidates(model, tok, prompts, cfg, seed=4)
    finally:
        hook.remove()
    assert prefills == [(2, max(lengths[:2]) - 1), (1, lengths[2] - 1)]
    assert [s for s in shapes if s[1] > 1] == [(3, max(lengths) - 1)]
    assert [r["token_ids"] for r in grouped] == [r["token_ids"] for r in one]
    assert [r["logp"] for r in grouped] == pytest.approx([r["logp"] for r in one], abs=1e-4)


def test_sample_logprobs_prefill_each_distinct_prompt_once_with_the_plain_paths_numbers(tiny, monkeypatch):
    """Rows that share a prompt (a prompt's K samples, adjacent or not) continue from one prefill of it."""
    model, tok = tiny
    texts = ["Say hello.", "Explain rain to a child in one sentence please.", "Say hello.", "Say hello."]
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in ["hi there", "clouds get heavy", "hey", "hello to you all"]]
    seqs[1] = seqs[1] + [tok.eos_token_id]
    cfg = GenerateConfig(temperature=0.7, repetition_penalty=1.2)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        shared = sample_logprobs(model, tok, texts, seqs, cfg, batch_size=4)
        shared_fed = list(fed)
        fed.clear()
        monkeypatch.setattr(generate, "shared_prefill", lambda *a: None)
        plain = sample_logprobs(model, tok, texts, seqs, cfg, batch_size=4)
    finally:
        hook.remove()
    assert shared == pytest.approx(plain, abs=1e-4)
    widths = [len(chat.prompt_ids(tok, t)) for t in texts[:2]]
    steps = max(map(len, seqs))
    assert fed == [(4, max(widths) + steps)]  # the plain path: every row its whole prompt
    prefill = sum(len(g) * (max(widths[i] for i in g) - 1) for g in decoding.length_groups(widths))
    assert sum(r * c for r, c in shared_fed) == prefill + 4 * (steps + 1)  # 2 prompts prefilled, not 4
    assert shared_fed[-1] == (4, steps + 1)  # the continuation: last prompt token and the sequence
    monkeypatch.undo()
    monkeypatch.setattr(decoding, "_plain_attention", lambda m: False)  # a model's own cache type, rows selected
    assert sample_logprobs(model, tok, texts, seqs, cfg, batch_size=4) == pytest.approx(plain, abs=1e-4)


def test_length_groups_bound_the_padding():
    lengths = [45, 37, 91, 39, 53, 40, 90, 42]
    groups = decoding.length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups == [[1, 3, 5, 7, 0, 4], [6, 2]]
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 1.25 * sum(lengths[i] for i in g)
    assert decoding.length_groups([5]) == [[0]] and decoding.length_groups([]) == []


def test_sample_logprobs_are_padding_invariant(tiny):
    model, tok = tiny
    prompts = ["hi", "a much longer prompt that needs padding in a batch"]
    samples = [tok("yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
               tok("no thanks, not today", add_special_tokens=False)["input_ids"]]
    cfg = GenerateConfig(temperature=0.7, repetition_penalty=1.2)
    batched = sample_logprobs(model, tok, prompts, samples, cfg, batch_size=2)
    single = [sample_logprobs(model, tok, [p], [r], cfg, batch_size=1)[0] for p, r in zip(prompts, samples)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(x < 0 for x in batched)


def test_model_judge_reads_label_logodds_independent_of_batching(tiny):
    model, tok = tiny
    const = load_constitution("default")
    comps = [
        Comparison("q", "short", "a rather longer answer that pads the batch", "be nice"),
        Comparison("another question", "x", "y", "be brief"),
        Comparison("q", "a rather longer answer that pads the batch", "short", "be nice"),
    ]
    batched = ModelJudge(model, tok, const, batch_size=3)(comps)
    single = [ModelJudge(model, tok, const, batch_size=1)([c])[0] for c in comps]
    assert all(math.isfinite(x) for x in batched)
    assert batched == pytest.approx(single, abs=1e-4)
    # the log-odds are the model's own next-token logits for the two labels
    judge = ModelJudge(model, tok, const, batch_size=1)
    enc = tok(judge.text(comps[0]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    a, b = label_token_ids(tok, const)
    assert batched[0] == pytest.approx((logits[a] - logits[b]).item(), abs=1e-4)


def test_constitution_validation():
    good = {"template": "{principle} {prompt} {answer_a} {answer_b}", "principles": ["be kind"]}
    assert constitution_from_dict(good).principles[0].id == "p1"
    with pytest.raises(RlaifError, match=r"missing \['answer_b'\]"):
        constitution_from_dict({**good, "template": "{principle} {prompt} {answer_a}"})
    with pytest.raises(RlaifError, match="non-empty list"):
        constitution_from_dict({**good, "principles": []})
    with pytest.raises(RlaifError, match="unknown key 'rules'"):
        constitution_from_dict({**good, "rules": []})
    with pytest.raises(RlaifError, match="two labels must differ"):
        constitution_from_dict({**good, "labels": ["A", "A"]})


def test_multi_token_label_is_rejected(tiny):
    _, tok = tiny
    c = constitution_from_dict(
        {"template": "{principle} {prompt} {answer_a} {answer_b}", "principles": ["p"], "labels": ["Zqxjv", "B"]}, "mine.yaml"
    )
    with pytest.raises(RlaifError, match="mine.yaml: label 'Zqxjv' is not a single token"):
        label_token_ids(tok, c)


def test_models_with_other_layer_types_keep_their_own_cache_shared(tiny, monkeypatch):
    """Sliding-window or recurrent layers: the prefilled cache of their own type, repeated K times; same samples."""
    model, tok = tiny
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=5, batch_size=2, temperature=1.0)
    static = generate_candidates(model, tok, PROMPTS, cfg, seed=5)
    monkeypatch.setattr(decoding, "_plain_attention", lambda m: False)
    ids, mask, _ = chat.left_pad([chat.prompt_ids(tok, p["prompt"]) for p in PROMPTS], tok.pad_token_id, model.device)
    assert not isinstance(decoding.shared_prefill(model, ids, mask, 3, 5), StaticCache)
    own = generate_candidates(model, tok, PROMPTS, cfg, seed=5)
    assert [r["token_ids"] for r in own] == [r["token_ids"] for r in static]
