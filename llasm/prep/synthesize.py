"""Text instruction data -> spoken conversations (stage-2 data), with TTS in parallel and resumable.

Input formats (auto-detected per record):

- Alpaca JSON/JSONL: ``instruction`` / ``input`` / ``output``. The instruction is spoken; a
  non-empty ``input`` stays as typed text after the speech.
- ShareGPT JSON/JSONL: ``conversations`` of ``{"from", "value"}`` (``human``/``user``,
  ``gpt``/``assistant``, ``system``), and our own JSONL (existing ``<speech>``/``audios`` are kept).
- The bundled seed corpus: ``data/seed/instructions.jsonl`` (``question``/``answer``/``keywords``)
  becomes one-turn spoken QA; ``data/seed/asr_sentences.jsonl`` (``text``) becomes ASR items.

Each human turn is spoken (``value`` becomes ``<speech>``, the words go to ``transcript``) unless it
draws "text" (probability ``text_turn_ratio``), is longer than ``max_spoken_chars`` or holds code.
An item none of whose turns is spoken stays a text-only conversation (no audio), so the share of
typed turns is the ratio asked for: ``--text-turn-ratio 1.0`` speaks nothing and writes the data
set as text rows; the summary counts the text-only items and why. ``--speak-answers`` adds
``"audio"`` to gpt turns.

Crash safety: an item's audio files are written atomically first; only then is its record appended
(and fsynced) to ``<output>.progress.jsonl``. A rerun skips items recorded there (with the same plan
and their files present), redoes the rest, and finally rewrites the output JSONL atomically, in input
order. Voices, text/speech choices and file names derive from ``--seed`` and the item id only, so a
resumed run produces the same files as a clean one.

    python data_prep/synthesize.py --input alpaca_zh.json --output data/spoken/alpaca_zh.jsonl --workers 8
    python data_prep/synthesize.py --input data/seed/instructions.jsonl --output data/seed_spoken.jsonl
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import os
import random
import re
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llasm import sharding
from llasm.audio import save_audio
from llasm.data.records import GPT_ROLES, HUMAN_ROLES, detect_format, read_records
from llasm.io import ProgressLog
from llasm.io import relative_path as _relative
from llasm.lang import detect_lang
from llasm.prep.prompts import SPEECH_TOKEN, asr_human_value
from llasm.prep.tts import (
    TTSError,
    TTSRouter,
    TTSUnavailable,
    config_fingerprint,
    load_tts_config,
    per_worker_config,
    to_16k,
)
from llasm.sharding import Records, Shard

logger = logging.getLogger(__name__)



@dataclass
class Speech:
    """One piece of audio to make: the text spoken, its language, voice and target file."""

    turn: int  # index into conversations
    text: str
    lang: str
    voice_seed: int
    path: str  # relative to the output folder (or absolute)


@dataclass
class Plan:
    """Everything a worker needs for one item; a pure function of the input record, seed and config."""

    index: int
    id: str
    item: dict  # the final JSONL record, audio paths already filled in
    speeches: list[Speech] = field(default_factory=list)
    reject: str | None = None  # a reason when the item cannot be made (empty text, ...)
    text_only: str | None = None  # why an item has no spoken turn: every turn drew text, or none could be spoken
    config_tag: str = ""  # fingerprint of the TTS config: a changed config redoes the item

    def digest(self) -> str:
        payload = [self.item, [asdict(s) for s in self.speeches], self.config_tag]
        return hashlib.sha1(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------- reading


def _turns(record: dict, base: Path) -> tuple[list[dict], list[str], str | None]:
    """Normalised ``(turns, existing audio paths, system)`` of a ShareGPT-like record."""
    raw = record.get("conversations") or record.get("messages") or []
    system = record.get("system")
    turns = []
    for turn in raw:
        role = str(turn.get("from") or turn.get("role") or "").lower()
        value = turn.get("value", turn.get("content"))
        value = value if isinstance(value, str) else ""
        if role == "system":
            system = system or value
            continue
        role = "human" if role in HUMAN_ROLES else "gpt" if role in GPT_ROLES else role
        kept = {k: v for k, v in turn.items() if k not in ("from", "role", "value", "content")}
        turns.append({"from": role, "value": value, **kept})
    while turns and turns[0]["from"] != "human":  # a leading greeting by the assistant has no prompt
        turns.pop(0)
    audios = [a if os.path.isabs(a) else str(base / a) for a in record.get("audios") or []]
    return turns, audios, system


# ------------------------------------------------------------------------------------ planning


def _stable_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha1(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _speakable(text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and "```" not in text


def speakable_text(text: str) -> str:
    """Text as a TTS engine should read it: markdown markers, links and list bullets removed."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)  # [label](url) -> label
    text = re.sub(r"^\s{0,3}(#{1,6}|[-*+]|\d+[.)])\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"[*_`~|>]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()



def _safe_name(item_id: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", item_id)[:120]


def plan_item(record: dict, index: int, item_id: str, *, input_dir: Path, output_dir: Path, audio_dir: Path,
              config: dict, seed: int, text_turn_ratio: float, speak_answers: bool) -> Plan:
    """Decide what to speak for one record (no TTS here)."""
    fmt = detect_format(record)
    rng = random.Random(f"{seed}:{item_id}")
    given_lang = record.get("lang")
    extra = {k: record[k] for k in ("category", "keywords", "split", "source") if k in record}
    max_spoken = int(config.get("max_spoken_chars", 600))
    audio_ext = config.get("audio_format", "flac")
    human_seed = _stable_int(seed, item_id, "human")
    answer_seed = config.get("answer_voice_seed")
    answer_seed = _stable_int(seed, item_id, "gpt") if answer_seed is None else int(answer_seed)

    def audio_path(turn: int, text: str, voice_seed: int) -> str:
        # what is said and by which voice is in the name: two jobs writing into one audio folder, with
        # items of the same id, never overwrite each other's clips
        content = hashlib.sha1(f"{text}\0{voice_seed}".encode()).hexdigest()[:10]
        return _relative(audio_dir / f"{_safe_name(item_id)}_t{turn}_{content}.{audio_ext}", output_dir)

    plan = Plan(index=index, id=item_id, item={})
    if fmt == "seed_asr":
        text = str(record.get("text") or "").strip()
        lang = given_lang or detect_lang(text)
        if not text:
            plan.reject = "empty text"
            return plan
        path = audio_path(0, text, human_seed)
        plan.item = {"id": item_id, "lang": lang, "audios": [path], **extra, "conversations": [
            {"from": "human", "value": asr_human_value(rng, lang), "transcript": text},
            {"from": "gpt", "value": text}]}
        plan.speeches.append(Speech(0, text, lang, human_seed, path))
        return plan

    existing_audios: list[str] = []
    system = None
    if fmt == "seed_instruction":
        turns = [{"from": "human", "value": str(record.get("question") or "").strip()},
                 {"from": "gpt", "value": str(record.get("answer") or "").strip()}]
    elif fmt == "alpaca":
        instruction = str(record.get("instruction") or "").strip()
        typed = str(record.get("input") or "").strip()
        turns = [{"from": "human", "value": instruction, "_typed": typed},
                 {"from": "gpt", "value": str(record.get("output") or "").strip()}]
        system = record.get("system")
    else:
        turns, existing_audios, system = _turns(record, input_dir)

    if not turns:
        plan.reject = "no conversation turns"
        return plan
    for i, turn in enumerate(turns):
        if not turn["value"].strip():
            plan.reject = f"empty text in turn {i} ({turn['from']})"
            return plan
    if not any(t["from"] == "gpt" for t in turns):
        plan.reject = "no gpt answer"
        return plan
    all_text = " ".join(t["value"] for t in turns if t["from"] == "human")
    lang = given_lang or detect_lang(all_text)

    # Which human turns to speak: seeded coin per turn, and at least one spoken turn per item.
    eligible = [i for i, t in enumerate(turns)
                if t["from"] == "human" and SPEECH_TOKEN not in t["value"] and _speakable(t["value"], max_spoken)]
    has_speech = any(SPEECH_TOKEN in t["value"] for t in turns)
    spoken = {i for i in eligible if rng.random() >= text_turn_ratio}
    if not spoken and not has_speech:  # kept as a text-only conversation; the summary says why
        plan.text_only = "drew text" if eligible else f"no turn speakable (over {max_spoken} characters or code)"

    conversations, audios = [], []
    existing = iter(existing_audios)
    max_answer = int(config.get("max_answer_chars", 2000))
    for i, turn in enumerate(turns):
        typed = turn.pop("_typed", "")
        out = dict(turn)
        if i in spoken:
            out["value"] = f"{SPEECH_TOKEN}\n{typed}" if typed else SPEECH_TOKEN
            out["transcript"] = turn["value"]
            path = audio_path(i, turn["value"], human_seed)
            audios.append(path)
            plan.speeches.append(Speech(i, turn["value"], detect_lang(turn["value"]), human_seed, path))
        else:
            if typed:
                out["value"] = f"{turn['value']}\n\n{typed}"
            for _ in range(out["value"].count(SPEECH_TOKEN)):
                try:
                    audios.append(_relative(Path(next(existing)), output_dir))
                except StopIteration:
                    plan.reject = f"turn {i} has more {SPEECH_TOKEN} placeholders than the record has audios"
                    return plan
            if speak_answers and turn["from"] == "gpt" and "audio" not in turn:
                words = speakable_text(turn["value"])
                if 0 < len(words) <= max_answer:
                    out["audio"] = audio_path(i, words, answer_seed)
                    plan.speeches.append(Speech(i, words, detect_lang(words), answer_seed, out["audio"]))
            elif turn["from"] == "gpt" and "audio" in turn and not os.path.isabs(turn["audio"]):
                out["audio"] = _relative(input_dir / turn["audio"], output_dir)
        conversations.append(out)
    plan.item = {"id": item_id, "lang": lang, **({"system": system} if system else {}), "audios": audios,
                 **extra, "conversations": conversations}
    return plan


def make_plans(records: list[dict], *, input_path: Path, output: Path, audio_dir: Path, config: dict, seed: int,
               text_turn_ratio: float, speak_answers: bool, limit: int | None = None) -> list[Plan]:
    """Plans for the first ``limit`` records, ids made unique (``<prefix>-<n>`` where a record has none)."""
    prefix = re.sub(r"\W+", "_", input_path.stem)
    tag = config_fingerprint(config)
    seen: set[str] = set()
    plans = []
    for index, record in enumerate(records[:limit] if limit else records):
        base_id = str(record.get("id") or f"{prefix}-{index:07d}")
        item_id, n = base_id, 1
        while item_id in seen:
            n += 1
            item_id = f"{base_id}-{n}"
        seen.add(item_id)
        try:
            plans.append(plan_item(record, index, item_id, input_dir=input_path.parent, output_dir=output.parent,
                                   audio_dir=audio_dir, config=config, seed=seed, text_turn_ratio=text_turn_ratio,
                                   speak_answers=speak_answers))
        except (ValueError, TypeError, AttributeError) as err:
            plans.append(Plan(index=index, id=item_id, item={}, reject=f"malformed record: {err}"))
        plans[-1].config_tag = tag
    return plans


# ----------------------------------------------------------------------------------- executing


def synthesize_plan(plan: Plan, router: TTSRouter, output_dir: Path, config: dict) -> dict:
    """Make and write every audio file of ``plan``; returns its progress record (item or reject)."""
    if plan.reject:
        return {"index": plan.index, "id": plan.id, "reject": plan.reject, "final": True}
    voices = {}
    for speech in plan.speeches:
        try:
            audio, rate, name = router.synthesize(speech.text, speech.lang, voice_seed=speech.voice_seed)
            voices[speech.path] = router.voice_name(name, speech.lang, speech.voice_seed)
        except (TTSError, TTSUnavailable) as err:
            # Not final: a rerun tries again (the failure may be transient or fixed by a config change).
            return {"index": plan.index, "id": plan.id, "reject": f"TTS failed on turn {speech.turn}: {err}",
                    "final": False, "plan": plan.digest()}
        audio = to_16k(audio, rate, sample_rate=int(config.get("sample_rate", 16_000)), peak=config.get("peak", 0.9))
        target = Path(speech.path) if os.path.isabs(speech.path) else output_dir / speech.path
        save_audio(target, audio, int(config.get("sample_rate", 16_000)))  # temp file + rename
    return {"index": plan.index, "id": plan.id, "item": with_voices(plan.item, voices), "plan": plan.digest()}


def with_voices(item: dict, voices: dict[str, str]) -> dict:
    """``item`` with the speaker of each clip made here: ``voices`` beside ``audios`` (None: a clip
    that came with the input), and ``voice`` on a gpt turn whose ``audio`` was spoken."""
    item = dict(item)
    if any(a in voices for a in item.get("audios", [])):
        item["voices"] = [voices.get(a) for a in item["audios"]]
    turns = [dict(t, voice=voices[t["audio"]]) if t.get("audio") in voices else t for t in item.get("conversations", [])]
    return {**item, "conversations": turns}


# Worker-process state: one router (models loaded once per process), set by the pool initializer.
_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the job process dies (even by kill -9)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _init_worker(config: dict, output_dir: str, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _WORKER.update(router=TTSRouter(config), output_dir=Path(output_dir), config=config)


def _work(plan: Plan) -> dict:
    return synthesize_plan(plan, _WORKER["router"], _WORKER["output_dir"], _WORKER["config"])


def _is_done(record: dict | None, plan: Plan, output_dir: Path) -> bool:
    if record is None:
        return False
    if "reject" in record:
        return bool(record.get("final")) and plan.reject == record["reject"]
    if record.get("plan") != plan.digest():
        return False
    return all((Path(s.path) if os.path.isabs(s.path) else output_dir / s.path).exists() for s in plan.speeches)


def _remove_stale_temp_files(audio_dir: Path, names: set[str] | None = None) -> None:
    """Drop the ``.<name>.<random>.tmp`` files save_audio left behind when its process was killed.

    Runs before this job starts its workers, so none of these belongs to it; ``names`` limits it to
    the temp files of those audio files (shards of one job share the folder), else one job per audio
    folder at a time (a second job's temp files would be removed too).
    """
    if audio_dir.is_dir():
        for tmp in audio_dir.glob(".*.tmp"):
            if names is None or tmp.name[1:].rsplit(".", 2)[0] in names:
                tmp.unlink(missing_ok=True)


def progress_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.progress.jsonl")


def synthesize_dataset(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    audio_dir: str | os.PathLike | None = None,
    config: str | os.PathLike | dict | None = None,
    workers: int = 1,
    text_turn_ratio: float | None = None,
    speak_answers: bool = False,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    shard: Shard = Shard(),
) -> dict:
    """Run the whole job, or ``shard``'s share of it (resuming when a progress file exists); returns counts."""
    input_path, output = Path(input), Path(output)
    config = load_tts_config(config)
    ratio = float(config.get("text_turn_ratio", 0.2) if text_turn_ratio is None else text_turn_ratio)
    audio_dir = Path(audio_dir) if audio_dir else output.parent / f"{output.name.removesuffix('.jsonl')}_audio"
    plans = make_plans(read_records(input_path), input_path=input_path, output=output, audio_dir=audio_dir,
                       config=config, seed=seed, text_turn_ratio=ratio, speak_answers=speak_answers, limit=limit)
    records = Records()
    for plan in plans:
        records.saw(plan.id)
    plans = [p for p in plans if shard.owns(p.index)]

    log = ProgressLog(progress_path(shard.path(output)))
    try:
        todo = [p for p in plans if not _is_done(log.records.get(p.id), p, output.parent)]
        router = TTSRouter(config)
        router.require(sorted({s.lang for p in todo for s in p.speeches}))
        # shards share the audio folder: each removes only the temp files of its own items
        _remove_stale_temp_files(audio_dir, {Path(s.path).name for p in plans for s in p.speeches} if shard.split else None)
        bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc="synthesize", unit="item",
                   disable=not progress)
        if workers > 1 and len(todo) > 1:
            context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            worker_config = per_worker_config(config, workers)
            with context.Pool(workers, _init_worker, (worker_config, str(output.parent), os.getpid())) as pool:
                for record in pool.imap_unordered(_work, todo, chunksize=1):
                    log.append(record)
                    bar.update(1)
        else:
            for plan in todo:
                log.append(synthesize_plan(plan, router, output.parent, config))
                bar.update(1)
        bar.close()
    finally:
        log.close()

    text_only = {}
    for plan in plans:  # input order
        record = log.records.get(plan.id) or {}
        if "item" in record:
            records.item(plan.index, record["item"])
            if plan.text_only:
                text_only[plan.text_only] = text_only.get(plan.text_only, 0) + 1
        else:
            records.reject(plan.index, {"source": f"{input_path}#{plan.index}", "id": plan.id,
                                        "reason": record.get("reject", "not processed")})
    sharding.write(output, shard, records)
    return {"items": len(records.items), "rejects": len(records.rejects), "synthesized": len(todo),
            "skipped": len(plans) - len(todo), "text_only": sum(text_only.values()), "text_only_why": text_only,
            "text_turn_ratio": ratio}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llasm synthesize", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speak text instruction data with TTS (resumable, parallel): Alpaca / ShareGPT / our JSONL in, "
                    "spoken conversations out. data_prep/synthesize.py is the same command.",
        epilog="examples:\n"
               "  llasm synthesize --input alpaca_zh.json --output data/spoken/alpaca_zh.jsonl --workers 8\n"
               "  llasm synthesize --input data/seed/instructions.jsonl --output data/seed_spoken.jsonl --text-turn-ratio 0\n"
               "Each human turn is spoken unless it draws text (--text-turn-ratio) or is too long / code; an item\n"
               "with no spoken turn stays a text conversation. A killed run resumes from OUT.progress.jsonl.\n"
               "Text-only data needs no synthesis: a training source can be the Alpaca / ShareGPT file itself.")
    parser.add_argument("--input", required=True, help="Alpaca/ShareGPT JSON(L), our JSONL, or data/seed/*.jsonl")
    parser.add_argument("--output", required=True, help="out.jsonl (+ out.rejects.jsonl, out.progress.jsonl)")
    parser.add_argument("--audio-dir", default=None, help="where audio goes (default <output stem>_audio/)")
    parser.add_argument("--config", default=None, help="TTS YAML (default: built-in = configs/tts.yaml)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    parser.add_argument("--text-turn-ratio", type=float, default=None,
                        help="share of human turns kept as typed text (default 0.2 from the TTS config); an item "
                             "with no spoken turn is written as a text-only conversation; 1.0 speaks nothing")
    parser.add_argument("--speak-answers", action="store_true", help="also synthesize the gpt answers")
    parser.add_argument("--limit", type=int, default=None, help="only the first N input records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    sharding.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        shard = sharding.from_args(args)
        if shard.is_done(args.output):
            logger.info("%s: already done", shard.path(args.output))
            return 0
        stats = synthesize_dataset(args.input, args.output, audio_dir=args.audio_dir, config=args.config,
                                   workers=args.workers, text_turn_ratio=args.text_turn_ratio,
                                   speak_answers=args.speak_answers, limit=args.limit, seed=args.seed,
                                   progress=not args.quiet, shard=shard)
    except (FileNotFoundError, ValueError, TTSUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info("%s: %d items, %d rejected (%d synthesized now, %d already done)", args.output, stats["items"],
                stats["rejects"], stats["synthesized"], stats["skipped"])
    if stats["text_only"]:
        why = ", ".join(f"{n} {reason}" for reason, n in stats["text_only_why"].items())
        logger.info("%d of the items are text-only conversations (no audio): %s (text_turn_ratio %.2f)",
                    stats["text_only"], why, stats["text_turn_ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
