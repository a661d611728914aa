"""Standard ASR test sets in their published layouts (scored as WER/CER, two normalizations).

``librispeech:test-clean`` / ``test-other``
    OpenSLR 12 tree ``LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with
    ``<utt-id> TEXT`` lines and ``<utt-id>.flac`` beside (read by :func:`llasm.prep.corpora.read_librispeech`);
    or a parquet export of the hub's ``openslr/librispeech_asr`` (``text`` column, any
    ``*<split>*.parquet`` under ``--data``).
``aishell1:test``
    OpenSLR 33 ``data_aishell/transcript/aishell_transcript_v0.8.txt`` + ``data_aishell/wav/test/<spk>/<utt>.wav``
    (the per-speaker tarballs unpacked), read by :func:`llasm.prep.corpora.read_aishell`.
``fleurs:en_us`` / ``fleurs:cmn_hans_cn``
    the hub repo ``google/fleurs``: ``data/<config>/test.tsv`` (no header; ``id``, ``file_name``,
    ``raw_transcription``, ``transcription``, ``words``, ``num_samples``, ``gender``, as its loading
    script reads it) and ``data/<config>/audio/test/<file_name>`` (``test.tar.gz`` unpacked); the
    reference is ``raw_transcription``.
LibriSpeech and Fleurs are also read from the hub (``--data openslr/librispeech_asr`` / ``google/fleurs``,
configs ``clean``/``other`` and ``en_us``/``cmn_hans_cn``, split ``test``) when the network allows.

``wenetspeech:test_net`` / ``test_meeting``
    a Kaldi-style data dir as WeNet's ``examples/wenetspeech/s0`` prepares it (``wav.scp``, ``text``,
    optional ``segments`` with ``<utt> <recording> <start> <end>`` in seconds), looked up as
    ``--data/<split>`` or ``--data`` itself.
"""

from __future__ import annotations

import csv
from pathlib import Path

from llasm.evaluation.benchmarks.items import BenchItem, BenchmarkError, hub_dataset, iter_parquet_rows
from llasm.prep.corpora import read_aishell, read_librispeech

SETS = {"librispeech": ("en", ("test-clean", "test-other")), "aishell1": ("zh", ("test",)),
        "fleurs": (None, ("en_us", "cmn_hans_cn")), "wenetspeech": ("zh", ("test_net", "test_meeting"))}
FLEURS_LANG = {"en_us": "en", "cmn_hans_cn": "zh"}
HUB = {"librispeech": "openslr/librispeech_asr", "fleurs": "google/fleurs"}


def _asr_item(name: str, subset: str, lang: str, item_id: str, audio, text: str) -> BenchItem:
    return BenchItem(id=item_id, benchmark=name, subset=subset, lang=lang, audio=audio, prompt=text,
                     reference=text, scorer="asr")


def _librispeech(data: Path, split: str) -> list[BenchItem]:
    for root in (data / split, data / "LibriSpeech" / split, data):
        if root.is_dir() and next(root.rglob("*.trans.txt"), None) is not None:
            try:
                utts = list(read_librispeech(root))
            except FileNotFoundError as err:  # transcripts without one utterance line
                raise BenchmarkError(f"librispeech {split}: {err}") from err
            return [_asr_item("librispeech", split, "en", u.id, str(u.audio), u.text) for u in utts]
    files = sorted(p for p in data.rglob("*.parquet") if split.replace("-", ".") in str(p) or split in str(p))
    if files:
        items = []
        for f in files:
            for row in iter_parquet_rows(f):
                items.append(_asr_item("librispeech", split, "en", str(row.get("id") or f"{f.stem}-{len(items)}"),
                                       row["audio"], str(row["text"]).lower()))
        return items
    raise BenchmarkError(f"librispeech {split}: no *.trans.txt tree under {data} (or {data / split}) "
                         f"and no parquet file naming {split}")


def _aishell(data: Path, split: str) -> list[BenchItem]:
    try:
        utts = list(read_aishell(data, split))
    except FileNotFoundError as err:
        raise BenchmarkError(f"aishell1 {split}: {err}") from err
    return [_asr_item("aishell1", split, "zh", u.id, str(u.audio), u.text) for u in utts if u.text]


def _fleurs(data: Path, config: str, split: str = "test") -> list[BenchItem]:
    lang = FLEURS_LANG.get(config)
    if lang is None:
        raise BenchmarkError(f"fleurs config {config!r}: llasm scores {', '.join(FLEURS_LANG)}")
    for folder in (data / "data" / config, data / config, data):
        if (folder / f"{split}.tsv").is_file():
            break
    else:
        raise BenchmarkError(f"fleurs {config}: no {split}.tsv under {data}/data/{config} (google/fleurs layout)")
    audio_dir = folder / "audio" / split
    items = []
    with open(folder / f"{split}.tsv", encoding="utf-8", newline="") as f:
        for cols in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(cols) < 3:
                continue
            utt_id, file_name, raw = cols[0], cols[1], cols[2]
            items.append(_asr_item("fleurs", config, lang, f"fleurs-{config}-{utt_id}-{Path(file_name).stem}",
                                   str(audio_dir / file_name), raw.strip()))
    return items


def _from_hub(name: str, subset: str, split: str) -> list[BenchItem]:
    if name == "librispeech":
        rows = hub_dataset(HUB[name], subset.split("-")[-1], split)  # test-clean -> config "clean"
        return [_asr_item(name, subset, "en", str(r["id"]), r["audio"], str(r["text"]).lower()) for r in rows]
    lang = FLEURS_LANG.get(subset)
    if lang is None:
        raise BenchmarkError(f"fleurs config {subset!r}: llasm scores {', '.join(FLEURS_LANG)}")
    rows = hub_dataset(HUB[name], subset, split)
    return [_asr_item(name, subset, lang, f"fleurs-{subset}-{r['id']}-{i}", r["audio"], str(r["raw_transcription"]))
            for i, r in enumerate(rows)]


def _kaldi_table(path: Path) -> dict[str, str]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            table[key] = value.strip()
    return table


def _wenetspeech(data: Path, split: str) -> list[BenchItem]:
    folder = next((d for d in (data / split, data / split.upper(), data) if (d / "text").is_file()), None)
    if folder is None or not (folder / "wav.scp").is_file():
        raise BenchmarkError(f"wenetspeech {split}: no Kaldi data dir (wav.scp + text) at {data / split} or {data}")
    wavs, texts = _kaldi_table(folder / "wav.scp"), _kaldi_table(folder / "text")
    segments = {}
    if (folder / "segments").is_file():
        for key, value in _kaldi_table(folder / "segments").items():
            rec, start, end = value.split()
            segments[key] = (rec, float(start), float(end))
    items = []
    for key, text in texts.items():
        if key in segments:
            rec, start, end = segments[key]
            audio = {"path": _resolve(folder, wavs.get(rec, "")), "start": start, "end": end}
        else:
            audio = _resolve(folder, wavs.get(key, ""))
        items.append(_asr_item("wenetspeech", split, "zh", key, audio, text.replace(" ", "")))
    return items


def _resolve(folder: Path, path: str) -> str:
    if not path:
        return ""
    p = Path(path)
    return str(p if p.is_absolute() else folder / p)


def load(name: str, subset: str | None, data: str | None = None, split: str | None = None,
         limit: int | None = None) -> tuple[list[BenchItem], list[dict]]:
    """Items of one ASR test set (module docstring); returns ``(items, errors)``.

    ``subset`` defaults to the set's first (``test-clean``, ``test``, ``en_us``, ``test_net``);
    ``data`` is the corpus folder (required: these corpora are not fetched here). Items whose audio
    path is missing from ``wav.scp`` are errors.
    """
    if name not in SETS:
        raise BenchmarkError(f"unknown ASR set {name!r}; choose from {', '.join(SETS)}")
    subset = subset or SETS[name][1][0]
    if data and data == HUB.get(name) and not Path(data).exists():
        items = _from_hub(name, subset, split or "test")
        return (items[:limit] if limit else items), []
    if not data or not Path(data).exists():
        raise BenchmarkError(f"{name}:{subset} needs --data: the corpus folder in its published layout ({data} not found)")
    root = Path(data)
    if name == "librispeech":
        items = _librispeech(root, subset)
    elif name == "aishell1":
        items = _aishell(root, subset)
    elif name == "fleurs":
        items = _fleurs(root, subset, split or "test")
    else:
        items = _wenetspeech(root, subset)
    missing = {i.id for i in items
               if not ((i.audio.get("bytes") or i.audio.get("path")) if isinstance(i.audio, dict) else i.audio)}
    errors = [{"task": f"{name}:{subset}", "system": "data", "id": i, "error": "no audio path for this utterance"}
              for i in sorted(missing)]
    items = [i for i in items if i.id not in missing]
    return (items[:limit] if limit else items), errors
