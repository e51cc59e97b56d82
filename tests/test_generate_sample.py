"""The generate stage shares each prompt's prefill among its K samples and samples what ``generate`` samples."""

import torch
from conftest import tiny_recipe

from rlaif.config import GenerateConfig, recipe_from_dict
from rlaif.run import RunContext
from rlaif.stages.generate import chat_prefix, sample

PROMPTS = ["Name three primary colours.", "Explain in a few words why the sky looks blue during the day.", "Hi."]


def test_shared_prefill_samples_what_num_return_sequences_samples(tiny_model, tmp_path):
    ctx = RunContext(recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out")))
    model, tok = ctx.load_base(), ctx.tokenizer
    enc = tok([chat_prefix(tok, p) for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
    cfg = GenerateConfig(num_candidates=3, max_new_tokens=10, temperature=1.0, top_p=0.95)
    fed = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    try:
        torch.manual_seed(7)
        shared = sample(model, enc, cfg, tok.pad_token_id)
        shared_fed, fed[:] = sum(fed), []
        torch.manual_seed(7)
        plain = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.95, top_k=None, repetition_penalty=1.0,
                               max_new_tokens=10, num_return_sequences=3, pad_token_id=tok.pad_token_id)
        plain_fed = sum(fed)
    finally:
        handle.remove()
    assert torch.equal(shared, plain)
    rows, width = len(PROMPTS), enc["input_ids"].shape[1]
    steps = shared.shape[1] - width  # new tokens: the first comes from the prefill's last position
    assert plain_fed == rows * 3 * width + rows * 3 * (steps - 1)
    assert shared_fed == rows * (width - 1) + rows * 3 * steps  # the prompt once per prompt, not per sample
