"""GRPO / RLOO with the constitution judge as the reward."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, tiny_recipe, write_recipe
from safetensors.torch import load_file

from rlaif.cli import main
from rlaif.judging.constitution import load_constitution
from rlaif.judging.judges import ModelJudge
from rlaif.models import load_tokenizer
from rlaif.rundir import read_json, read_jsonl
from rlaif.stages.train_rl import JudgeReward

GOOD = "The capital of France is Paris."
BAD = "zzz qqq xxx"


class PlantedJudgeModel(torch.nn.Module):
    """A causal LM whose preferences the test sets: it favours the answer with more 'good' tokens.

    At the last position it puts logit(A) − logit(B) = Σ_{answer A} good − Σ_{answer B} good + bias,
    reading where each answer starts from the judge prompt's own "Answer A:" / "Answer B:" headers.
    Everything between it and the reward (chat template, batching, padding, label token ids, both
    orders, grouping) is the real code.
    """

    def __init__(self, tokenizer, good_text: str, label_ids, position_bias: float = 1.0):
        super().__init__()
        self.good = set(tokenizer(good_text, add_special_tokens=False)["input_ids"])
        self.marker_a = tokenizer("Answer A:", add_special_tokens=False)["input_ids"]
        self.marker_b = tokenizer("Answer B:", add_special_tokens=False)["input_ids"]
        self.label_a, self.label_b = label_ids
        self.vocab = len(tokenizer)
        self.bias = position_bias
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    @staticmethod
    def _find(seq, sub):
        for i in range(len(seq) - len(sub), -1, -1):
            if seq[i : i + len(sub)] == sub:
                return i
        raise AssertionError("judge prompt lacks an answer header")

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        self.calls += 1
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for row, ids in enumerate(input_ids.tolist()):
            a, b = self._find(ids, self.marker_a), self._find(ids, self.marker_b)
            score_a = sum(t in self.good for t in ids[a + len(self.marker_a) : b])
            score_b = sum(t in self.good for t in ids[b + len(self.marker_b) :])
            logits[row, 0, self.label_a] = 0.5 * (score_a - score_b) + self.bias
        return SimpleNamespace(logits=logits)


@pytest.fixture
def planted(tiny_model):
    from rlaif.judging.judges import label_token_ids

    tok = load_tokenizer(tiny_model)
    const = load_constitution("default")
    model = PlantedJudgeModel(tok, GOOD, label_token_ids(tok, const))
    return tok, const, ModelJudge(model, tok, const, batch_size=4, prefix_cache=False)


def reward_fn(planted, k, penalty=0.5):
    tok, const, judge = planted
    return JudgeReward(judge, const, k, "sample", seed=0, eos_token_ids={tok.eos_token_id}, truncation_penalty=penalty)


def conv(text):
    return [{"role": "assistant", "content": text}]


def ask(text):
    return [{"role": "user", "content": text}]


def test_good_completion_gets_the_higher_reward_through_the_real_judge(planted):
    reward = reward_fn(planted, 2)
    r = reward(prompts=[ask("Capital of France?")] * 2, completions=[conv(BAD), conv(GOOD)], prompt_id=["p", "p"])
    assert r[1] > r[0] and r[1] > 0.5 > r[0]
    assert planted[2].model.calls > 0  # the verdict came from the model's logits
    # the judge's position bias (+1 logit for whatever is first) cancels: order of the group does not matter
    r2 = reward(prompts=[ask("Capital of France?")] * 2, completions=[conv(GOOD), conv(BAD)], prompt_id=["p", "p"])
    assert r2[0] == pytest.approx(r[1]) and r2[1] == pytest.approx(r[0])


def test_rewards_land_on_their_own_completions_when_prompts_share_a_batch(planted):
    reward = reward_fn(planted, 3)
    completions = [conv(BAD), conv(GOOD), conv("qq zz"),  # prompt 1: good one in the middle
                   conv(GOOD), conv("xxx"), conv(BAD)]  # prompt 2: good one first
    r = reward(prompts=[ask("one")] * 3 + [ask("two")] * 3, completions=completions, prompt_id=["p1"] * 3 + ["p2"] * 3)
    assert max(range(3), key=lambda i: r[i]) == 1
    assert max(range(3, 6), key=lambda i: r[i]) == 3
    assert [(x["prompt_id"], x["completion"]) for x in reward.records] == [("p1", i) for i in range(3)] + [("p2", i) for i in range(3)]
    assert [x["reward"] for x in reward.records] == r
    with pytest.raises(ValueError, match="mixes prompts"):
        reward(prompts=[ask("x")] * 3, completions=completions[:3], prompt_id=["p1", "p1", "p2"])
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        reward(prompts=[ask("x")] * 2, completions=completions[:2], prompt_id=["p1", "p1"])


def test_zero_signal_groups_are_counted_and_truncation_is_penalised(planted):
    tok = planted[0]
    reward = reward_fn(planted, 2, penalty=0.25)
    eos = tok.eos_token_id
    r = reward(prompts=[ask("x")] * 4, completions=[conv(GOOD), conv(GOOD), conv(GOOD), conv(GOOD)],
               prompt_id=["a", "a", "b", "b"], completion_ids=[[5, eos], [5, eos], [5, eos], [5, 6]])
    assert r[0] == pytest.approx(r[1]) == pytest.approx(0.5)
    assert r[3] == pytest.approx(r[2] - 0.25)
    assert reward.zero_signal_groups == 1 and reward.groups == 2
    assert [x["truncated"] for x in reward.records] == [False, False, False, True]


def test_one_judge_call_per_reward_step(planted):
    """All groups of a reward step go to the judge together, and each gets what a call of its own would give."""
    tok, const, judge = planted
    calls = []

    def counting(comparisons):
        calls.append(len(comparisons))
        return judge(comparisons)

    counting.last_label_mass = None
    reward = JudgeReward(counting, const, 2, "sample", seed=0, eos_token_ids={tok.eos_token_id}, truncation_penalty=0.5)
    completions = [conv(BAD), conv(GOOD), conv(GOOD), conv("qq"), conv("zz"), conv(GOOD)]
    together = reward(prompts=[ask("a")] * 2 + [ask("b")] * 2 + [ask("c")] * 2, completions=completions,
                      prompt_id=["a", "a", "b", "b", "c", "c"])
    assert calls == [3 * 2]  # one call: 3 groups x 1 pair x 2 orders
    alone = []
    for g, pid in enumerate("abc"):
        single = JudgeReward(judge, const, 2, "sample", seed=0, eos_token_ids={tok.eos_token_id}, truncation_penalty=0.5)
        alone += single(prompts=[ask(pid)] * 2, completions=completions[2 * g : 2 * g + 2], prompt_id=[pid] * 2)
    assert together[1] > together[0] and together[2] > together[3] and together[5] > together[4]
    assert together == pytest.approx(alone)


RL = {"num_generations": 3, "per_device_train_batch_size": 6, "max_completion_length": 8, "learning_rate": 5e-3}


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_two_rl_rounds_on_the_tiny_model(tiny_model, tmp_path, method):
    recipe = tiny_recipe(tiny_model, tmp_path / "out", train={"method": method, "truncation_penalty": 0.0}, **{method: RL})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = tmp_path / "out"
    manifest = read_json(out / "manifest.json")
    assert manifest["rounds"]["2"]["policy_adapter"] == "round_001/adapter"
    assert manifest["rounds"]["2"]["judge_adapter"] == "round_001/adapter"
    for n in (1, 2):
        rd = out / f"round_{n:03d}"
        assert read_json(rd / "state.json")["completed"] == ["prompts", "train"]
        assert not (rd / "candidates.jsonl").exists()
        m = read_json(rd / "metrics.json")["train"]
        assert m["method"] == method and m["steps"] > 0 and m["adapter_delta_norm"] > 0
        assert m["reward_std"] > 0, "rewards must not be constant"
        rows = read_jsonl(rd / "completions.jsonl")
        assert len(rows) == m["completions"] == 4 * 3  # 4 prompts × 3 completions, once each
        prompt_ids = {p["id"] for p in read_jsonl(rd / "prompts.jsonl")}
        assert {r["prompt_id"] for r in rows} == prompt_ids
        for key in ("kl", "clip_fraction", "zero_signal_share", "completion_mean_length", "seconds_per_step"):
            assert m[key] is not None, key
    w1 = load_file(out / "round_001/adapter/adapter_model.safetensors")
    w2 = load_file(out / "round_002/adapter/adapter_model.safetensors")
    assert any((w2[k] - w1[k]).abs().max() > 0 for k in w1)
    assert main(["generate", str(tmp_path / "r.yaml")]) == 2  # no such stage on the RL path


def test_rl_config_errors(tiny_model, tmp_path, capsys):
    bad_key = tiny_recipe(tiny_model, tmp_path / "o", train={"method": "grpo"}, grpo={"num_generation": 4})
    assert main(["validate", str(write_recipe(tmp_path / "a.yaml", bad_key))]) == 2
    assert "unknown key 'grpo.num_generation' (not a field of TRL's GRPOConfig)" in capsys.readouterr().err
    indivisible = tiny_recipe(tiny_model, tmp_path / "o", train={"method": "grpo"},
                              grpo={"num_generations": 4, "per_device_train_batch_size": 6})
    assert main(["validate", str(write_recipe(tmp_path / "b.yaml", indivisible))]) == 2
    assert "section 'grpo' rejected by TRL" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_rl_run_killed_in_training_resumes_to_the_same_result(tiny_model, tmp_path):
    ref_recipe = tiny_recipe(tiny_model, tmp_path / "ref", run={"rounds": 1}, train={"method": "grpo"}, grpo=RL)
    assert main(["run", str(write_recipe(tmp_path / "ref.yaml", ref_recipe))]) == 0
    recipe = write_recipe(tmp_path / "r.yaml", {**ref_recipe, "run": {**ref_recipe["run"], "output_dir": str(tmp_path / "out")}})
    env = {**os.environ, "WANDB_MODE": "disabled", "RLAIF_TEST_PAUSE_BEFORE_COMMIT": "adapter"}
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "run", str(recipe)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:
        if line.startswith("[test] paused before committing"):
            break
        assert time.time() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (tmp_path / "out/round_001/completions.jsonl").exists()
    final = subprocess.run([sys.executable, "-m", "rlaif.cli", "run", str(recipe)], check=False, cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    got = read_jsonl(tmp_path / "out/round_001/completions.jsonl")
    want = read_jsonl(tmp_path / "ref/round_001/completions.jsonl")
    assert json.dumps(got) == json.dumps(want)


def test_rl_round_ends_with_its_evaluation_and_sample_rows(tiny_model, tmp_path):
    from rlaif.reporting.tracking import sample_rows
    from rlaif.rundir import RunDir

    recipe = tiny_recipe(tiny_model, tmp_path / "out", run={"rounds": 1}, train={"method": "grpo"}, grpo=RL,
                         eval={"each_round": True, "instructions": "none", "heldout_prompts": 3, "bootstrap": 100})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = tmp_path / "out"
    assert read_json(out / "round_001/state.json")["completed"] == ["prompts", "train", "evaluate"]
    ev = read_json(out / "round_001/eval.json")["model"]
    assert ev["name"] == "round_001" and 0 <= ev["win_rate_vs_base"] <= 1
    rows = sample_rows(RunDir(out), 1, 2)
    completions = [r for r in read_jsonl(out / "round_001/completions.jsonl") if r["call"] == 1]
    first_two = list(dict.fromkeys(r["prompt_id"] for r in completions))[:2]
    assert len(rows) == 2 * 3 and {r["prompt_id"] for r in rows} == set(first_two)
    assert [r["reward"] for r in rows] == [r["reward"] for r in completions if r["prompt_id"] in first_two]
