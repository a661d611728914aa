"""Small file helpers shared by every job: atomic writes, JSONL, YAML with ${ENV} expansion."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

log = logging.getLogger(__name__)

# The package's bundled files, and the checkout it sits in (configs/, data/seed/: present in a clone
# or an editable install, which is how the demo, the stage YAMLs and the scripts run).
ASSETS = Path(__file__).resolve().parent / "assets"
REPO = Path(__file__).resolve().parents[1]


def umask() -> int:
    """The process umask (read from /proc where it can be, so it is never changed even for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path`` (never half-written).
    The file gets the permissions a plain ``open`` would give (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # after the write: a writer that replaces the file (safetensors' save_file) makes its own 0600 one
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, temp: str | os.PathLike | None = None, owner: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` whole (never half-written).

    An existing ``path`` is first moved aside, then removed, so a reader sees the old directory or the
    new one. ``temp`` names the temp directory when several processes write into it (each rank of a
    distributed save passes the same name; only the ``owner`` creates, renames and cleans it up, the
    others just get the path). On an error the temp directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not owner:
        yield Path(temp) if temp is not None else path.with_name(f".{path.name}.tmp")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 would make every checkpoint private
    else:
        tmp = Path(temp)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard_earlier_checkpoints(paths: Iterable[Path], folder: str | os.PathLike) -> list[Path]:
    """Remove the checkpoints an earlier run left in ``folder`` when a run starts afresh there
    (``resume: none``), saying so. Left, they would outlive this run's own (the newest ``keep_checkpoints``
    by step number are kept) and be what a later ``resume: auto`` continues. Returns the removed paths."""
    paths = list(paths)
    if paths:
        kept = "; its final/ stays until this run writes its own" if (Path(folder) / "final").is_dir() else ""
        print(f"[train] note: starting afresh in {folder}: removing {len(paths)} checkpoint(s) of an earlier run "
              f"({', '.join(p.name for p in paths)}){kept}", flush=True)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return paths


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a bad line raises ``ValueError`` naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return rows


def trim_step_log(path: str | os.PathLike, step: int) -> None:
    """Keep the lines of a per-step JSONL log (``{"step": n, ...}``: ``losses.jsonl``, ``log.jsonl``) up to
    ``step``: a resumed run rewrites what came after, a fresh one (``step`` 0) starts an empty log, so no step
    appears twice. Lines cut short by a kill are dropped; the rewrite is atomic."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    write_text(path, "".join(kept))


def file_sha1(path: str | os.PathLike) -> str:
    """The sha1 of a file's bytes, read in 1 MiB blocks (a run's data fingerprint)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_yaml(path: str | os.PathLike) -> dict:
    """Load YAML, expanding ``${VAR}`` / ``${VAR:-default}`` from the environment in strings."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    return expand_env(data)


def expand_env(obj: Any) -> Any:
    def sub(match: re.Match) -> str:
        name, _, default = match.group(1).partition(":-")
        if name == "LLASM_HOME":
            return os.environ.get(name) or default or llasm_home()
        return os.environ.get(name, default)

    if isinstance(obj, str):
        return re.sub(r"\$\{([^}]+)\}", sub, obj)
    if isinstance(obj, dict):
        return {k: expand_env(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_env(v) for v in obj]
    return obj


def relative_path(path, base) -> str:
    """``path`` relative to ``base`` when below it, else absolute (JSONL audio paths allow both)."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path(os.path.abspath(base))).as_posix()
    except ValueError:
        return str(path)


def resolve_path(path: str | os.PathLike) -> str:
    """A path as given, or relative to the repository (``configs/...`` from anywhere)."""
    path = str(path)
    return path if os.path.exists(path) or os.path.isabs(path) else str(REPO / path)


def rejects_path(output: str | os.PathLike) -> Path:
    """Where a batch job reports the items it skipped: ``out.jsonl`` -> ``out.rejects.jsonl`` beside it."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.rejects.jsonl")


def write_batch_output(output: str | os.PathLike, items: Iterable[dict], rejects: Iterable[dict]) -> Path:
    """A batch job's result: ``items`` to ``output`` and ``rejects`` beside it (both atomically);
    returns the rejects file."""
    write_jsonl(output, items)
    return write_jsonl(rejects_path(output), rejects)


class ProgressLog:
    """Append-only JSONL of finished items; each record is fsynced before the next item counts.

    A record cut short by a crash (no final newline / bad JSON) is dropped and the file truncated
    back to the last complete record before anything is appended.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        good_end = 0
        if self.path.exists():
            data = self.path.read_bytes()
            pos = 0
            while pos < len(data):
                end = data.find(b"\n", pos)
                if end < 0:
                    break
                try:
                    record = json.loads(data[pos:end])
                    self.records[record["id"]] = record  # the last record of an id wins
                except (json.JSONDecodeError, KeyError, TypeError):
                    break
                pos = good_end = end + 1
            if good_end < len(data):
                log.warning("%s: dropping %d bytes of an unfinished record", self.path, len(data) - good_end)
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    def append(self, record: dict) -> None:
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[record["id"]] = record

    def close(self) -> None:
        self._file.close()


def llasm_home() -> str:
    """Where starter models and caches live: ``$LLASM_HOME`` or ``~/.cache/llasm``."""
    return os.environ.get("LLASM_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "llasm")
