"""Sharded, streamed training data: Parquet shards with the audio inside, read by HF ``datasets``.

A JSONL source (DESIGN.md's format) becomes a folder ``data.shards/`` (``llasm shards``)::

    shard-00000-of-00064.parquet ...   rows shuffled once (seed), split into shards of equal size
    index.json                         format, rows per shard, the JSONL it came from
    rejects.jsonl                      rows that could not be used (missing audio, bad marks)

Columns: ``id``; ``row`` (the JSONL row as JSON text); ``audios`` (the clips' file bytes, HF
``List(Audio(decode=False))``, so ``datasets`` users can ``cast_column`` them to decoded audio); and
``audio_samples`` (each clip's length at 16 kHz, for length grouping without decoding).

Training reads such folders (``data.sources: [{path: data.shards}]``) as a stream: each shard file is
opened with ``datasets.load_dataset("parquet", streaming=True)`` only when the stream reaches it.
Every pass over a source shuffles its shard order (from ``seed`` and the pass) and rank ``r`` of
``W`` takes shards ``r, r + W, ...`` of that order: the ranks read disjoint files, as WebDataset's
``split_by_node`` and datasets' ``split_dataset_by_node`` do. With one source, equal shards and a
shard count that the world size divides, an epoch is one pass: every row once, none twice, on
some rank. Rows are drawn from the sources by weight (as :class:`~llasm.data.dataset.MixtureBatchSampler`
does), grouped by length in windows of ``batch_size * group_size`` rows, cut into batches, and the
batches of a window shuffled. Everything follows from ``(seed, epoch, rank)``, so the position is
``(epoch, batch)``: a resumed run recomputes which rows of which shard come next, opens that shard
and skips to the row, without reading earlier shards. DataLoader workers each read the rank's stream
and encode every ``num_workers``-th batch, which the DataLoader returns in order.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from llasm.data.dataset import RowEncoder, Source, _resolve, check_row, clip_samples
from llasm.data.records import read_rows
from llasm.io import atomic_path, write_json, write_jsonl

log = logging.getLogger(__name__)
FORMAT = "llasm-shards/1"
INDEX = "index.json"


def is_sharded(path: str) -> bool:
    """Whether ``path`` is a folder written by :func:`write_shards`."""
    return (Path(path) / INDEX).is_file()


def read_index(directory: str | Path) -> dict:
    index_path = Path(directory) / INDEX
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}")
    missing = [f for f in index["files"] if not (Path(directory) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: shard files listed in {INDEX} are missing: {missing[:3]}")
    return index


def features():
    import datasets  # heavy; only converting and streaming need it

    return datasets.Features({"id": datasets.Value("string"), "row": datasets.Value("string"),
                              "audios": datasets.List(datasets.Audio(decode=False)),
                              "audio_samples": datasets.List(datasets.Value("int64"))})


def write_shards(source: str | Path, output: str | Path, num_shards: int | None = None, rows_per_shard: int = 1000,
                 seed: int = 0, row_group_size: int = 64, progress: bool = True) -> dict:
    """Convert one JSONL file (audio paths relative to it) into a shard folder; returns the index.

    Rows are shuffled with ``seed`` and split into ``num_shards`` (default: ``ceil(rows /
    rows_per_shard)``) shards whose sizes differ by at most one. A row whose audio is missing or
    whose ``<speech>`` marks do not match its audios goes to ``output/rejects.jsonl``. Every file is
    written atomically, ``index.json`` last. Raises ``ValueError`` when no row is usable.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, output = Path(source), Path(output)
    root = str(source.parent)
    rows, rejects = [], []
    for n, row in enumerate(read_rows(source)):  # llasm JSONL, or Alpaca / ShareGPT as they come
        reason = check_row(row, root)
        if reason is None and any(clip_samples(_resolve(p, root)) is None for p in row.get("audios", [])):
            reason = "an audio file has no readable header"
        if reason:
            rejects.append({"id": row.get("id", n), "line": n + 1, "reason": reason})
        else:
            rows.append(row)
    if not rows:
        first = "; ".join(f"{r['id']}: {r['reason']}" for r in rejects[:3])
        raise ValueError(f"{source}: no usable row ({len(rejects)} rejected; the first: {first})")
    random.Random(seed).shuffle(rows)
    num_shards = num_shards or math.ceil(len(rows) / rows_per_shard)
    if not 1 <= num_shards <= len(rows):
        raise ValueError(f"num_shards must be in [1, {len(rows)}] for {len(rows)} rows, got {num_shards}")
    schema = features().arrow_schema
    output.mkdir(parents=True, exist_ok=True)
    files, counts = [], []
    bounds = [len(rows) * i // num_shards for i in range(num_shards + 1)]
    for i in tqdm(range(num_shards), desc="shards", unit="shard", disable=not progress):
        part = rows[bounds[i] : bounds[i + 1]]
        records = []
        for n, row in enumerate(part):
            paths = [_resolve(p, root) for p in row.get("audios", [])]
            records.append({"id": str(row.get("id", f"{source.stem}-{bounds[i] + n}")),
                            "row": json.dumps(row, ensure_ascii=False),
                            "audios": [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in paths],
                            "audio_samples": [clip_samples(p) for p in paths]})
        name = f"shard-{i:05d}-of-{num_shards:05d}.parquet"
        with atomic_path(output / name) as tmp:
            pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp, row_group_size=row_group_size)
        files.append(name)
        counts.append(len(part))
    write_jsonl(output / "rejects.jsonl", rejects)
    index = {"format": FORMAT, "files": files, "num_rows": counts, "source": str(source), "seed": seed,
             "rejected": len(rejects)}
    write_json(output / INDEX, index)
    return index


class ShardedConversations(RowEncoder, torch.utils.data.IterableDataset):
    """Batches of encoded conversations streamed from shard folders (see the module docstring).

    Iterating yields collated batches (``collate(items)``) of this rank, for the epoch and starting
    batch given to :meth:`set_epoch`; use it with ``DataLoader(batch_size=None)``.
    """

    def __init__(self, sources: list[Source], processor, batch_size: int, seed: int = 0, group_size: int = 16,
                 samples_per_epoch: int | None = None, rank: int = 0, world_size: int = 1, **encoder):
        super().__init__(processor, **encoder)
        self.sources, self.batch_size, self.group_size, self.seed = sources, batch_size, group_size, seed
        self.rank, self.world_size = rank, world_size
        self.indexes = [read_index(s.path) for s in sources]
        for source, index in zip(sources, self.indexes):
            shards = len(index["files"])
            if shards < world_size:
                raise ValueError(f"{source.path}: {shards} shards for {world_size} ranks; every rank needs at least "
                                 "one (write more shards: llasm shards --num-shards)")
            if shards % world_size and rank == 0:
                log.warning("%s: %d shards over %d ranks: ranks read different amounts, so an epoch repeats or "
                            "leaves out some rows; use a shard count the world size divides", source.path, shards,
                            world_size)
        total = sum(sum(index["num_rows"]) for index in self.indexes)
        self.draws = (samples_per_epoch or total) // world_size  # rows per rank per epoch
        self.epoch, self.start_batch = 0, 0
        self.collate = None
        self._consumed: dict[int, list[int]] = {0: [0] * len(sources)}  # epoch -> rows read per source before it

    # -- the plan (no I/O) ------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        window = self.batch_size * self.group_size
        return self.draws // window * self.group_size + math.ceil(self.draws % window / self.batch_size)

    def _draw_sources(self, epoch: int) -> list[int]:
        """The source of each row this rank reads in ``epoch`` (the same sequence on every rank)."""
        if len(self.sources) == 1:
            return [0] * self.draws
        rng = random.Random(self.seed * 100_003 + epoch)
        weights = [s.weight for s in self.sources]
        return rng.choices(range(len(self.sources)), weights, k=self.draws)

    def _consumed_before(self, epoch: int) -> list[int]:
        for e in range(max(self._consumed), epoch):
            drawn = self._draw_sources(e)
            self._consumed[e + 1] = [c + drawn.count(s) for s, c in enumerate(self._consumed[e])]
        return self._consumed[epoch]

    def _rank_shards(self, source: int, pass_index: int) -> list[int]:
        n = len(self.indexes[source]["files"])
        order = random.Random(f"{self.seed}:{source}:{pass_index}").sample(range(n), n)
        return order[self.rank :: self.world_size]

    def _rows_from(self, source: int, position: int) -> Iterator[dict]:
        """This rank's rows of ``source`` from its ``position``-th on, pass after pass (endless)."""
        import datasets  # heavy; only streaming needs it

        counts, files = self.indexes[source]["num_rows"], self.indexes[source]["files"]
        pass_index = 0
        while True:
            mine = self._rank_shards(source, pass_index)
            if not any(counts[shard] for shard in mine):
                raise ValueError(f"{self.sources[source].path}: rank {self.rank} has no rows in pass {pass_index}")
            for shard in mine:
                if position >= counts[shard]:
                    position -= counts[shard]
                    continue
                stream = datasets.load_dataset("parquet", data_files=[str(Path(self.sources[source].path) / files[shard])],
                                               split="train", streaming=True)
                # .iter(), not iteration: inside a DataLoader worker the latter hands each worker its own
                # files, while here every worker reads the rank's stream and keeps its own batches
                for block in (stream.skip(position) if position else stream).iter(batch_size=64):
                    yield from ({key: values[i] for key, values in block.items()} for i in range(len(block["id"])))
                position = 0
            pass_index += 1

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        drawn = self._draw_sources(self.epoch)
        window = self.batch_size * self.group_size
        first_window = self.start_batch // self.group_size
        skipped = drawn[: first_window * window]
        start = [c + skipped.count(s) for s, c in enumerate(self._consumed_before(self.epoch))]
        readers = [self._rows_from(s, start[s]) for s in range(len(self.sources))]
        batch_index = first_window * self.group_size
        for w in range(first_window, math.ceil(self.draws / window)):
            rows = [next(readers[s]) for s in drawn[w * window : (w + 1) * window]]
            lengths = [self.estimate_length(json.loads(r["row"]), r["audio_samples"]) for r in rows]
            order = sorted(range(len(rows)), key=lambda i: -lengths[i])
            batches = [order[j : j + self.batch_size] for j in range(0, len(order), self.batch_size)]
            random.Random(f"{self.seed}:{self.epoch}:{w}").shuffle(batches)
            for batch in batches:
                if batch_index >= self.start_batch and batch_index % workers == worker:
                    yield self.collate([self._encode(rows[i]) for i in batch])
                batch_index += 1

    def _encode(self, record: dict) -> dict:
        row = json.loads(record["row"])
        return self.encode(row, [{"bytes": a["bytes"]} for a in record["audios"]], record["id"])

    def __len__(self) -> int:  # batches left in this epoch for this rank
        return self.batches_per_epoch() - self.start_batch
