"""Verifiable instruction-following checks for the held-out evaluation: a constraint is data, a check is code.

The idea comes from IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language
Models", arXiv:2311.07911): give the model a prompt whose instructions a program can verify ("answer
in at most 40 words", "no commas") and count how many it keeps, with no judge in the loop. We differ
in three ways: the prompts and the checker code are our own, written for this project (nothing is
copied from IFEval); there are fewer types (17 against IFEval's 25), chosen to be unambiguous to
check; and the bundled prompts ask for lengths a small model can meet in the 64 new tokens of the
CPU quickstart. We report only IFEval's "strict" reading: the response is checked as written.

A constraint is a dict ``{"type": <name>, ...params}``; extra keys are errors. Types and parameters:

==================  ======================================  =============================================
type                parameters                              passes when the response ...
==================  ======================================  =============================================
word_count          relation: at_most | at_least, n: int    has at most / at least n words
sentence_count      relation: at_most | at_least, n: int    has at most / at least n sentences
bullet_count        n: int                                  has exactly n markdown bullet lines
paragraph_count     relation: exactly | at_least, n: int    has exactly / at least n paragraphs
include_word        word: str                               contains the word or phrase
forbid_word         word: str                               does not contain the word or phrase
keyword_frequency   word: str, n: int                       contains the word or phrase at least n times
lowercase           (none)                                  has letters and none is upper case
uppercase           (none)                                  has letters and none is lower case
json                (none)                                  is a JSON object or array, fence allowed
starts_with         phrase: str                             starts with the phrase (leading space ignored)
ends_with           phrase: str                             ends with the phrase (trailing space ignored)
no_commas           (none)                                  contains no ","
quoted              (none)                                  is wrapped in double quotes ("..." or “...”)
title               (none)                                  contains a title like <<A Title>>
highlight_count     n: int                                  has at least n *highlighted* spans
postscript          (none)                                  has, after some text, a line starting "P.S."
==================  ======================================  =============================================

``n`` is a positive integer. How text is split:

* **words**: matches of ``\\b\\w+(?:['’-]\\w+)*\\b``, so "don't", "well-known" and "42" are one word
  each and markdown symbols (``-``, ``*``, ``#``) are none.
* **sentences**: the text is cut after a run of ``.``, ``!`` or ``?`` (plus any closing quote or
  bracket) that is followed by whitespace or the end, and at every line break; pieces without a
  word character are dropped. So an abbreviation such as "e.g. this" counts as two sentences, and
  each bullet line is a sentence.
* **paragraphs**: the text is cut at blank lines (lines holding only whitespace); empty pieces are
  dropped.
* **bullets**: lines that start (after indentation) with ``-`` or ``*`` and then whitespace and
  text. Numbered lists do not count; ``*highlight*`` at the start of a line is not a bullet.
* **word / phrase matching** (include_word, forbid_word, keyword_frequency) ignores case, treats
  ’ as ', lets any run of whitespace stand for a space in the phrase, and needs whole words: "cat"
  does not match "cats" or "concat".
* **highlights**: ``*text*`` or ``**text**`` on one line, the text not starting or ending in
  whitespace (so a ``* bullet`` marker is not the start of one).
* **starts_with / ends_with** compare exactly, case included.

An instruction set is JSONL, one row per prompt: ``{"id": str, "prompt": str, "constraints":
[...]}``; other keys are kept. The prompt text states every constraint in plain words; ``describe``
gives the sentence we use for each in reports.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlaif.errors import RlaifError

WORD_RE = re.compile(r"\b\w+(?:['’-]\w+)*\b")
_SENTENCE_END_RE = re.compile(r"[.!?]+['\"’”)\]]*(?=\s|$)|\n")
_PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t]*\n")
_BULLET_RE = re.compile(r"^[ \t]*[-*][ \t]+\S", re.MULTILINE)
_TITLE_RE = re.compile(r"<<([^<>\n]+)>>")
_HIGHLIGHT_RE = re.compile(r"\*\*?([^\s*][^\n*]*?)(?<!\s)\*\*?")
_FENCE_RE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.IGNORECASE)
_POSTSCRIPT_RE = re.compile(r"^[ \t]*P\.S\.", re.MULTILINE)


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END_RE.split(text) if re.search(r"\w", s)]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK_RE.split(text) if p.strip()]


def _phrase_count(text: str, phrase: str) -> int:
    tokens = phrase.replace("’", "'").split()
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(t) for t in tokens) + r"(?!\w)"
    return len(re.findall(pattern, text.replace("’", "'"), re.IGNORECASE))


def _compare(count: int, relation: str, n: int) -> bool:
    return {"at_most": count <= n, "at_least": count >= n, "exactly": count == n}[relation]


def _is_json(text: str) -> bool:
    text = text.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return isinstance(json.loads(text), (dict, list))
    except json.JSONDecodeError:
        return False


def _is_quoted(text: str) -> bool:
    text = text.strip()
    return len(text) >= 2 and (text[0], text[-1]) in {('"', '"'), ("“", "”")}


def _has_postscript(text: str) -> bool:
    match = _POSTSCRIPT_RE.search(text)
    return bool(match) and bool(re.search(r"\w", text[: match.start()]))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _relation(relation: str) -> str:
    return relation.replace("_", " ")


def _word_or_phrase(word: str) -> str:
    return "phrase" if len(word.split()) > 1 else "word"


@dataclass(frozen=True)
class Checker:
    """One constraint type: its parameter names, the test, and the sentence that states it."""

    params: tuple[str, ...]
    check: Callable[..., bool]  # check(response, **params)
    describe: Callable[..., str]  # describe(**params)
    relations: tuple[str, ...] = ()  # the allowed values of ``relation``, when it is a parameter


CHECKERS: dict[str, Checker] = {
    "word_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: _compare(len(words(r)), relation, n),
        lambda relation, n: f"Answer in {_relation(relation)} {_plural(n, 'word')}.",
        ("at_most", "at_least"),
    ),
    "sentence_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: _compare(len(sentences(r)), relation, n),
        lambda relation, n: f"Answer in {_relation(relation)} {_plural(n, 'sentence')}.",
        ("at_most", "at_least"),
    ),
    "bullet_count": Checker(
        ("n",),
        lambda r, n: len(_BULLET_RE.findall(r)) == n,
        lambda n: f"Use exactly {_plural(n, 'markdown bullet point')} (lines starting with '-' or '*').",
    ),
    "paragraph_count": Checker(
        ("relation", "n"),
        lambda r, relation, n: _compare(len(paragraphs(r)), relation, n),
        lambda relation, n: f"Write {_relation(relation)} {_plural(n, 'paragraph')}, separated by blank lines.",
        ("exactly", "at_least"),
    ),
    "include_word": Checker(
        ("word",),
        lambda r, word: _phrase_count(r, word) > 0,
        lambda word: f'Include the {_word_or_phrase(word)} "{word}".',
    ),
    "forbid_word": Checker(
        ("word",),
        lambda r, word: _phrase_count(r, word) == 0,
        lambda word: f'Do not use the {_word_or_phrase(word)} "{word}".',
    ),
    "keyword_frequency": Checker(
        ("word", "n"),
        lambda r, word, n: _phrase_count(r, word) >= n,
        lambda word, n: f'Use the {_word_or_phrase(word)} "{word}" at least {_plural(n, "time")}.',
    ),
    "lowercase": Checker((), lambda r: r.islower(), lambda: "Write the whole answer in lowercase letters."),
    "uppercase": Checker((), lambda r: r.isupper(), lambda: "Write the whole answer in capital letters."),
    "json": Checker(
        (), _is_json, lambda: "Answer with valid JSON only, an object or a list (a ```json fence is allowed)."
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
    "no_commas": Checker((), lambda r: "," not in r, lambda: "Do not use any commas."),
    "quoted": Checker((), _is_quoted, lambda: "Wrap your whole answer in double quotation marks."),
    "title": Checker(
        (),
        lambda r: any(t.strip() for t in _TITLE_RE.findall(r)),
        lambda: "Include a title wrapped in double angle brackets, like <<title>>.",
    ),
    "highlight_count": Checker(
        ("n",),
        lambda r, n: len(_HIGHLIGHT_RE.findall(r)) >= n,
        lambda n: f"Highlight at least {_plural(n, 'section')} with asterisks, like *this*.",
    ),
    "postscript": Checker((), _has_postscript, lambda: 'End with a postscript starting with "P.S.".'),
}


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
        value = c[name]
        if name == "n" and (type(value) is not int or value < 1):
            raise RlaifError(f"{where}: constraint {kind!r} parameter 'n' must be a positive integer, got {value!r}")
        if name == "relation" and value not in checker.relations:
            allowed = " or ".join(checker.relations)
            raise RlaifError(f"{where}: constraint {kind!r} parameter 'relation' must be {allowed}, got {value!r}")
        if name in ("word", "phrase") and (not isinstance(value, str) or not value.strip()):
            raise RlaifError(f"{where}: constraint {kind!r} parameter '{name}' must be a non-empty string")
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
