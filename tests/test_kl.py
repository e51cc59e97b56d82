"""The KL-to-base estimate (issue 11.A2): sampled ids, scored under the distribution they were drawn from.

A vocabulary-restricted tiny model (five tokens, the end-of-turn token among them) answers in at most
three tokens, so every sequence can be enumerated: the exact KL and each sequence's exact probability
are computed here by plain arithmetic (repetition penalty, temperature, top-k written out), and the
code's Monte-Carlo estimate and per-sequence log-probabilities are checked against them.
"""

import math

import pytest
import torch

from rlaif import chat
from rlaif.config import GenerateConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.sampling import RowSampler
from rlaif.stages.generate import generate_candidates, sample_logprobs, sequence_logprobs

PROMPT = "Explain rain to a child in one sentence please."
STEPS = 3


def restrict(model, allowed: list[int], offsets: list[float], scale: float):
    """Only ``allowed`` tokens get probability: the logits become scale·logits + offsets there, -1e9 elsewhere."""
    bias = torch.full((model.config.vocab_size,), -1e9)
    bias[allowed] = torch.tensor(offsets)
    model.lm_head.register_forward_hook(lambda module, args, out: out * scale + bias.to(out.dtype))
    return model


@pytest.fixture(scope="module")
def models(tiny_model):
    tok = load_tokenizer(tiny_model)
    allowed = [tok.eos_token_id, 40, 41, 42, 43]
    base = restrict(load_model(tiny_model), allowed, [-0.5, 0.0, 0.3, -0.2, 0.1], scale=30.0)
    policy = load_model(tiny_model)
    with torch.no_grad():  # other weights: the policy is not the base
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    policy = restrict(policy, allowed, [0.4, -0.3, 0.0, 0.5, -0.6], scale=30.0)
    return policy, base, tok, allowed


def next_logprobs(model, ids: list[int], cfg: GenerateConfig, truncate: bool) -> torch.Tensor:
    """The sampler's next-token log-probabilities after ``ids``, written out by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    for t in set(ids):  # transformers' repetition penalty: divide positive logits, multiply negative ones
        logits[t] = logits[t] / cfg.repetition_penalty if logits[t] > 0 else logits[t] * cfg.repetition_penalty
    logits = logits / cfg.temperature
    if truncate and cfg.top_k:
        logits[logits < torch.topk(logits, cfg.top_k).values[-1]] = -math.inf
    return torch.log_softmax(logits, -1)


def enumerate_sequences(model, prompt: list[int], allowed, eos, cfg, truncate) -> dict[tuple, float]:
    """log-probability of every sequence of at most STEPS tokens (ending at EOS or at the limit)."""
    out, frontier = {}, [((), 0.0)]
    while frontier:
        seq, lp = frontier.pop()
        logp = next_logprobs(model, prompt + list(seq), cfg, truncate)
        for t in allowed:
            if math.isinf(logp[t].item()):
                continue
            nxt, nlp = seq + (t,), lp + logp[t].item()
            (out.__setitem__(nxt, nlp) if t == eos or len(nxt) == STEPS else frontier.append((nxt, nlp)))
    return out


@pytest.mark.parametrize("top_k", [0, 3])
def test_kl_estimate_and_sequence_logprobs_against_enumeration(models, top_k):
    policy, base, tok, allowed = models
    eos = tok.eos_token_id
    cfg = GenerateConfig(num_candidates=1000, max_new_tokens=STEPS, batch_size=1, temperature=0.8, top_p=1.0,
                         top_k=top_k, repetition_penalty=1.3)
    prompt = chat.prompt_ids(tok, PROMPT)
    sampler = enumerate_sequences(policy, prompt, allowed, eos, cfg, truncate=True)  # what generation draws from
    full_pol = enumerate_sequences(policy, prompt, allowed, eos, cfg, truncate=False)
    full_base = enumerate_sequences(base, prompt, allowed, eos, cfg, truncate=False)
    assert sum(math.exp(v) for v in sampler.values()) == pytest.approx(1.0, abs=1e-9)
    # the quantity the estimator averages: log π_T/b_T over the sampler's sequences (= KL(π_T‖b_T) without a top-k cut)
    exact = sum(math.exp(lp) * (full_pol[x] - full_base[x]) for x, lp in sampler.items())
    assert exact > 0.1

    rows = generate_candidates(policy, tok, [{"id": "p", "prompt": PROMPT}], cfg, seed=11)
    ids = [r["token_ids"] for r in rows]
    ended = [r for r in rows if not r["truncated"]]
    assert ended and all(r["token_ids"][-1] == eos for r in ended), "a stopped sample keeps its stop token"
    assert all(eos not in r["token_ids"] and len(r["token_ids"]) == STEPS for r in rows if r["truncated"]), \
        "no EOS appended to a cut-off sample"
    assert {tuple(x) for x in ids} <= set(sampler)

    folded = [r["logp"] for r in rows]  # summed while sampling (LogprobTap), no second forward pass
    assert folded[:200] == pytest.approx([full_pol[tuple(x)] for x in ids[:200]], abs=1e-4)
    assert any(not r["truncated"] for r in rows[:200]) and any(r["truncated"] for r in rows[:200])
    lp_pol = sample_logprobs(policy, tok, [PROMPT] * len(ids), ids, cfg, batch_size=256)
    lp_base = sample_logprobs(base, tok, [PROMPT] * len(ids), ids, cfg, batch_size=256)
    for x, a, b in list(zip(ids, lp_pol, lp_base))[:50]:
        assert a == pytest.approx(full_pol[tuple(x)], abs=1e-5) and b == pytest.approx(full_base[tuple(x)], abs=1e-5)
    drawn = sequence_logprobs(policy, [prompt] * 50, ids[:50], cfg, batch_size=64, truncate=True)
    assert drawn == pytest.approx([sampler[tuple(x)] for x in ids[:50]], abs=1e-5), "the sampling log-probability"

    diffs = torch.tensor(lp_pol) - torch.tensor(lp_base)
    estimate, se = diffs.mean().item(), diffs.std().item() / math.sqrt(len(diffs))
    assert se < 0.25 * exact
    assert abs(estimate - exact) < 4 * se, (estimate, exact, se)


def test_scored_logprobs_equal_the_processed_scores_generate_sampled_from(tiny_model, monkeypatch):
    """Top-k, top-p, temperature and repetition penalty, prompts of different lengths (left padding).

    The truth is the distribution each token was drawn from: the scores the processors hand to each row's
    sampler (:class:`rlaif.sampling.RowSampler`), recorded at every decoding step."""
    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=6, batch_size=2, temperature=0.8, top_k=50, top_p=0.9,
                         repetition_penalty=1.3)
    prompts = [{"id": "a", "prompt": "Say hello."}, {"id": "b", "prompt": "Explain rain to a child in one sentence please."}]
    seen, noise = [], RowSampler.__call__

    def recorded(self, input_ids, scores):
        seen.append(scores.float().clone())
        return noise(self, input_ids, scores)

    monkeypatch.setattr(RowSampler, "__call__", recorded)
    rows = generate_candidates(model, tok, prompts, cfg, seed=3)
    assert len(seen) == max(len(r["token_ids"]) for r in rows)
    truth = [sum(torch.log_softmax(seen[t][s], -1)[x].item() for t, x in enumerate(r["token_ids"]))
             for s, r in enumerate(rows)]
    prompt_ids = [chat.prompt_ids(tok, p["prompt"]) for p in prompts for _ in range(cfg.num_candidates)]
    got = sequence_logprobs(model, prompt_ids, [r["token_ids"] for r in rows], cfg, batch_size=4,
                            truncate=True)
    assert got == pytest.approx(truth, abs=1e-5)


def test_logprobs_summed_while_sampling_equal_a_second_forward_pass(tiny_model):
    """The generate stage's policy log-probabilities come from generation's own scores: the same numbers as
    scoring the sampled ids again (no top-k/top-p cut), with left padding, a shared prefill and early stops."""
    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=6, batch_size=2, temperature=0.8, top_k=50, top_p=0.9,
                         repetition_penalty=1.3)
    prompts = [{"id": "a", "prompt": "Say hello."}, {"id": "b", "prompt": "Explain rain to a child in one sentence please."},
               {"id": "c", "prompt": "Name a colour."}]
    rows = generate_candidates(model, tok, prompts, cfg, seed=5)
    prompt_ids = [chat.prompt_ids(tok, p["prompt"]) for p in prompts for _ in range(cfg.num_candidates)]
    again = sequence_logprobs(model, prompt_ids, [r["token_ids"] for r in rows], cfg, batch_size=5, truncate=False)
    assert [r["logp"] for r in rows] == pytest.approx(again, abs=1e-4)
    cut = sequence_logprobs(model, prompt_ids, [r["token_ids"] for r in rows], cfg, batch_size=5, truncate=True)
    assert max(abs(a - b) for a, b in zip(cut, again)) > 1e-3, "the cut must matter here, or the test shows nothing"
