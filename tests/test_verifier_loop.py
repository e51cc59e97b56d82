"""Verifiable principles in the loop: training prompts gain constraints, the verifier decides where it can, and the
GRPO/RLOO reward is the same combined verdict. Held-out and evaluation prompts never reach training."""

import json

import pytest
from conftest import tiny_recipe, write_recipe
from test_rl import BAD, GOOD, ask, conv, planted  # noqa: F401 (planted is a fixture)

from rlaif.cli import main
from rlaif.config import recipe_from_dict
from rlaif.evaluation.checks import check_all, load_instruction_set
from rlaif.reporting.loaders import round_table
from rlaif.reporting.markdown import write_report
from rlaif.rundir import read_json, read_jsonl
from rlaif.stages.prompts import load_pool
from rlaif.stages.train_rl import JudgeReward, to_prompt_dataset

CONSTRAINED = {"constraint_share": 1.0, "constraints_per_prompt": [1, 2]}


@pytest.fixture(scope="module")
def constrained_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("constrained")
    recipe = tiny_recipe(tiny_model, tmp / "out", prompts=CONSTRAINED)
    assert main(["run", str(write_recipe(tmp / "r.yaml", recipe))]) == 0
    return tmp / "out", recipe_from_dict(recipe)


def test_no_heldout_or_evaluation_prompt_reaches_training(constrained_run):
    out, recipe = constrained_run
    pool = load_pool(recipe.prompts)
    train_text = {p["id"]: p["prompt"] for p in pool.train}
    heldout = {p["id"] for p in pool.heldout} | {p["prompt"] for p in pool.heldout}
    instructions = {r["prompt"] for r in load_instruction_set(None)}
    for n in (1, 2):
        rows = read_jsonl(out / f"round_{n:03d}/prompts.jsonl")
        assert rows and all(r["constraints"] for r in rows), "share 1.0: every training prompt is constrained"
        for r in rows:
            assert r["id"] in train_text and r["base_prompt"] == train_text[r["id"]]
            assert r["id"] not in heldout and r["base_prompt"] not in heldout and r["prompt"] not in instructions
            assert r["prompt"].startswith(r["base_prompt"]) and r["prompt"] != r["base_prompt"]


def test_the_verifier_decides_where_candidates_meet_different_shares(constrained_run):
    out, _ = constrained_run
    for n in (1, 2):
        rd = out / f"round_{n:03d}"
        constraints = {p["id"]: p["constraints"] for p in read_jsonl(rd / "prompts.jsonl")}
        texts = {(c["prompt_id"], c["candidate"]): c["text"] for c in read_jsonl(rd / "candidates.jsonl")}

        def share(pid, i, texts=texts, constraints=constraints):
            met = check_all(texts[(pid, i)], constraints[pid])
            return sum(met) / len(met)

        verdicts = read_jsonl(rd / "verdicts.jsonl")
        for v in verdicts:  # recomputed here from the texts and the checkers, not read back
            si, sj = share(v["prompt_id"], v["i"]), share(v["prompt_id"], v["j"])
            assert (v["share_i"], v["share_j"]) == (si, sj)
            if si != sj:
                assert v["decided_by"] == "verifier" and v["p_i"] == (1.0 if si > sj else 0.0)
            else:
                assert v["decided_by"] == "judge" and v["p_i"] == v["judge_p_i"]
        judge = read_json(rd / "metrics.json")["judge"]
        unequal = [v for v in verdicts if v["share_i"] != v["share_j"]]
        assert judge["constraint_prompts"] == len(constraints)
        if unequal:
            agree = [0.5 if v["judge_p_i"] == 0.5 else float((v["judge_p_i"] > 0.5) == (v["share_i"] > v["share_j"]))
                     for v in unequal]
            assert judge["verifier_agreement"] == pytest.approx(sum(agree) / len(agree))


def test_the_rl_reward_is_the_same_combined_verdict(planted):  # noqa: F811 (the fixture)
    tok, const, judge = planted
    reward = JudgeReward(judge, const, 2, "sample", seed=0, eos_token_ids={tok.eos_token_id}, truncation_penalty=0.5)
    lowercase = json.dumps([{"type": "lowercase"}])
    # the planted judge prefers GOOD; the constraint (all lowercase) is met by the other answer only
    good, plain = GOOD, "paris is the capital."
    assert good != good.lower()
    r = reward(prompts=[ask("Capital of France?")] * 2, completions=[conv(good), conv(plain)], prompt_id=["p", "p"],
               constraints=[lowercase, lowercase])
    assert r[1] > r[0], "the verifier decides: the answer that meets the constraint wins"
    r = reward(prompts=[ask("Capital of France?")] * 2, completions=[conv(BAD), conv(GOOD)], prompt_id=["p", "p"],
               constraints=["[]", "[]"])
    assert r[1] > r[0], "no constraints: the judge alone, as before"
    rows = list(to_prompt_dataset([{"id": "a", "prompt": "x", "constraints": [{"type": "lowercase"}]},
                                   {"id": "b", "prompt": "y"}]))
    assert [json.loads(r["constraints"]) for r in rows] == [[{"type": "lowercase"}], []]


def test_verifier_agreement_is_in_the_report(constrained_run):
    out, _ = constrained_run
    report = write_report(out).read_text()
    header = next(line for line in report.splitlines() if line.startswith("| round |"))
    assert "verifier agreement" in header and "constraints met" in header
    table = round_table(out)
    want = [read_json(out / f"round_{n:03d}/metrics.json")["judge"]["verifier_agreement"] for n in (1, 2)]
    assert list(table["judge.verifier_agreement"]) == pytest.approx(want, nan_ok=True)
    assert list(table["complete"]) == [True, True]


def test_judge_mode_none_leaves_the_verifier_alone_to_decide():
    from rlaif.config import PairsConfig
    from rlaif.judging.judges import NoJudge, build_judge
    from rlaif.judging.rank import rank_all
    from rlaif.judging.verdicts import judge_candidates
    from rlaif.judging.verifier import apply_verifier
    from rlaif.stages.pairs import build_pairs

    recipe = recipe_from_dict({"judge": {"mode": "none"}, "prompts": {"constraint_share": 0.5}})
    judge = build_judge(recipe.judge, None, None, None)  # reads no model at all
    assert isinstance(judge, NoJudge)
    prompts = [{"id": "c", "prompt": "Describe rain.", "constraints": [{"type": "lowercase"}]},
               {"id": "u", "prompt": "Describe snow."}]
    texts = {("c", 0): "It rains.", ("c", 1): "it rains softly.", ("c", 2): "Rain falls.",
             ("u", 0): "Snow is cold.", ("u", 1): "Snow is white and cold."}
    candidates = [{"prompt_id": p, "candidate": i, "text": t, "num_tokens": 4, "truncated": False}
                  for (p, i), t in texts.items()]
    raw = judge_candidates(judge, None, prompts, candidates, "sample", seed=0)
    assert [(v["prompt_id"], v["i"], v["j"]) for v in raw] == [("c", 0, 1), ("c", 0, 2), ("c", 1, 2), ("u", 0, 1)]
    assert all(v["p_i"] == 0.5 and not v["failed"] for v in raw)
    verdicts = apply_verifier(raw, prompts, candidates)
    by = {(v["prompt_id"], v["i"], v["j"]): v for v in verdicts}
    assert by[("c", 0, 1)]["p_i"] == 0.0 and by[("c", 1, 2)]["p_i"] == 1.0, "the lowercase answer wins, by the verifier"
    assert by[("c", 0, 2)]["p_i"] == 0.5 and by[("u", 0, 1)]["p_i"] == 0.5, "ties stay ties: no judge to break them"
    pairs, _ = build_pairs(prompts, candidates, verdicts, rank_all(candidates, verdicts), PairsConfig(min_margin=0.05),
                           seed=0, round_n=1)[:2]
    assert [(p["prompt_id"], p["chosen"]) for p in pairs] == [("c", "it rains softly.")], \
        "a prompt without constraints gives no pair"


@pytest.mark.parametrize("prompts, judge", [({"constraint_share": 0.0}, {"mode": "none"}),
                                            ({"constraint_share": 0.5}, {"mode": "none", "verifier_weight": 0.0})])
def test_judge_mode_none_needs_the_verifier(prompts, judge):
    with pytest.raises(Exception, match="judge.mode: none"):
        recipe_from_dict({"prompts": prompts, "judge": judge})


def test_rl_reward_with_no_judge_is_the_verifier_alone():
    from rlaif.judging.judges import NoJudge

    reward = JudgeReward(NoJudge(), None, 2, "sample", seed=0, eos_token_ids={0}, truncation_penalty=0.0)
    lowercase = json.dumps([{"type": "lowercase"}])
    r = reward(prompts=[ask("Capital of France?")] * 4, completions=[conv(GOOD), conv("paris."), conv(GOOD), conv(BAD)],
               prompt_id=["p", "p", "q", "q"], constraints=[lowercase, lowercase, "[]", "[]"])
    assert r[1] > r[0], "the constraint decides"
    assert r[2] == r[3], "no constraints and no judge: no signal"
