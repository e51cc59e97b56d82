import itertools
import json
from importlib import resources

import pytest

from rlaif.errors import RlaifError
from rlaif.evaluation.checks import CHECKERS, check, describe, load_instruction_set, validate_constraint
from rlaif.stages.constraints import (
    DEFAULT_TYPES,
    MAKERS,
    add_constraints,
    conflicts,
    constrained_ids,
    with_instructions,
)


def _train_prompts() -> list[dict]:
    text = resources.files("rlaif.data").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{"id": r["id"], "prompt": r["prompt"]} for r in rows if r.get("split") != "heldout"]


PROMPTS = _train_prompts()


def test_every_type_but_choice_can_be_generated_and_defaults_are_generatable():
    assert set(MAKERS) == set(CHECKERS) - {"choice"}
    assert set(DEFAULT_TYPES) <= set(MAKERS)


def test_same_seed_round_and_id_give_the_same_constraints_whatever_else_is_in_the_round():
    cfg = {"share": 1.0, "per_prompt": [1, 3], "types": "all"}
    full = add_constraints(PROMPTS[:60], cfg, seed=7, round_n=2)
    assert full == add_constraints(PROMPTS[:60], cfg, seed=7, round_n=2)
    alone = {r["id"]: r for r in add_constraints(PROMPTS[10:20], cfg, seed=7, round_n=2)}
    for row in full[10:20]:
        assert alone[row["id"]] == row
    other_seed = add_constraints(PROMPTS[:60], cfg, seed=8, round_n=2)
    other_round = add_constraints(PROMPTS[:60], cfg, seed=7, round_n=3)
    assert [r["constraints"] for r in other_seed] != [r["constraints"] for r in full]
    assert [r["constraints"] for r in other_round] != [r["constraints"] for r in full]


@pytest.mark.parametrize(("share", "n", "expected"), [(0.0, 40, 0), (0.25, 40, 10), (0.5, 7, 4), (1.0, 33, 33)])
def test_share_is_exactly_round_share_times_prompts(share, n, expected):
    rows = add_constraints(PROMPTS[:n], {"share": share, "per_prompt": 1}, seed=3, round_n=1)
    constrained = [r for r in rows if r["constraints"]]
    assert len(constrained) == expected
    assert {r["id"] for r in constrained} == constrained_ids([p["id"] for p in PROMPTS[:n]], share, 3, 1)
    for row, original in zip(rows, PROMPTS[:n]):
        if not row["constraints"]:
            assert row == {**original, "constraints": []}  # untouched, apart from the empty list


def test_the_input_rows_are_not_modified():
    before = json.dumps(PROMPTS[:20])
    add_constraints(PROMPTS[:20], {"share": 1.0}, seed=0, round_n=1)
    assert json.dumps(PROMPTS[:20]) == before


def test_counts_per_prompt_stay_within_min_and_max_and_reach_both():
    rows = add_constraints(PROMPTS, {"share": 1.0, "per_prompt": [2, 4], "types": "all"}, seed=1, round_n=1)
    counts = [len(r["constraints"]) for r in rows]
    assert min(counts) == 2 and max(counts) == 4
    rows = add_constraints(PROMPTS[:30], {"share": 1.0, "per_prompt": 1}, seed=1, round_n=1)
    assert {len(r["constraints"]) for r in rows} == {1}


def test_generated_constraints_validate_check_and_are_stated_in_the_prompt():
    rows = add_constraints(PROMPTS, {"share": 1.0, "per_prompt": [1, 3], "types": "all"}, seed=5, round_n=1)
    kinds = set()
    for row in rows:
        assert row["prompt"] == with_instructions(row["base_prompt"], row["constraints"])
        assert row["prompt"].startswith(row["base_prompt"].rstrip() + "\n\n")
        for c in row["constraints"]:
            validate_constraint(c, row["id"])
            assert describe(c) in row["prompt"]
            assert isinstance(check("A short answer.", c), bool)
            kinds.add(c["type"])
    assert kinds == set(MAKERS)  # over the whole bundled set every type is drawn at least once


def test_default_types_only_unless_asked():
    rows = add_constraints(PROMPTS, {"share": 1.0, "per_prompt": [1, 3]}, seed=2, round_n=1)
    assert {c["type"] for r in rows for c in r["constraints"]} == set(DEFAULT_TYPES)
    rows = add_constraints(PROMPTS, {"share": 1.0, "per_prompt": 2, "types": ["lowercase", "no_commas"]}, 2, 1)
    assert all(sorted(c["type"] for c in r["constraints"]) == ["lowercase", "no_commas"] for r in rows)


def test_incompatible_constraints_never_come_together():
    seen_lower = seen_upper = 0
    for seed in range(3):
        rows = add_constraints(PROMPTS, {"share": 1.0, "per_prompt": [3, 5], "types": "all"}, seed, 1)
        for row in rows:
            cs = row["constraints"]
            for a, b in itertools.combinations(cs, 2):
                assert not conflicts(a, b), (row["id"], a, b)
            kinds = {c["type"] for c in cs}
            assert not {"lowercase", "uppercase"} <= kinds
            seen_lower += "lowercase" in kinds
            seen_upper += "uppercase" in kinds
            assert len(kinds) == len(cs)  # one constraint per type
    assert seen_lower and seen_upper


LOW, UP, NOCOMMA, JSON, QUOTED, PS = ({"type": t} for t in ("lowercase", "uppercase", "no_commas", "json", "quoted",
                                                              "postscript"))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (LOW, UP, True),
        (LOW, {"type": "capital_word_frequency", "relation": "at_least", "n": 1}, True),
        (LOW, {"type": "starts_with", "phrase": "Sure thing!"}, True),
        (LOW, {"type": "starts_with", "phrase": "in short,"}, False),
        (LOW, PS, True),
        (UP, PS, False),
        (UP, {"type": "ends_with", "phrase": "That is all."}, True),
        (UP, {"type": "section_count", "marker": "SECTION", "n": 2}, False),
        (LOW, {"type": "section_count", "marker": "SECTION", "n": 2}, True),
        (NOCOMMA, {"type": "starts_with", "phrase": "In short,"}, True),
        (NOCOMMA, {"type": "repeat_request", "request": "Name a fruit."}, False),
        (NOCOMMA, JSON, True),
        (JSON, {"type": "word_count", "relation": "at_most", "n": 40}, False),
        (JSON, {"type": "bullet_count", "n": 3}, True),
        (QUOTED, {"type": "ends_with", "phrase": "That is all."}, True),
        (QUOTED, NOCOMMA, False),
        ({"type": "choice", "options": ["yes", "no"]}, NOCOMMA, True),
        ({"type": "forbid_word", "word": "garden"}, {"type": "include_word", "word": "Garden"}, True),
        ({"type": "forbid_word", "word": "garden"}, {"type": "keyword_frequency", "word": "garden", "n": 2}, True),
        ({"type": "forbid_word", "word": "thanks"}, {"type": "ends_with", "phrase": "Thanks for asking!"}, True),
        ({"type": "forbid_word", "word": "thank"}, {"type": "ends_with", "phrase": "Thanks for asking!"}, False),
        ({"type": "sentence_count", "relation": "at_most", "n": 2}, {"type": "bullet_count", "n": 3}, True),
        ({"type": "sentence_count", "relation": "at_least", "n": 2}, {"type": "bullet_count", "n": 3}, False),
        ({"type": "word_count", "relation": "at_most", "n": 10},
         {"type": "repeat_request", "request": "Name two fruits that are red."}, True),
        ({"type": "word_count", "relation": "at_most", "n": 40},
         {"type": "repeat_request", "request": "Name two fruits that are red."}, False),
        ({"type": "starts_with", "phrase": "Sure thing!"}, {"type": "repeat_request", "request": "Hi."}, True),
        ({"type": "word_count", "relation": "at_most", "n": 40}, {"type": "char_count", "relation": "at_most", "n": 200},
         True),
        ({"type": "word_count", "relation": "at_most", "n": 40},
         {"type": "char_count", "relation": "at_least", "n": 150}, False),
        ({"type": "word_count", "relation": "at_least", "n": 40},
         {"type": "char_count", "relation": "at_most", "n": 78}, True),
        ({"type": "word_count", "relation": "at_least", "n": 40},
         {"type": "char_count", "relation": "at_most", "n": 79}, False),
        ({"type": "bullet_count", "n": 2}, {"type": "bullet_count", "n": 3}, True),
        ({"type": "bullet_count", "n": 2}, {"type": "numbered_count", "n": 3}, False),
        (LOW, NOCOMMA, False),
    ],
)
def test_conflicts(a, b, expected):
    assert conflicts(a, b) is expected
    assert conflicts(b, a) is expected


def test_the_word_and_character_bound_is_exact():
    """40 words fit in 79 characters ("a a ... a") and not in 78: the conflict rule's boundary."""
    witness = " ".join(["a"] * 40)
    assert check(witness, {"type": "word_count", "relation": "at_least", "n": 40})
    assert check(witness, {"type": "char_count", "relation": "at_most", "n": 79})
    assert not check(witness, {"type": "char_count", "relation": "at_most", "n": 78})


def test_the_evaluation_instruction_set_follows_the_same_compatibility_rules():
    for row in load_instruction_set():
        for a, b in itertools.combinations(row["constraints"], 2):
            assert not conflicts(a, b), (row["id"], a, b)


def test_rows_that_already_carry_constraints_are_refused():
    rows = load_instruction_set()[:3]
    with pytest.raises(RlaifError, match="already carries constraints"):
        add_constraints(rows, {"share": 1.0}, seed=0, round_n=1)


def test_repeat_request_is_only_drawn_for_short_one_line_prompts():
    long = {"id": "x", "prompt": "word " * 30}
    short = {"id": "y", "prompt": "Name a red fruit."}
    cfg = {"share": 1.0, "per_prompt": 1, "types": ["repeat_request"]}
    assert add_constraints([long], cfg, 0, 1)[0]["constraints"] == []
    row = add_constraints([short], cfg, 0, 1)[0]
    assert row["constraints"] == [{"type": "repeat_request", "request": "Name a red fruit."}]
    assert check("Name a red fruit. A cherry.", row["constraints"][0])


def test_object_config_works_like_a_mapping():
    class Cfg:
        share, per_prompt, types = 0.5, [1, 2], "default"

    assert add_constraints(PROMPTS[:10], Cfg(), 4, 1) == add_constraints(
        PROMPTS[:10], {"share": 0.5, "per_prompt": [1, 2], "types": "default"}, 4, 1
    )


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"share": 1.5}, r"prompts\.constraints\.share must be a number from 0 to 1, got 1\.5"),
        ({"share": True}, r"share must be a number"),
        ({"per_prompt": [3, 1]}, r"prompts\.constraints\.per_prompt must be .* got \[3, 1\]"),
        ({"per_prompt": 0}, r"per_prompt must be"),
        ({"per_prompt": [1, 2, 3]}, r"per_prompt must be"),
        ({"types": ["choice"]}, r"prompts\.constraints\.types: 'choice' cannot be generated \(choose from: bullet_count"),
        ({"types": "some"}, r"types must be `default`, `all` or a non-empty list"),
        ({"types": []}, r"types must be `default`, `all` or a non-empty list"),
    ],
)
def test_bad_settings_name_the_key(cfg, match):
    with pytest.raises(RlaifError, match=match):
        add_constraints(PROMPTS[:3], cfg, 0, 1)
