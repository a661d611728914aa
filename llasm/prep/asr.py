"""ASR corpora -> stage-1 JSONL (audio + varied transcription instruction -> transcript).

One reader per corpus layout (:mod:`llasm.prep.corpora`) yields :class:`~llasm.prep.corpora.Utterance`
tuples ``(audio, text, id)``; :func:`build_asr_items` turns them into JSONL items, checking each clip
with :func:`llasm.audio.load_audio` and rejecting unreadable audio, empty transcripts and duplicates
(same path or same decoded samples). ``main`` is the ``data_prep/asr.py`` command::

    python data_prep/asr.py --format librispeech --input LibriSpeech/train-clean-100 --output data/libri.jsonl
    python data_prep/asr.py --format aishell --input data_aishell --split train --output data/aishell.jsonl
    python data_prep/asr.py --format commonvoice --input cv-corpus/zh-CN --split train --output data/cv.jsonl
    python data_prep/asr.py --format tsv --input list.tsv --lang en --output data/mine.jsonl
    python data_prep/asr.py --format hf --input my_dataset_dir --split train --output data/hf.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from llasm import sharding
from llasm.audio import AudioError, load_audio, save_audio
from llasm.io import relative_path as _relative
from llasm.lang import detect_lang
from llasm.prep.corpora import FORMATS, HF_TEXT_COLUMNS, Utterance, read_corpus
from llasm.prep.prompts import asr_human_value
from llasm.sharding import Records, Shard, unique_id

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- building


def _inspect(audio: Any, check_audio: bool) -> tuple[str | None, str | None]:
    """``(content_hash, error)`` of one clip; runs in worker processes.

    With ``check_audio`` the hash is over the decoded 16 kHz samples (so a wav and a flac of the same
    recording collide); without it over the file bytes (cheap, no decoding).
    """
    try:
        if check_audio or not isinstance(audio, (str, os.PathLike)):
            samples = load_audio(audio, name=_label(audio))
            return hashlib.sha1(samples.tobytes()).hexdigest(), None
        with open(audio, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest(), None
    except AudioError as err:
        return None, str(err)
    except OSError as err:
        return None, f"{audio}: {err.strerror or err}"


def _label(audio: Any) -> str | None:
    if isinstance(audio, (str, os.PathLike)):
        return str(audio)
    if isinstance(audio, dict) and audio.get("path"):
        return str(audio["path"])
    return None



def _safe_name(item_id: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", item_id)


def build_asr_items(
    utterances: Iterable[Utterance],
    output: str | os.PathLike,
    *,
    lang: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    check_audio: bool = True,
    audio_dir: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
    shard: Shard = Shard(),
) -> Records:
    """Turn utterances into ASR JSONL items; returns the :class:`~llasm.sharding.Records` (unpacks as
    ``(items, rejects)``). Nothing is written here except the audio of in-memory clips, which goes to
    ``audio_dir`` (default ``<output dir>/wavs``) as flac.

    ``lang`` overrides the per-utterance language (else the reader's, else detected from the text).
    An item carries its utterance's ``split`` when the reader knows it (the key ``llasm eval --split``
    selects by).
    The instruction and its position are drawn from a RNG seeded by ``seed`` and the item id, so an
    item's prompt does not change when other items are added or removed. ``limit`` keeps the first
    input utterances only; ``shard`` makes only its share of them (duplicates across shards are
    found by :func:`llasm.sharding.merge` from each item's content hash).
    """
    base = Path(output).parent
    audio_dir = Path(audio_dir) if audio_dir else base / "wavs"
    records = Records()
    seen_paths: set[str] = set()
    seen_hashes: dict[str, str] = {}
    seen_ids: set[str] = set()

    # Cheap filters first (empty text, duplicate path); the survivors are decoded, in parallel.
    candidates = []
    for position, utt in enumerate(utterances):
        if limit is not None and position >= limit:
            break
        records.saw(utt.id)
        # ids are made unique over the whole input, so that every shard names an item as one run would
        audio, text, item_id = utt[0], utt[1], unique_id(utt.id, seen_ids)
        if not shard.owns(position):
            continue
        source = _label(audio) or item_id
        if not text:
            reason = "no transcript for this audio" if text is None else "empty transcript"
            records.reject(position, {"source": source, "id": item_id, "reason": reason})
            continue
        if isinstance(audio, (str, os.PathLike)):
            key = os.path.abspath(audio)
            if key in seen_paths:
                records.reject(position, {"source": source, "id": item_id, "reason": "duplicate audio path"})
                continue
            seen_paths.add(key)
        candidates.append((position, Utterance(audio, text, item_id, utt.lang, utt.split)))

    bar = tqdm(total=len(candidates), desc="asr", unit="clip", disable=not progress)
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_inspect, [u.audio for _, u in candidates], [check_audio] * len(candidates), chunksize=16)
    else:
        pool = None
        results = (_inspect(u.audio, check_audio) for _, u in candidates)
    try:
        for (position, utt), (digest, error) in zip(candidates, results):
            bar.update(1)
            audio, text, item_id = utt
            source = _label(audio) or item_id
            if error:
                records.reject(position, {"source": source, "id": item_id, "reason": f"unreadable audio: {error}"})
                continue
            if digest in seen_hashes:
                reason = f"duplicate audio content (same as {seen_hashes[digest]})"
                records.reject(position, {"source": source, "id": item_id, "reason": reason})
                continue
            seen_hashes[digest] = source
            if isinstance(audio, (str, os.PathLike)):
                audio_ref = _relative(Path(audio), base)
            else:  # in-memory (HF) audio: write it out beside the JSONL
                # named by content too: another dataset converted into the same folder has the same
                # ids (hf-0000000, ...) but never the same clip, so nothing is overwritten
                target = audio_dir / f"{_safe_name(item_id)}-{digest[:12]}.flac"
                save_audio(target, load_audio(audio, name=source), 16_000)
                audio_ref = _relative(target, base)
            item_lang = lang or utt.lang or detect_lang(text)
            rng = random.Random(f"{seed}:{item_id}")
            item = {
                "id": item_id,
                "lang": item_lang,
                "audios": [audio_ref],
                "conversations": [
                    {"from": "human", "value": asr_human_value(rng, item_lang)},
                    {"from": "gpt", "value": text},
                ],
            }
            if utt.split:  # what `llasm eval --split` selects by
                item["split"] = utt.split
            records.item(position, item, dedup=[f"sha1:{digest}"])
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llasm prepare-asr", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build stage-1 ASR JSONL (audio + bilingual instruction -> transcript); data_prep/asr.py is the "
                    "same command.",
        epilog="examples:\n"
               "  llasm prepare-asr --format librispeech --input LibriSpeech --split train-clean-100 --output data/libri.jsonl\n"
               "  llasm prepare-asr --format aishell --input data_aishell --split train --output data/aishell.jsonl\n"
               "  llasm prepare-asr --format commonvoice --input cv-corpus/zh-CN --split train --output data/cv.jsonl\n"
               "  llasm prepare-asr --format tsv --input list.tsv --lang en --output data/mine.jsonl   # path<TAB>text\n"
               "  llasm prepare-asr --format hf --input my_dataset_dir --split train --output data/hf.jsonl\n"
               "  llasm prepare-asr --format hf --input my_dataset_dir --text-column normalized --output data/hf.jsonl\n"
               "AISHELL-1 ships each speaker as a .tar.gz in data_aishell/wav: unpack them first, e.g.\n"
               "  cd data_aishell/wav && for f in *.tar.gz; do tar -xzf \"$f\"; done\n"
               "An input with no clip at all is an error (naming it and what was looked for), not an empty JSONL.\n"
               "Rows carry their corpus split as 'split' where it is known (the key `llasm eval --split` selects by).\n"
               "Audio paths in the JSONL are relative to its folder (absolute when outside it); HF audio is written\n"
               "as flac to --audio-dir, named by row id and content, so several datasets can share one folder.\n"
               "Unreadable audio, empty transcripts and duplicates go to OUT.rejects.jsonl.")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, help="corpus root, TSV file or HF dataset folder")
    parser.add_argument("--output", required=True, help="out.jsonl (rejects go to out.rejects.jsonl)")
    parser.add_argument("--split", default=None,
                        help="librispeech: a split folder (train-clean-100, dev-clean, ...); aishell: train/dev/test; "
                             "commonvoice: <split>.tsv (default train); hf: a split (default train); tsv: a label for "
                             "every row. 'all' merges the splits (commonvoice: train, dev, test), each row keeping its "
                             "own. Without --split a librispeech/aishell tree with several is an error; a split that "
                             "is not there is an error naming those that are")
    parser.add_argument("--lang", default=None, choices=("en", "zh"), help="override the detected language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N input clips")
    parser.add_argument("--check-audio", action=argparse.BooleanOptionalAction, default=True,
                        help="decode every clip (rejects corrupt ones; hashes decoded samples)")
    parser.add_argument("--audio-dir", default=None, help="hf: where decoded clips go (default <output dir>/wavs)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding audio")
    parser.add_argument("--audio-column", default=None, metavar="NAME",
                        help="hf: the audio column (default: the first Audio feature, else audio/speech/wav)")
    parser.add_argument("--text-column", default=None, metavar="NAME",
                        help=f"hf: the transcript column (default: the first of {', '.join(HF_TEXT_COLUMNS)})")
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
        utterances = read_corpus(args.format, args.input, args.split, audio_column=args.audio_column,
                                 text_column=args.text_column)
        records = build_asr_items(
            utterances, args.output, lang=args.lang, seed=args.seed, limit=args.limit,
            check_audio=args.check_audio, audio_dir=args.audio_dir, workers=args.workers, shard=shard,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rejected = sharding.write(args.output, shard, records)
    logger.info("%s: %d items, %d rejected (%s)", shard.path(args.output), len(records.items), len(records.rejects),
                rejected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
