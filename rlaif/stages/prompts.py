"""Stage 1, prompts: load a prompt source, clean it, split off held-out prompts, pick a round's share.

Sources: the bundled set (``rlaif/data/prompts.jsonl``, with a fixed held-out split), a local
JSONL/CSV/parquet file with a column mapping, or a ``datasets`` hub dataset. Prompts are
deduplicated (case and whitespace folded); empty ones and ones longer than the context budget are
skipped and counted, never a crash. Held-out prompts are never drawn for training. With
``prompts.reference_column`` each prompt also keeps its human-written reference answer as
``reference`` (when the row has a non-empty one), for the pair builder's anchor pairs.
"""

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rlaif import chat
from rlaif.config import PromptsConfig
from rlaif.errors import RlaifError
from rlaif.run import RunContext
from rlaif.rundir import write_jsonl
from rlaif.stages.constraints import add_constraints


@dataclass
class PromptPool:
    train: list[dict]  # {"id", "prompt"} (+ "reference" with prompts.reference_column)
    heldout: list[dict]
    counts: dict[str, int] = field(default_factory=dict)


def _json_row(path: Path, where: str, text: str) -> Any:
    """One JSON value; a lone surrogate escape (``"\\ud800"``), which no UTF-8 file can hold, is refused here."""
    try:
        row = json.loads(text)
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise RlaifError(f"{path}: {where} is not valid JSON ({exc.msg})") from None
    except UnicodeEncodeError:
        raise RlaifError(f"{path}: {where} holds a lone surrogate escape (e.g. \\ud800), which is not text; "
                         "fix or remove it") from None
    return row


def _csv_rows(path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
    rows, where, sep = [], [], "a tab" if delimiter == "\t" else "a comma"
    # the csv module refuses fields over 131,072 characters; no field can be longer than the file
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), path.stat().st_size + 1))
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            try:
                for row in reader:
                    if None in row:  # DictReader's key for the fields beyond the header
                        raise RlaifError(
                            f"{path}: line {reader.line_num} has {len(row) - 1 + len(row[None])} fields but the header "
                            f"has {len(reader.fieldnames)}; quote fields that contain {sep}"
                        )
                    rows.append(row)
                    where.append(f"line {reader.line_num}")
            except csv.Error as exc:
                raise RlaifError(f"{path}: line {reader.line_num} is not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(old_limit)
    return rows, where


def _read_rows(path: Path) -> tuple[list[Any], list[str]]:
    """The file's rows, and where each one is in the file ("line 3", "row 3") for error messages."""
    if not path.is_file():
        raise RlaifError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    try:  # utf-8-sig: a UTF-8 byte order mark (spreadsheets write one) is accepted and dropped
        if suffix in (".jsonl", ".ndjson"):
            rows, where = [], []
            with open(path, encoding="utf-8-sig") as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        rows.append(_json_row(path, f"line {i}", line))
                        where.append(f"line {i}")
            return rows, where
        if suffix == ".json":
            data = _json_row(path, "the file", path.read_text(encoding="utf-8-sig"))
            if not isinstance(data, list):
                raise RlaifError(f"{path}: a .json prompt file must hold a list of rows")
            return data, [f"row {i}" for i in range(1, len(data) + 1)]
        if suffix in (".csv", ".tsv"):
            return _csv_rows(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            import pyarrow  # here, not at the top: importing it costs 0.3-0.4 s, and only parquet sources need it
            import pyarrow.parquet as pq

            try:
                rows = pq.read_table(path).to_pylist()
            except (pyarrow.ArrowException, OSError) as exc:
                raise RlaifError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
            return rows, [f"row {i}" for i in range(1, len(rows) + 1)]
    except UnicodeDecodeError:
        raise RlaifError(f"{path}: not a UTF-8 text file") from None
    raise RlaifError(f"{path}: unsupported prompt file type '{suffix}' (use .jsonl, .json, .csv, .tsv or .parquet)")


def _hub_rows(cfg: PromptsConfig) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.path, cfg.hub_config, split=cfg.hub_split)
    except Exception as exc:  # noqa: BLE001 (datasets raises many types for "not reachable / not found")
        raise RlaifError(f"could not load hub dataset {cfg.path!r}: {str(exc).splitlines()[0]}") from None
    return list(ds)


def get_path(row: Any, dotted: str) -> Any:
    """``row['instances'][0]['input']`` for ``instances.0.input``; KeyError when absent."""
    value = row
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(dotted)
    return value


def _has_path(row: Any, dotted: str) -> bool:
    try:
        get_path(row, dotted)
    except KeyError:
        return False
    return True


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _prompt_id(text: str) -> str:
    return "h" + hashlib.sha1(normalise(text).encode()).hexdigest()[:12]


def _is_heldout(text: str, fraction: float) -> bool:
    digest = hashlib.sha256(("heldout:" + normalise(text)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)[:40]


def _text_at(row: Any, dotted: str, origin: str, where: str) -> str | None:
    """The stripped text at ``dotted`` in the row, or None when it is missing or empty; an error when it is not text."""
    try:
        value = get_path(row, dotted)
    except KeyError:
        return None
    if value is None:
        return None
    if not isinstance(value, str):
        raise RlaifError(f"{origin}: {where}: '{dotted}' is not text (got {type(value).__name__}: {_show(value)}); "
                         "fix the row or set the prompts column")
    return value.strip() or None


def load_pool(cfg: PromptsConfig) -> PromptPool:
    """All usable prompts of the source, split into train and held-out, with counts of what was skipped."""
    if cfg.source == "bundled":
        text = resources.files("rlaif.data").joinpath("prompts.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        where = [f"line {i}" for i in range(1, len(rows) + 1)]
        column, input_column, origin = "prompt", None, "the bundled prompt set"
    else:
        if cfg.source == "hub":
            rows = _hub_rows(cfg)
            where = [f"row {i}" for i in range(1, len(rows) + 1)]
        else:
            rows, where = _read_rows(Path(cfg.path).expanduser())
        column, input_column, origin = cfg.column, cfg.input_column, str(cfg.path)
    if not rows:
        raise RlaifError(f"the prompt set is empty: {origin} has no rows")
    for row, at in zip(rows, where):
        if not isinstance(row, dict):
            raise RlaifError(f"{origin}: {at} is not an object (got {type(row).__name__}: {_show(row)}); "
                             f"every row must be an object with a '{column}' field")
    first = rows[0]
    keys = ", ".join(first) if isinstance(first, dict) else type(first).__name__
    if not _has_path(first, column):
        raise RlaifError(f"{origin}: no column '{column}' (columns: {keys}); set prompts.column")
    reference_column = cfg.reference_column
    if reference_column and not any(_has_path(row, reference_column) for row in rows):
        raise RlaifError(
            f"{origin}: no row has the reference column '{reference_column}' (columns: {keys}); "
            "set prompts.reference_column"
        )

    counts = {"rows": len(rows), "empty": 0, "duplicates": 0}
    if reference_column:
        counts["no_reference"] = 0
    seen: set[str] = set()
    train, heldout = [], []
    for row, at in zip(rows, where):
        prompt = _text_at(row, column, origin, at)
        if prompt is None:
            counts["empty"] += 1
            continue
        extra = _text_at(row, input_column, origin, at) if input_column else None
        if extra is not None:
            prompt = f"{prompt}\n\n{extra}"
        key = normalise(prompt)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        if cfg.source == "bundled":
            item, is_heldout = {"id": row["id"], "prompt": prompt}, row.get("split") == "heldout"
        else:
            item, is_heldout = {"id": _prompt_id(prompt), "prompt": prompt}, _is_heldout(prompt, cfg.heldout_fraction)
        if reference_column:
            reference = _text_at(row, reference_column, origin, at)
            if reference is not None:
                item["reference"] = reference
            else:
                counts["no_reference"] += 1
        (heldout if is_heldout else train).append(item)
    counts.update(train=len(train), heldout=len(heldout))
    if not train:
        raise RlaifError(f"the prompt set is empty: {origin} has no usable training prompts ({counts})")
    return PromptPool(train=train, heldout=heldout, counts=counts)


def prompt_token_count(tokenizer, prompt: str) -> int:
    return len(chat.prompt_ids(tokenizer, prompt))  # as generation tokenises it


def select_round(pool: PromptPool, tokenizer, round_n: int, per_round: int, max_tokens: int, seed: int):
    """The round's prompts: a seeded permutation of the fitting train prompts, sliced by round.

    Rounds draw without replacement until the pool is used up, then start a fresh permutation.
    Returns (prompts, counts).
    """
    fitting = [p for p in pool.train if prompt_token_count(tokenizer, p["prompt"]) <= max_tokens]
    counts = {**pool.counts, "too_long": len(pool.train) - len(fitting)}
    if not fitting:
        raise RlaifError(
            f"the prompt set is empty: all {len(pool.train)} training prompts are longer than "
            f"prompts.max_prompt_tokens={max_tokens}"
        )
    n = min(per_round, len(fitting))
    chosen, start = [], (round_n - 1) * n
    while len(chosen) < n:
        epoch, offset = divmod(start + len(chosen), len(fitting))
        order = list(range(len(fitting)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        chosen.append(fitting[order[offset]])
    counts["selected"] = len(chosen)
    return chosen, counts


def run(ctx: RunContext, n: int) -> dict:
    """The prompts stage: draw round n's training prompts (never a held-out one)."""
    cfg = ctx.recipe.prompts
    chosen, counts = select_round(load_pool(cfg), ctx.tokenizer, n, cfg.per_round, cfg.max_prompt_tokens,
                                  ctx.recipe.run.seed)
    if cfg.constraint_share > 0:  # only the round's training prompts: held-out and evaluation prompts never get here
        chosen = add_constraints(chosen, cfg.constraint_settings(), ctx.recipe.run.seed, n)
        counts["with_constraints"] = sum(1 for p in chosen if p.get("constraints"))
    write_jsonl(ctx.run.path(n, "prompts.jsonl"), chosen)
    return counts
