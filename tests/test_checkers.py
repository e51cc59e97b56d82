import json
import re
from importlib import resources

import pytest

from rlaif.errors import RlaifError
from rlaif.evaluation.checks import (
    CHECKERS,
    check,
    check_all,
    describe,
    load_instruction_set,
    paragraphs,
    sentences,
    validate_constraint,
    words,
)
from rlaif.stages.prompts import normalise


def W(rel, n):
    return {"type": "word_count", "relation": rel, "n": n}


# (constraint, response, expected): for every type at least one pass and one fail, plus the edges that matter.
CASES = [
    # word_count: "at most" / "at least" include the boundary; hyphens and apostrophes join a word,
    # bullet markers are not words
    (W("at_most", 5), "one two three four five", True),
    (W("at_most", 5), "one two three four five six", False),
    (W("at_least", 5), "one two three four five", True),
    (W("at_least", 5), "one two three four", False),
    (W("at_most", 3), "don't well-known cats", True),
    (W("at_most", 3), "- apples\n- pears\n- plums", True),
    # sentence_count
    ({"type": "sentence_count", "relation": "at_most", "n": 2}, "It rains. We stay in!", True),
    ({"type": "sentence_count", "relation": "at_most", "n": 2}, "It rains. We stay in! Tea?", False),
    ({"type": "sentence_count", "relation": "at_least", "n": 3}, 'He said "hi." She left. Done', True),
    ({"type": "sentence_count", "relation": "at_least", "n": 3}, "Version 2.5 is out. Get it", False),
    ({"type": "sentence_count", "relation": "at_least", "n": 2}, "- water daily\n- bright light", True),
    # bullet_count: exactly n; '-' and '*' bullets count, numbered lines and *highlights* do not
    ({"type": "bullet_count", "n": 3}, "Tips:\n- water weekly\n* bright light\n  - good soil", True),
    ({"type": "bullet_count", "n": 3}, "- water weekly\n- bright light", False),
    ({"type": "bullet_count", "n": 3}, "- a\n- b\n- c\n- d", False),
    ({"type": "bullet_count", "n": 2}, "- a\n- b\n1. c\n*note* this\n---", True),
    # paragraph_count
    ({"type": "paragraph_count", "relation": "exactly", "n": 2}, "First part.\n\nSecond part.", True),
    ({"type": "paragraph_count", "relation": "exactly", "n": 2}, "First part.\nStill first.", False),
    ({"type": "paragraph_count", "relation": "exactly", "n": 2}, "One.\n  \nTwo.\n\n\nThree.", False),
    ({"type": "paragraph_count", "relation": "at_least", "n": 2}, "One.\n  \nTwo.\n\n\nThree.", True),
    # include_word: case-insensitive, whole word; a phrase may span any whitespace
    ({"type": "include_word", "word": "garden"}, "The Garden is lovely.", True),
    ({"type": "include_word", "word": "garden"}, "Gardens and gardening.", False),
    ({"type": "include_word", "word": "ice cream"}, "I love ice\ncream!", True),
    ({"type": "include_word", "word": "cat"}, "A concatenation.", False),
    ({"type": "include_word", "word": "cat"}, "A bobcat.", False),
    # forbid_word: the mirror image
    ({"type": "forbid_word", "word": "north"}, "It points to the magnetic pole; northern lights aside.", True),
    ({"type": "forbid_word", "word": "north"}, "It points North.", False),
    ({"type": "forbid_word", "word": "don't"}, "Don’t worry.", False),
    ({"type": "include_word", "word": "don’t"}, "Don't worry.", True),
    # keyword_frequency: at least n whole-word occurrences
    ({"type": "keyword_frequency", "word": "warm", "n": 3}, "Warm, warm and WARM.", True),
    ({"type": "keyword_frequency", "word": "warm", "n": 3}, "Warm, warmer and warm.", False),
    # lowercase / uppercase: digits and punctuation do not matter, but there must be letters
    ({"type": "lowercase"}, "it rains, 3 times a day!", True),
    ({"type": "lowercase"}, "it rains in Paris", False),
    ({"type": "lowercase"}, "123 !!", False),
    ({"type": "uppercase"}, "WET FLOOR! 2ND FLOOR, ROOM 4B.", True),
    ({"type": "uppercase"}, "WET FLOOr", False),
    ({"type": "uppercase"}, "42", False),
    # json: an object or array, optionally in a ``` fence
    ({"type": "json"}, '{"name": "Polly", "color": "green"}', True),
    ({"type": "json"}, '```json\n{"name": "Polly"}\n```', True),
    ({"type": "json"}, '  ```\n["red", "orange"]\n```\n', True),
    ({"type": "json"}, '{"name": "Polly",}', False),
    ({"type": "json"}, 'Here it is: {"name": "Polly"}', False),
    ({"type": "json"}, '"just a string"', False),
    # starts_with / ends_with: exact and case-sensitive, outer whitespace ignored
    ({"type": "starts_with", "phrase": "Dear Alex,"}, "\n Dear Alex, the view is great.", True),
    ({"type": "starts_with", "phrase": "Dear Alex,"}, "Hi! Dear Alex, the view is great.", False),
    ({"type": "starts_with", "phrase": "Dear Alex,"}, "dear alex, the view is great.", False),
    ({"type": "ends_with", "phrase": "Enjoy your egg!"}, "Boil for 7 minutes. Enjoy your egg!  \n", True),
    ({"type": "ends_with", "phrase": "Enjoy your egg!"}, "Enjoy your egg! Bye.", False),
    # no_commas
    ({"type": "no_commas"}, "Water keeps you alert.", True),
    ({"type": "no_commas"}, "Water keeps you alert, too.", False),
    # quoted: straight or curly double quotes around the whole answer
    ({"type": "quoted"}, ' "Try painting." \n', True),
    ({"type": "quoted"}, "“Try painting.”", True),
    ({"type": "quoted"}, 'Try "painting".', False),
    ({"type": "quoted"}, '"', False),
    # title
    ({"type": "title"}, "<<The Lost Kite>>\nIt flew away.", True),
    ({"type": "title"}, "The Lost Kite\nIt flew away.", False),
    ({"type": "title"}, "<<  >> It flew away.", False),
    # highlight_count: at least n; *x* and **x** count, a bullet marker does not start one
    ({"type": "highlight_count", "n": 2}, "Eggs with *crispy bacon* and **hot toast**.", True),
    ({"type": "highlight_count", "n": 2}, "Eggs with *crispy bacon* and toast.", False),
    ({"type": "highlight_count", "n": 2}, "* eggs and toast *\n* tea", False),
    ({"type": "highlight_count", "n": 2}, "* eggs*\n*toast*", False),
    # postscript: a line starting with P.S., after some text
    ({"type": "postscript"}, "Water the tomatoes tonight.\n\nP.S. The hose is in the shed.", True),
    ({"type": "postscript"}, "Water the tomatoes tonight. Thanks, PS the hose is in the shed.", False),
    ({"type": "postscript"}, "P.S. The hose is in the shed.", False),
]


@pytest.mark.parametrize(("constraint", "response", "expected"), CASES)
def test_check(constraint, response, expected):
    assert check(response, constraint) is expected


def test_every_type_has_a_passing_and_a_failing_case():
    outcomes = {(c["type"], expected) for c, _, expected in CASES}
    for kind in CHECKERS:
        assert (kind, True) in outcomes and (kind, False) in outcomes, kind


def test_splitting_rules():
    expected = ["Don't", "stop", "it's", "well-known", "42", "cats_2"]
    assert words("Don't stop — it's well-known: 42 cats_2!") == expected
    assert sentences("Hi there. How are you?\n- a bullet\n---\n\n...") == ["Hi there", "How are you", "- a bullet"]
    assert paragraphs("\n\nOne\ntwo\n \t\nThree\n\n") == ["One\ntwo", "Three"]


def test_check_all_keeps_order():
    constraints = [{"type": "lowercase"}, {"type": "no_commas"}, W("at_most", 2)]
    assert check_all("hello, world", constraints) == [True, False, True]


@pytest.mark.parametrize(
    ("constraint", "match"),
    [
        ({"type": "shout"}, r"here: unknown constraint type 'shout' \(known types: bullet_count, .*word_count\)"),
        ({"relation": "at_most", "n": 3}, r"here: has no 'type' \(known types:"),
        ({"type": "word_count", "n": 3}, r"here: constraint 'word_count' is missing parameter 'relation'"),
        (W("fewer", 3), r"'relation' must be at_most or at_least, got 'fewer'"),
        ({"type": "paragraph_count", "relation": "at_most", "n": 2}, r"must be exactly or at_least"),
        (W("at_most", 0), r"'n' must be a positive integer, got 0"),
        (W("at_most", "40"), r"'n' must be a positive integer, got '40'"),
        (W("at_most", True), r"'n' must be a positive integer, got True"),
        ({"type": "include_word", "word": "  "}, r"'include_word' parameter 'word' must be a non-empty string"),
        ({"type": "lowercase", "strict": 1}, r"'lowercase' has unknown parameter 'strict' \(it takes: no parameters\)"),
        ("lowercase", r"here: a constraint must be an object"),
    ],
)
def test_validate_constraint_names_where_type_and_parameter(constraint, match):
    with pytest.raises(RlaifError, match=match):
        validate_constraint(constraint, "here")


def test_check_and_describe_reject_invalid_constraints():
    with pytest.raises(RlaifError, match="unknown constraint type"):
        check("hi", {"type": "shout"})
    with pytest.raises(RlaifError, match="missing parameter 'n'"):
        describe({"type": "bullet_count"})


def test_describe_is_one_sentence_with_the_parameters():
    assert describe(W("at_most", 40)) == "Answer in at most 40 words."
    assert describe({"type": "sentence_count", "relation": "at_least", "n": 1}) == "Answer in at least 1 sentence."
    assert describe({"type": "forbid_word", "word": "ice cream"}) == 'Do not use the phrase "ice cream".'
    assert describe({"type": "keyword_frequency", "word": "warm", "n": 3}) == 'Use the word "warm" at least 3 times.'


# The bundled set


def test_bundled_set_validates_and_uses_every_type_at_least_twice():
    rows = load_instruction_set()
    assert 40 <= len(rows) <= 60
    assert len({r["id"] for r in rows}) == len(rows)
    used = [c["type"] for r in rows for c in r["constraints"]]
    for kind in CHECKERS:
        assert used.count(kind) >= 2, kind
    assert all(1 <= len(r["constraints"]) <= 3 for r in rows)


def test_describe_works_for_every_bundled_constraint():
    for row in load_instruction_set():
        for c in row["constraints"]:
            sentence = describe(c)
            assert sentence[0].isupper() and sentence.endswith("."), (row["id"], sentence)


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def test_bundled_prompts_state_their_constraints():
    """The prompt text itself carries each number and each phrase that a constraint checks."""
    for row in load_instruction_set():
        prompt = row["prompt"]
        for c in row["constraints"]:
            if "n" in c:
                spelled = rf"\b({c['n']}|{NUMBER_WORDS.get(c['n'], c['n'])})\b"
                assert re.search(spelled, prompt, re.IGNORECASE), (row["id"], c)
            for key in ("word", "phrase"):
                if key in c:
                    assert f'"{c[key]}"' in prompt, (row["id"], c)
            keyword = {"json": "JSON", "title": "<<", "postscript": '"P.S."', "no_commas": "commas",
                       "quoted": "double quotation marks", "lowercase": "lowercase",
                       "uppercase": "capital letters", "highlight_count": "asterisks"}.get(c["type"])
            if keyword:
                assert keyword in prompt, (row["id"], c)


def test_bundled_instructions_do_not_overlap_training_prompts():
    data = resources.files("rlaif.data")
    train = {normalise(json.loads(x)["prompt"]) for x in data.joinpath("prompts.jsonl").read_text().splitlines() if x}
    evals = [normalise(r["prompt"]) for r in load_instruction_set()]
    assert len(train) > 300 and len(evals) >= 40
    assert not set(evals) & train


# Loading files


def _write(tmp_path, rows):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"id": "a", "prompt": "Say hi in lowercase.", "constraints": [{"type": "lowercase"}]}


def test_load_a_file_keeps_rows_and_extra_keys(tmp_path):
    path = _write(tmp_path, [GOOD, "", {**GOOD, "id": "b", "category": "greeting"}])
    rows = load_instruction_set(str(path))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[1]["category"] == "greeting"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({**GOOD, "id": "b", "constraints": [{"type": "shout"}]},
         r"line 2 \(id 'b'\) constraint 0: unknown constraint type 'shout'"),
        ({**GOOD, "id": "b", "constraints": [{"type": "lowercase"}, {"type": "word_count", "n": 4}]},
         r"line 2 \(id 'b'\) constraint 1: constraint 'word_count' is missing parameter 'relation'"),
        ({**GOOD, "id": "a"}, r"line 2 \(id 'a'\): duplicate id, first used on line 1"),
        ({**GOOD, "id": "b", "constraints": []}, r"line 2 \(id 'b'\): 'constraints' must be a non-empty list"),
        ({"id": "b", "prompt": "Hi."}, r"line 2 \(id 'b'\): 'constraints' must be a non-empty list"),
        ({"id": "b", "constraints": [{"type": "lowercase"}]}, r"line 2: missing or empty 'prompt'"),
        ({"prompt": "Hi.", "constraints": [{"type": "lowercase"}]}, r"line 2: missing or empty 'id'"),
        ('{"id": "b", ', r"line 2 is not valid JSON"),
        ('["b"]', r"line 2: a row must be an object"),
    ],
)
def test_bad_rows_name_file_line_and_problem(tmp_path, bad, match):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(RlaifError, match=re.escape(str(path)) + ": " + match):
        load_instruction_set(str(path))


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(RlaifError, match="instruction set not found"):
        load_instruction_set(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(RlaifError, match="has no rows"):
        load_instruction_set(str(tmp_path / "empty.jsonl"))
