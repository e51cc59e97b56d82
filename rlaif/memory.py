"""Peak memory per process, estimated from a recipe before anything is launched (``rlaif validate``).

Sizes come from the model's ``config.json`` alone: the architecture is built on PyTorch's ``meta`` device
(no weights are read or allocated), which gives the exact parameter count, and peft's LoRA is applied to
it, which gives the exact adapter size for the recipe's ``lora`` section. The estimate of a stage is the
sum of:

- **weights**: every parameter in the run's dtype (``model.dtype``), once per model the stage holds (GRPO/RLOO
  with ``rl_judge: round_start`` keep a frozen judge next to the policy);
- **adapter**: the trainable LoRA parameters in float32 (peft keeps adapters in float32 over a 16-bit base),
  their gradients and Adam's two moments: 16 bytes a parameter;
- **activations** kept for the backward pass of the longest batch: per token and decoder layer
  ``9.3·hidden + 10.3·intermediate`` values in the run's dtype. The two constants are fitted to the peak
  resident size of one DPO step on the CPU (float32, SDPA attention, LoRA on every linear layer) over five
  shapes (hidden 128–512, intermediate 512–1376, sequence 256–512; each within 6%). Korthikanti et al.
  2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1) count 17·hidden values
  for a GPT layer; a LoRA'd SwiGLU layer keeps more (its gate, up and product, and every adapter's
  input), and resident size also holds what the allocator has not returned. With gradient
  checkpointing: one hidden state a layer plus one layer's worth (not measured);
- **logits**: TRL 1.16 never builds the full ``batch × length × vocabulary`` logits; its fused head
  projects tiles of at most 4096 tokens × 32768 vocabulary entries. On the CPU (PyTorch ops, no Triton)
  a tile costs about 8 float32 copies at its peak (measured: 2.1 GiB for 2048 tokens × 32768 entries), so
  ``min(tokens, 4096) × min(vocab, 32768) × 4 bytes × 8``. Tokens are rows × ``max_length``; DPO rows are the
  chosen and the rejected answer of each pair (2 × per_device_train_batch_size);
- **packed** weights of generation on a CPU in float32: a second copy of the linear layers' weights while
  the policy samples and scores (:mod:`rlaif.packed`), counted as all parameters (at most that);
- **KV cache** of generation: rows × (prompt + new tokens) × layers × 2 × kv_dim in the run's dtype;
- **runtime**: what the process holds before any model (Python, PyTorch, transformers, TRL): 0.5 GiB,
  measured as the resident size after importing rlaif on the CPU (0.46 GiB). On a GPU the CUDA context
  takes about as much again, on the GPU.

The estimate is for the longest batch the recipe allows (``max_length``); real batches are padded only to
their longest row, so a run whose answers are shorter peaks lower.

Checked against measurements: ``tests/test_memory.py`` runs one DPO training step in a subprocess and
compares the growth of its peak resident size with the step's part of the estimate (adapter, activations,
logits; within 1.3×). The quickstart's train stage on the bundled model (13 pairs, longest row 122
tokens) peaked at 4.32 GiB resident (``/usr/bin/time -v``); the estimate at that length is 4.34 GiB
(9.63 GiB at the recipe's ``max_length`` of 320). On one H100 (``benchmarks/gpu_bench.py``, SmolLM2-1.7B's
architecture, bf16, the GPU recipe's sizes) the estimate overstated the allocated peak: generate 45.8 GiB
against 26.0 (prompts shorter than ``max_prompt_tokens``), train 12.9 GiB against 6.0 (with gradient
checkpointing). GRPO/RLOO are not measured.
"""

import contextlib
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from rlaif.config import Recipe, build_lora_config, build_trl_config
from rlaif.distributed import launched_processes
from rlaif.errors import RlaifError
from rlaif.hardware import DTYPES, resolve_dtype
from rlaif.models import BUNDLED_NAMES, bundled_gguf, resolve_model

RUNTIME_BYTES = int(0.5 * 1024**3)
GiB = 1024**3


@dataclass(frozen=True)
class Sizes:
    """What the estimate needs to know about the model, from its config."""

    params: int
    lora_params: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int


@dataclass
class Estimate:
    stage: str
    parts: dict[str, int] = field(default_factory=dict)  # bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)
        return f"{self.stage}: {self.total / GiB:.2f} GiB ({parts})"


def model_config(recipe: Recipe):
    """The model's config, without its weights (the bundled model's from the GGUF header)."""
    m = recipe.model
    try:
        if m.source in BUNDLED_NAMES:
            gguf = bundled_gguf()
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoConfig.from_pretrained(resolve_model(m.source, m.cache_dir), revision=m.revision,
                                          trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlaifError(f"model.source {m.source}: could not read its config for the memory estimate: {exc}") from None


def sizes(recipe: Recipe, config=None) -> Sizes:
    """Parameter and adapter counts of the recipe's model and LoRA, on the meta device (nothing allocated)."""
    config = config or model_config(recipe)
    with torch.device("meta"), warnings_off():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
        params = sum(p.numel() for p in model.parameters())
        peft_model = get_peft_model(model, build_lora_config(recipe))
        lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Sizes(params=params, lora_params=lora, layers=text.num_hidden_layers, hidden=text.hidden_size,
                 intermediate=text.intermediate_size, kv_dim=getattr(text, "num_key_value_heads", heads) * head_dim,
                 vocab=text.vocab_size)


@contextlib.contextmanager
def warnings_off():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


ACTIVATION_PER_HIDDEN, ACTIVATION_PER_INTERMEDIATE = 9.3, 10.3  # values a token and layer (fitted, see above)
LOGIT_TILE_TOKENS, LOGIT_TILE_VOCAB, LOGIT_TILE_COPIES = 4096, 32768, 8


def activation_bytes(s: Sizes, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    per_layer = int((ACTIVATION_PER_HIDDEN * s.hidden + ACTIVATION_PER_INTERMEDIATE * s.intermediate) * dtype_bytes)
    if checkpointing:  # each layer's input, plus one layer recomputed at a time
        return tokens * (s.layers * s.hidden * dtype_bytes + per_layer)
    return tokens * s.layers * per_layer


def logit_bytes(s: Sizes, tokens: int) -> int:
    """The fused log-prob head's peak: one tile of float32 logits and its temporaries."""
    return min(tokens, LOGIT_TILE_TOKENS) * min(s.vocab, LOGIT_TILE_VOCAB) * 4 * LOGIT_TILE_COPIES


def estimate(recipe: Recipe, s: Sizes | None = None) -> list[Estimate]:
    """One estimate per stage that dominates memory: generation (and judging) and training."""
    s = s or sizes(recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(recipe.model.dtype, device)[0]
    width = torch.finfo(DTYPES[dtype]).bits // 8
    weights = s.params * width
    packed = weights if device.type == "cpu" and dtype == "float32" else 0  # rlaif.packed's copy while sampling
    method = recipe.train.method
    with tempfile.TemporaryDirectory() as tmp:
        args = build_trl_config(recipe, method, Path(tmp))
    adapter = s.lora_params * 16 + (s.lora_params * 4 if recipe.train.reference == "previous" else 0)
    prompt = recipe.prompts.max_prompt_tokens
    out = []
    if method == "dpo":
        g = recipe.generate
        rows = g.batch_size * g.num_candidates
        out.append(Estimate("generate", {
            "runtime": RUNTIME_BYTES, "weights": weights, "packed": packed,
            "kv_cache": rows * (prompt + g.max_new_tokens) * s.layers * 2 * s.kv_dim * width,
            "logits": rows * s.vocab * 4 * 2,
        }))
        tokens = 2 * args.per_device_train_batch_size * (args.max_length or prompt + g.max_new_tokens)
        out.append(Estimate("train", {
            "runtime": RUNTIME_BYTES, "weights": weights, "adapter": adapter,
            "activations": activation_bytes(s, tokens, width, args.gradient_checkpointing),
            "logits": logit_bytes(s, tokens),
        }))
    else:
        completion = args.max_completion_length
        local = args.generation_batch_size // max(1, launched_processes())  # completions sampled per process per step
        length = prompt + completion
        judge_copy = weights if not (recipe.judge.model == "policy" and recipe.train.rl_judge == "live") else 0
        tokens = args.per_device_train_batch_size * length
        out.append(Estimate("train", {
            "runtime": RUNTIME_BYTES, "weights": weights + judge_copy, "adapter": adapter,
            "kv_cache": local * length * s.layers * 2 * s.kv_dim * width,
            "activations": activation_bytes(s, tokens, width, args.gradient_checkpointing),
            "logits": logit_bytes(s, tokens),
        }))
    return out


def summary(recipe: Recipe) -> list[str]:
    """``rlaif validate``'s lines: the model's size and the peak per process, stage by stage."""
    try:
        s = sizes(recipe)
    except RlaifError as exc:  # a hub model without hub access: everything else validate checks still holds
        return [f"memory: no estimate ({exc})".splitlines()[0]]
    stages = estimate(recipe, s)
    peak = max(stages, key=lambda e: e.total)
    head = (f"memory: {s.params / 1e6:.0f}M parameters, {s.lora_params / 1e6:.2f}M LoRA; estimated peak per process "
            f"{peak.total / GiB:.2f} GiB in {peak.stage} (GiB by part; see rlaif/memory.py)")
    lines = [head]
    lines += [f"  {e.line()}" for e in stages]
    return lines
