"""One benchmark item, the ``NAME[:subset]`` spec, and the readers shared by the loaders.

A :class:`BenchItem` is what every loader yields and every system answers: the audio (a path, a
HF-datasets ``{"bytes", "path"}`` dict, or a ``{"path", "start", "end"}`` segment of a longer
recording), the words spoken (``prompt``), the reference and the scorer that reads the reply.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from llasm.audio import SAMPLING_RATE, load_audio


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded: unknown name, missing folder, wrong layout."""


@dataclasses.dataclass
class BenchItem:
    """One question (or utterance) of a benchmark.

    ``audio``: path / ``{"bytes", "path"}`` / ``{"path", "start", "end"}`` (seconds). ``prompt``:
    the words spoken (VoiceBench's ``prompt``, URO-Bench's ``source_text``, the ASR transcript).
    ``reference``: what the scorer compares with (``None`` for open questions). ``scorer``: a key of
    :data:`llasm.evaluation.benchmarks.scorers.PRIMARY_METRIC`. ``meta``: the benchmark's extra columns
    (IFEval's ``instruction_id_list`` / ``kwargs``, ...).
    """

    id: str
    benchmark: str
    subset: str
    lang: str
    audio: Any
    prompt: str
    reference: str | None
    scorer: str
    meta: dict = dataclasses.field(default_factory=dict)
    extra_text: str = ""  # typed text after the audio (none in these benchmarks; systems read it)

    @property
    def group(self) -> str:
        return f"{self.benchmark}:{self.subset}"


# other names of a benchmark -> its canonical name (the one reports carry)
ALIASES = {"aishell": "aishell1"}  # `llasm prepare-asr --format aishell` names the same corpus so


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"voicebench:mmsu"`` -> ``("voicebench", "mmsu")``; ``"aishell1"`` -> ``("aishell1", None)``;
    an alias (:data:`ALIASES`) gives the canonical name: ``"aishell:test"`` -> ``("aishell1", "test")``."""
    name, _, subset = spec.strip().partition(":")
    if not name:
        raise BenchmarkError(f"--benchmark {spec!r}: expected NAME[:subset]")
    return ALIASES.get(name.lower(), name.lower()), (subset or None)


def canonical_spec(spec: str) -> str:
    """``spec`` with its canonical name: ``"aishell:test"`` -> ``"aishell1:test"``."""
    name, subset = parse_spec(spec)
    return f"{name}:{subset}" if subset else name


def load_item_audio(audio: Any):
    """16 kHz float32 samples of an item's audio; a ``start``/``end`` dict is cut from its recording."""
    if isinstance(audio, dict) and "start" in audio:
        samples = load_audio(audio["path"])
        start = int(round(float(audio["start"]) * SAMPLING_RATE))
        end = int(round(float(audio["end"]) * SAMPLING_RATE)) if audio.get("end") is not None else len(samples)
        if not 0 <= start < end <= len(samples) + SAMPLING_RATE // 100:
            raise ValueError(f"{audio['path']}: segment {audio['start']}-{audio['end']} s outside the recording "
                             f"({len(samples) / SAMPLING_RATE:.2f} s)")
        return samples[start:end]
    return load_audio(audio)


def iter_parquet_rows(path: str | os.PathLike, batch_size: int = 64) -> Iterator[dict]:
    """Rows of a parquet file as dicts, read in batches (audio columns stay ``{"bytes", "path"}``)."""
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def parquet_files(folder: Path, split: str) -> list[Path]:
    """``<split>-00000-of-0000N.parquet`` (HF hub layout) or ``<split>/*.parquet`` (HF parquet export)."""
    files = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
    if not files and (folder / split).is_dir():
        files = sorted((folder / split).glob("*.parquet"))
    return files


def hub_dataset(repo: str, config: str | None, split: str):
    """A hub dataset split with audio left undecoded; a clear error when the hub is out of reach."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise BenchmarkError(f"{repo} ({config or 'default'}/{split}): the hub is offline here (HF_HUB_OFFLINE=1); "
                             "download the dataset and pass its folder with --data")
    import datasets

    try:
        data = datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # noqa: BLE001 - network, auth, unknown config: all say the same to the user
        raise BenchmarkError(f"{repo} ({config or 'default'}/{split}): could not load from the hub "
                             f"({type(err).__name__}: {err})") from err
    for name, feature in data.features.items():
        if isinstance(feature, datasets.Audio):
            data = data.cast_column(name, datasets.Audio(decode=False))
    return data
