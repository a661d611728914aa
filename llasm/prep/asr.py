"""ASR corpora -> stage-1 JSONL (audio + varied transcription instruction -> transcript).

One reader per corpus layout yields :class:`Utterance` tuples ``(audio, text, id)``; ``audio`` is a
path, or an audio dict for HF datasets. :func:`build_asr_items` turns them into JSONL items, checking
each clip with :func:`llasm.audio.load_audio` and rejecting unreadable audio, empty transcripts and
duplicates (same path or same decoded samples). ``main`` is the ``data_prep/asr.py`` command::

    python data_prep/asr.py --format librispeech --input LibriSpeech/train-clean-100 --output data/libri.jsonl
    python data_prep/asr.py --format aishell --input data_aishell --split train --output data/aishell.jsonl
    python data_prep/asr.py --format commonvoice --input cv-corpus/zh-CN --split train --output data/cv.jsonl
    python data_prep/asr.py --format tsv --input list.tsv --lang en --output data/mine.jsonl
    python data_prep/asr.py --format hf --input my_dataset_dir --split train --output data/hf.jsonl
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from llasm import sharding
from llasm.audio import AudioError, load_audio, save_audio
from llasm.io import relative_path as _relative
from llasm.lang import detect_lang
from llasm.prep.prompts import asr_human_value
from llasm.sharding import Records, Shard, unique_id

logger = logging.getLogger(__name__)

FORMATS = ("librispeech", "aishell", "commonvoice", "tsv", "hf")
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"


class Utterance(tuple):
    """``(audio, text, id)``; unpacks as a 3-tuple and carries an optional ``lang`` attribute.

    ``text`` is ``None`` when the corpus has the audio but no transcript for it (AISHELL has a few).
    """

    def __new__(cls, audio: Any, text: str | None, id: str, lang: str | None = None):
        self = super().__new__(cls, (audio, text, id))
        self.lang = lang
        return self

    audio = property(lambda self: self[0])
    text = property(lambda self: self[1])
    id = property(lambda self: self[2])


# ---------------------------------------------------------------------------------------- readers


def read_librispeech(root: str | os.PathLike) -> Iterator[Utterance]:
    """LibriSpeech tree: every ``*.trans.txt`` holds ``<utt-id> TEXT`` lines; audio ``<utt-id>.flac`` beside.

    Transcripts are upper case in the corpus and are lower-cased here (the convention of our data).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech root is not a directory")
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            yield Utterance(trans.parent / f"{utt_id}.flac", text.strip().lower(), f"libri-{utt_id}", "en")


def read_aishell(root: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` + ``wav/<split>/<speaker>/<utt>.wav``.

    ``root`` may be the ``data_aishell`` folder or its parent. ``split`` is ``train``/``dev``/``test``
    (all when ``None``). The transcript separates words with spaces; they are removed.
    """
    root = Path(root)
    if not (root / AISHELL_TRANSCRIPT).exists() and (root / "data_aishell" / AISHELL_TRANSCRIPT).exists():
        root = root / "data_aishell"
    transcript_file = root / AISHELL_TRANSCRIPT
    if not transcript_file.exists():
        raise FileNotFoundError(f"{transcript_file}: AISHELL transcript not found")
    transcripts = {}
    for line in transcript_file.read_text(encoding="utf-8").splitlines():
        utt_id, _, text = line.strip().partition(" ")
        if utt_id:
            transcripts[utt_id] = join_chinese_words(text)
    wav_root = root / "wav" / split if split else root / "wav"
    if not wav_root.is_dir():
        raise FileNotFoundError(f"{wav_root}: AISHELL wav folder not found")
    for wav in sorted(wav_root.rglob("*.wav")):
        yield Utterance(wav, transcripts.get(wav.stem), f"aishell-{wav.stem}", "zh")


def read_commonvoice(path: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """Common Voice: a TSV with ``path``, ``sentence`` (and ``locale``) columns; clips in ``clips/``.

    ``path`` is the TSV file, or the locale folder with ``split`` naming ``<split>.tsv`` in it.
    ``lang`` comes from the ``locale`` column (``zh-CN`` -> ``zh``) or, without it, from the text.
    """
    path = Path(path)
    tsv = path / f"{split or 'train'}.tsv" if path.is_dir() else path
    if not tsv.exists():
        raise FileNotFoundError(f"{tsv}: Common Voice TSV not found")
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"path", "sentence"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{tsv}: missing column(s) {sorted(missing)} (has {reader.fieldnames})")
        for row in reader:
            clip = row["path"]
            text = (row.get("sentence") or "").strip()
            locale = (row.get("locale") or "").strip()
            lang = locale.split("-")[0].lower() if locale else detect_lang(text)
            if lang == "zh":
                text = join_chinese_words(text)
            yield Utterance(tsv.parent / "clips" / clip, text, f"cv-{Path(clip).stem}", lang)


def read_tsv(path: str | os.PathLike) -> Iterator[Utterance]:
    """Generic ``audio_path<TAB>text`` list; relative paths are relative to the TSV; a header is skipped."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith("#"):
                continue
            audio, sep, text = line.partition("\t")
            if lineno == 1 and audio.strip().lower() in {"path", "audio", "audio_path", "file", "wav"}:
                continue  # header row
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected 'audio_path<TAB>text', found no tab")
            audio_path = Path(audio.strip())
            if not audio_path.is_absolute():
                audio_path = path.parent / audio_path
            yield Utterance(audio_path, text.strip(), f"tsv-{audio_path.stem}")


def read_hf(
    dataset: Any,
    split: str | None = None,
    *,
    audio_column: str | None = None,
    text_column: str | None = None,
) -> Iterator[Utterance]:
    """A HF ``datasets.Dataset`` (or a ``save_to_disk`` folder) with an ``Audio`` column.

    Audio is read undecoded (``Audio(decode=False)``: ``{"bytes", "path"}``) so no torchcodec is
    needed; :func:`build_asr_items` decodes it with ``load_audio`` and writes it out as flac.
    """
    import datasets

    if isinstance(dataset, (str, os.PathLike)):
        dataset = datasets.load_from_disk(str(dataset))
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in dataset else next(iter(dataset))
            if len(dataset) > 1:
                logger.info("hf: reading split %r of %s (choose another with --split)", split, ", ".join(dataset))
        if split not in dataset:
            raise ValueError(f"split {split!r} not in dataset (has {list(dataset)})")
        dataset = dataset[split]
    features = dataset.features
    audio_column = audio_column or next((k for k, v in features.items() if isinstance(v, datasets.Audio)), None)
    if audio_column is None:
        audio_column = next((k for k in ("audio", "speech", "wav") if k in features), None)
    if audio_column is None:
        raise ValueError(f"dataset has no Audio column (columns: {list(features)})")
    if text_column is None:
        candidates = ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text")
        text_column = next((k for k in candidates if k in features), None)
        if text_column is None:
            raise ValueError(f"dataset has no text column among {candidates} (columns: {list(features)})")
    if isinstance(features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    prefix = f"hf-{split}" if split else "hf"
    for index, row in enumerate(dataset):
        item_id = str(row["id"]) if "id" in row and row["id"] is not None else f"{prefix}-{index:07d}"
        lang = row.get("lang") or row.get("language") or None
        text = (row[text_column] or "").strip()
        yield Utterance(row[audio_column], text, item_id, lang)


def join_chinese_words(text: str) -> str:
    """Drop the spaces word segmentation put between Chinese characters; keep those between Latin words."""
    text = re.sub(r"\s+", " ", text.strip())
    return re.sub(r"(?<=[^\x00-\x7f]) (?=\S)|(?<=\S) (?=[^\x00-\x7f])", "", text)


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
        candidates.append((position, Utterance(audio, text, item_id, utt.lang)))

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
            records.item(
                position,
                {
                    "id": item_id,
                    "lang": item_lang,
                    "audios": [audio_ref],
                    "conversations": [
                        {"from": "human", "value": asr_human_value(rng, item_lang)},
                        {"from": "gpt", "value": text},
                    ],
                },
                dedup=[f"sha1:{digest}"],
            )
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return records


SPLIT_FOLDER = re.compile(r"(train|dev|test|valid|validation|eval)([-_.].*)?", re.IGNORECASE)


def split_folders(fmt: str, source: Any) -> list[str]:
    """The train/dev/test folders a LibriSpeech or AISHELL tree holds below ``source`` (``[]`` when
    ``source`` is already one split or the format has no split folders)."""
    root = Path(source)
    if fmt == "aishell":
        root = root / "data_aishell" if (root / "data_aishell").is_dir() else root
        root = root / "wav"
        has_data = lambda d: next(d.rglob("*.wav"), None) is not None  # noqa: E731
    elif fmt == "librispeech":
        has_data = lambda d: next(d.rglob("*.trans.txt"), None) is not None  # noqa: E731
    else:
        return []
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and SPLIT_FOLDER.fullmatch(d.name) and has_data(d))


def read_corpus(fmt: str, source: Any, split: str | None = None) -> Iterator[Utterance]:
    """Dispatch to the reader of ``fmt`` (one of :data:`FORMATS`).

    A LibriSpeech or AISHELL tree holding several splits (``train-clean-100``, ``dev-clean``; ``wav/train``,
    ``wav/test``) needs ``split``: without it this raises ``ValueError`` naming them, so test data never
    lands in a training set unasked. ``split="all"`` reads them all.
    """
    if fmt in ("librispeech", "aishell") and split is None:
        splits = split_folders(fmt, source)
        if len(splits) > 1:
            raise ValueError(f"{source} holds the splits {', '.join(splits)}: choose one with --split "
                             "(or --split all to merge them)")
    if split == "all":
        split = None
    if fmt == "librispeech":
        root = Path(source)
        if split and not (root / split).is_dir():
            raise FileNotFoundError(f"{root / split}: no such LibriSpeech split folder")
        return read_librispeech(root / split if split else root)
    if fmt == "aishell":
        return read_aishell(source, split)
    if fmt == "commonvoice":
        return read_commonvoice(source, split)
    if fmt == "tsv":
        return read_tsv(source)
    if fmt == "hf":
        return read_hf(source, split)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


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
               "Audio paths in the JSONL are relative to its folder (absolute when outside it); HF audio is written\n"
               "as flac to --audio-dir, named by row id and content, so several datasets can share one folder.\n"
               "Unreadable audio, empty transcripts and duplicates go to OUT.rejects.jsonl.")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, help="corpus root, TSV file or HF dataset folder")
    parser.add_argument("--output", required=True, help="out.jsonl (rejects go to out.rejects.jsonl)")
    parser.add_argument("--split", default=None,
                        help="librispeech: a split folder (train-clean-100, dev-clean, ...); aishell: train/dev/test; "
                             "commonvoice: <split>.tsv (default train); hf: a split (default train); 'all' merges the "
                             "splits of a librispeech/aishell tree (without --split a tree with several is an error)")
    parser.add_argument("--lang", default=None, choices=("en", "zh"), help="override the detected language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N input clips")
    parser.add_argument("--check-audio", action=argparse.BooleanOptionalAction, default=True,
                        help="decode every clip (rejects corrupt ones; hashes decoded samples)")
    parser.add_argument("--audio-dir", default=None, help="hf: where decoded clips go (default <output dir>/wavs)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding audio")
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
        utterances = read_corpus(args.format, args.input, args.split)
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
