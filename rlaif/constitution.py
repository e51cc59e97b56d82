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

    def render(self, principle: str, prompt: str, answer_a: str, answer_b: str) -> list[dict]:
        """Chat messages for one comparison."""
        user = self.template.format(principle=principle, prompt=prompt, answer_a=answer_a, answer_b=answer_b)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": user}]

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
    known = {"name", "version", "system", "template", "labels", "answer_prefix", "principles"}
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
    )
