"""`llasm judge`: what the Whisper judge hears in recordings, scored against what they should say.

    llasm judge reply.wav --text "The capital of France is Paris."
    llasm judge a.wav b.wav --text "first answer" --text "第二个回答" [--judge DIR] [--json OUT]
    llasm judge reply.wav                        (transcribe only; --lang picks the language, default en)

The judge and the scoring are those of ``llasm eval --tasks speech`` (:mod:`llasm.evaluation.speech`):
:class:`~llasm.evaluation.systems.WhisperTranscriber` (greedy, in the reference's language; the
starter whisper-base unless ``--judge`` names another Whisper dir or hub id) and
:func:`~llasm.evaluation.metrics.asr_error_rate` (normalized English WER / Chinese CER, summed over
the files of a language), after the same loop guard (:func:`~llasm.evaluation.systems.collapse_loops`;
``--keep-loops`` turns it off). Give one ``--text`` per file, in order; ``--lang`` defaults to each
reference's language (any Chinese character: zh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llasm.audio import AudioError, load_audio
from llasm.evaluation.metrics import asr_error_rate
from llasm.evaluation.systems import LOOP_GUARD_RULE, WhisperTranscriber, hear
from llasm.io import atomic_path, llasm_home
from llasm.lang import detect_lang


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llasm judge", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("audio", nargs="+", help="recordings (any format soundfile reads; resampled to 16 kHz)")
    p.add_argument("--text", action="append", default=[], help="what a recording should say (one per file, in order)")
    p.add_argument("--lang", choices=["en", "zh"], default=None, help="language of every file (default: each reference's)")
    p.add_argument("--judge", default=None, help="Whisper dir or hub id (default: the starter whisper-base)")
    p.add_argument("--keep-loops", action="store_true", help="score the transcripts as heard (no loop guard)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write every transcript and score here")
    return p


def judge_files(audio: list[str], texts: list[str], transcriber, lang: str | None = None,
                keep_loops: bool = False) -> dict:
    """Transcribe each file in ``audio`` and score it against ``texts`` (same order; empty: no scores).

    Returns ``{"files": [{"audio", "lang", "reference", "heard", "error"}], "summary": {lang:
    asr_error_rate(...)}, "failed": [{"audio", "reason"}]}``; a file's ``error`` is its own WER/CER (None
    without a reference); ``heard`` is the transcript after the loop guard (``raw_heard``: before, where
    it changed). A file that cannot be read is listed in ``failed`` and the rest are judged. Raises
    ``ValueError`` when the numbers of files and texts differ.
    """
    if texts and len(texts) != len(audio):
        raise ValueError(f"{len(audio)} recording(s) but {len(texts)} --text: give one --text per recording, in order")
    rows, failed = [], []
    for i, path in enumerate(audio):
        try:
            wave = load_audio(path, name=path)
        except AudioError as err:  # failures are data: the other files are still judged
            failed.append({"audio": path, "reason": str(err)})
            continue
        reference = texts[i] if texts else None
        item_lang = lang or (detect_lang(reference) if reference else "en")
        heard, raw = hear(transcriber, wave, item_lang, reference, keep_loops)
        row = {"audio": path, "lang": item_lang, "reference": reference, "heard": heard,
               **({"raw_heard": raw} if raw is not None else {})}
        row["error"] = _rate([reference], [row["heard"]], item_lang)["value"] if reference else None
        rows.append(row)
    summary = {}
    for item_lang in sorted({r["lang"] for r in rows if r["error"] is not None}):
        scored = [r for r in rows if r["error"] is not None and r["lang"] == item_lang]
        summary[item_lang] = _rate([r["reference"] for r in scored], [r["heard"] for r in scored], item_lang)
    return {"files": rows, "summary": summary, "failed": failed}


def _rate(refs: list[str], hyps: list[str], lang: str) -> dict:
    try:
        return asr_error_rate(refs, hyps, lang)
    except ValueError:  # a reference with no words once normalized (only punctuation): nothing to score
        return {"value": None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.text and len(args.text) != len(args.audio):
        parser.error(f"{len(args.audio)} recording(s) but {len(args.text)} --text: give one --text per recording, in order")
    if any(not t.strip() for t in args.text):
        parser.error("an empty --text: give what the recording should say (or no --text to only transcribe)")
    for a in args.audio:
        if Path(a).is_dir():
            parser.error(f"{a} is a folder, not a recording (give the audio files, e.g. {a}/*.wav)")
        if not Path(a).exists():
            parser.error(f"no such recording: {a}")
    judge = args.judge or str(Path(llasm_home()) / "whisper-base")
    if not args.judge and not Path(judge).is_dir():
        parser.error(f"no --judge given and the starter whisper-base is not at {judge} (run `llasm starter-models`)")
    if args.lang:
        for text in args.text:
            if detect_lang(text) != args.lang:
                print(f"note: --lang {args.lang}, but the reference {text[:30]!r} reads as {detect_lang(text)}",
                      file=sys.stderr)
    result = judge_files(args.audio, args.text, WhisperTranscriber(judge, device=args.device), args.lang,
                         args.keep_loops)
    for r in result["files"]:
        score = "" if r["error"] is None else f"  {'CER' if r['lang'] == 'zh' else 'WER'} {100 * r['error']:.1f} %"
        print(f"{r['audio']} [{r['lang']}]{score}\n  heard: {r['heard']}")
        if "raw_heard" in r:
            print(f"  (loop guard: {len(r['raw_heard']) - len(r['heard'])} repeated characters cut; heard as "
                  f"{r['raw_heard'][:60]!r}...; --keep-loops scores it as heard)")
    for item_lang, s in result["summary"].items():
        if s["value"] is not None:
            print(f"{item_lang}: {s['metric'].upper()} {100 * s['value']:.1f} % over {s['n_utts']} file(s) "
                  f"({s['substitutions']} sub, {s['deletions']} del, {s['insertions']} ins of {s['n_ref']})")
    for f in result["failed"]:
        print(f"not judged: {f['reason']}", file=sys.stderr)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps({"judge": judge, "loop_guard": None if args.keep_loops else LOOP_GUARD_RULE, **result},
                                            ensure_ascii=False, indent=1), encoding="utf-8")
    return 1 if result["failed"] else 0
