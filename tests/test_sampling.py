"""The sampler draws from the distribution it is given, row by row; the nucleus is transformers' own."""

import math

import pytest
import torch
from transformers import TopPLogitsWarper

from rlaif.sampling import RowSampler, TopP


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95, 0.999])
def test_top_p_keeps_the_same_tokens_as_transformers(top_p):
    torch.manual_seed(0)
    for temperature in (0.3, 1.0, 3.0):  # peaked and flat rows; flat ones need more than the first 256 tokens
        scores = torch.randn(16, 5000) * 4 / temperature
        ids = torch.zeros(16, 1, dtype=torch.long)
        ours, theirs = TopP(top_p)(ids, scores), TopPLogitsWarper(top_p)(ids, scores)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.equal(ours[~torch.isinf(ours)], scores[~torch.isinf(ours)])


def test_top_p_of_a_flat_row_takes_the_full_sort():
    scores = torch.zeros(2, 1000)  # every token equally likely: the nucleus of 0.9 is 900 tokens
    kept = (~torch.isinf(TopP(0.9, first=256)(None, scores))).sum(-1)
    assert kept.tolist() == (~torch.isinf(TopPLogitsWarper(0.9)(None, scores))).sum(-1).tolist()
    assert kept.tolist() == [900, 900] or kept.tolist() == [901, 901]


def test_row_sampler_draws_from_softmax_and_each_row_from_its_own_stream():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    scores = probs.log().expand(2000, 4).clone()
    out = RowSampler(list(range(2000)))(None, scores)
    assert torch.equal((out == 0).sum(-1), torch.ones(2000, dtype=torch.long))  # one token a row
    drawn = out.argmax(-1)
    freq = torch.bincount(drawn, minlength=4).double() / 2000
    assert freq[3] == 0, "a token of probability 0 is never drawn"
    for f, p in zip(freq[:3].tolist(), probs[:3].tolist()):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / 2000), (freq, probs)
    # a row's draws depend on its seed alone, not on the rows beside it
    alone = RowSampler([7])(None, scores[:1]).argmax(-1)
    among = RowSampler([3, 7, 11])(None, scores[:3]).argmax(-1)
    assert alone.item() == among[1].item()
    steps = [RowSampler([7]) for _ in range(2)]
    seq = [[s(None, scores[:1]).argmax(-1).item() for _ in range(20)] for s in steps]
    assert seq[0] == seq[1] and len(set(seq[0])) > 1  # the same stream, step after step, and it moves


def test_top_p_mixes_the_partial_and_the_full_sort_row_by_row():
    torch.manual_seed(1)
    scores = torch.cat([torch.randn(3, 3000) * 10, torch.zeros(2, 3000), torch.randn(3, 3000) * 0.1])
    ours, theirs = TopP(0.9, first=64)(None, scores), TopPLogitsWarper(0.9)(None, scores)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = (~torch.isinf(ours)).sum(-1)
    assert (kept[:3] < 64).all() and (kept[3:] > 64).all()  # both paths ran


@pytest.mark.parametrize("peaked", [True, False])
def test_row_sampler_after_top_p_draws_from_the_nucleus(peaked, monkeypatch):
    """Right after a TopP, the sampler draws among the tokens TopP kept (its first tokens, or the whole
    vocabulary for a nucleus wider than them), with their renormalised probabilities."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(2)) * (3.0 if peaked else 0.05)
    n = 4000
    scores = logits.expand(n, 300).clone()
    topp = TopP(0.8, first=32)
    nucleus = topp(None, scores)
    probs = nucleus[0].softmax(-1)  # transformers' nucleus, renormalised: the distribution to draw from
    widths = []
    draw = RowSampler._draw
    monkeypatch.setattr(RowSampler, "_draw", staticmethod(lambda s, u: widths.append(s.shape[-1]) or draw(s, u)))
    drawn = RowSampler(list(range(n)), nucleus=topp)(None, nucleus).argmax(-1)
    assert widths[0] == 32 and (len(widths) == 2) != peaked, "the first tokens; the full vocabulary only when wider"
    freq = torch.bincount(drawn, minlength=300).double() / n
    assert freq[probs == 0].sum() == 0, "never a token outside the nucleus"
    for f, p in zip(freq.tolist(), probs.tolist()):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9
