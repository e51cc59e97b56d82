"""What corrupted the training signal (issue 11.A): cut-off answers trained as finished turns, the RL
truncation penalty blind to all but one EOS id, one trainer seed for every round, and a "KL to base"
that scored re-tokenised text; each checked where it happens."""

import json
import shutil
import statistics

import pytest
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.config import PairsConfig, build_trl_config, recipe_from_dict
from rlaif.judging.constitution import load_constitution
from rlaif.judging.judges import ModelJudge
from rlaif.judging.rank import rank_all
from rlaif.models import load_model, load_tokenizer
from rlaif.run import RunContext
from rlaif.rundir import read_json, read_jsonl
from rlaif.seeds import derive_seed
from rlaif.stages import train_dpo, train_rl
from rlaif.stages.generate import sample_logprobs
from rlaif.stages.pairs import build_pairs
from rlaif.stages.train_rl import rl_args

CONST = load_constitution("default")


def _candidates(texts_truncated):
    prompts = [{"id": "p", "prompt": "Say hello."}]
    cands = [{"prompt_id": "p", "candidate": i, "text": t, "truncated": tr, "num_tokens": 3}
             for i, (t, tr) in enumerate(texts_truncated)]
    verdicts = [{"prompt_id": "p", "i": 0, "j": 1, "p_i": 0.9}]
    return prompts, cands, verdicts, rank_all(cands, verdicts)


def test_cut_off_candidates_are_never_trained_as_finished_turns(tiny_model, tmp_path):
    """drop_truncated: false keeps cut-off candidates rankable; the rows TRL trains on leave them open."""
    tok = load_tokenizer(tiny_model)
    eos = tok.eos_token_id  # <|im_end|>, the tiny model's end of turn
    cfg = PairsConfig(drop_truncated=False, min_margin=0.0)
    pairs = []
    for texts in ([("hello there", False), ("cut off in the mid", True)], [("cut off in the mid", True), ("hello there", False)]):
        got, _, _ = build_pairs(*_candidates(texts), cfg)
        pairs += got
    assert [(p["chosen_truncated"], p["rejected_truncated"]) for p in pairs] == [(False, True), (True, False)]
    assert build_pairs(*_candidates([("a b", False), ("c d", True)]), PairsConfig(min_margin=0.0))[0] == []

    recipe = recipe_from_dict(tiny_recipe(tiny_model, tmp_path / "out"))
    trainer = train_dpo.make_trainer(train_dpo.TokenizedDPOTrainer, RunContext(recipe), None,
                                     build_trl_config(recipe, "dpo", tmp_path / "w"),
                                     train_dataset=train_dpo.to_dataset(pairs, tok), processing_class=tok)
    rows = list(trainer.train_dataset)
    finished = tok("hello there", add_special_tokens=False)["input_ids"]
    cut = tok("cut off in the mid", add_special_tokens=False)["input_ids"]
    for row, (chosen, rejected) in zip(rows, (("chosen_ids", "rejected_ids"), ("rejected_ids", "chosen_ids"))):
        assert row[chosen][: len(finished)] == finished and row[chosen][len(finished)] == eos, "a finished turn is closed"
        assert row[rejected] == cut and eos not in row[rejected], "a cut-off answer is left open"
        assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_rl_truncation_penalty_knows_every_eos_id(tiny_model, tmp_path):
    """A model whose generation_config lists two EOS ids (as Qwen2.5 and Llama-3 do): TRL stops on both,
    and a completion that ends with the second one is finished, not penalised."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    tok = load_tokenizer(str(path))
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [tok.eos_token_id, other]}))
    rl = {"num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 4}
    recipe = recipe_from_dict(tiny_recipe(str(path), tmp_path / "out", train={"method": "grpo", "truncation_penalty": 0.5},
                                          grpo=rl))
    judge = ModelJudge(load_model(str(path)), tok, CONST)
    trainer, reward = train_rl.build_rl_trainer(RunContext(recipe), 1, [{"id": "p", "prompt": "x"}], judge, None,
                                                tmp_path / "w")
    assert reward.eos == set(trainer.eos_token_ids) == {tok.eos_token_id, other}
    completions = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    reward(prompts=[[{"role": "user", "content": "x"}]] * 2, completions=completions, prompt_id=["p", "p"],
           completion_ids=[[5, other], [5, 6]])
    assert [r["truncated"] for r in reward.records] == [False, True]


EVAL = {"each_round": True, "instructions": "none", "heldout_prompts": 2, "samples": 2, "bootstrap": 100}


def test_rounds_train_with_their_own_seed_and_the_kl_scores_sampled_ids(tiny_model, tmp_path, monkeypatch):
    """Two DPO rounds: each trainer gets derive_seed(seed, n, "train"); cut-off answers reach TRL open;
    the generate stage's and the evaluation's KL are the sampled ids' log-probabilities, recomputed here."""
    seen = []
    real = train_dpo.make_trainer

    def make_trainer(trainer_cls, ctx, start_adapter, args, **kwargs):
        trainer = real(trainer_cls, ctx, start_adapter, args, **kwargs)
        seen.append((args.seed, trainer.args.seed, list(trainer.train_dataset)))
        return trainer

    monkeypatch.setattr(train_dpo, "make_trainer", make_trainer)
    recipe = tiny_recipe(tiny_model, tmp_path / "out", eval=EVAL, generate={"temperature": 0.8, "top_p": 0.9})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = tmp_path / "out"
    want = [derive_seed(0, n, "train") for n in (1, 2)]
    assert [s[0] for s in seen] == [s[1] for s in seen] == want and want[0] != want[1]
    manifest = read_json(out / "manifest.json")
    assert [manifest["rounds"][str(n)]["seeds"]["train"] for n in (1, 2)] == want

    tok = load_tokenizer(tiny_model)
    for n, (_, _, rows) in zip((1, 2), seen):
        pairs = read_jsonl(out / f"round_{n:03d}/pairs.jsonl")
        assert len(rows) == len(pairs) and any(p["rejected_truncated"] or p["chosen_truncated"] for p in pairs)
        for row, p in zip(rows, pairs):
            for side in ("chosen", "rejected"):
                assert (tok.eos_token_id not in row[f"{side}_ids"]) == p[f"{side}_truncated"]

    gen_cfg = recipe_from_dict(recipe).generate
    base, policy = load_model(tiny_model), load_model(tiny_model, adapter=out / "round_001/adapter")
    cands = read_jsonl(out / "round_002/candidates.jsonl")
    prompt_of = {p["id"]: p["prompt"] for p in read_jsonl(out / "round_002/prompts.jsonl")}
    assert all(c["token_ids"][-1] == tok.eos_token_id for c in cands if not c["truncated"])
    assert all(tok.eos_token_id not in c["token_ids"] for c in cands if c["truncated"])
    args = (tok, [prompt_of[c["prompt_id"]] for c in cands], [c["token_ids"] for c in cands], gen_cfg)
    assert [c["logp_policy"] for c in cands] == pytest.approx(sample_logprobs(policy, *args), abs=1e-4)
    assert [c["logp_base"] for c in cands] == pytest.approx(sample_logprobs(base, *args), abs=1e-4)
    kl = read_json(out / "round_002/metrics.json")["generate"]["kl_to_base_estimate"]
    assert kl == pytest.approx(statistics.fmean(c["logp_policy"] - c["logp_base"] for c in cands))

    rows = [r for r in read_jsonl(out / "eval/responses/round_002.jsonl") if r["set"] == "heldout"]
    policy2 = load_model(tiny_model, adapter=out / "round_002/adapter")
    args = (tok, [r["prompt"] for r in rows], [r["token_ids"] for r in rows], gen_cfg)
    assert [r["logp_model"] for r in rows] == pytest.approx(sample_logprobs(policy2, *args), abs=1e-4)
    assert [r["logp_base"] for r in rows] == pytest.approx(sample_logprobs(base, *args), abs=1e-4)
    ev = read_json(out / "round_002/eval.json")["model"]
    assert ev["kl_to_base"] == pytest.approx(statistics.fmean(r["logp_model"] - r["logp_base"] for r in rows))


def test_rl_rounds_train_with_their_own_seed(tiny_model, tmp_path, monkeypatch):
    """The GRPO/RLOO path passes the same per-round trainer seed (the trainer itself is stubbed)."""
    seen = []

    def fake_train_rl(ctx, n, prompts, judge, start, out_dir, work_dir, resume=None):
        seen.append(rl_args(ctx.recipe, ctx.tokenizer, work_dir, ctx.seed(n, "train")).seed)  # as build_rl_trainer does
        out_dir.mkdir(parents=True)
        (out_dir / "adapter_config.json").write_text("{}")
        (out_dir / "adapter_model.safetensors").write_bytes(b"")
        return {"method": ctx.recipe.train.method, "steps": 0}, [], []

    monkeypatch.setattr(train_rl, "train_rl", fake_train_rl)
    recipe = tiny_recipe(tiny_model, tmp_path / "out", train={"method": "grpo"}, judge={"model": "base"},
                         grpo={"num_generations": 2, "per_device_train_batch_size": 2})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    assert seen == [derive_seed(0, n, "train") for n in (1, 2)]
    assert train_rl.rl_args(recipe_from_dict(recipe), load_tokenizer(tiny_model), tmp_path / "w", seed=1234).seed == 1234
