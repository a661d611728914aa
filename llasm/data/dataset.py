"""Training data: JSONL rows -> HF messages -> ``processor.encode_conversation`` items.

A row (DESIGN.md) holds ``audios`` (paths relative to the JSONL), ``conversations`` whose human
turns mark each audio with ``<speech>`` (in order) and an optional ``system``. A source may also be
text-only instruction data as it comes (Alpaca / ShareGPT JSON or JSONL, :mod:`llasm.data.records`).
Sources are mixed with weights; batches are grouped by length; a bad row (missing or undecodable
audio) is skipped and written to a rejects file with its id and reason, never crashing the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from llasm.audio import AudioError, load_audio
from llasm.configuration import audio_chunks
from llasm.data.packing import collate_packed
from llasm.data.records import read_rows
from llasm.processing import IGNORE_INDEX

log = logging.getLogger(__name__)
SPEECH = "<speech>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def row_to_messages(row: dict, root: str | os.PathLike | None = None, audios: list | None = None) -> list[dict]:
    """HF-style messages of one JSONL row; ``<speech>`` marks become audio parts, in order.

    ``audios`` (already loaded arrays) replaces the row's paths, which are resolved against ``root``.
    """
    sources = list(audios) if audios is not None else [_resolve(p, root) for p in row.get("audios", [])]
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    used = 0
    for turn in row["conversations"]:
        role = ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"{row.get('id')}: unknown speaker {turn['from']!r}")
        pieces = turn["value"].split(SPEECH)
        content = []
        for i, text in enumerate(pieces):
            if i > 0:  # a <speech> mark preceded this piece
                if used >= len(sources):
                    raise ValueError(f"{row.get('id')}: more <speech> marks than audios ({len(sources)})")
                content.append({"type": "audio", "audio": sources[used]})
                if turn.get("transcript"):  # what was said, for chain-of-modality answers
                    content[-1]["transcript"] = turn["transcript"]
                used += 1
            if text.strip():
                content.append({"type": "text", "text": text.strip()})
        messages.append({"role": role, "content": content})
    if used != len(sources):
        raise ValueError(f"{row.get('id')}: {len(sources)} audios but {used} <speech> marks")
    return messages


def check_row(row: dict, root: str | os.PathLike) -> str | None:
    """Why ``row`` cannot be used (``None`` when it can), without decoding audio: no conversation,
    ``<speech>`` marks that do not match ``audios``, or an audio file that is not there (paths are
    relative to ``root``, the JSONL's folder)."""
    if row.get("_error"):
        return row["_error"]
    if not row.get("conversations"):
        return "no conversations"
    try:
        row_to_messages(row, root)
    except (ValueError, KeyError) as err:
        return str(err)
    for path in row.get("audios", []):
        full = _resolve(path, root)
        if not os.path.isfile(full):
            return f"{full}: file not found"
    return None


def _resolve(path, root) -> str:
    return str(path) if root is None or os.path.isabs(path) else str(Path(root) / path)


def audio_key(samples: np.ndarray, model_key: str) -> str:
    """Content key of one clip for the encoder cache: sha1(float32 16 kHz samples + model/feature key)."""
    h = hashlib.sha1(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    h.update(model_key.encode())
    return h.hexdigest()


@dataclass
class Source:
    """One JSONL file and its mixture weight."""

    path: str
    weight: float = 1.0
    name: str = ""


class RowEncoder:
    """Rows -> training items, and the log of rejected rows: what the in-memory JSONL dataset and the
    streamed shards (:mod:`llasm.data.shards`) share.

    An item is ``processor.encode_conversation(...)`` plus ``id``, ``length`` and ``audio_keys`` (one
    content key per audio chunk, for the encoder cache), or ``{"id", "rejected": reason}`` for a row
    that cannot be used.
    """

    def __init__(self, processor, model_key: str = "", rejects_path: str | None = None,
                 max_length: int | None = None, with_teacher: bool = False, unit_langs: tuple[str, ...] | None = None):
        self.processor = processor
        # a unit head that reads phonemes speaks these languages only: other rows with units are rejected
        self.unit_langs = unit_langs
        self.with_teacher = with_teacher  # kl objective: also encode the transcript-as-text conversation
        self.model_key = model_key
        self.rejects_path = rejects_path
        self.max_length = max_length
        self._rejected: set[tuple] = set()

    def reject(self, row_id, reason: str, at_init: bool = False) -> None:
        """Log a skipped row once per process (init-time checks: only on rank 0, every rank makes them)."""
        if (row_id, reason) in self._rejected or (at_init and os.environ.get("RANK", "0") != "0"):
            return
        self._rejected.add((row_id, reason))
        log.warning("skipping row %s: %s", row_id, reason)
        if self.rejects_path:
            os.makedirs(os.path.dirname(self.rejects_path) or ".", exist_ok=True)
            with open(self.rejects_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"id": row_id, "reason": reason}, ensure_ascii=False) + "\n")

    def estimate_length(self, row: dict, clip_samples: list[int]) -> int:
        """Token count from the text and each clip's 16 kHz samples, without decoding audio — only used
        to group batches."""
        n = sum(len(t["value"]) // 3 + 4 for t in row["conversations"])
        return n + sum(self.processor.num_audio_tokens(samples) for samples in clip_samples)

    def encode(self, row: dict, clips: list, row_id: str, root: str | None = None) -> dict[str, Any]:
        """The item of ``row``; ``clips`` are its audios as :func:`~llasm.audio.load_audio` reads them
        (paths, or ``{"bytes": ...}`` from shards); ``root`` is the JSONL's folder (text rows only)."""
        try:
            audios = [load_audio(c) for c in clips]
            item = self.processor.encode_conversation(row_to_messages(row, root, audios))
        except (AudioError, ValueError, OSError) as err:
            return {"id": row_id, "rejected": str(err)}
        if self.max_length and len(item["input_ids"]) > self.max_length:
            return {"id": row_id, "rejected": f"{len(item['input_ids'])} tokens > max_length {self.max_length}"}
        # one content key per clip; a clip longer than 30 s gives several chunks, numbered
        chunk_keys = []
        for samples, count in zip(audios, _chunks_per_clip(audios, self.processor)):
            clip = audio_key(samples, self.model_key)
            chunk_keys += [f"{clip}-{j}" for j in range(count)]
        item.update(id=row_id, length=len(item["input_ids"]), audio_keys=chunk_keys)
        spoken = next((t for t in row.get("conversations", []) if t.get("from") in ("gpt", "assistant")
                       and t.get("units")), None)
        if spoken is not None and self.unit_langs and row.get("lang") and row["lang"] not in self.unit_langs:
            return {"id": row_id, "rejected": f"lang {row['lang']!r}: the unit head reads phonemes of "
                                              f"{' and '.join(self.unit_langs)} answers only"}
        if spoken is not None:  # stage 3 targets: the spoken answer's units (and its text: a phoneme head reads it)
            item.update(unit_targets=list(spoken["units"]), unit_text=str(spoken.get("value", "")), unit_lang=row.get("lang"))
        if self.with_teacher:  # kl objective: the same conversation with the transcript as text
            text_row = teacher_row(row)
            if text_row is None:
                return {"id": row_id, "rejected": "kl objective needs one audio and a transcript"}
            teacher = self.processor.encode_conversation(row_to_messages(text_row, root, []))
            item["teacher_input_ids"], item["teacher_labels"] = teacher["input_ids"], teacher["labels"]
        return item


def clip_samples(path: str | os.PathLike) -> int | None:
    """A clip's length in 16 kHz samples from its header (``None`` when unreadable)."""
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - undecodable headers are rejected at load time
        return None
    return int(info.frames * 16000 / info.samplerate)


class ConversationDataset(RowEncoder, torch.utils.data.Dataset):
    """Encoded conversations from several JSONL sources: ``dataset[i]`` is row ``i``'s item
    (:class:`RowEncoder`)."""

    def __init__(self, sources: list[Source], processor, model_key: str = "", rejects_path: str | None = None,
                 max_length: int | None = None, with_teacher: bool = False, unit_langs: tuple[str, ...] | None = None):
        super().__init__(processor, model_key, rejects_path, max_length, with_teacher, unit_langs)
        self.rows: list[tuple[dict, str]] = []  # (row, its JSONL's directory)
        self.source_of: list[int] = []
        self.sources = sources
        for s_index, source in enumerate(sources):
            root = str(Path(source.path).parent)
            for row in read_rows(source.path):
                reason = check_row(row, root)
                if reason:
                    self.reject(row.get("id"), reason, at_init=True)
                    continue
                self.rows.append((row, root))
                self.source_of.append(s_index)
        self.lengths = [self._estimate_length(row, root) for row, root in self.rows]

    def _estimate_length(self, row: dict, root: str) -> int:
        samples = [clip_samples(_resolve(path, root)) for path in row.get("audios", [])]
        return self.estimate_length(row, [n for n in samples if n is not None])

    # -- items ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, root = self.rows[index]
        return self.encode(row, [_resolve(p, root) for p in row.get("audios", [])], row.get("id", str(index)), root)


def transcript_of(row: dict) -> str | None:
    """A row's transcript: its ``transcript`` field, or the answer of a one-audio ASR row."""
    if row.get("transcript"):
        return row["transcript"]
    answers = [t["value"] for t in row.get("conversations", []) if t["from"] in ("gpt", "assistant")]
    if len(row.get("audios", [])) == 1 and len(answers) == 1:
        return answers[0]
    return None


def teacher_row(row: dict) -> dict | None:
    """The row with its (single) ``<speech>`` replaced by the transcript, for the text-only teacher."""
    transcript = transcript_of(row)
    if not transcript or len(row.get("audios", [])) != 1:
        return None
    turns = [{"from": t["from"], "value": t["value"].replace("<speech>", transcript)} for t in row["conversations"]]
    return {k: v for k, v in row.items() if k in ("id", "system")} | {"audios": [], "conversations": turns}


def _chunks_per_clip(audios: list[np.ndarray], processor) -> list[int]:
    """Encoder-cache chunks of each clip: the processor's own windows (:func:`audio_chunks`)."""
    return [len(audio_chunks(len(a), processor.pad_to_30s)) for a in audios]


class MixtureBatchSampler(torch.utils.data.Sampler):
    """Deterministic, length-grouped batches of a weighted mixture, sharded over ranks.

    Epoch ``e`` draws ``samples_per_epoch`` items: each from source ``s`` with probability
    proportional to its weight, walking a per-source shuffled cycle. Items are then sorted by
    length inside mega-batches of ``batch_size * group_size`` (so padding stays small), cut into
    batches and the batches shuffled. Everything follows from ``(seed, epoch)``, so a resumed run
    replays the same order; rank ``r`` of ``world`` takes batches ``r, r + world, ...``.
    """

    def __init__(self, dataset: ConversationDataset, batch_size: int, seed: int = 0, group_size: int = 16,
                 samples_per_epoch: int | None = None, rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.group_size, self.rank, self.world_size = group_size, rank, world_size
        self.samples_per_epoch = samples_per_epoch or len(dataset)
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (resume)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank."""
        rng = random.Random(self.seed * 100_003 + epoch)
        by_source: dict[int, list[int]] = {}
        for i, s in enumerate(self.dataset.source_of):
            by_source.setdefault(s, []).append(i)
        present = sorted(by_source)
        weights = [self.dataset.sources[s].weight for s in present]
        cycles = {s: [] for s in present}
        order = []
        for _ in range(self.samples_per_epoch):
            s = rng.choices(present, weights)[0]
            if not cycles[s]:
                cycles[s] = rng.sample(by_source[s], len(by_source[s]))
            order.append(cycles[s].pop())
        lengths = self.dataset.lengths
        mega = self.batch_size * self.group_size
        batches = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
            batches += [group[j : j + self.batch_size] for j in range(0, len(group), self.batch_size)]
        rng.shuffle(batches)
        usable = len(batches) // self.world_size * self.world_size  # every rank steps equally often
        return batches[self.rank : usable : self.world_size]

    def __iter__(self):
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch)) - self.start_batch


@dataclass
class Collator:
    """Pads a list of items into a batch; rejected items are dropped and logged. ``pack_length``:
    several conversations per row of at most that many tokens (:mod:`llasm.data.packing`)."""

    processor: Any
    dataset: ConversationDataset | None = None
    padding_side: str = "right"
    pack_length: int | None = None

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        good = []
        for item in items:
            if "rejected" in item:
                if self.dataset is not None:
                    self.dataset.reject(item["id"], item["rejected"])
                continue
            good.append(item)
        if not good:
            return {"ids": [], "empty": True}
        if self.pack_length:
            batch, good = collate_packed(self.processor, good, self.pack_length)
        else:
            batch = self.processor.collate(good, padding_side=self.padding_side)
        batch["ids"] = [g["id"] for g in good]
        batch["audio_keys"] = [k for g in good for k in g["audio_keys"]]
        batch["chunk_frames"] = [c.shape[1] for g in good for c in g["audio_chunks"]]
        if all("unit_targets" in g for g in good):  # IGNORE_INDEX padded, as the CTC loss expects
            longest = max(len(g["unit_targets"]) for g in good)
            batch["unit_targets"] = torch.tensor([g["unit_targets"] + [IGNORE_INDEX] * (longest - len(g["unit_targets"]))
                                                  for g in good])
            batch["unit_texts"] = [g["unit_text"] for g in good]
            batch["unit_langs"] = [g["unit_lang"] for g in good]
        if "teacher_input_ids" in good[0]:
            teacher = self.processor.collate(
                [{"input_ids": g["teacher_input_ids"], "labels": g["teacher_labels"], "audio_chunks": []} for g in good],
                padding_side=self.padding_side)
            batch["teacher_input_ids"] = teacher["input_ids"]
            batch["teacher_attention_mask"] = teacher["attention_mask"]
            batch["teacher_labels"] = teacher["labels"]
        return batch
