"""Shared fixtures: a tiny randomly initialised chat model built inside the tests (no download)."""

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on the bundled prompts, ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [json.loads(line)["prompt"] for line in (REPO / "rlaif/data/prompts.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


def tiny_recipe(tiny_model: str, output_dir: Path, **sections) -> dict:
    """A recipe dict for the tiny model: fast settings, W&B off."""
    recipe = {
        "run": {"output_dir": str(output_dir), "rounds": 2, "seed": 0},
        "model": {"source": tiny_model, "dtype": "float32"},
        "prompts": {"source": "bundled", "per_round": 4, "max_prompt_tokens": 200},
        "generate": {"num_candidates": 3, "max_new_tokens": 12, "batch_size": 4, "temperature": 1.0},
        "judge": {"batch_size": 16},
        "pairs": {"min_margin": 0.0, "drop_truncated": False},
        "dpo": {"learning_rate": 5e-3, "num_train_epochs": 2, "per_device_train_batch_size": 2, "max_length": 128},
        "lora": {"r": 4, "lora_alpha": 8},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
