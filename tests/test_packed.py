"""rlaif.packed: oneDNN-packed linear layers for the passes that do not train (CPU, float32)."""

import contextlib

import pytest
import torch

from rlaif import packed
from rlaif.config import GenerateConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.packed import packed_linears
from rlaif.stages import generate
from rlaif.stages.generate import generate_candidates, sample_logprobs

pytestmark = pytest.mark.skipif(not packed.supported(), reason="this PyTorch has no oneDNN linear ops")
PROMPTS = [{"id": "a", "prompt": "Say hello."}, {"id": "b", "prompt": "Explain rain to a child in one sentence please."}]


@pytest.fixture
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


def linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def logits(model, ids):
    return model(input_ids=ids).logits


def test_packed_layers_compute_from_their_packed_copy_and_are_restored(tiny):
    model, _ = tiny
    ids = torch.randint(0, 100, (3, 7))
    with torch.no_grad():
        plain = logits(model, ids)
        with packed_linears(model, rows=3) as n:
            assert n == len(linears(model)) > 0
            assert torch.allclose(logits(model, ids), plain, atol=1e-4)  # the same products, other rounding
            head = model.model.layers[0].mlp.down_proj.weight  # not tied to the embedding
            saved = head.clone()
            head.mul_(0)  # the packed copy, not the live weight, is what the layer multiplies by
            assert torch.allclose(logits(model, ids), plain, atol=1e-4)
            head.copy_(saved)
        assert all("forward" not in vars(m) for m in linears(model))
        head.mul_(0)
        assert not torch.allclose(logits(model, ids), plain, atol=1e-4)  # restored: the live weight again
        head.copy_(saved)


def test_nothing_is_packed_with_gradients_on_and_a_packed_layer_falls_back_under_grad(tiny):
    model, _ = tiny
    ids = torch.randint(0, 100, (2, 5))
    with packed_linears(model) as n:
        assert n == 0 and all("forward" not in vars(m) for m in linears(model))
    with torch.no_grad(), packed_linears(model) as n:
        assert n > 0
        with torch.enable_grad():  # e.g. a trainer called inside: its own forward, so gradients flow
            out = logits(model, ids)
            out.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_nothing_is_packed_when_it_would_not_fit_or_is_not_cpu_float32(tiny, monkeypatch):
    model, _ = tiny
    size = sum(m.weight.numel() * 4 for m in linears(model))
    monkeypatch.setattr(packed, "available_memory", lambda: 2 * size - 1)
    with torch.no_grad(), packed_linears(model) as n:
        assert n == 0
    monkeypatch.setattr(packed, "available_memory", lambda: 2 * size)
    with torch.no_grad(), packed_linears(model) as n:
        assert n == len(linears(model))
    monkeypatch.setattr(packed, "available_memory", lambda: None)
    with torch.no_grad(), packed_linears(model) as n:
        assert n == 0
    monkeypatch.undo()
    half = load_model(model.name_or_path).to(torch.bfloat16)
    with torch.no_grad(), packed_linears(half) as n:
        assert n == 0


def test_the_probe_draws_nothing_from_the_global_random_stream():
    """A resumed run probes at another point than the unbroken one; a draw there would change its samples."""
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    assert packed.supported.__wrapped__()
    assert torch.equal(torch.rand(3), want)


def test_available_memory_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    assert packed.available_memory(f) == 20000000 * 1024
    f.write_text("MemTotal:       24000000 kB\n")
    assert packed.available_memory(f) is None
    assert packed.available_memory(tmp_path / "absent") is None


@contextlib.contextmanager
def spy(monkeypatch, module):
    """Record how many layers each packed_linears entered from ``module`` packed."""
    seen = []
    real = packed.packed_linears

    @contextlib.contextmanager
    def recording(model, rows=None):
        with real(model, rows) as n:
            seen.append(n)
            yield n

    monkeypatch.setattr(module, "packed_linears", recording)
    yield seen


def test_generation_and_scoring_run_packed_with_the_same_results(tiny, monkeypatch):
    model, tok = tiny
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=8, batch_size=2, temperature=1.0, top_p=0.9)
    with monkeypatch.context() as m:
        m.setattr(packed, "supported", lambda: False)
        rows = generate_candidates(model, tok, PROMPTS, cfg, seed=3)
        lps = sample_logprobs(model, tok, ["Say hello."] * 3, [r["token_ids"] for r in rows[:3]], cfg)
    n = len(linears(model))
    with spy(monkeypatch, generate) as seen:
        again = generate_candidates(model, tok, PROMPTS, cfg, seed=3)
        assert seen == [n]
        assert [r["token_ids"] for r in again] == [r["token_ids"] for r in rows]
        assert [r["logp"] for r in again] == pytest.approx([r["logp"] for r in rows], abs=1e-4)
        assert sample_logprobs(model, tok, ["Say hello."] * 3, [r["token_ids"] for r in rows[:3]], cfg) == pytest.approx(lps, abs=1e-4)
        assert seen == [n, n]
