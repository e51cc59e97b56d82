"""The constitution is data: principles plus the judge's prompt template, in a YAML file.

``default`` names the one shipped in ``rlaif/data/constitution.yaml``. Loading checks the file's
shape (principles, template placeholders, two labels) and names the file and the problem.
"""

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from rlaif.errors import RlaifError

PLACEHOLDERS = {"principle", "prompt", "answer_a", "answer_b"}
POINTWISE_PLACEHOLDERS = {"prompt", "answer"}
EXAMPLE_PLACEHOLDERS = {"prompt", "answer", "score"}


@dataclass(frozen=True)
class Example:
    """A graded example for the rubric's few-shot head (``judge.few_shot``): a request, an answer, its score."""

    prompt: str
    answer: str
    score: str


@dataclass(frozen=True)
class Rubric:
    """Pointwise scoring (``judge.mode: pointwise``): a template for one answer and its score labels."""

    template: str
    labels: tuple[str, ...]  # each one token; its value is the number it spells
    answer_prefix: str
    alternates: tuple[str, ...] = ()  # other wordings of the template, same labels (``judge.rubrics``)
    examples: tuple[Example, ...] = ()  # graded examples (``judge.few_shot``), shown at ``{examples}``
    example_template: str = ""  # one example's text: {prompt} {answer} {score}
    content_free: str = "N/A"  # the answer scored for contextual calibration (``judge.calibrate``)

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.labels)

    @property
    def templates(self) -> tuple[str, ...]:
        return (self.template, *self.alternates)

    def examples_text(self, n: int) -> str:
        """The first ``n`` graded examples as they fill ``{examples}`` ("" for none)."""
        return "".join(self.example_template.format(prompt=e.prompt, answer=e.answer, score=e.score)
                       for e in self.examples[:n])


@dataclass(frozen=True)
class Critique:
    """``judge.critique: true``: ask for a short written critique, then read the verdict after it."""

    instruction: str  # appended to the user message
    pairwise_prefix: str  # written after the critique, before the label (pairwise)
    pointwise_prefix: str  # written after the critique, before the score (pointwise)


@dataclass(frozen=True)
class Principle:
    id: str
    text: str


@dataclass(frozen=True)
class Constitution:
    name: str
    system: str
    template: str
    labels: tuple[str, str]
    answer_prefix: str
    principles: tuple[Principle, ...]
    source: str
    pointwise: Rubric | None = None
    critique: Critique | None = None

    def render(self, principle: str, prompt: str, answer_a: str, answer_b: str, critique: bool = False) -> list[dict]:
        """Chat messages for one comparison."""
        user = self.template.format(principle=principle, prompt=prompt, answer_a=answer_a, answer_b=answer_b)
        return self._messages(user, critique)

    def render_pointwise(self, prompt: str, answer: str, critique: bool = False, rubric: int = 0,
                         examples: int = 0) -> list[dict]:
        """Chat messages that ask for one answer's rubric score: wording ``rubric`` (0 = ``template``, then
        the ``alternates``), with the first ``examples`` graded examples at ``{examples}``."""
        r = self.require("pointwise")
        user = r.templates[rubric].format(prompt=prompt, answer=answer, examples=r.examples_text(examples))
        return self._messages(user, critique)

    def _messages(self, user: str, critique: bool) -> list[dict]:
        if critique:
            user = user + "\n\n" + self.require("critique").instruction
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": user}]

    def require(self, section: str):
        value = getattr(self, section)
        if value is None:
            need = "judge.mode: pointwise" if section == "pointwise" else "judge.critique: true"
            raise RlaifError(f"constitution {self.source}: {need} needs a '{section}' section (see the default constitution)")
        return value

    def all_principles_text(self) -> str:
        return " ".join(p.text for p in self.principles)


def load_constitution(name_or_path: str) -> Constitution:
    if name_or_path == "default":
        text, source = resources.files("rlaif.data").joinpath("constitution.yaml").read_text(encoding="utf-8"), "default"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise RlaifError(f"constitution not found: {path}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RlaifError(f"constitution {source}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    return constitution_from_dict(raw, source)


def constitution_from_dict(raw, source: str = "<constitution>") -> Constitution:
    def bad(msg):
        return RlaifError(f"constitution {source}: {msg}")

    if not isinstance(raw, dict):
        raise bad("must be a mapping with principles, template and labels")
    known = {"name", "version", "system", "template", "labels", "answer_prefix", "principles", "pointwise", "critique"}
    for key in raw:
        if key not in known:
            raise bad(f"unknown key '{key}' (known: {', '.join(sorted(known))})")
    template = raw.get("template")
    if not isinstance(template, str) or not template.strip():
        raise bad("'template' must be a non-empty string")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise bad(f"'template' is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from None
    if fields != PLACEHOLDERS:
        missing, extra = PLACEHOLDERS - fields, fields - PLACEHOLDERS
        raise bad(
            "'template' must use exactly {principle} {prompt} {answer_a} {answer_b}"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unknown {sorted(extra)}" if extra else "")
        )
    labels = raw.get("labels", ["A", "B"])
    if not (isinstance(labels, list) and len(labels) == 2 and all(isinstance(x, str) and x for x in labels)):
        raise bad("'labels' must be a list of two non-empty strings, e.g. [A, B]")
    if labels[0] == labels[1]:
        raise bad("the two labels must differ")
    principles = raw.get("principles")
    if not isinstance(principles, list) or not principles:
        raise bad("'principles' must be a non-empty list of {id, text}")
    parsed, ids = [], set()
    for i, p in enumerate(principles):
        if isinstance(p, str):
            p = {"id": f"p{i + 1}", "text": p}
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or not p["text"].strip():
            raise bad(f"principle {i + 1} needs a non-empty 'text'")
        pid = str(p.get("id", f"p{i + 1}"))
        if pid in ids:
            raise bad(f"duplicate principle id '{pid}'")
        ids.add(pid)
        parsed.append(Principle(pid, p["text"].strip()))
    system = raw.get("system", "")
    prefix = raw.get("answer_prefix", "")
    if not isinstance(system, str) or not isinstance(prefix, str):
        raise bad("'system' and 'answer_prefix' must be strings")
    return Constitution(
        name=str(raw.get("name", source)),
        system=system.strip(),
        template=template,
        labels=(labels[0], labels[1]),
        answer_prefix=prefix,
        principles=tuple(parsed),
        source=source,
        pointwise=_rubric(raw.get("pointwise"), bad),
        critique=_critique(raw.get("critique"), bad),
    )


def _template_fields(template, where: str, bad) -> set[str]:
    if not isinstance(template, str) or not template.strip():
        raise bad(f"'{where}' must be a non-empty string")
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise bad(f"'{where}' is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from None


def _rubric(raw, bad) -> Rubric | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad("'pointwise' must be a mapping with template, labels and answer_prefix")
    known = ("alternates", "answer_prefix", "content_free", "example_template", "examples", "labels", "template")
    for key in raw:
        if key not in known:
            raise bad(f"unknown key 'pointwise.{key}' (known: {', '.join(known)})")
    alternates = raw.get("alternates", [])
    if not isinstance(alternates, list):
        raise bad("'pointwise.alternates' must be a list of templates")
    for where, template in [("pointwise.template", raw.get("template"))] + [
            (f"pointwise.alternates[{i}]", t) for i, t in enumerate(alternates)]:
        fields = _template_fields(template, where, bad)
        if fields - {"examples"} != POINTWISE_PLACEHOLDERS:
            raise bad(f"'{where}' must use exactly {{prompt}} {{answer}} (and optionally {{examples}}), found {sorted(fields)}")
    labels = raw.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, (str, int)) for x in labels)):
        raise bad("'pointwise.labels' must be a list of at least two score labels, e.g. ['1', '2', '3', '4', '5']")
    labels = [str(x) for x in labels]
    try:
        values = [float(x) for x in labels]
    except ValueError:
        raise bad(f"'pointwise.labels' must spell numbers (their values are the scores), got {labels}") from None
    if len(set(values)) != len(values):
        raise bad(f"'pointwise.labels' must be distinct, got {labels}")
    prefix = raw.get("answer_prefix", "")
    if not isinstance(prefix, str):
        raise bad("'pointwise.answer_prefix' must be a string")
    examples = raw.get("examples", [])
    if not isinstance(examples, list) or not all(
            isinstance(e, dict) and set(e) == EXAMPLE_PLACEHOLDERS and all(isinstance(v, (str, int)) for v in e.values())
            for e in examples):
        raise bad("'pointwise.examples' must be a list of {prompt, answer, score}")
    parsed = tuple(Example(str(e["prompt"]), str(e["answer"]), str(e["score"])) for e in examples)
    example_template = raw.get("example_template", "")
    if examples and _template_fields(example_template, "pointwise.example_template", bad) != EXAMPLE_PLACEHOLDERS:
        raise bad("'pointwise.example_template' must use exactly {prompt} {answer} {score}")
    content_free = raw.get("content_free", "N/A")
    if not isinstance(content_free, str):
        raise bad("'pointwise.content_free' must be a string")
    return Rubric(raw["template"], tuple(labels), prefix, tuple(alternates), parsed, example_template, content_free)


def _critique(raw, bad) -> Critique | None:
    if raw is None:
        return None
    keys = ("instruction", "pairwise_prefix", "pointwise_prefix")
    if not isinstance(raw, dict):
        raise bad("'critique' must be a mapping with " + ", ".join(keys))
    for key in raw:
        if key not in keys:
            raise bad(f"unknown key 'critique.{key}' (known: {', '.join(keys)})")
    for key in keys:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise bad(f"'critique.{key}' must be a non-empty string")
    return Critique(raw["instruction"].strip(), raw["pairwise_prefix"], raw["pointwise_prefix"])
