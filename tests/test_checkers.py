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
    # char_count: code points of the stripped text; the boundary counts; an emoji is one code point
    ({"type": "char_count", "relation": "at_most", "n": 5}, "  hello \n", True),
    ({"type": "char_count", "relation": "at_most", "n": 5}, "hello!", False),
    ({"type": "char_count", "relation": "at_least", "n": 5}, "héllo", True),
    ({"type": "char_count", "relation": "at_least", "n": 5}, "hi 🙂", False),
    # separated_paragraphs: exactly n parts cut at lines holding only the separator
    ({"type": "separated_paragraphs", "separator": "***", "n": 2}, "Morning.\n***\nEvening.", True),
    ({"type": "separated_paragraphs", "separator": "***", "n": 2}, "Morning.\n  ***  \n\nEvening.\n", True),
    ({"type": "separated_paragraphs", "separator": "***", "n": 2}, "Morning. *** Evening.", False),
    ({"type": "separated_paragraphs", "separator": "***", "n": 2}, "***\nMorning.\n***\nEvening.", False),
    ({"type": "separated_paragraphs", "separator": "***", "n": 2}, "Morning.\n****\nEvening.", False),
    ({"type": "separated_paragraphs", "separator": "***", "n": 3}, "A.\n***\nB.\n***\nC.", True),
    ({"type": "separated_paragraphs", "separator": "***", "n": 3}, "A.\n***\n\n***\nC.", False),
    ({"type": "separated_paragraphs", "separator": "---", "n": 1}, "Just one part.", True),
    # section_count: markers 1..n in order, each section with text; markdown heading / bold allowed
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "SECTION 1\nPack.\nSECTION 2\nGo.", True),
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "Plan:\n## SECTION 1: Pack\n**SECTION 2** Go.", True),
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "Section 1\nPack.\nSection 2\nGo.", False),
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "SECTION 1\nPack.\nSECTION 3\nGo.", False),
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "SECTION 1\nPack.\nSECTION 2\n", False),
    ({"type": "section_count", "marker": "SECTION", "n": 2}, "SECTION 1 a\nSECTION 2 b\nSECTION 3 c", False),
    ({"type": "section_count", "marker": "Day", "n": 1}, "See Day 1 below.\nDay 1\nRest.", True),
    # bullet/numbered/heading counts on markdown variants
    ({"type": "numbered_count", "n": 3}, "Steps:\n1. Boil\n2) Stir\n  3. Serve", True),
    ({"type": "numbered_count", "n": 3}, "1. Boil\n2. Stir", False),
    ({"type": "numbered_count", "n": 2}, "1. Boil\n2.5 litres of water\n- salt\n2. Stir", True),
    ({"type": "heading_count", "n": 2}, "# Plan\ntext\n### Details\nmore", True),
    ({"type": "heading_count", "n": 2}, "# Plan\n#hashtag\n####### seven", False),
    ({"type": "heading_count", "n": 1}, "Plan\n====\ntext", False),
    # placeholder_count: [text] counts, blank brackets and markdown links do not
    ({"type": "placeholder_count", "n": 2}, "Dear [name], meet me at [address].", True),
    ({"type": "placeholder_count", "n": 2}, "Dear [name], see [the map](https://x.y) and [ ].", False),
    ({"type": "placeholder_count", "n": 1}, "Dear [ ], hi.", False),
    ({"type": "placeholder_count", "n": 1}, "Cher [prénom],", True),
    # keyword_frequency boundary: exactly n is enough
    ({"type": "keyword_frequency", "word": "tea", "n": 2}, "Tea? Tea.", True),
    # letter_frequency: lower-cased comparison, accented letters are other letters
    ({"type": "letter_frequency", "letter": "e", "relation": "at_least", "n": 3}, "EeE", True),
    ({"type": "letter_frequency", "letter": "e", "relation": "at_least", "n": 3}, "été, ee", False),
    ({"type": "letter_frequency", "letter": "é", "relation": "at_least", "n": 3}, "Été été", True),
    ({"type": "letter_frequency", "letter": "z", "relation": "at_most", "n": 1}, "Zebra", True),
    ({"type": "letter_frequency", "letter": "z", "relation": "at_most", "n": 1}, "Zebra zone", False),
    # capital_word_frequency: words of 2+ letters with no lower-case letter; "I" and "A" do not count
    ({"type": "capital_word_frequency", "relation": "at_least", "n": 2}, "Call NASA NOW, I said.", True),
    ({"type": "capital_word_frequency", "relation": "at_least", "n": 2}, "I saw A Cat on TV.", False),
    ({"type": "capital_word_frequency", "relation": "at_least", "n": 2}, "ÉTÉ and COVID-19", True),
    ({"type": "capital_word_frequency", "relation": "at_most", "n": 1}, "OK then, FINE.", False),
    ({"type": "capital_word_frequency", "relation": "at_most", "n": 1}, "Ok then, FINE.", True),
    # repeat_request: the request first (whitespace and ’ folded, case kept), then some answer
    ({"type": "repeat_request", "request": "Name a fruit."}, "Name a fruit.\nApple.", True),
    ({"type": "repeat_request", "request": "Don't  stop now."}, "  Don’t stop\nnow. Never!", True),
    ({"type": "repeat_request", "request": "Name a fruit."}, "name a fruit. Apple.", False),
    ({"type": "repeat_request", "request": "Name a fruit."}, "Name a fruit.", False),
    ({"type": "repeat_request", "request": "Name a fruit."}, 'Sure! "Name a fruit." Apple.', False),
    # choice: the whole answer is one option (case, outer marks and one final . or ! ignored)
    ({"type": "choice", "options": ["yes", "no", "maybe"]}, "  **Yes.**\n", True),
    ({"type": "choice", "options": ["yes", "no", "maybe"]}, '"No!"', True),
    ({"type": "choice", "options": ["yes", "no", "maybe"]}, "Yes, because it rains.", False),
    ({"type": "choice", "options": ["yes", "no", "maybe"]}, "yesno", False),
    ({"type": "choice", "options": ["My answer is yes.", "My answer is no."]}, "my answer is no", True),
    # more markdown and unicode edges of the older types
    ({"type": "bullet_count", "n": 2}, "+ a\n- b\n\t* c", True),  # '+' is not one of the markers asked for
    ({"type": "quoted"}, "“Try painting.\"", False),
    ({"type": "title"}, "<<Été>> au lac", True),
    ({"type": "lowercase"}, "ça va très bien", True),
    ({"type": "uppercase"}, "ÇA VA TRÈS BIEN", True),
    ({"type": "no_commas"}, "one、two，three", True),
    ({"type": "ends_with", "phrase": "Bye."}, "Bye.\u200b", False),
]


@pytest.mark.parametrize(("constraint", "response", "expected"), CASES)
def test_check(constraint, response, expected):
    assert check(response, constraint) is expected


def test_every_type_has_a_passing_and_a_failing_case():
    outcomes = {(c["type"], expected) for c, _, expected in CASES}
    for kind in CHECKERS:
        assert (kind, True) in outcomes and (kind, False) in outcomes, kind


# One valid constraint of every type, and whether the empty response (or one of blanks) keeps it:
# only the limits from above ("at most", "do not") are kept by saying nothing.
EXAMPLES = {
    "word_count": (W("at_most", 3), True),
    "sentence_count": ({"type": "sentence_count", "relation": "at_least", "n": 1}, False),
    "char_count": ({"type": "char_count", "relation": "at_most", "n": 1}, True),
    "paragraph_count": ({"type": "paragraph_count", "relation": "at_least", "n": 1}, False),
    "separated_paragraphs": ({"type": "separated_paragraphs", "separator": "***", "n": 1}, False),
    "section_count": ({"type": "section_count", "marker": "SECTION", "n": 1}, False),
    "bullet_count": ({"type": "bullet_count", "n": 1}, False),
    "numbered_count": ({"type": "numbered_count", "n": 1}, False),
    "heading_count": ({"type": "heading_count", "n": 1}, False),
    "title": ({"type": "title"}, False),
    "highlight_count": ({"type": "highlight_count", "n": 1}, False),
    "placeholder_count": ({"type": "placeholder_count", "n": 1}, False),
    "include_word": ({"type": "include_word", "word": "a"}, False),
    "forbid_word": ({"type": "forbid_word", "word": "a"}, True),
    "keyword_frequency": ({"type": "keyword_frequency", "word": "a", "n": 1}, False),
    "letter_frequency": ({"type": "letter_frequency", "letter": "a", "relation": "at_most", "n": 1}, True),
    "lowercase": ({"type": "lowercase"}, False),
    "uppercase": ({"type": "uppercase"}, False),
    "capital_word_frequency": ({"type": "capital_word_frequency", "relation": "at_most", "n": 1}, True),
    "starts_with": ({"type": "starts_with", "phrase": "Hi"}, False),
    "ends_with": ({"type": "ends_with", "phrase": "Bye"}, False),
    "repeat_request": ({"type": "repeat_request", "request": "Hi"}, False),
    "postscript": ({"type": "postscript"}, False),
    "quoted": ({"type": "quoted"}, False),
    "no_commas": ({"type": "no_commas"}, True),
    "json": ({"type": "json"}, False),
    "choice": ({"type": "choice", "options": ["yes", "no"]}, False),
}


def test_registry_has_at_least_25_types_and_an_example_of_each():
    assert len(CHECKERS) >= 25
    assert set(EXAMPLES) == set(CHECKERS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
@pytest.mark.parametrize("response", ["", " \n\t "])
def test_empty_response(kind, response):
    constraint, kept = EXAMPLES[kind]
    assert check(response, constraint) is kept


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
        ({"type": "letter_frequency", "letter": "ab", "relation": "at_most", "n": 1}, r"'letter' must be a single letter"),
        ({"type": "letter_frequency", "letter": "4", "relation": "at_most", "n": 1}, r"'letter' must be a single letter"),
        ({"type": "section_count", "marker": "SECTION 1", "n": 2}, r"'marker' must be one word of letters"),
        ({"type": "separated_paragraphs", "separator": "* * ", "n": 2}, r"'separator' must be symbols without"),
        ({"type": "separated_paragraphs", "separator": "-a-", "n": 2}, r"'separator' must be symbols without"),
        ({"type": "separated_paragraphs", "separator": "", "n": 2}, r"'separator' must be symbols without"),
        ({"type": "choice", "options": ["yes"]}, r"'options' must be a list of at least 2 different"),
        ({"type": "choice", "options": ["yes", "Yes "]}, r"'options' must be a list of at least 2 different"),
        ({"type": "choice", "options": "yes/no"}, r"'options' must be a list"),
        ({"type": "repeat_request", "request": ""}, r"'request' must be a non-empty string"),
        ({"type": "char_count", "relation": "exactly", "n": 9}, r"'relation' must be at_most or at_least"),
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
    assert describe({"type": "section_count", "marker": "Day", "n": 2}) == (
        'Divide your answer into exactly 2 sections, each starting on its own line with "Day 1", "Day 2" and so on.')
    assert describe({"type": "choice", "options": ["yes", "no"]}) == (
        'Answer with one of these options and nothing else: "yes", "no".')
    assert describe({"type": "letter_frequency", "letter": "z", "relation": "at_least", "n": 1}) == (
        'Use the letter "z" (upper or lower case) at least 1 time.')


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_description_is_one_sentence(kind):
    sentence = describe(EXAMPLES[kind][0])
    assert sentence[0].isupper() and sentence.endswith(".") and "\n" not in sentence


# The bundled set


def test_bundled_set_validates_and_uses_every_type_at_least_twice():
    rows = load_instruction_set()
    assert len(rows) >= 150
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
            for key in ("word", "phrase", "request", "letter"):
                if key in c:
                    assert f'"{c[key]}"' in prompt, (row["id"], c)
            for option in c.get("options", []):
                assert f'"{option}"' in prompt, (row["id"], c)
            keyword = {"json": "JSON", "title": "<<", "postscript": '"P.S."', "no_commas": "commas",
                       "quoted": "double quotation marks", "lowercase": "lowercase",
                       "uppercase": "capital letters", "highlight_count": "asterisks",
                       "capital_word_frequency": "capital letters", "char_count": "characters",
                       "numbered_count": "numbered", "heading_count": "#", "placeholder_count": "square brackets",
                       "section_count": f"{c.get('marker')} 1", "separated_paragraphs": c.get("separator"),
                       "repeat_request": "word for word"}.get(c["type"])
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
