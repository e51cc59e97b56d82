"""Judge modes on the tiny model: prefix cache equivalence, score expectation, pointwise rows, critique, config."""

import math

import pytest
import torch
from conftest import tiny_recipe, write_recipe

from rlaif.cli import main
from rlaif.config import JudgeConfig, recipe_from_dict
from rlaif.errors import RlaifError
from rlaif.judging.constitution import Rubric, constitution_from_dict, load_constitution
from rlaif.judging.judges import (
    ModelJudge,
    PointwiseJudge,
    build_judge,
    continuation_ids,
    greedy_generate,
    trim_critique,
)
from rlaif.judging.prefix_cache import last_logprobs, lcp_len
from rlaif.judging.rank import rank_all
from rlaif.judging.verdicts import Comparison, expected_score, judge_candidates, pointwise_p, verdict_metrics
from rlaif.models import load_model, load_tokenizer
from rlaif.rundir import read_json, read_jsonl

CONST = load_constitution("default")
COMPS = [
    Comparison("Say hello.", "hi", "a rather longer answer that pads the batch with words", "be nice"),
    Comparison("Say hello.", "a rather longer answer that pads the batch with words", "hi", "be nice"),
    Comparison("Say hello.", "hello there", "hi", "be brief"),
    Comparison("Explain rain to a child.", "x", "water falls from clouds", "be nice"),
    Comparison("Explain rain to a child.", "water falls from clouds", "x", "be nice"),
    Comparison("Name a color.", "blue", "", "be brief"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


# ---------------------------------------------------------------- prefix cache


def test_lcp_len():
    assert lcp_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert lcp_len([[5], [6]]) == 0 and lcp_len([[1, 2]]) == 2 and lcp_len([]) == 0


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_prefix_cache_gives_the_same_pairwise_logodds(tiny, batch_size):
    model, tok = tiny
    plain = ModelJudge(model, tok, CONST, batch_size, prefix_cache=False)(COMPS)
    cached = ModelJudge(model, tok, CONST, batch_size, prefix_cache=True)(COMPS)
    assert all(math.isfinite(x) for x in cached)
    assert cached == pytest.approx(plain, abs=1e-4)


def test_prefix_cache_gives_the_same_pointwise_scores(tiny):
    model, tok = tiny
    items = [("Say hello.", "hi"), ("Say hello.", "a much longer hello to everyone here"), ("Name a color.", "blue")]
    plain = PointwiseJudge(model, tok, CONST, 2, prefix_cache=False)(items)
    cached = PointwiseJudge(model, tok, CONST, 2, prefix_cache=True)(items)
    for a, b in zip(plain, cached):
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-4)


def test_cached_logprobs_match_single_unpadded_forward_passes(tiny):
    """Suffixes of different lengths after shared prefixes (right-padded) read each row's own last token."""
    model, tok = tiny
    head = tok("<|im_start|>system\nYou judge answers.<|im_end|>\n")["input_ids"]
    seqs, groups = [], []
    for g, prompt in enumerate(["rain falls", "the sun is a star and it is hot"]):
        mid = tok(f"<|im_start|>user\n{prompt}")["input_ids"]
        for answer in ["a", "a much much longer answer here", "mid answer"]:
            seqs.append(head + mid + tok(f" {answer}<|im_end|>")["input_ids"])
            groups.append(g)
    ids = [3, 7, 11]
    got = last_logprobs(model, seqs, ids, 4, tok.pad_token_id, groups=groups, prefix_cache=True)
    for r, s in enumerate(seqs):
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1].float(), -1)[ids]
        assert got[r].tolist() == pytest.approx(ref.tolist(), abs=1e-4)


def test_prefix_cache_packs_rows_and_pads_them_without_changing_verdicts(tiny, monkeypatch):
    """Tiny row budget: every group gets its own packed row, rows are right-padded to the longest."""
    from rlaif.judging import prefix_cache as lastpos

    model, tok = tiny
    plain = ModelJudge(model, tok, CONST, 16, prefix_cache=False)(COMPS)
    widths = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    monkeypatch.setattr(lastpos, "ROW_TOKENS", 1)
    try:
        cached = ModelJudge(model, tok, CONST, 16, prefix_cache=True)(COMPS)
    finally:
        hook.remove()
    assert widths[-1][0] == len({(c.prompt, c.principle) for c in COMPS})  # one row per group, in one pass
    assert cached == pytest.approx(plain, abs=1e-4)


def test_prefix_cache_with_eager_attention(tiny_model):
    """Eager attention adds the mask to the scores: the packed mask must be converted, not passed as bools."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager").eval()
    tok = load_tokenizer(tiny_model)
    plain = ModelJudge(model, tok, CONST, 4, prefix_cache=False)(COMPS)
    cached = ModelJudge(model, tok, CONST, 4, prefix_cache=True)(COMPS)
    assert cached == pytest.approx(plain, abs=1e-4)


def test_default_rubric_puts_everything_but_the_request_in_the_shared_prefix():
    """The pointwise view's own tokens are the request and the answer: the instruction comes first."""
    user = CONST.render_pointwise("REQUEST", "ANSWER")[-1]["content"]
    assert user.endswith("ANSWER")
    assert user.index("Reply with the total score only") < user.index("REQUEST")


def test_prefix_cache_feeds_fewer_tokens(tiny):
    """The cache must actually skip the shared prefix, not silently fall back to full passes."""
    model, tok = tiny
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        ModelJudge(model, tok, CONST, 8, prefix_cache=False)(COMPS)
        plain, fed[:] = sum(fed), []
        ModelJudge(model, tok, CONST, 8, prefix_cache=True)(COMPS)
        cached = sum(fed)
    finally:
        hook.remove()
    assert cached < 0.8 * plain  # padded token counts; a silent fallback would feed at least as many


def _fed_tokens(model, judge, items):
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        out = judge(items)
    finally:
        hook.remove()
    return out, sum(fed)


@pytest.mark.parametrize("cls", [ModelJudge, PointwiseJudge])
def test_prefix_store_reuses_the_head_across_calls_with_the_same_verdicts(tiny, cls):
    """A judge's second call takes the shared head from the first call's cache: fewer tokens, same verdicts."""
    model, tok = tiny
    calls = [COMPS[:3], COMPS[3:]] if cls is ModelJudge else [[("Say hello.", "hi"), ("Say hello.", "hello there")],
                                                               [("Name a color.", "blue"), ("Name a color.", "")]]
    plain = cls(model, tok, CONST, 4, prefix_cache=False)
    judge = cls(model, tok, CONST, 4, prefix_cache=True)
    for k, items in enumerate(calls):
        fresh, fed_fresh = _fed_tokens(model, cls(model, tok, CONST, 4, prefix_cache=True), items)
        got, fed = _fed_tokens(model, judge, items)
        want = plain(items)
        if cls is PointwiseJudge:
            got, want, fresh = ([r["score"] for r in x] for x in (got, want, fresh))
        assert got == pytest.approx(want, abs=1e-4) and got == pytest.approx(fresh, abs=1e-4)
        if k == 0:
            assert fed == fed_fresh and judge.prefix_store.reused == 0
        else:  # the whole level-1 prefix came from the store
            assert judge.prefix_store.reused > 0 and fed == fed_fresh - judge.prefix_store.reused


def test_prefix_store_is_dropped_when_the_weights_change(tiny_model):
    """An in-place update (an optimizer step) between calls must not leave stale keys in use."""
    from rlaif.judging.prefix_cache import PrefixStore, weights_key

    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    judge = PointwiseJudge(model, tok, CONST, 4, prefix_cache=True)
    seqs = [tok(judge.text("Say hello.", a), add_special_tokens=False)["input_ids"] for a in ("hi", "hello there, friend")]
    ids = list(range(0, tok.vocab_size, 7))
    store = PrefixStore()
    last_logprobs(model, seqs, ids, 4, tok.pad_token_id, store=store)
    old_ids, old_kv, old_key = store.ids, store.kv, store.key
    w = model.model.layers[0].self_attn.v_proj.weight
    with torch.no_grad():
        w.add_(torch.randn_like(w))
    assert weights_key(model) != old_key
    after = last_logprobs(model, seqs, ids, 4, tok.pad_token_id, store=store)
    fresh = last_logprobs(model, seqs, ids, 4, tok.pad_token_id, prefix_cache=False)
    assert store.reused == 0 and torch.allclose(after, fresh, atol=1e-4)
    # a store that missed the change would reuse the old weights' keys, visibly
    stale_store = PrefixStore()
    stale_store.ids, stale_store.kv, stale_store.key = old_ids, old_kv, weights_key(model)
    stale = last_logprobs(model, seqs, ids, 4, tok.pad_token_id, store=stale_store)
    assert stale_store.reused > 0 and (stale - fresh).abs().max() > 1e-3


def test_weights_key_sees_adapter_updates_through_data(tiny_model):
    """``.data`` updates skip the version counter: for a frozen base with trainable weights (LoRA) the
    key also sums the trainable ones; a frozen model's key costs no pass over its weights."""
    from rlaif.judging.prefix_cache import weights_key

    model = load_model(tiny_model)
    for p in model.parameters():
        p.requires_grad_(False)
    w = model.model.layers[0].self_attn.v_proj.weight
    w.requires_grad_(True)
    key = weights_key(model)
    assert weights_key(model) == key
    w.data.add_(0.5)
    assert weights_key(model) != key
    key = weights_key(model)
    model.train()
    assert weights_key(model) != key


def test_prefix_store_reuses_a_partial_match_and_computes_the_rest(tiny):
    """Heads that share only their start: the common part is reused, the rest computed, verdicts exact."""
    from rlaif.judging.prefix_cache import PrefixStore

    model, tok = tiny
    head = tok("<|im_start|>system\nYou judge answers.<|im_end|>\n")["input_ids"]
    store = PrefixStore()
    ids = [3, 7]
    for prompt in ["rain falls", "the sun is a star"]:  # each call's shared prefix runs into its own prompt
        mid = tok(f"<|im_start|>user\n{prompt}")["input_ids"]
        seqs = [head + mid + tok(f" {a}<|im_end|>")["input_ids"] for a in ("a", "a longer answer")]
        got = last_logprobs(model, seqs, ids, 4, tok.pad_token_id, store=store)
        for r, s in enumerate(seqs):
            with torch.no_grad():
                ref = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1].float(), -1)[ids]
            assert got[r].tolist() == pytest.approx(ref.tolist(), abs=1e-4)
    assert len(head) <= store.reused < len(store.ids)


# ---------------------------------------------------------------- pointwise maths


def test_expected_score_is_the_mean_under_renormalised_label_probabilities():
    values = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    logps = [math.log(p) for p in (0.0001, 0.0001, 0.0001, 0.1, 0.1, 0.0997)]  # mass 0.3 on the labels
    score, probs = expected_score(logps, values)
    assert sum(probs) == pytest.approx(1.0)
    assert score == pytest.approx((0.3 * 0 + 0.0003 * 0 + 3 * 0.1 + 4 * 0.1 + 5 * 0.0997 + 0.0001 * 3) / 0.3, abs=1e-3)
    assert expected_score([0.0, 0.0], (1.0, 5.0))[0] == pytest.approx(3.0)
    assert expected_score([math.log(0.9), math.log(0.1)], (1.0, 2.0))[0] == pytest.approx(1.1)
    assert math.isnan(expected_score([0.0, math.nan], (1.0, 2.0))[0])


def test_pointwise_p_maps_score_difference_linearly():
    assert pointwise_p(3.0, 3.0, 0, 5) == 0.5
    assert pointwise_p(5.0, 0.0, 0, 5) == 1.0 and pointwise_p(0.0, 5.0, 0, 5) == 0.0
    assert pointwise_p(4.0, 3.0, 0, 5) == pytest.approx(0.6)
    assert math.isnan(pointwise_p(math.nan, 1.0, 0, 5))


class PlantedScorer:
    """A pointwise judge whose expected scores are planted: score = len(answer)."""

    pointwise = True
    rubric = Rubric("{prompt} {answer}", ("0", "1", "2", "3", "4", "5"), "")

    def __call__(self, items):
        return [{"score": float(min(len(a), 5)), "probs": [], "label_mass": 1.0} for _, a in items]


def test_pointwise_rows_feed_ranking_unchanged():
    prompts = [{"id": "p", "prompt": "q"}]
    cands = [{"prompt_id": "p", "candidate": k, "text": t} for k, t in enumerate(["ab", "abcd", "a"])]
    rows = judge_candidates(PlantedScorer(), CONST, prompts, cands, "sample", 0)
    assert [(r["i"], r["j"]) for r in rows] == [(0, 1), (0, 2), (1, 2)]
    assert rows[0]["score_i"] == 2.0 and rows[0]["score_j"] == 4.0 and rows[0]["p_i"] == pytest.approx(0.3)
    assert rows[1]["p_i"] == pytest.approx(0.6) and rows[0]["agree"] is None
    assert rank_all(cands, rows)[0]["order"] == [1, 0, 2]
    m = verdict_metrics(rows)
    assert m["failed_verdicts"] == 0 and math.isnan(m["order_agreement"]) and math.isnan(m["position_bias_p_first"])


def test_pointwise_judge_on_tiny_model_gives_scores_in_range(tiny):
    model, tok = tiny
    out = PointwiseJudge(model, tok, CONST, 4)([("Say hello.", "hi"), ("Say hello.", "")])
    for r in out:
        assert 0.0 <= r["score"] <= 5.0 and sum(r["probs"]) == pytest.approx(1.0) and 0 < r["label_mass"] <= 1


# ---------------------------------------------------------------- labels, critique, generation


def test_label_space_moves_into_the_label_when_the_tokenizer_merges_it(tiny):
    _, tok = tiny
    # the tiny tokenizer merges " 3" and " 5" into one token each but not " 0"
    pre, ids = continuation_ids(tok, "Score: ", ["3", "5"])
    assert pre == "Score:" and ids == [tok.convert_tokens_to_ids("Ġ3"), tok.convert_tokens_to_ids("Ġ5")]
    assert isinstance(continuation_ids(tok, "Score: ", ["0", "3"]), str)  # neither form works for every label


def test_critique_mode_writes_then_reads_the_label(tiny):
    model, tok = tiny
    judge = ModelJudge(model, tok, CONST, 4, critique=True, critique_tokens=4)
    out = judge(COMPS[:2])
    assert all(math.isfinite(x) for x in out) and len(judge.last_critiques) == 2
    assert "critique" in judge.text(COMPS[0]).lower()
    assert trim_critique("Both are fine.\nVerdict: A") == "Both are fine."
    assert trim_critique("Good answer. Score: 4") == "Good answer."


def test_greedy_generate_is_deterministic_and_batch_invariant(tiny):
    model, tok = tiny
    texts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nexplain rain to a child please<|im_end|>\n<|im_start|>assistant\n"]
    a = greedy_generate(model, tok, texts, 5, 2)
    assert a == greedy_generate(model, tok, texts, 5, 1) and tok.padding_side == "left"


# ---------------------------------------------------------------- data and config


def test_rubric_and_critique_validation():
    good = {"template": "{principle} {prompt} {answer_a} {answer_b}", "principles": ["be kind"]}
    rub = {"template": "{prompt} {answer}", "labels": ["1", "2", "3"]}
    c = constitution_from_dict({**good, "pointwise": rub})
    assert c.pointwise.values == (1.0, 2.0, 3.0) and c.critique is None
    with pytest.raises(RlaifError, match=r"exactly \{prompt\} \{answer\}"):
        constitution_from_dict({**good, "pointwise": {**rub, "template": "{prompt}"}})
    with pytest.raises(RlaifError, match="must spell numbers"):
        constitution_from_dict({**good, "pointwise": {**rub, "labels": ["bad", "good"]}})
    with pytest.raises(RlaifError, match="unknown key 'pointwise.scale'"):
        constitution_from_dict({**good, "pointwise": {**rub, "scale": 5}})
    with pytest.raises(RlaifError, match="critique.pointwise_prefix"):
        constitution_from_dict({**good, "critique": {"instruction": "think", "pairwise_prefix": "V:"}})
    with pytest.raises(RlaifError, match="judge.mode: pointwise needs a 'pointwise' section"):
        constitution_from_dict(good, "mine.yaml").render_pointwise("q", "a")
    assert CONST.pointwise is not None and CONST.critique is not None  # the default has both


def test_judge_config_fields_and_model_validation(tiny_model):
    r = recipe_from_dict({"judge": {"mode": "pointwise", "critique": True, "model": tiny_model}})
    assert r.judge.mode == "pointwise" and r.judge.prefix_cache is True and r.judge.reference_agreement is False
    assert recipe_from_dict({"judge": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}}).judge.model.startswith("Qwen")
    for bad in ("/no/such/folder", "not a model", "a/b/c"):
        with pytest.raises(RlaifError, match="judge.model must be"):
            recipe_from_dict({"judge": {"model": bad}})
    with pytest.raises(RlaifError, match="judge.mode must be one of"):
        recipe_from_dict({"judge": {"mode": "listwise"}})


def test_build_judge_follows_the_recipe(tiny):
    model, tok = tiny
    j = build_judge(JudgeConfig(mode="pointwise", prefix_cache=False), model, tok, CONST)
    assert isinstance(j, PointwiseJudge) and not j.prefix_cache
    assert isinstance(build_judge(JudgeConfig(mode="pairwise"), model, tok, CONST), ModelJudge)
    assert isinstance(build_judge(JudgeConfig(), model, tok, CONST), PointwiseJudge)  # the default


def test_loop_with_pointwise_judge_from_another_model_writes_reliability_metrics(tiny_model, tmp_path):
    recipe = tiny_recipe(tiny_model, tmp_path / "out", judge={"mode": "pointwise", "model": tiny_model,
                                                              "reference_agreement": True})
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    for n in (1, 2):
        j = read_json(tmp_path / f"out/round_00{n}/metrics.json")["judge"]
        assert j["mode"] == "pointwise" and j["judge_model"] == tiny_model
        for key in ("intransitive_share", "length_corr", "longer_preferred", "reference_agreement", "triples"):
            assert key in j, key
        assert 1 <= j["triples"] <= 4  # 4 prompts x C(3,3), ties left out
        assert j["intransitive_share"] == 0.0  # expected scores are a total order: never a cycle
        assert j["reference_agreement"] == 1.0  # the tiny path is the base model itself
    rows = read_jsonl(tmp_path / "out/round_001/verdicts.jsonl")
    assert all("score_i" in r and 0 <= r["p_i"] <= 1 for r in rows)


# ---------------------------------------------------------------- benchmark script


def test_judge_bench_runs_every_kind_of_mode_and_reports_ratios(tiny_model, tmp_path, capsys):
    """benchmarks/judge_bench.py end to end on the tiny model: the table, the ratios, identical
    verdicts with and without the caches (they change cost, never a verdict)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("judge_bench", Path(__file__).parents[1] / "benchmarks" / "judge_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    modes = "pairwise,pairwise-nocache,pointwise,pointwise-percall,pointwise-nocache,text-baseline"
    rc = bench.main(["--model", tiny_model, "--limit", "6", "--chunk", "2", "--baseline-limit", "2",
                     "--baseline-tokens", "3", "--modes", modes, "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    res = {r["mode"]: r for r in read_json(out)["results"]}
    assert set(res) == {"pairwise", "pairwise-nocache", "pointwise", "pointwise-percall", "pointwise-nocache", "text-baseline-3"}
    assert res["pointwise"]["pairs"] == 6 and res["text-baseline-3"]["pairs"] == 2
    for r in res.values():  # the first call (pairs 0-1) is the baseline's subset for every mode
        assert 0 < r["cpu_s_per_verdict_subset"] < math.inf
    for a, b in [("pointwise", "pointwise-percall"), ("pointwise", "pointwise-nocache"), ("pairwise", "pairwise-nocache")]:
        assert [r["p_better"] for r in res[a]["rows"]] == pytest.approx([r["p_better"] for r in res[b]["rows"]], abs=1e-4)
    assert "x cheaper per verdict" in printed and "prefix store across calls, pointwise" in printed
    assert "| pointwise-percall | 6 |" in printed
    assert bench.main(["--model", tiny_model, "--modes", "pointwise,nonsense"]) == 2
