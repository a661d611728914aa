"""Splitting a data-preparation job over machines (``--num-shards N --shard-index i``), then one merge.

Every shard enumerates the whole input the same way; input item ``p`` (its position in that
enumeration) belongs to shard ``p % N``: deterministic, balanced (long and short items interleave)
and the same on every machine. A shard writes, next to the job's ``--output out.jsonl``::

    out.shard-00003-of-00016.jsonl           its items, in input order (atomic)
    out.shard-00003-of-00016.rejects.jsonl   its rejects (atomic)
    out.shard-00003-of-00016.done.json       written last: the commit marker, holding the input's size
                                             and fingerprint and the input position of every record

A rerun of a shard whose marker holds the same job (arguments and input files, :func:`job_fingerprint`)
does nothing (Slurm requeues and reruns of the whole array are cheap); a changed job or an unfinished
shard starts again (``synthesize`` resumes item by item from its own progress
file). ``llasm merge-shards --output out.jsonl --num-shards N`` then checks that the N shards saw the
same input and together wrote exactly one record (item or reject) for each input item, and writes
``out.jsonl`` + ``out.rejects.jsonl`` in input order, rejecting an item whose dedup keys (prepare-asr:
its audio's content hash) repeat an earlier item's, and making ids unique as a single run would.

The layout follows Slurm job arrays (``--array=0-15``, ``--shard-index $SLURM_ARRAY_TASK_ID``), as
data pipelines such as NeMo's and WebDataset's ``tarp`` split work by a task index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llasm.io import read_jsonl, write_batch_output, write_json

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """Shards that cannot be merged: missing, from another input, or not covering it exactly once."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``num_shards``; ``Shard()`` is the whole job on one machine."""

    num_shards: int = 1
    index: int = 0
    job: str = ""  # fingerprint of the job's settings and inputs (:func:`job_fingerprint`); "" = unchecked

    def __post_init__(self):
        if self.num_shards < 1:
            raise ValueError(f"--num-shards must be >= 1, got {self.num_shards}")
        if not 0 <= self.index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, {self.num_shards}), got {self.index}")

    @property
    def split(self) -> bool:
        return self.num_shards > 1

    def owns(self, position: int) -> bool:
        """Whether input item ``position`` (0-based) is this shard's."""
        return position % self.num_shards == self.index

    def path(self, output: str | os.PathLike, suffix: str = ".jsonl") -> Path:
        """This shard's file for the job output ``output`` (``output`` itself when not split)."""
        output = Path(output)
        if not self.split and suffix == ".jsonl":
            return output
        stem = output.name.removesuffix(".jsonl")
        return output.with_name(f"{stem}.shard-{self.index:05d}-of-{self.num_shards:05d}{suffix}")

    def done_path(self, output: str | os.PathLike) -> Path:
        return self.path(output, ".done.json")

    def is_done(self, output: str | os.PathLike) -> bool:
        """Whether this shard of ``output`` finished with the same settings and inputs (its marker
        exists and holds this job's fingerprint); a marker of another job is said and ignored."""
        if not (self.split and self.done_path(output).exists()):
            return False
        done = json.loads(self.done_path(output).read_text(encoding="utf-8")).get("job", "")
        if self.job and done != self.job:
            log.warning("%s: the inputs or the settings changed since this shard finished: making it again",
                        self.path(output))
            return False
        return True


class Records:
    """What one job (or one shard of it) produced: items and rejects, each with its input position.

    Call :meth:`saw` for every input item in input order (owned or not: it fingerprints the input),
    then :meth:`item` / :meth:`reject` once per owned item. Unpacks as ``(items, rejects)``.
    """

    def __init__(self):
        self.items: list[dict] = []
        self.rejects: list[dict] = []
        self.item_positions: list[int] = []
        self.reject_positions: list[int] = []
        self.dedup: list[list[str]] = []  # per item: keys an earlier item must not share (merge)
        self.input_count = 0
        self._digest = hashlib.sha1()

    def saw(self, key: str) -> None:
        self.input_count += 1
        self._digest.update(str(key).encode("utf-8") + b"\n")

    @property
    def input_digest(self) -> str:
        return self._digest.hexdigest()

    def item(self, position: int, row: dict, dedup: list[str] | tuple = ()) -> None:
        self.items.append(row)
        self.item_positions.append(position)
        self.dedup.append(list(dedup))

    def reject(self, position: int, row: dict) -> None:
        self.rejects.append(row)
        self.reject_positions.append(position)

    def __iter__(self) -> Iterator[list[dict]]:
        yield self.items
        yield self.rejects


def write(output: str | os.PathLike, shard: Shard, records: Records) -> Path:
    """Write the job's output (``output`` + rejects) or, for a split job, this shard's files and last
    its marker; returns the rejects file."""
    rejects = write_batch_output(shard.path(output), records.items, records.rejects)
    if shard.split:
        write_json(shard.done_path(output), {
            "num_shards": shard.num_shards, "shard_index": shard.index, "job": shard.job,
            "input_count": records.input_count,
            "input_digest": records.input_digest, "item_positions": records.item_positions,
            "reject_positions": records.reject_positions, "dedup": records.dedup})
    return rejects


def check_coverage(markers: list[dict], num_shards: int, where: str) -> None:
    """Raise :class:`ShardError` unless ``markers`` (one ``done.json`` per shard) saw one input and
    hold every input position exactly once, each in the shard that owns it."""
    first = markers[0]
    for marker in markers[1:]:
        if (marker["input_count"], marker["input_digest"]) != (first["input_count"], first["input_digest"]):
            raise ShardError(f"{where}: shard {marker['shard_index']} saw another input ({marker['input_count']} "
                             f"items) than shard 0 ({first['input_count']} items): run every shard "
                             "again with the current input (a shard whose input changed since it finished is "
                             "made again, the others are kept)")
    seen = [0] * first["input_count"]
    for marker in markers:
        for position in marker["item_positions"] + marker["reject_positions"]:
            if not 0 <= position < len(seen) or position % num_shards != marker["shard_index"]:
                raise ShardError(f"{where}: shard {marker['shard_index']} holds input position {position}, "
                                 f"which is not its own")
            seen[position] += 1
    missing = [p for p, n in enumerate(seen) if n == 0]
    twice = [p for p, n in enumerate(seen) if n > 1]
    if missing or twice:
        raise ShardError(f"{where}: the shards do not cover the input exactly once: {len(missing)} input item(s) "
                         f"without a record (positions {missing[:5]}), {len(twice)} with several ({twice[:5]})")


def read_markers(output: str | os.PathLike, num_shards: int) -> list[dict]:
    """The ``done.json`` of every shard of ``output``; :class:`ShardError` names the unfinished ones."""
    shards = [Shard(num_shards, i) for i in range(num_shards)]
    missing = [s.index for s in shards if not s.done_path(output).exists()]
    if missing:
        raise ShardError(f"{output}: {len(missing)} of {num_shards} shards not finished (indices "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}): run them first")
    markers = [json.loads(s.done_path(output).read_text(encoding="utf-8")) for s in shards]
    for s, marker in zip(shards, markers):
        if marker["num_shards"] != num_shards or marker["shard_index"] != s.index:
            raise ShardError(f"{s.done_path(output)}: written as shard {marker['shard_index']} of "
                             f"{marker['num_shards']}, not {s.index} of {num_shards}")
    return markers


def merge(output: str | os.PathLike, num_shards: int) -> dict:
    """Merge the shards of ``output`` into ``output`` (+ rejects), in input order, after
    :func:`check_coverage`; returns counts. Items whose dedup keys repeat an earlier item's become
    rejects; repeated ids get ``-2``, ``-3``... as in a single run."""
    output = Path(output)
    markers = read_markers(output, num_shards)
    check_coverage(markers, num_shards, str(output))
    records = []  # (position, kind, row, dedup)
    for s, marker in zip((Shard(num_shards, i) for i in range(num_shards)), markers):
        items, rejects = read_jsonl(s.path(output)), read_jsonl(s.path(output, ".rejects.jsonl"))
        if (len(items), len(rejects)) != (len(marker["item_positions"]), len(marker["reject_positions"])):
            raise ShardError(f"{s.path(output)}: {len(items)} items and {len(rejects)} rejects, but its marker "
                             f"lists {len(marker['item_positions'])} and {len(marker['reject_positions'])}")
        records += [(p, "item", row, keys) for p, row, keys in zip(marker["item_positions"], items, marker["dedup"])]
        records += [(p, "reject", row, []) for p, row in zip(marker["reject_positions"], rejects)]
    records.sort(key=lambda r: r[0])
    items, rejects, first_of, ids = [], [], {}, set()
    for _, kind, row, keys in records:
        if kind == "reject":
            rejects.append(row)
            continue
        earlier = next((first_of[k] for k in keys if k in first_of), None)
        if earlier is not None:
            rejects.append({"id": row.get("id"), "reason": f"duplicate of item {earlier} (another shard)"})
            continue
        for key in keys:
            first_of[key] = row.get("id")
        if "id" in row:
            row["id"] = unique_id(str(row["id"]), ids)
        items.append(row)
    write_batch_output(output, items, rejects)
    return {"items": len(items), "rejects": len(rejects), "inputs": markers[0]["input_count"]}


def unique_id(item_id: str, seen: set[str]) -> str:
    """``item_id``, or ``item_id-2``, ``-3``, ... when taken; records the result in ``seen``."""
    candidate, n = item_id, 1
    while candidate in seen:
        n += 1
        candidate = f"{item_id}-{n}"
    seen.add(candidate)
    return candidate


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--num-shards`` / ``--shard-index`` for a batch job's parser."""
    group = parser.add_argument_group("across machines (a Slurm job array; then `llasm merge-shards`)")
    group.add_argument("--num-shards", type=int, default=1, help="split the input into N shards (default 1)")
    group.add_argument("--shard-index", type=int, default=0,
                       help="which shard this process makes, 0..N-1 (Slurm: $SLURM_ARRAY_TASK_ID)")


def from_args(args: argparse.Namespace) -> Shard:
    """The shard a command line asks for, fingerprinted by its other arguments and their files."""
    return Shard(args.num_shards, args.shard_index, job_fingerprint(args))


OUTPUT_ARGS = {"output", "audio_dir"}


def job_fingerprint(args: argparse.Namespace) -> str:
    """sha1 of a job's arguments (all but ``--shard-index``) and of every file or folder they name (size
    and modification time of each file below it), so that a changed input, config or setting makes a
    finished shard run again instead of being skipped as done."""
    h = hashlib.sha1()
    for key, value in sorted(vars(args).items()):
        if key == "shard_index":
            continue
        h.update(f"{key}={value!r}\n".encode())
        if key in OUTPUT_ARGS:  # what the job writes is not its input
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item and os.path.exists(item):
                for path, stat in _files_below(item):
                    h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _files_below(path: str) -> Iterator[tuple[str, os.stat_result]]:
    if os.path.isfile(path):
        yield path, os.stat(path)
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            yield full, os.stat(full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llasm merge-shards",
        description="Merge the shards of a prepare-asr / synthesize / units job after checking that they cover "
                    "the input exactly once.")
    parser.add_argument("--output", required=True, help="the --output the shards were made with (out.jsonl)")
    parser.add_argument("--num-shards", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = merge(args.output, args.num_shards)
    except (ShardError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("%s: %d items, %d rejects from %d shards covering %d input items", args.output, counts["items"],
             counts["rejects"], args.num_shards, counts["inputs"])
    return 0
