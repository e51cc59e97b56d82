"""Verifiable instruction-following checks: a constraint is data, a check is code.

The idea comes from IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language
Models", arXiv:2311.07911): give the model a prompt whose instructions a program can verify ("answer
in at most 40 words", "no commas") and count how many it keeps, with no judge in the loop. We differ
in three ways: the prompts and the checker code are our own, written for this project (nothing is
copied from IFEval); the types (27 against IFEval's 25) leave out those that need a language
detector and are chosen to be unambiguous to check; and the bundled prompts ask for lengths a small
model can meet in the CPU quickstart's token budget. We report only IFEval's "strict" reading: the
response is checked as written. The same checks are the loop's verifier (:mod:`rlaif.judging.verifier`)
and the training-prompt constraint generator's vocabulary (:mod:`rlaif.stages.constraints`).

A constraint is a dict ``{"type": <name>, ...params}``; extra keys are errors. Types and parameters:

======================  ======================================  =========================================
type                    parameters                              passes when the response ...
======================  ======================================  =========================================
word_count              relation: at_most | at_least, n         has at most / at least n words
sentence_count          relation: at_most | at_least, n         has at most / at least n sentences
char_count              relation: at_most | at_least, n         has at most / at least n characters
paragraph_count         relation: exactly | at_least, n         has exactly / at least n paragraphs
separated_paragraphs    separator: str, n                       is exactly n parts split by separator lines
section_count           marker: str, n                          has sections "marker 1" ... "marker n"
bullet_count            n                                       has exactly n markdown bullet lines
numbered_count          n                                       has exactly n numbered list items
heading_count           n                                       has at least n markdown headings
title                   (none)                                  contains a title like <<A Title>>
highlight_count         n                                       has at least n *highlighted* spans
placeholder_count       n                                       has at least n [placeholders]
include_word            word: str                               contains the word or phrase
forbid_word             word: str                               does not contain the word or phrase
keyword_frequency       word: str, n                            contains the word or phrase at least n times
letter_frequency        letter: str, relation, n                has the letter at most / at least n times
lowercase               (none)                                  has letters and none is upper case
uppercase               (none)                                  has letters and none is lower case
capital_word_frequency  relation: at_most | at_least, n         has at most / at least n ALL-CAPS words
starts_with             phrase: str                             starts with the phrase
ends_with               phrase: str                             ends with the phrase
repeat_request          request: str                            first repeats the request, then answers
postscript              (none)                                  has, after some text, a line starting "P.S."
quoted                  (none)                                  is wrapped in double quotes ("..." or “...”)
no_commas               (none)                                  contains no ","
json                    (none)                                  is a JSON object or array, fence allowed
choice                  options: list of str                    is exactly one of the options
======================  ======================================  =========================================

``n`` is a positive integer; ``letter`` one letter; ``marker`` one word of letters (``SECTION``);
``separator`` a one-line run of symbols without letters or digits (``***``); ``options`` at least
two different non-empty strings. How text is split into words, sentences, paragraphs, bullets,
sections, and how each type reads it: :mod:`rlaif.evaluation.checks_types`.

An instruction set is JSONL, one row per prompt: ``{"id": str, "prompt": str, "constraints":
[...]}``; other keys are kept. The prompt text states every constraint in plain words; ``describe``
gives the sentence we use for each in reports and in generated training prompts.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlaif.errors import RlaifError
from rlaif.evaluation import checks_types as t
from rlaif.evaluation.checks_types import WORD_RE, paragraphs, sentences, words

__all__ = ["CHECKERS", "WORD_RE", "Checker", "check", "check_all", "describe", "load_instruction_set",
           "paragraphs", "sentences", "validate_constraint", "words"]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _lines(n: int) -> str:
    return "a line" if n == 1 else "lines"


def _relation(relation: str) -> str:
    return relation.replace("_", " ")


def _word_or_phrase(word: str) -> str:
    return "phrase" if len(word.split()) > 1 else "word"


def _describe_sections(marker: str, n: int) -> str:
    if n == 1:
        return f'Put your answer in exactly 1 section, starting on its own line with "{marker} 1".'
    return (f'Divide your answer into exactly {n} sections, each starting on its own line with '
            f'"{marker} 1", "{marker} 2" and so on.')


def _describe_separated(separator: str, n: int) -> str:
    if n == 1:
        return f'Write exactly 1 paragraph, with no line holding only "{separator}".'
    return f'Write exactly {n} paragraphs, separated from each other by a line holding only "{separator}".'


@dataclass(frozen=True)
class Checker:
    """One constraint type: its parameter names, the test, and the sentence that states it."""

    params: tuple[str, ...]
    check: Callable[..., bool]  # check(response, **params)
    describe: Callable[..., str]  # describe(**params)
    relations: tuple[str, ...] = ()  # the allowed values of ``relation``, when it is a parameter


MOST_LEAST = ("at_most", "at_least")

CHECKERS: dict[str, Checker] = {
    "word_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: t.compare(len(words(r)), relation, n),
        lambda relation, n: f"Answer in {_relation(relation)} {_plural(n, 'word')}.",
        MOST_LEAST,
    ),
    "sentence_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: t.compare(len(sentences(r)), relation, n),
        lambda relation, n: f"Answer in {_relation(relation)} {_plural(n, 'sentence')}.",
        MOST_LEAST,
    ),
    "char_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: t.compare(len(r.strip()), relation, n),
        lambda relation, n: f"Answer in {_relation(relation)} {_plural(n, 'character')}, spaces included.",
        MOST_LEAST,
    ),
    "paragraph_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: t.compare(len(paragraphs(r)), relation, n),
        lambda relation, n: f"Write {_relation(relation)} {_plural(n, 'paragraph')}, separated by blank lines.",
        ("exactly", "at_least"),
    ),
    "separated_paragraphs": Checker(("separator", "n"), t.has_separated_parts, _describe_separated),
    "section_count": Checker(("marker", "n"), t.has_sections, _describe_sections),
    "bullet_count": Checker(
        ("n",),
        lambda r, n: t.bullet_count(r) == n,
        lambda n: f"Use exactly {_plural(n, 'markdown bullet point')} ({_lines(n)} starting with '-' or '*').",
    ),
    "numbered_count": Checker(
        ("n",),
        lambda r, n: t.numbered_count(r) == n,
        lambda n: f"Use exactly {_plural(n, 'numbered list item')} (lines starting with '1.', '2.' and so on).",
    ),
    "heading_count": Checker(
        ("n",),
        lambda r, n: t.heading_count(r) >= n,
        lambda n: f"Include at least {_plural(n, 'markdown heading')} ({_lines(n)} starting with '#').",
    ),
    "title": Checker(
        (), t.has_title, lambda: "Include a title wrapped in double angle brackets, like <<title>>."
    ),
    "highlight_count": Checker(
        ("n",),
        lambda r, n: t.highlight_count(r) >= n,
        lambda n: f"Highlight at least {_plural(n, 'section')} with asterisks, like *this*.",
    ),
    "placeholder_count": Checker(
        ("n",),
        lambda r, n: t.placeholder_count(r) >= n,
        lambda n: f"Include at least {_plural(n, 'placeholder')} in square brackets, like [name].",
    ),
    "include_word": Checker(
        ("word",),
        lambda r, word: t.phrase_count(r, word) > 0,
        lambda word: f'Include the {_word_or_phrase(word)} "{word}".',
    ),
    "forbid_word": Checker(
        ("word",),
        lambda r, word: t.phrase_count(r, word) == 0,
        lambda word: f'Do not use the {_word_or_phrase(word)} "{word}".',
    ),
    "keyword_frequency": Checker(
        ("word", "n"),
        lambda r, word, n: t.phrase_count(r, word) >= n,
        lambda word, n: f'Use the {_word_or_phrase(word)} "{word}" at least {_plural(n, "time")}.',
    ),
    "letter_frequency": Checker(
        ("letter", "relation", "n"),
        lambda r, letter, relation, n: t.compare(t.letter_count(r, letter), relation, n),
        lambda letter, relation, n: (f'Use the letter "{letter}" (upper or lower case) '
                                     f'{_relation(relation)} {_plural(n, "time")}.'),
        MOST_LEAST,
    ),
    "lowercase": Checker((), lambda r: r.islower(), lambda: "Write the whole answer in lowercase letters."),
    "uppercase": Checker((), lambda r: r.isupper(), lambda: "Write the whole answer in capital letters."),
    "capital_word_frequency": Checker(
        ("relation", "n"),
        lambda r, relation, n: t.compare(t.capital_word_count(r), relation, n),
        lambda relation, n: (f"Use {_relation(relation)} {_plural(n, 'word')} written entirely in capital "
                             "letters, like NOW."),
        MOST_LEAST,
    ),
    "starts_with": Checker(
        ("phrase",),
        lambda r, phrase: r.lstrip().startswith(phrase),
        lambda phrase: f'Start your answer with the exact phrase "{phrase}".',
    ),
    "ends_with": Checker(
        ("phrase",),
        lambda r, phrase: r.rstrip().endswith(phrase),
        lambda phrase: f'End your answer with the exact phrase "{phrase}".',
    ),
    "repeat_request": Checker(
        ("request",),
        t.repeats_request,
        lambda request: (f'First repeat the request "{request}" word for word (without the quotation '
                         "marks), then give your answer."),
    ),
    "postscript": Checker((), t.has_postscript, lambda: 'End with a postscript starting with "P.S.".'),
    "quoted": Checker((), t.is_quoted, lambda: "Wrap your whole answer in double quotation marks."),
    "no_commas": Checker((), lambda r: "," not in r, lambda: "Do not use any commas."),
    "json": Checker(
        (), t.is_json, lambda: "Answer with valid JSON only, an object or a list (a ```json fence is allowed)."
    ),
    "choice": Checker(
        ("options",),
        t.is_choice,
        lambda options: "Answer with one of these options and nothing else: "
        + ", ".join(f'"{o}"' for o in options) + ".",
    ),
}


def _param_problem(name: str, value, checker: Checker) -> str | None:
    """Why ``value`` is not a valid ``name`` parameter (a phrase for the error), or None when it is."""
    if name == "n":
        return None if type(value) is int and value >= 1 else f"must be a positive integer, got {value!r}"
    if name == "relation":
        ok = value in checker.relations
        return None if ok else f"must be {' or '.join(checker.relations)}, got {value!r}"
    if name in ("word", "phrase", "request"):
        return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
    if name == "letter":
        ok = isinstance(value, str) and len(value) == 1 and value.isalpha()
        return None if ok else f"must be a single letter, got {value!r}"
    if name == "marker":
        ok = isinstance(value, str) and value.isalpha()
        return None if ok else f"must be one word of letters, like SECTION, got {value!r}"
    if name == "separator":
        ok = isinstance(value, str) and bool(value) and value.strip() == value and "\n" not in value
        ok = ok and not any(ch.isalnum() or ch == "_" for ch in value)
        return None if ok else f"must be symbols without letters, digits or outer spaces, like ***, got {value!r}"
    if name == "options":
        ok = isinstance(value, list) and all(isinstance(o, str) and o.strip() for o in value)
        ok = ok and len({o.strip().casefold() for o in value}) == len(value) >= 2
        return None if ok else "must be a list of at least 2 different non-empty strings"
    return None


def validate_constraint(c: dict, where: str) -> None:
    """Raise RlaifError naming ``where``, the type and the parameter when ``c`` is not a valid constraint."""
    if not isinstance(c, dict):
        raise RlaifError(f"{where}: a constraint must be an object like {{\"type\": ...}}, got {type(c).__name__}")
    kind = c.get("type")
    if kind not in CHECKERS:
        known = ", ".join(sorted(CHECKERS))
        label = "has no 'type'" if kind is None else f"unknown constraint type {kind!r}"
        raise RlaifError(f"{where}: {label} (known types: {known})")
    checker = CHECKERS[kind]
    for name in checker.params:
        if name not in c:
            raise RlaifError(f"{where}: constraint {kind!r} is missing parameter '{name}'")
        problem = _param_problem(name, c[name], checker)
        if problem:
            raise RlaifError(f"{where}: constraint {kind!r} parameter '{name}' {problem}")
    extra = sorted(set(c) - {"type", *checker.params})
    if extra:
        takes = ", ".join(checker.params) or "no parameters"
        raise RlaifError(f"{where}: constraint {kind!r} has unknown parameter '{extra[0]}' (it takes: {takes})")


def _checker_and_params(c: dict) -> tuple[Checker, dict]:
    validate_constraint(c, "constraint")
    return CHECKERS[c["type"]], {k: v for k, v in c.items() if k != "type"}


def check(response: str, c: dict) -> bool:
    """Whether ``response`` keeps the constraint ``c`` (an invalid ``c`` raises RlaifError)."""
    checker, params = _checker_and_params(c)
    return bool(checker.check(response, **params))


def check_all(response: str, constraints: list[dict]) -> list[bool]:
    return [check(response, c) for c in constraints]


def describe(c: dict) -> str:
    """The instruction as one English sentence, e.g. "Answer in at most 40 words."."""
    checker, params = _checker_and_params(c)
    return checker.describe(**params)


def load_instruction_set(path: str | None = None) -> list[dict]:
    """Rows ``{"id", "prompt", "constraints"}`` of a JSONL file; ``None`` reads the bundled set.

    Every row is checked (fields, non-empty constraints, each constraint, unique ids); a problem is
    an RlaifError that names the file and the line.
    """
    if path is None:
        origin = "rlaif/data/instructions.jsonl"
        text = resources.files("rlaif.data").joinpath("instructions.jsonl").read_text(encoding="utf-8")
    else:
        origin, file = str(path), Path(path).expanduser()
        if not file.is_file():
            raise RlaifError(f"instruction set not found: {origin}")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RlaifError(f"{origin}: not a UTF-8 text file") from None
    rows, seen = [], {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{origin}: line {i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RlaifError(f"{where} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise RlaifError(f"{where}: a row must be an object with id, prompt and constraints")
        for key in ("id", "prompt"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise RlaifError(f"{where}: missing or empty '{key}' (a non-empty string)")
        where = f"{origin}: line {i} (id {row['id']!r})"
        if row["id"] in seen:
            raise RlaifError(f"{where}: duplicate id, first used on line {seen[row['id']]}")
        seen[row["id"]] = i
        constraints = row.get("constraints")
        if not isinstance(constraints, list) or not constraints:
            raise RlaifError(f"{where}: 'constraints' must be a non-empty list")
        for k, c in enumerate(constraints):
            validate_constraint(c, f"{where} constraint {k}")
        rows.append(row)
    if not rows:
        raise RlaifError(f"{origin}: the instruction set has no rows")
    return rows
