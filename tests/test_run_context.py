"""The run context owns the hardware: every model lands on its device and dtype; auto dtype follows the machine."""

import ast
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_recipe
from trl import DPOConfig

from rlaif import hardware
from rlaif.config import recipe_from_dict
from rlaif.judging import prefix_cache
from rlaif.lora import make_trainer
from rlaif.pipeline import REDO_STAGES, STAGES, stages_for
from rlaif.run import RunContext
from rlaif.stages.train_dpo import TokenizedDPOTrainer, to_dataset

CPU = torch.device("cpu")


# ---------------------------------------------------------------- dtype: auto


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
    ({"avx2", "avx512f"}, "float32"),
    (set(), "float32"),
])
def test_auto_dtype_on_cpu_follows_the_bf16_flags(flags, expected):
    name, reason = hardware.resolve_dtype("auto", CPU, flags)
    assert name == expected
    assert reason.startswith("auto: CPU")


def test_auto_dtype_on_cuda(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(hardware, "cuda_bf16", lambda device: True)
    assert hardware.resolve_dtype("auto", cuda, set())[0] == "bfloat16"
    monkeypatch.setattr(hardware, "cuda_bf16", lambda device: False)
    assert hardware.resolve_dtype("auto", cuda, set())[0] == "float32"


def test_an_explicit_dtype_wins_over_the_hardware():
    assert hardware.resolve_dtype("float16", CPU, {"amx_bf16"}) == ("float16", "set by the recipe")
    assert hardware.resolve_dtype("float32", CPU, {"amx_bf16"}) == ("float32", "set by the recipe")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert hardware.cpu_flags(info) == {"fpu", "sse2", "avx2", "amx_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") == set()


def test_auto_dtype_on_this_machine():
    """The real detection: bf16 exactly when this machine's /proc/cpuinfo names a native bf16 instruction set."""
    recipe = recipe_from_dict({"model": {"dtype": "auto"}, "wandb": {"enabled": False}})
    ctx = RunContext(recipe)
    native = {"amx_bf16", "avx512_bf16"} & hardware.cpu_flags()
    assert ctx.dtype_name == ("bfloat16" if native else "float32")
    assert ctx.hardware()["cpu_bf16_flags"] == sorted(native)


# ---------------------------------------------------------------- models on the context's device and dtype


def _ctx(tiny_model, tmp_path, judge=None, **model) -> RunContext:
    return RunContext(recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out", model={"dtype": "bfloat16", **model},
                                                   **({"judge": judge} if judge else {}))))


def _placement(model) -> set[tuple[str, torch.dtype]]:
    return {(p.device.type, p.dtype) for p in model.parameters()}


def test_inference_models_land_on_the_context_device_and_dtype(tiny_model, tmp_path):
    """The policy and base in model.dtype; every judge in float32 (judge.dtype's default) or, with
    ``judge.dtype: model``, in model.dtype too."""
    for judge_dtype, expected in (({}, torch.float32), ({"dtype": "model"}, torch.bfloat16)):
        ctx = _ctx(tiny_model, tmp_path, judge=judge_dtype)
        assert ctx.dtype == torch.bfloat16
        ctx.device = torch.device("meta")  # a device no code would pick by itself: only the context can put them there
        policy, adapter = ctx.load_policy(1)
        assert adapter is None
        for model in (policy, ctx.load_base()):
            assert _placement(model) == {("meta", torch.bfloat16)}
        judge, _tok, _ = ctx.load_judge(1)
        other, _, _ = ctx.load_judge(1, tiny_model)  # a separate judge model (its own folder and tokenizer)
        base_judge, _, _ = ctx.load_judge(1, "base")
        for model in (judge, other, base_judge):
            assert _placement(model) == {("meta", expected)}


def test_auto_dtype_keeps_the_judge_in_float32(monkeypatch):
    """On a CPU with AMX-BF16 (mocked), auto puts generation and training in bf16 and the judge in float32."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda *a: {"avx2", "amx_bf16"})
    ctx = RunContext(recipe_from_dict({"model": {"dtype": "auto"}, "wandb": {"enabled": False}}))
    assert (ctx.dtype_name, ctx.judge_dtype_name) == ("bfloat16", "float32")
    assert ctx.hardware()["judge_dtype"] == "float32" and "the judge in float32" in ctx.hardware()["summary"]
    same = RunContext(recipe_from_dict({"model": {"dtype": "auto"}, "judge": {"dtype": "model"}, "wandb": {"enabled": False}}))
    assert same.judge_dtype_name == "bfloat16" and "judge" not in same.hardware()["summary"]


def test_attn_implementation_reaches_every_load(tiny_model, tmp_path):
    ctx = _ctx(tiny_model, tmp_path, attn_implementation="eager")
    assert ctx.load_base().config._attn_implementation == "eager"
    assert ctx.load_judge(1, tiny_model)[0].config._attn_implementation == "eager"


def test_training_loads_the_weights_in_the_context_dtype(tiny_model, tmp_path):
    """TRL loads the policy itself, from the context's model_init_kwargs: bf16 base weights, not fp32."""
    ctx = _ctx(tiny_model, tmp_path)
    pairs = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}] * 2
    args = DPOConfig(output_dir=str(tmp_path / "work"), report_to="none", max_steps=1, use_cpu=True)
    trainer = make_trainer(TokenizedDPOTrainer, ctx, None, args, train_dataset=to_dataset(pairs, ctx.tokenizer),
                           processing_class=ctx.tokenizer)
    base = {p.dtype for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert base == {torch.bfloat16}
    assert any("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------- the prefix cache checks itself


def _views(tok):
    head = "<|im_start|>system\nJudge the answers carefully and say which is better.<|im_end|>\n"
    texts = [head + f"<|im_start|>user\nQuestion {q}: answer {a}<|im_end|>\n" for q in (1, 2) for a in "abc"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts], [t // 3 for t in range(6)]


def test_prefix_cache_turns_itself_off_for_sliding_window_attention(tiny_model, tmp_path, capsys):
    ctx = RunContext(recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out")))
    model = ctx.load_base()
    assert prefix_cache.unsafe_reason(model.config) is None
    model.config.sliding_window = 4
    seqs, groups = _views(ctx.tokenizer)
    assert "sliding-window" in prefix_cache.cache_check(model, seqs, [5, 6], groups, 8, ctx.tokenizer.pad_token_id)
    assert "prefix cache off" in capsys.readouterr().err


def test_prefix_cache_that_disagrees_with_the_plain_path_is_turned_off(tiny_model, tmp_path, monkeypatch):
    ctx = RunContext(recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out")))
    model = ctx.load_base()
    seqs, groups = _views(ctx.tokenizer)
    pad = ctx.tokenizer.pad_token_id
    plain = prefix_cache.last_logprobs(model, seqs, [5, 6, 7], 8, pad, groups=groups, prefix_cache=False)
    good = ctx.load_base()
    assert torch.allclose(prefix_cache.last_logprobs(good, seqs, [5, 6, 7], 8, pad, groups=groups), plain, atol=1e-4)
    assert prefix_cache.cache_check(good, seqs, [5, 6, 7], groups, 8, pad) is None

    real = prefix_cache._run_packed

    def broken(*args):  # a packed pass whose mask leaks across groups would give other logits
        order, logits = real(*args)
        return order, logits + torch.randn_like(logits)

    monkeypatch.setattr(prefix_cache, "_run_packed", broken)
    out = prefix_cache.last_logprobs(model, seqs, [5, 6, 7], 8, pad, groups=groups)
    assert "differed from the plain path" in prefix_cache.cache_check(model, seqs, [5, 6, 7], groups, 8, pad)
    assert torch.allclose(out, plain, atol=1e-5)  # the judge fell back to the plain path: same verdicts


# ---------------------------------------------------------------- structure


def test_stage_table_drives_the_stage_order_and_commands():
    dpo = recipe_from_dict({"wandb": {"enabled": False}})
    grpo = recipe_from_dict({"train": {"method": "grpo"}, "wandb": {"enabled": False}})
    guarded = recipe_from_dict({"eval": {"each_round": True}, "wandb": {"enabled": False}})
    assert [s.name for s in stages_for(dpo)] == ["prompts", "generate", "judge", "pairs", "train"]
    assert [s.name for s in stages_for(grpo)] == ["prompts", "train"]
    assert [s.name for s in stages_for(guarded)][-1] == "evaluate"
    assert REDO_STAGES == ("prompts", "generate", "judge", "pairs", "train")
    for stage in STAGES:  # every file a stage reads is written by an earlier stage of each method that runs it
        for method in stage.methods:
            earlier = [s for s in STAGES[: STAGES.index(stage)] if method in s.methods]
            assert all(any(f in s.writes for s in earlier) for f in stage.reads), (stage.name, method)


def _imports(path: Path) -> set[str]:
    """rlaif modules imported at run time (imports under ``if TYPE_CHECKING:`` are for annotations only)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlaif"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("rlaif"))
    return out


def test_the_import_graph_of_rlaif_has_no_cycle():
    root = REPO / "rlaif"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    sys.setrecursionlimit(10000)
    for m in graph:
        if m not in state:
            visit(m, [])
    assert "rlaif.loop" not in {i for m, deps in graph.items() if m != "rlaif.cli" for i in deps}


def test_no_module_is_over_400_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in (REPO / "rlaif").rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 400} == {}

