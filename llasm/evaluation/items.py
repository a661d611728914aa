"""Evaluation data: the pinned prompt assets and the items of a DESIGN.md JSONL.

:func:`load_prompts` / :func:`prompt_info` (``llasm/assets/eval``), :class:`InstructItem` /
:class:`AsrItem` and their loaders, and the per-item error record. Used by :mod:`llasm.evaluation`,
which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from llasm.evaluation import metrics as M
from llasm.io import ASSETS as PACKAGE_ASSETS
from llasm.io import read_jsonl
from llasm.lang import detect_lang

ASSETS = PACKAGE_ASSETS / "eval"
PROMPTS_PATH = ASSETS / "prompts.json"
JUDGE_PROMPT_PATH = ASSETS / "judge_prompt.txt"
SPEECH_TOKEN = "<speech>"


# ----------------------------------------------------------------------------------- assets


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_prompts(path: str | os.PathLike = PROMPTS_PATH) -> dict:
    """The pinned evaluation prompts (``version``, ``asr.{en,zh}``)."""
    prompts = json.loads(Path(path).read_text(encoding="utf-8"))
    for lang in M.LANGUAGES:
        if not prompts.get("asr", {}).get(lang):
            raise ValueError(f"{path}: missing asr prompt for {lang!r}")
    return prompts


def prompt_info(prompts_path=PROMPTS_PATH, judge_prompt_path=JUDGE_PROMPT_PATH) -> dict:
    prompts = load_prompts(prompts_path)
    return {
        "prompts_version": prompts["version"],
        "prompts_sha256": _sha256(Path(prompts_path)),
        "asr_prompts": prompts["asr"],
        "judge_prompt_sha256": _sha256(Path(judge_prompt_path)),
    }


# ------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class InstructItem:
    """One spoken question: the audio, any typed text after it, the question text and the answer."""

    id: str
    lang: str
    audio: str | None  # absolute path
    question: str  # the words spoken in the audio
    reference: str
    keywords: list[str]
    extra_text: str = ""  # typed text that follows the audio in the same turn

    @property
    def text_prompt(self) -> str:
        return f"{self.question}\n{self.extra_text}" if self.extra_text else self.question


@dataclasses.dataclass
class AsrItem:
    id: str
    lang: str
    audio: str | None
    text: str


class TextOnlyRecord(ValueError):
    """A record without a spoken turn (``synthesize`` keeps ``--text-turn-ratio`` of them typed): not an
    item of the spoken tasks, skipped and counted in a note, never an error."""


def _first_spoken_turn(record: dict) -> tuple[int, dict, dict | None]:
    """(index in ``audios``, the human turn holding the first ``<speech>``, the gpt turn after it)."""
    convs = record.get("conversations") or []
    n_audio = 0
    for i, turn in enumerate(convs):
        value = str(turn.get("value") or "")
        if turn.get("from") in ("human", "user") and SPEECH_TOKEN in value:
            answer = next((t for t in convs[i + 1:] if t.get("from") in ("gpt", "assistant")), None)
            return n_audio, turn, answer
        n_audio += value.count(SPEECH_TOKEN)
    if not record.get("audios") and not any(SPEECH_TOKEN in str(t.get("value") or "") for t in convs):
        raise TextOnlyRecord("a text-only record (no <speech> turn, no audios)")
    raise ValueError("no human turn with <speech>")


def _resolve_audio(record: dict, index: int, base: Path) -> str:
    audios = record.get("audios") or []
    if index >= len(audios):
        raise ValueError(f"<speech> #{index} has no entry in 'audios'")
    path = Path(audios[index])
    return str(path if path.is_absolute() else base / path)


def _lang(record: dict, text: str) -> str:
    lang = record.get("lang") or detect_lang(text)
    if lang not in M.LANGUAGES:
        raise ValueError(f"unsupported lang {lang!r} (expected one of {M.LANGUAGES})")
    return lang


def _select(records: list[dict], split: str | None, limit: int | None) -> list[dict]:
    if split and any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
    return records[:limit] if limit else records


def split_note(path, split: str | None) -> str | None:
    """Why ``split`` selected no record of ``path``: the splits its records carry (``None`` when ``split``
    is ``None``, the records carry no split, or some record has ``split``)."""
    splits = sorted({str(r["split"]) for r in _read_jsonl(Path(path)) if "split" in r}) if split else []
    if not splits or split in splits:
        return None
    return (f"{path}: no record has split {split!r}; its records' splits: {', '.join(splits)} "
            "(choose one with --split, or --split all)")


def text_only_note(path, split: str | None, limit: int | None = None) -> str | None:
    """How many selected records of ``path`` are text-only (skipped by the spoken tasks), or ``None``."""
    count = 0
    for record in _select(_read_jsonl(Path(path)), split, limit):
        try:
            _first_spoken_turn(record)
        except TextOnlyRecord:
            count += 1
        except ValueError:
            pass
    return f"{path}: {count} text-only record(s) without a spoken turn skipped" if count else None


def _load_items(path, split, limit, task: str, make) -> tuple[list, list[dict]]:
    """``make(record_id, record, folder)`` for each selected record; a bad record is an error."""
    path = Path(path)
    items, errors = [], []
    for n, record in enumerate(_select(_read_jsonl(path), split, limit)):
        rid = str(record.get("id") or f"{path.stem}-{n}")
        try:
            items.append(make(rid, record, path.parent))
        except TextOnlyRecord:  # counted by text_only_note
            continue
        except Exception as err:  # noqa: BLE001 - a bad record must not stop the run
            errors.append(_error(task, "data", rid, err))
    return items, errors


def load_instruct_items(path, split: str | None = "test", limit: int | None = None) -> tuple[list[InstructItem], list[dict]]:
    """Spoken instruction items of a DESIGN.md JSONL (``split`` filter when records carry one).

    The question text is the spoken turn's ``transcript``; the reference is the next gpt turn;
    ``keywords`` come from the record. Returns ``(items, errors)``: a bad record is an error.
    """
    def make(rid: str, record: dict, folder: Path) -> InstructItem:
        index, turn, answer = _first_spoken_turn(record)
        question = str(turn.get("transcript") or "").strip()
        if not question:
            raise ValueError("spoken turn has no 'transcript' (the spoken words)")
        if answer is None:
            raise ValueError("no gpt answer after the spoken turn")
        extra = str(turn["value"]).replace(SPEECH_TOKEN, "").strip()
        keywords = record.get("keywords") or []
        keywords = [keywords] if isinstance(keywords, str) else [str(k) for k in keywords]
        return InstructItem(rid, _lang(record, question), _resolve_audio(record, index, folder),
                            question, str(answer.get("value") or ""), keywords, extra)

    return _load_items(path, split, limit, "instruct", make)


def load_asr_items(path, split: str | None = "test", limit: int | None = None) -> tuple[list[AsrItem], list[dict]]:
    """ASR items of a DESIGN.md JSONL: the first clip and its reference text.

    The reference is the spoken turn's ``transcript`` when present, else the gpt answer (ASR data
    answers with the words). Returns ``(items, errors)``.
    """
    def make(rid: str, record: dict, folder: Path) -> AsrItem:
        index, turn, answer = _first_spoken_turn(record)
        text = str(turn.get("transcript") or (answer or {}).get("value") or "").strip()
        if not text:
            raise ValueError("no reference text (transcript or gpt answer)")
        return AsrItem(rid, _lang(record, text), _resolve_audio(record, index, folder), text)

    return _load_items(path, split, limit, "asr", make)


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path)


def _error(task: str, system: str, item_id: str, err: BaseException | str) -> dict:
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {"task": task, "system": system, "id": item_id, "error": message}
