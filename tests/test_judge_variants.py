"""Pointwise judge options (issue 11 part C): few-shot graded examples, rubric ensembles, contextual calibration."""

import dataclasses
import json
import math
import re
from importlib import resources

import pytest

from rlaif.config import JudgeConfig, recipe_from_dict
from rlaif.errors import RlaifError
from rlaif.evaluation.evaluate import eval_judge_config
from rlaif.judging.constitution import constitution_from_dict, load_constitution
from rlaif.judging.judges import PointwiseJudge, build_judge
from rlaif.judging.verdicts import calibrated, expected_score
from rlaif.models import load_model, load_tokenizer

CONST = load_constitution("default")
ITEMS = [("Say hello.", "hi"), ("Say hello.", "a much longer hello to everyone here"), ("Name a color.", "blue")]
VALUES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


# ---------------------------------------------------------------- calibration maths, planted numbers


def test_calibration_subtracts_the_content_free_logprobs():
    answer = [math.log(p) for p in (0.1, 0.2, 0.7)]
    free = [math.log(p) for p in (0.5, 0.25, 0.25)]
    assert calibrated(answer, free) == pytest.approx([math.log(0.2), math.log(0.8), math.log(2.8)])
    # renormalised: 0.2 : 0.8 : 2.8 over 3.8 -> E = (0*0.2 + 1*0.8 + 2*2.8) / 3.8
    score, probs = expected_score(calibrated(answer, free), (0.0, 1.0, 2.0))
    assert probs == pytest.approx([0.2 / 3.8, 0.8 / 3.8, 2.8 / 3.8]) and score == pytest.approx(6.4 / 3.8)
    # an answer the model scores exactly like the content-free one comes out uniform
    assert expected_score(calibrated(free, free), (0.0, 1.0, 2.0))[0] == pytest.approx(1.0)


def test_calibration_of_a_failed_row_is_nan():
    assert all(math.isnan(x) for x in calibrated([0.0, math.nan], [0.0, 0.0]))
    assert all(math.isnan(x) for x in calibrated([0.0, 0.0], [-math.inf, 0.0]))


# ---------------------------------------------------------------- the judge on the tiny model


def test_calibrated_judge_scores_against_its_own_content_free_view(tiny):
    """calibrate=True equals: score the answer and "N/A" uncalibrated, subtract their log-probs, expected score."""
    model, tok = tiny
    plain = PointwiseJudge(model, tok, CONST, 4)
    cal = PointwiseJudge(model, tok, CONST, 4, calibrate=True)(ITEMS)
    for (prompt, answer), got in zip(ITEMS, cal):
        a, free = plain([(prompt, answer), (prompt, CONST.pointwise.content_free)])
        want = expected_score(calibrated([math.log(p) for p in a["probs"]], [math.log(p) for p in free["probs"]]), VALUES)
        assert got["score"] == pytest.approx(want[0], abs=1e-4)
        assert got["label_mass"] == pytest.approx(a["label_mass"], rel=1e-3)  # the raw reading's, for diagnosis


def test_ensemble_averages_the_rubric_wordings(tiny):
    model, tok = tiny
    both = PointwiseJudge(model, tok, CONST, 4, rubrics=2)(ITEMS)
    first = PointwiseJudge(model, tok, CONST, 4)(ITEMS)
    r = CONST.pointwise
    alt = dataclasses.replace(CONST, pointwise=dataclasses.replace(r, template=r.alternates[0], alternates=()))
    second = PointwiseJudge(model, tok, alt, 4)(ITEMS)
    for b, x, y in zip(both, first, second):
        assert b["score"] == pytest.approx((x["score"] + y["score"]) / 2, abs=1e-4)
        assert b["probs"] == pytest.approx([(p + q) / 2 for p, q in zip(x["probs"], y["probs"])], abs=1e-4)


def test_few_shot_examples_are_in_the_cached_head_not_per_view(tiny):
    model, tok = tiny
    judge = PointwiseJudge(model, tok, CONST, 4, few_shot=3)
    judge(ITEMS)
    head = tok.decode(judge.prefix_store.ids)  # the level-1 prefix every view shares, computed once
    examples = CONST.pointwise.examples_text(3)
    assert examples and examples.strip() in head
    assert "Say hello." not in head and "Name a color." not in head  # the request starts after the head
    view = judge.text(*ITEMS[0])
    assert view.count(CONST.pointwise.examples[0].answer) == 1  # shown once per view, before the request
    assert view.index(examples.strip()) < view.index("Say hello.")


def test_few_shot_and_ensemble_and_calibration_match_the_uncached_path(tiny):
    model, tok = tiny
    kw = {"few_shot": 2, "rubrics": 2, "calibrate": True}
    plain = PointwiseJudge(model, tok, CONST, 2, prefix_cache=False, **kw)(ITEMS)
    cached = PointwiseJudge(model, tok, CONST, 2, prefix_cache=True, **kw)(ITEMS)
    assert [c["score"] for c in cached] == pytest.approx([p["score"] for p in plain], abs=1e-4)


def test_default_options_render_the_rubric_as_before():
    """few_shot=0 leaves {examples} empty: the request follows the instruction directly."""
    user = CONST.render_pointwise("REQUEST", "ANSWER")[-1]["content"]
    assert "Example" not in user and "{examples}" not in user
    assert "one digit from 0 to 5.\n\nUser request:\nREQUEST\n\nAnswer:\nANSWER" in user


def test_build_judge_passes_the_options_and_eval_uses_them(tiny):
    model, tok = tiny
    cfg = JudgeConfig(mode="pointwise", few_shot=2, rubrics=2, calibrate=True)
    judge = build_judge(cfg, model, tok, CONST)
    assert (judge.few_shot, judge.rubrics, judge.calibrate) == (2, 2, True)
    recipe = recipe_from_dict({"judge": {"few_shot": 2, "rubrics": 2, "calibrate": True}})
    e = eval_judge_config(recipe)
    assert (e.few_shot, e.rubrics, e.calibrate) == (2, 2, True)


def test_options_beyond_the_constitution_are_errors(tiny):
    model, tok = tiny
    with pytest.raises(RlaifError, match="few_shot=99"):
        PointwiseJudge(model, tok, CONST, few_shot=99)
    with pytest.raises(RlaifError, match="rubrics=9"):
        PointwiseJudge(model, tok, CONST, rubrics=9)
    r = CONST.pointwise
    bad = dataclasses.replace(CONST, pointwise=dataclasses.replace(r, examples=(dataclasses.replace(r.examples[0], score="7"),)))
    with pytest.raises(RlaifError, match="score '7' is not one of"):
        PointwiseJudge(model, tok, bad, few_shot=1)
    PointwiseJudge(model, tok, bad)  # examples it does not show are not checked


# ---------------------------------------------------------------- the constitution's examples


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_few_shot_examples_share_no_text_with_the_judge_set():
    """The judge set is the evaluation: no example may copy or closely paraphrase one of its items."""
    text = resources.files("rlaif.data").joinpath("judge_set.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    judge_texts = [r[k] for r in rows for k in ("prompt", "better", "worse")]
    judge_shingles = set().union(*(_shingles(t) for t in judge_texts))
    judge_prompts = {" ".join(_words(r["prompt"])) for r in rows}
    examples = CONST.pointwise.examples
    assert len(examples) >= 4
    for e in examples:
        assert " ".join(_words(e.prompt)) not in judge_prompts
        overlap = (_shingles(e.prompt) | _shingles(e.answer)) & judge_shingles
        assert not overlap, f"example {e.prompt!r} shares {sorted(overlap)[:3]} with the judge set"


def test_constitution_checks_examples_and_alternates():
    raw = {"template": "{principle} {prompt} {answer_a} {answer_b}", "principles": ["p"]}
    rub = {"template": "{examples}{prompt} {answer}", "labels": ["0", "1"]}
    c = constitution_from_dict({**raw, "pointwise": {**rub, "alternates": ["R: {prompt} {answer}"],
                                                       "example_template": "{prompt}>{answer}={score};",
                                                       "examples": [{"prompt": "q", "answer": "a", "score": 1}]}})
    assert c.pointwise.templates == ("{examples}{prompt} {answer}", "R: {prompt} {answer}")
    assert c.render_pointwise("Q", "A", examples=1)[-1]["content"] == "q>a=1;Q A"
    assert c.render_pointwise("Q", "A", rubric=1, examples=1)[-1]["content"] == "R: Q A"
    with pytest.raises(RlaifError, match="alternates"):
        constitution_from_dict({**raw, "pointwise": {**rub, "alternates": ["{prompt} only"]}})
    with pytest.raises(RlaifError, match="example_template"):
        constitution_from_dict({**raw, "pointwise": {**rub, "examples": [{"prompt": "q", "answer": "a", "score": 1}]}})
