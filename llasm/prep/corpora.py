"""ASR corpus readers: one per corpus layout, each yielding :class:`Utterance` ``(audio, text, id)``.

``audio`` is a path, or an audio dict for HF datasets; ``lang`` and ``split`` ride along when the
corpus says them. :func:`read_corpus` picks the reader of a ``--format`` and checks ``--split``
against the splits the input holds. An input in which a reader finds no clip at all raises
:class:`NoClipsError` naming the input and what was looked for, with the command that unpacks
archives lying where the clips should be (AISHELL-1 ships each speaker as a ``.tar.gz``).
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from llasm.lang import detect_lang

logger = logging.getLogger(__name__)

FORMATS = ("librispeech", "aishell", "commonvoice", "tsv", "hf")
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
SPLIT_FOLDER = re.compile(r"(train|dev|test|valid|validation|eval)([-_.].*)?", re.IGNORECASE)
# how each kind of archive is unpacked into the folder it lies in ({d}: that folder, shell-quoted)
UNPACK = {
    ".tar.gz": 'for f in {d}/*.tar.gz; do tar -xzf "$f" -C {d}; done',
    ".tgz": 'for f in {d}/*.tgz; do tar -xzf "$f" -C {d}; done',
    ".tar": 'for f in {d}/*.tar; do tar -xf "$f" -C {d}; done',
    ".zip": 'for f in {d}/*.zip; do unzip -o "$f" -d {d}; done',
}
HF_TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text", "raw_text")


class NoClipsError(FileNotFoundError):
    """A reader found no clip at all in its input: not one utterance to make an item or a reject of."""


class Utterance(tuple):
    """``(audio, text, id)``; unpacks as a 3-tuple and carries optional ``lang`` and ``split`` attributes.

    ``text`` is ``None`` when the corpus has the audio but no transcript for it (AISHELL has a few).
    ``split`` is the corpus split the clip belongs to (``train-clean-100``, ``test``), when known.
    """

    def __new__(cls, audio: Any, text: str | None, id: str, lang: str | None = None, split: str | None = None):
        self = super().__new__(cls, (audio, text, id))
        self.lang = lang
        self.split = split
        return self

    audio = property(lambda self: self[0])
    text = property(lambda self: self[1])
    id = property(lambda self: self[2])


# ------------------------------------------------------------------------------- empty inputs


def unpack_hint(*folders: str | os.PathLike) -> str:
    """``"; FOLDER holds N archive(s) not unpacked (a.tar.gz, ...): unpack them first: COMMAND"`` for the
    first of ``folders`` (or of their subfolders) with archives directly in it; ``""`` when none has any."""
    folders = [Path(f) for f in folders if Path(f).is_dir()]
    # the folders themselves first, then one level below them (a split folder of speaker archives)
    for folder in folders + [d for f in folders for d in sorted(f.iterdir()) if d.is_dir()]:
        found = {p.name: next(s for s in UNPACK if p.name.lower().endswith(s)) for p in sorted(folder.iterdir())
                 if p.is_file() and p.name.lower().endswith(tuple(UNPACK))}
        if found:
            kind = collections.Counter(found.values()).most_common(1)[0][0]
            names = ", ".join(list(found)[:3]) + (", ..." if len(found) > 3 else "")
            command = UNPACK[kind].format(d=shlex.quote(str(folder)))
            return f"; {folder} holds {len(found)} archive(s) not unpacked ({names}): unpack them first: {command}"
    return ""


def _at_least_one(utterances: Iterable[Utterance], describe: Callable[[], str]) -> Iterator[Utterance]:
    """``utterances``; then :class:`NoClipsError` with ``describe()`` when there were none."""
    empty = True
    for utt in utterances:
        empty = False
        yield utt
    if empty:
        raise NoClipsError(describe())


def _missing_split(kind: str, missing: Path, available: list[str]) -> str:
    where = (f"the splits there: {', '.join(available)} (or --split all)" if available
             else "no split with clips is there")
    return f"{missing}: no such {kind} split; {where}"


def _split_of(parts: tuple[str, ...]) -> str | None:
    """The split folder a clip lies in: the first of ``parts`` (its path below the corpus root) when
    that is a folder named like a split."""
    return parts[0] if len(parts) > 1 and SPLIT_FOLDER.fullmatch(parts[0]) else None


# ---------------------------------------------------------------------------------------- readers


def read_librispeech(root: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """LibriSpeech tree: every ``*.trans.txt`` holds ``<utt-id> TEXT`` lines; audio ``<utt-id>.flac`` beside.

    Transcripts are upper case in the corpus and are lower-cased here (the convention of our data).
    ``split`` labels every clip; without it a clip's split is the split folder it lies in (``root``
    itself when ``root`` is one, e.g. ``LibriSpeech/dev-clean``). Raises ``FileNotFoundError`` for a
    missing ``root``, :class:`NoClipsError` when it holds no utterance line.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech root is not a directory")
    own = root.name if SPLIT_FOLDER.fullmatch(root.name) else None

    def lines() -> Iterator[Utterance]:
        for trans in sorted(root.rglob("*.trans.txt")):
            clip_split = split or _split_of(trans.relative_to(root).parts) or own
            for line in trans.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                yield Utterance(trans.parent / f"{utt_id}.flac", text.strip().lower(), f"libri-{utt_id}", "en",
                                clip_split)

    yield from _at_least_one(lines(), lambda: f"{root}: no clip found: looked for LibriSpeech transcripts "
                             "(*.trans.txt with '<utt-id> TEXT' lines, <utt-id>.flac beside) below it" + unpack_hint(root))


def read_aishell(root: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """AISHELL-1: ``transcript/aishell_transcript_v0.8.txt`` + ``wav/<split>/<speaker>/<utt>.wav``.

    ``root`` may be the ``data_aishell`` folder or its parent. ``split`` is ``train``/``dev``/``test``
    (all when ``None``; each clip then carries the split folder it lies in). The transcript
    separates words with spaces; they are removed. Raises ``FileNotFoundError`` for a missing
    transcript or split folder (naming the splits there), :class:`NoClipsError` when no ``*.wav`` is
    found; both say how to unpack the per-speaker ``.tar.gz`` archives the corpus ships.
    """
    root = Path(root)
    if not (root / AISHELL_TRANSCRIPT).exists() and (root / "data_aishell" / AISHELL_TRANSCRIPT).exists():
        root = root / "data_aishell"
    transcript_file = root / AISHELL_TRANSCRIPT
    if not transcript_file.exists():
        raise FileNotFoundError(f"{transcript_file}: AISHELL transcript not found" + unpack_hint(root))
    transcripts = {}
    for line in transcript_file.read_text(encoding="utf-8").splitlines():
        utt_id, _, text = line.strip().partition(" ")
        if utt_id:
            transcripts[utt_id] = join_chinese_words(text)
    wav_dir = root / "wav"
    wav_root = wav_dir / split if split else wav_dir
    if not wav_root.is_dir():
        raise FileNotFoundError(_missing_split("AISHELL", wav_root, split_folders("aishell", root))
                                + unpack_hint(wav_dir))

    def clips() -> Iterator[Utterance]:
        for wav in sorted(wav_root.rglob("*.wav")):
            yield Utterance(wav, transcripts.get(wav.stem), f"aishell-{wav.stem}", "zh",
                            _split_of(wav.relative_to(wav_dir).parts))

    yield from _at_least_one(clips(), lambda: f"{wav_root}: no clip found: looked for *.wav below it (AISHELL-1 "
                             "layout: wav/<split>/<speaker>/<utt>.wav)" + unpack_hint(wav_root, wav_dir))


def commonvoice_splits(folder: Path) -> list[str]:
    """The ``<split>.tsv`` files of a Common Voice locale folder that list clips (``path`` and
    ``sentence`` columns): ``train``, ``dev``, ``test``, ``validated``, ..."""
    splits = []
    for tsv in sorted(folder.glob("*.tsv")):
        with open(tsv, encoding="utf-8") as f:
            if {"path", "sentence"} <= set(f.readline().rstrip("\r\n").split("\t")):
                splits.append(tsv.stem)
    return splits


def read_commonvoice(path: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """Common Voice: a TSV with ``path``, ``sentence`` (and ``locale``) columns; clips in ``clips/``.

    ``path`` is the TSV file, or the locale folder with ``split`` naming ``<split>.tsv`` in it
    (default ``train``; ``all``: ``train``, ``dev`` and ``test``). Each clip carries its TSV's name
    as its split when that names one. ``lang`` comes from the ``locale`` column (``zh-CN`` -> ``zh``)
    or, without it, from the text. A missing TSV is a ``FileNotFoundError`` naming the TSVs there.
    """
    path = Path(path)
    if path.is_dir():
        names = [s for s in ("train", "dev", "test") if (path / f"{s}.tsv").exists()] if split == "all" \
            else [split or "train"]
        tsvs = [path / f"{name}.tsv" for name in names]
        if not tsvs or not tsvs[0].exists():
            missing = tsvs[0] if tsvs else path / "{train,dev,test}.tsv"
            raise FileNotFoundError(_missing_split("Common Voice", missing, commonvoice_splits(path))
                                    + unpack_hint(path))
    elif not path.exists():
        raise FileNotFoundError(f"{path}: Common Voice TSV not found" + unpack_hint(path.parent))
    elif split not in (None, "all", path.stem):
        raise ValueError(f"--split {split}: --input {path} is one TSV already; give its folder to choose a split")
    else:
        tsvs = [path]

    def rows() -> Iterator[Utterance]:
        for tsv in tsvs:
            with open(tsv, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                missing = {"path", "sentence"} - set(reader.fieldnames or ())
                if missing:
                    raise ValueError(f"{tsv}: missing column(s) {sorted(missing)} (has {reader.fieldnames})")
                tsv_split = tsv.stem if SPLIT_FOLDER.fullmatch(tsv.stem) else None
                for row in reader:
                    clip = row["path"]
                    text = (row.get("sentence") or "").strip()
                    locale = (row.get("locale") or "").strip()
                    lang = locale.split("-")[0].lower() if locale else detect_lang(text)
                    if lang == "zh":
                        text = join_chinese_words(text)
                    yield Utterance(tsv.parent / "clips" / clip, text, f"cv-{Path(clip).stem}", lang, tsv_split)

    yield from _at_least_one(rows(), lambda: f"{', '.join(map(str, tsvs))}: no clip found: no row below the header "
                             "(Common Voice TSV: path and sentence columns, clips in clips/)")


def read_tsv(path: str | os.PathLike, split: str | None = None) -> Iterator[Utterance]:
    """Generic ``audio_path<TAB>text`` list; relative paths are relative to the TSV; a header is skipped.

    ``split`` (the user's ``--split``) labels every clip. Raises ``FileNotFoundError`` when ``path`` is
    not a file, :class:`NoClipsError` when it lists no clip, ``ValueError`` for a line without a tab.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TSV file (--format tsv reads a file of audio_path<TAB>text lines)")

    def lines() -> Iterator[Utterance]:
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
                yield Utterance(audio_path, text.strip(), f"tsv-{audio_path.stem}", split=split)

    yield from _at_least_one(lines(), lambda: f"{path}: no clip found: looked for 'audio_path<TAB>text' lines "
                             "(blank lines, # comments and a header are skipped)")


def read_hf(
    dataset: Any,
    split: str | None = None,
    *,
    audio_column: str | None = None,
    text_column: str | None = None,
) -> Iterator[Utterance]:
    """A HF ``datasets.Dataset`` / ``DatasetDict`` (or a ``save_to_disk`` folder) with an ``Audio`` column.

    ``split`` picks one split of a ``DatasetDict`` (default ``train``, else its first; ``all``: every
    split, each row carrying its own); it labels the rows of a plain ``Dataset``. The audio column is
    ``audio_column``, else the first ``Audio`` feature (else ``audio``/``speech``/``wav``); the text
    column ``text_column``, else the first of :data:`HF_TEXT_COLUMNS`. Audio is read undecoded
    (``Audio(decode=False)``: ``{"bytes", "path"}``) so no torchcodec is needed;
    :func:`llasm.prep.asr.build_asr_items` decodes it with ``load_audio`` and writes it out as flac.
    Raises ``ValueError`` for an unknown split or a column not found (naming the columns there).
    """
    import datasets

    name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else "the dataset"
    if isinstance(dataset, (str, os.PathLike)):
        empty = [str(state.parent) for state in sorted(Path(dataset).glob("**/state.json"))
                 if not json.loads(state.read_text(encoding="utf-8")).get("_data_files", [None])]
        if empty:  # datasets fails to load back a dataset saved with no row (IndexError deep inside)
            raise NoClipsError(f"{name}: no clip found: {', '.join(empty)} was saved with no row")
        dataset = datasets.load_from_disk(str(dataset))
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in dataset else next(iter(dataset))
            if len(dataset) > 1:
                logger.info("hf: reading split %r of %s (choose another with --split)", split, ", ".join(dataset))
        if split != "all" and split not in dataset:
            raise ValueError(f"{name}: no split {split!r}; the splits there: {', '.join(dataset)} (or --split all)")
        parts = list(dataset.items()) if split == "all" else [(split, dataset[split])]
    else:
        split = None if split == "all" else split
        parts = [(split, dataset)]
    yield from _at_least_one(
        (utt for part, data in parts for utt in _hf_rows(data, part, name, audio_column, text_column)),
        lambda: f"{name}: no clip found: {' and '.join(f'split {p!r}' for p, _ in parts if p) or 'it'} has no row")


def _hf_rows(dataset: Any, split: str | None, name: str, audio_column: str | None,
             text_column: str | None) -> Iterator[Utterance]:
    import datasets

    features = dataset.features
    columns = f"(columns: {', '.join(features)})"
    for flag, given in (("--audio-column", audio_column), ("--text-column", text_column)):
        if given is not None and given not in features:
            raise ValueError(f"{name}: {flag} {given!r}: no such column {columns}")
    audio_column = audio_column or next((k for k, v in features.items() if isinstance(v, datasets.Audio)), None)
    if audio_column is None:
        audio_column = next((k for k in ("audio", "speech", "wav") if k in features), None)
    if audio_column is None:
        raise ValueError(f"{name}: no Audio column {columns}; name it with --audio-column NAME")
    text_column = text_column or next((k for k in HF_TEXT_COLUMNS if k in features), None)
    if text_column is None:
        raise ValueError(f"{name}: no text column among {', '.join(HF_TEXT_COLUMNS)} {columns}; "
                         "name it with --text-column NAME")
    if not len(dataset):  # nothing to cast (and datasets cannot cast a table-less dataset)
        return
    if isinstance(features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    prefix = f"hf-{split}" if split else "hf"
    for index, row in enumerate(dataset):
        item_id = str(row["id"]) if "id" in row and row["id"] is not None else f"{prefix}-{index:07d}"
        lang = row.get("lang") or row.get("language") or None
        text = (row[text_column] or "").strip()
        yield Utterance(row[audio_column], text, item_id, lang, split)


def join_chinese_words(text: str) -> str:
    """Drop the spaces word segmentation put between Chinese characters; keep those between Latin words."""
    text = re.sub(r"\s+", " ", text.strip())
    return re.sub(r"(?<=[^\x00-\x7f]) (?=\S)|(?<=\S) (?=[^\x00-\x7f])", "", text)


# ---------------------------------------------------------------------------------------- dispatch


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


def read_corpus(fmt: str, source: Any, split: str | None = None, *, audio_column: str | None = None,
                text_column: str | None = None) -> Iterator[Utterance]:
    """Dispatch to the reader of ``fmt`` (one of :data:`FORMATS`).

    A LibriSpeech or AISHELL tree holding several splits (``train-clean-100``, ``dev-clean``; ``wav/train``,
    ``wav/test``) needs ``split``: without it this raises ``ValueError`` naming them, so test data never
    lands in a training set unasked. ``split="all"`` reads them all. A split that is not there is a
    ``FileNotFoundError`` (``ValueError`` for hf) naming the splits that are. ``audio_column`` /
    ``text_column`` are for ``hf`` only.
    """
    if fmt in ("librispeech", "aishell") and split is None:
        splits = split_folders(fmt, source)
        if len(splits) > 1:
            raise ValueError(f"{source} holds the splits {', '.join(splits)}: choose one with --split "
                             "(or --split all to merge them)")
    if (audio_column or text_column) and fmt != "hf":
        raise ValueError(f"--audio-column / --text-column name columns of --format hf, not of --format {fmt}")
    one = None if split == "all" else split
    if fmt == "librispeech":
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: LibriSpeech root is not a directory" + unpack_hint(root.parent))
        if one and not (root / one).is_dir():
            raise FileNotFoundError(_missing_split("LibriSpeech", root / one, split_folders(fmt, root))
                                    + unpack_hint(root))
        return read_librispeech(root / one, one) if one else read_librispeech(root)
    if fmt == "aishell":
        return read_aishell(source, one)
    if fmt == "commonvoice":
        return read_commonvoice(source, split)
    if fmt == "tsv":
        return read_tsv(source, one)
    if fmt == "hf":
        return read_hf(source, split, audio_column=audio_column, text_column=text_column)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
