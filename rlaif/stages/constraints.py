"""Training prompts that carry checkable constraints: a seeded generator, written for rlaif.

Follows Tülu 3's verifiable-instruction data (Lambert et al. 2024, "Tülu 3": prompts with
IFEval-style constraints, rewarded by a program that checks them) in adding constraints a checker
can verify to ordinary training prompts, so the verifier (:mod:`rlaif.judging.verifier`) has
something to decide. Where we deviate, and why:

- The constraints come from rlaif's own checker registry (:mod:`rlaif.evaluation.checks`) and are
  stated with its ``describe`` sentences, appended after a blank line ("Answer in at most 40 words.
  Do not use any commas."), so every added constraint is checkable exactly as it is worded.
- By default only types that the bundled 135M model meets *sometimes* are drawn (``DEFAULT_TYPES``,
  measured by ``benchmarks/constraint_rates.py``), with parameters it can reach in a short answer: a
  constraint that is always or never met gives every candidate the same share and teaches nothing.
- A prompt never gets two constraints that cannot both hold, or that pull the same part of the
  answer two ways (``conflicts``): never "all lowercase" with "all capital letters", "no commas" with a
  phrase that holds a comma, "start with X" with "repeat the request first", and so on.
- ``choice`` is never drawn: it needs a question whose possible answers are known.

Which prompts get constraints: exactly ``round(share × n)`` of the round's prompts (halves round
up), those with the smallest hash of (seed, round, id); what each gets depends only on (seed, round,
id), so a resumed or redone stage writes the same prompts. The generator reads only the rows it is
given: the prompts stage passes the round's training selection, never the held-out split or the
evaluation instruction set (rows that already carry ``constraints`` are refused).
"""

import hashlib
import math
import random
from collections.abc import Callable, Mapping

from rlaif.errors import RlaifError
from rlaif.evaluation.checks import describe, validate_constraint, words
from rlaif.evaluation.checks_types import phrase_count

_OPENINGS = ("Here is my answer:", "Sure thing!", "Good question!", "In short,")
_ENDINGS = ("Hope this helps!", "That is all.", "Thanks for asking!", "Have a nice day!")
_INCLUDE_FALLBACK = ("because", "simple", "example", "today", "important")
_FORBID_FALLBACK = ("very", "really", "just", "thing", "things")
_STOPWORDS = frozenset({
    "about", "above", "after", "again", "against", "also", "among", "another", "because", "before", "being",
    "below", "between", "both", "could", "does", "doing", "during", "each", "every", "first", "from", "have",
    "having", "here", "into", "itself", "just", "like", "more", "most", "much", "must", "never", "other",
    "over", "same", "should", "since", "some", "such", "than", "that", "their", "them", "then", "there",
    "these", "they", "thing", "things", "this", "those", "through", "under", "until", "very", "what", "when",
    "where", "which", "while", "with", "within", "without", "would", "your", "yours", "write", "describe",
    "explain", "give", "tell", "list", "short", "please", "answer",
})


def _content_words(text: str) -> list[str]:
    """Distinct lower-case words of 5+ letters that are not common function words, in order of use."""
    seen: dict[str, None] = {}
    for w in words(text):
        low = w.lower()
        if len(low) >= 5 and low.isalpha() and low not in _STOPWORDS:
            seen.setdefault(low)
    return list(seen)


def _word_from(rng: random.Random, text: str, fallback: tuple[str, ...]) -> str:
    return rng.choice(_content_words(text) or list(fallback))


def _repeat_request(rng: random.Random, text: str) -> dict | None:
    # only short one-line requests: repeating a long passage costs the answer its token budget
    if "\n" in text.strip() or len(words(text)) > 25:
        return None
    return {"type": "repeat_request", "request": text.strip()}


Maker = Callable[[random.Random, str], dict | None]

MAKERS: dict[str, Maker] = {
    "word_count": lambda rng, t: {"type": "word_count", "relation": "at_most", "n": rng.choice((25, 30, 40, 50, 60))},
    "sentence_count": lambda rng, t: {"type": "sentence_count", "relation": "at_most", "n": rng.choice((1, 2, 3))},
    "char_count": lambda rng, t: {"type": "char_count", "relation": "at_most", "n": rng.choice((150, 200, 250, 300))},
    "paragraph_count": lambda rng, t: {"type": "paragraph_count", "relation": rng.choice(("exactly", "at_least")),
                                       "n": 2},
    "separated_paragraphs": lambda rng, t: {"type": "separated_paragraphs", "separator": "***", "n": 2},
    "section_count": lambda rng, t: {"type": "section_count", "marker": "SECTION", "n": 2},
    "bullet_count": lambda rng, t: {"type": "bullet_count", "n": rng.choice((2, 3, 4))},
    "numbered_count": lambda rng, t: {"type": "numbered_count", "n": rng.choice((2, 3, 4))},
    "heading_count": lambda rng, t: {"type": "heading_count", "n": 1},
    "title": lambda rng, t: {"type": "title"},
    "highlight_count": lambda rng, t: {"type": "highlight_count", "n": rng.choice((1, 2))},
    "placeholder_count": lambda rng, t: {"type": "placeholder_count", "n": rng.choice((1, 2))},
    "include_word": lambda rng, t: {"type": "include_word", "word": _word_from(rng, t, _INCLUDE_FALLBACK)},
    "forbid_word": lambda rng, t: {"type": "forbid_word", "word": _word_from(rng, t, _FORBID_FALLBACK)},
    "keyword_frequency": lambda rng, t: {"type": "keyword_frequency", "word": _word_from(rng, t, _INCLUDE_FALLBACK),
                                         "n": 2},
    "letter_frequency": lambda rng, t: {"type": "letter_frequency", "letter": rng.choice("aeost"),
                                        "relation": "at_least", "n": rng.choice((8, 10, 12))},
    "lowercase": lambda rng, t: {"type": "lowercase"},
    "uppercase": lambda rng, t: {"type": "uppercase"},
    "capital_word_frequency": lambda rng, t: {"type": "capital_word_frequency", "relation": "at_least",
                                              "n": rng.choice((1, 2))},
    "starts_with": lambda rng, t: {"type": "starts_with", "phrase": rng.choice(_OPENINGS)},
    "ends_with": lambda rng, t: {"type": "ends_with", "phrase": rng.choice(_ENDINGS)},
    "repeat_request": _repeat_request,
    "postscript": lambda rng, t: {"type": "postscript"},
    "quoted": lambda rng, t: {"type": "quoted"},
    "no_commas": lambda rng, t: {"type": "no_commas"},
    "json": lambda rng, t: {"type": "json"},
}

# Types the bundled SmolLM2-135M-Instruct meets on some answers but not all, so the verifier can tell
# its candidates apart. Measured by benchmarks/constraint_rates.py (base model, 8 training prompts x 2
# samples per type, 96 new tokens; results in benchmarks/constraint_rates_smollm2.json): every type
# met by >= 10% of answers with samples that disagree on some prompt, plus word_count (met by 62%;
# its 8 prompts each went one way). Left out, never or almost never met: bullet_count, lowercase,
# uppercase, quoted, starts_with, repeat_request (0/16), ends_with, heading_count, separated_paragraphs
# (1/16); json and section_count (2/16, never both ways on one prompt); include_word (14/16).
DEFAULT_TYPES = (
    "capital_word_frequency", "char_count", "forbid_word", "highlight_count", "keyword_frequency",
    "letter_frequency", "no_commas", "numbered_count", "paragraph_count", "placeholder_count", "postscript",
    "sentence_count", "title", "word_count",
)

# ------------------------------------------------------------------ compatibility

# Types that fix the whole shape of the answer, with the types that can still hold next to them.
_FREE = frozenset({"word_count", "char_count", "include_word", "forbid_word", "keyword_frequency",
                   "letter_frequency", "lowercase", "uppercase", "capital_word_frequency"})
_ALONGSIDE = {
    "json": _FREE,
    "quoted": _FREE | {"sentence_count", "no_commas", "highlight_count", "placeholder_count"},
    "choice": frozenset({"lowercase"}),
}
# Pairs that cannot both hold, or that claim the same part of the answer.
_PAIRS = {frozenset(p) for p in (
    ("lowercase", "uppercase"), ("lowercase", "capital_word_frequency"), ("uppercase", "capital_word_frequency"),
    ("starts_with", "repeat_request"), ("ends_with", "postscript"),
    ("paragraph_count", "separated_paragraphs"),
)}
# Line structures that each add sentences: they clash with "at most n sentences".
_LINE_STRUCTURES = frozenset({"bullet_count", "numbered_count", "section_count", "heading_count",
                              "separated_paragraphs", "paragraph_count", "postscript", "title", "repeat_request"})
_FIXED_TEXT = {"postscript": "P.S."}  # text a type forces into the answer


def _forced_text(c: dict) -> list[str]:
    """The exact text a constraint puts into the answer (phrases, the request, section markers)."""
    out = [c[k] for k in ("phrase", "request", "marker") if k in c]
    return out + ([_FIXED_TEXT[c["type"]]] if c["type"] in _FIXED_TEXT else [])


def _one_way_conflict(a: dict, b: dict) -> bool:
    ta, tb = a["type"], b["type"]
    if ta in _ALONGSIDE and tb not in _ALONGSIDE[ta]:
        return True
    if ta == "sentence_count" and a["relation"] == "at_most" and tb in _LINE_STRUCTURES:
        return True
    forced = _forced_text(b)
    if ta == "lowercase" and any(ch.isupper() for s in forced for ch in s):
        return True
    if ta == "uppercase" and any(ch.islower() for s in forced for ch in s):
        return True
    if ta == "no_commas" and any("," in s for s in forced):
        return True
    if ta == "forbid_word":
        said = forced + [b["word"]] if tb in ("include_word", "keyword_frequency") else forced
        if any(phrase_count(s, a["word"]) for s in said):
            return True
    if ta == "word_count" and tb == "char_count":
        # two limits from the same side compete; c characters hold at most (c + 1) / 2 words ("a a a")
        return a["relation"] == b["relation"] or (b["relation"] == "at_most" and b["n"] < 2 * a["n"] - 1)
    if ta in ("word_count", "char_count") and a["relation"] == "at_most" and tb == "repeat_request":
        used = len(words(b["request"])) if ta == "word_count" else len(b["request"])
        return used > a["n"] / 2
    return False


def conflicts(a: dict, b: dict) -> bool:
    """Whether two constraints may not be given together (same type, contradictory, or competing)."""
    if a["type"] == b["type"] or frozenset((a["type"], b["type"])) in _PAIRS:
        return True
    return _one_way_conflict(a, b) or _one_way_conflict(b, a)


# ------------------------------------------------------------------ the generator


def _get(cfg, key: str, default):
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if value is None else value


def _settings(cfg) -> tuple[float, int, int, tuple[str, ...]]:
    """(share, min per prompt, max per prompt, types), checked; errors name ``prompts.constraints.<key>``."""
    where = "prompts.constraints"
    share = _get(cfg, "share", 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise RlaifError(f"{where}.share must be a number from 0 to 1, got {share!r}")
    per = _get(cfg, "per_prompt", (1, 2))
    pair = (per, per) if isinstance(per, int) else tuple(per) if isinstance(per, (list, tuple)) else ()
    ok = len(pair) == 2 and all(type(x) is int for x in pair) and 1 <= pair[0] <= pair[1]
    if not ok:
        raise RlaifError(f"{where}.per_prompt must be a positive integer or [min, max] with 1 <= min <= max, got {per!r}")
    lo, hi = pair
    types = _get(cfg, "types", "default")
    if types == "default":
        types = DEFAULT_TYPES
    elif types == "all":
        types = tuple(MAKERS)
    if isinstance(types, str) or not types:
        raise RlaifError(f"{where}.types must be `default`, `all` or a non-empty list of constraint types")
    unknown = [t for t in types if t not in MAKERS]
    if unknown:
        raise RlaifError(f"{where}.types: {unknown[0]!r} cannot be generated (choose from: {', '.join(sorted(MAKERS))})")
    return float(share), lo, hi, tuple(sorted(set(types)))


def _hash(*parts) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def constrained_ids(ids: list[str], share: float, seed: int, round_n: int) -> set[str]:
    """The ``round(share × n)`` ids (halves round up) with the smallest hash of (seed, round, id)."""
    unique = set(ids)
    n = math.floor(share * len(unique) + 0.5)
    return set(sorted(unique, key=lambda pid: _hash("constraints", seed, round_n, pid))[:n])


def draw_constraints(text: str, types: tuple[str, ...], lo: int, hi: int, rng: random.Random) -> list[dict]:
    """Between ``lo`` and ``hi`` constraints for one prompt, pairwise compatible (fewer if the types run out)."""
    count = rng.randint(lo, hi)
    order = list(types)
    rng.shuffle(order)
    chosen: list[dict] = []
    for kind in order:
        if len(chosen) == count:
            break
        c = MAKERS[kind](rng, text)
        if c is not None and not any(conflicts(c, d) for d in chosen):
            validate_constraint(c, f"generated {kind}")
            chosen.append(c)
    return chosen


def with_instructions(text: str, constraints: list[dict]) -> str:
    """The prompt followed, after a blank line, by each constraint's sentence."""
    return text.rstrip() + "\n\n" + " ".join(describe(c) for c in constraints)


def add_constraints(prompts: list[dict], cfg, seed: int, round_n: int) -> list[dict]:
    """Copies of the round's training prompts; a ``share`` of them gain ``constraints`` and their sentences.

    ``cfg`` (a mapping or an object): ``share`` (0–1, default 0), ``per_prompt`` (an int or
    ``[min, max]``, default ``[1, 2]``), ``types`` (``default``, ``all`` or a list). Every returned
    row has ``constraints`` (empty for prompts left as they were); a constrained row's ``prompt``
    is its text plus the constraint sentences, and ``base_prompt`` keeps the text it had.
    """
    share, lo, hi, types = _settings(cfg)
    for p in prompts:
        if "constraints" in p:
            raise RlaifError(
                f"prompt {p.get('id')!r} already carries constraints: constraints are added to training prompts "
                "only, never to the evaluation instruction set"
            )
    picked = constrained_ids([p["id"] for p in prompts], share, seed, round_n)
    out = []
    for p in prompts:
        row = {**p, "constraints": []}
        if p["id"] in picked:
            rng = random.Random(_hash("constraint-draw", seed, round_n, p["id"]))
            row["constraints"] = draw_constraints(p["prompt"], types, lo, hi, rng)
            if row["constraints"]:
                row["base_prompt"] = p["prompt"]
                row["prompt"] = with_instructions(p["prompt"], row["constraints"])
        out.append(row)
    return out


__all__ = ["DEFAULT_TYPES", "MAKERS", "add_constraints", "conflicts", "constrained_ids", "draw_constraints",
           "with_instructions"]
