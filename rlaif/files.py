"""Files that survive a kill or a power cut: atomic writes, digests, and reads that fail in one line.

Every file is written to a temporary name and renamed into place (the file and then its folder are
fsynced, so a commit survives power loss). Temporary names carry rlaif's own mark (``.rlaif-tmp-``),
and only those are ever cleaned up: rlaif deletes nothing it did not make.
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError

# every temporary name rlaif makes contains this mark, and clean_tmp deletes nothing else
TMP_MARK = ".rlaif-tmp-"


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
