"""How the checkers of :mod:`rlaif.evaluation.checks` read a response: text splitting and one test per type.

Written for rlaif (no code from IFEval, whose type list inspired some of these). Every test is a
pure function ``(response, **params) -> bool``; the registry in ``checks.py`` binds each to its
constraint type, its parameters and the sentence that states it. How text is split:

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
* **numbered items**: lines that start (after indentation) with digits, then ``.`` or ``)``, then
  whitespace and text: ``1. eggs`` and ``2) milk`` are items, ``2.5 litres`` is not.
* **headings**: markdown ATX headings, a line starting with one to six ``#`` then whitespace and
  text. ``#hashtag`` and ``####### seven`` are not headings; underlined (setext) headings are not read.
* **sections**: lines that start with the marker and a number (``SECTION 1``), optionally after
  ``#`` heading marks or inside ``**bold**``; the marker's case must match. The numbers must run
  1, 2, … n in order and every section must hold some text; text before the first marker is allowed.
* **separated parts**: the text cut at lines that hold only the separator (say ``***``); every part
  must hold a word, so a separator at the very start or end fails.
* **placeholders**: ``[text]`` with non-blank text on one line, not followed by ``(`` (a markdown
  link ``[text](url)`` is not a placeholder).
* **word / phrase matching** (include_word, forbid_word, keyword_frequency) ignores case, treats
  ’ as ', lets any run of whitespace stand for a space in the phrase, and needs whole words: "cat"
  does not match "cats" or "concat".
* **capital words**: words with at least two letters and no lower-case letter ("NASA", "OK",
  "COVID-19"); "I" and "A" are not counted.
* **letters** (letter_frequency): characters equal to the letter once both are lower-cased; an
  accented letter is another letter ("é" is not "e").
* **characters** (char_count): Unicode code points of the response with outer whitespace removed,
  as Python's ``len`` counts them (an emoji built from several code points counts several).
* **highlights**: ``*text*`` or ``**text**`` on one line, the text not starting or ending in
  whitespace (so a ``* bullet`` marker is not the start of one).
* **starts_with / ends_with** compare exactly, case included, outer whitespace ignored.
* **repeat_request**: the response starts with the request, compared exactly after folding runs of
  whitespace to one space and ’ to ', and some answer (a word) follows it.
* **choice**: the whole response is one of the options, ignoring case, outer whitespace, outer
  ``*`` / ``"`` marks and one final ``.`` or ``!``.
"""

import json
import re

WORD_RE = re.compile(r"\b\w+(?:['’-]\w+)*\b")
_SENTENCE_END_RE = re.compile(r"[.!?]+['\"’”)\]]*(?=\s|$)|\n")
_PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t]*\n")
_BULLET_RE = re.compile(r"^[ \t]*[-*][ \t]+\S", re.MULTILINE)
_NUMBERED_RE = re.compile(r"^[ \t]*\d+[.)][ \t]+\S", re.MULTILINE)
_HEADING_RE = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_TITLE_RE = re.compile(r"<<([^<>\n]+)>>")
_HIGHLIGHT_RE = re.compile(r"\*\*?([^\s*][^\n*]*?)(?<!\s)\*\*?")
_PLACEHOLDER_RE = re.compile(r"\[([^\[\]\n]*\S[^\[\]\n]*)\](?!\()")
_FENCE_RE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.IGNORECASE)
_POSTSCRIPT_RE = re.compile(r"^[ \t]*P\.S\.", re.MULTILINE)
_HAS_WORD_RE = re.compile(r"\w")


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END_RE.split(text) if _HAS_WORD_RE.search(s)]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK_RE.split(text) if p.strip()]


def compare(count: int, relation: str, n: int) -> bool:
    return {"at_most": count <= n, "at_least": count >= n, "exactly": count == n}[relation]


def phrase_count(text: str, phrase: str) -> int:
    """Whole-word, case-insensitive occurrences of ``phrase`` (any whitespace between its words)."""
    tokens = phrase.replace("’", "'").split()
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(t) for t in tokens) + r"(?!\w)"
    return len(re.findall(pattern, text.replace("’", "'"), re.IGNORECASE))


def bullet_count(text: str) -> int:
    return len(_BULLET_RE.findall(text))


def numbered_count(text: str) -> int:
    return len(_NUMBERED_RE.findall(text))


def heading_count(text: str) -> int:
    return len(_HEADING_RE.findall(text))


def highlight_count(text: str) -> int:
    return len(_HIGHLIGHT_RE.findall(text))


def placeholder_count(text: str) -> int:
    return len(_PLACEHOLDER_RE.findall(text))


def has_title(text: str) -> bool:
    return any(t.strip() for t in _TITLE_RE.findall(text))


def is_json(text: str) -> bool:
    text = text.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return isinstance(json.loads(text), (dict, list))
    except json.JSONDecodeError:
        return False


def is_quoted(text: str) -> bool:
    text = text.strip()
    return len(text) >= 2 and (text[0], text[-1]) in {('"', '"'), ("“", "”")}


def has_postscript(text: str) -> bool:
    match = _POSTSCRIPT_RE.search(text)
    return bool(match) and bool(_HAS_WORD_RE.search(text[: match.start()]))


def section_numbers(text: str, marker: str) -> tuple[list[int], list[str]]:
    """The numbers of the section lines, in order, and the text of each section (after its number)."""
    line = re.compile(
        r"^[ \t]*(?:#{1,6}[ \t]+)?(?:\*\*|__)?" + re.escape(marker) + r"[ \t]+(\d+)\b[^\n]*$", re.MULTILINE
    )
    found = list(line.finditer(text))
    numbers = [int(m.group(1)) for m in found]
    bodies = [
        text[m.end(1) : found[k + 1].start() if k + 1 < len(found) else len(text)] for k, m in enumerate(found)
    ]
    return numbers, bodies


def has_sections(text: str, marker: str, n: int) -> bool:
    numbers, bodies = section_numbers(text, marker)
    return numbers == list(range(1, n + 1)) and all(_HAS_WORD_RE.search(b) for b in bodies)


def separated_parts(text: str, separator: str) -> list[str]:
    line = re.compile(r"^[ \t]*" + re.escape(separator) + r"[ \t]*$", re.MULTILINE)
    return line.split(text)


def has_separated_parts(text: str, separator: str, n: int) -> bool:
    parts = separated_parts(text, separator)
    return len(parts) == n and all(_HAS_WORD_RE.search(p) for p in parts)


def capital_word_count(text: str) -> int:
    return sum(1 for w in words(text) if sum(ch.isalpha() for ch in w) >= 2 and w.isupper())


def letter_count(text: str, letter: str) -> int:
    target = letter.lower()
    return sum(1 for ch in text if ch.lower() == target)


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("’", "'")).strip()


def repeats_request(text: str, request: str) -> bool:
    body, head = _fold(text), _fold(request)
    return body.startswith(head) and bool(_HAS_WORD_RE.search(body[len(head) :]))


def _bare_choice(text: str) -> str:
    text = text.strip().strip('*"“”').strip()
    if text[-1:] in (".", "!"):
        text = text[:-1]
    return text.strip().strip('*"“”').strip().casefold()


def is_choice(text: str, options: list[str]) -> bool:
    return _bare_choice(text) in {_bare_choice(o) for o in options}
