"""Speech-output evaluation: a Whisper judge listens, WER/CER against the text it should say.

Systems (``results[system][lang]``, corpus ``wer`` for English, ``cer`` for Chinese):

``source``
    the judge on the reference answer recording itself (the TTS audio): the judge's own error on
    this speech, the floor for the two below.
``resynthesis``
    units of the reference recording (k-means, :class:`llasm.speech.units.UnitExtractor`) -> the unit
    vocoder with its *predicted* durations (as in generation) -> judge; scored against the answer
    text. Measures units + vocoder.
``round_trip``
    ``model.chat(question, speak=True)`` -> (text, speech); the judge transcribes the speech and is
    scored against the *text the model wrote* — the whole speech head (unit head + vocoder) on the
    model's own answers. The question is given as text when the item has its transcript, so that
    this measures speaking, not listening. A head that reads the reply's text (``unit_head.input:
    phonemes``) speaks replies written ``batch_size`` at a time (:func:`llasm.chat.chat_batch`, greedy:
    the replies ``chat`` writes, up to padding's floating-point effects); a head on the LLM's states
    needs each reply's own states, so its items are answered one by one.

The judge's transcripts go through the loop guard every ASR hypothesis of :mod:`llasm.evaluation` goes
through (:func:`llasm.evaluation.systems.collapse_loops`, against the reference; ``keep_loops`` turns it
off; a transcript it changed is kept as ``raw_judge``): Whisper that loses a repetitive answer repeats it
until its token limit, and one such item would outweigh the rest.

A few wavs per language are kept under ``<output>/speech_samples/`` to listen to. Items whose
audio cannot be read or whose synthesis fails are recorded in ``errors`` and the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from llasm.audio import SAMPLING_RATE, load_audio, save_audio
from llasm.evaluation import metrics as M
from llasm.evaluation.items import _lang
from llasm.evaluation.systems import LOOP_GUARD_RULE, LlasmSystem, Transcriber, call_batched, hear
from llasm.io import read_jsonl
from llasm.speech.token2wav import load_token2wav
from llasm.speech.units import UnitExtractor
from llasm.unit_head import speak_text

logger = logging.getLogger(__name__)

SYSTEMS = ("source", "resynthesis", "round_trip")


@dataclass
class SpeechItem:
    id: str
    lang: str
    question: str  # the question's text (transcript of a spoken turn, or the text turn)
    answer: str  # the reference answer text
    answer_audio: str | None  # the spoken reference answer (gpt turn "audio"), when synthesized


def load_speech_items(path, split: str | None = "test", limit: int | None = None) -> tuple[list[SpeechItem], list[dict]]:
    """First human turn + first gpt turn of each conversation (``split`` filter, ``limit`` per language)."""
    path = Path(path)
    items, errors, per_lang = [], [], {}
    for n, row in enumerate(read_jsonl(path)):
        if split and row.get("split", "test") != split:
            continue
        rid = str(row.get("id", f"line{n + 1}"))
        turns = row.get("conversations") or []
        human = next((t for t in turns if t.get("from") in ("human", "user")), None)
        gpt = next((t for t in turns if t.get("from") in ("gpt", "assistant")), None)
        if human is None or gpt is None or not str(gpt.get("value", "")).strip():
            errors.append({"task": "speech", "system": "all", "id": rid, "error": f"{path}:{n + 1}: needs a human and a gpt turn"})
            continue
        question = human.get("transcript") or human.get("value", "")
        question = "" if question == "<speech>" else str(question).replace("<speech>", "").strip()
        answer = str(gpt["value"]).strip()
        try:
            lang = _lang(row, answer)
        except ValueError as err:
            errors.append({"task": "speech", "system": "all", "id": rid, "error": f"{path}:{n + 1}: {err}"})
            continue
        if limit is not None and per_lang.get(lang, 0) >= limit:
            continue
        per_lang[lang] = per_lang.get(lang, 0) + 1
        audio = gpt.get("audio")
        items.append(SpeechItem(rid, lang, question, answer, str(path.parent / audio) if audio else None))
    return items, errors


def evaluate_speech(
    items: Sequence[SpeechItem],
    judge: Transcriber,
    *,
    model=None,
    vocoder=None,
    extractor=None,
    max_new_tokens: int = 64,
    samples_dir: str | Path | None = None,
    samples_per_lang: int = 2,
    progress: bool = True,
    keep_loops: bool = False,
    batch_size: int = 8,
) -> dict:
    """Run the systems that the given parts allow; returns ``{"results", "counts", "details", "errors", "notes"}``.

    ``source`` needs answer audio; ``resynthesis`` needs answer audio, ``extractor`` and ``vocoder``;
    ``round_trip`` needs ``model`` with a unit head and a vocoder (``vocoder`` is attached when given).
    ``batch_size``: round-trip questions per ``generate`` call when the head reads the reply's text.
    """
    if model is not None and vocoder is not None and getattr(model, "vocoder", None) is None:
        model.set_vocoder(vocoder)
    run = {"source": any(i.answer_audio for i in items),
           "resynthesis": extractor is not None and vocoder is not None and any(i.answer_audio for i in items),
           "round_trip": model is not None and getattr(model, "unit_head", None) is not None
           and getattr(model, "vocoder", None) is not None}
    notes = [f"speech {name}: skipped ({why})" for name, why in (
        ("source", "no answer audio in the data"), ("resynthesis", "needs answer audio, --kmeans and --vocoder"),
        ("round_trip", "needs a model with a unit head and --vocoder")) if not run[name]]
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    records, errors, kept = [], [], {}
    samples = Path(samples_dir) if samples_dir else None

    def keep_sample(item, name, audio):
        if samples is None or kept.get((item.lang, name), 0) >= samples_per_lang:
            return None
        kept[(item.lang, name)] = kept.get((item.lang, name), 0) + 1
        return str(save_audio(samples / f"{item.id}.{name}.wav", audio, SAMPLING_RATE))

    def judge_into(item, name, audio, reference, row):
        hyp, raw = hear(judge, audio, item.lang, reference, keep_loops)
        row[name] = {"reference": reference, "judge": hyp, **({"raw_judge": raw} if raw is not None else {})}
        if (wav := keep_sample(item, name, audio)) is not None:
            row[name]["wav"] = wav
        pairs.setdefault((name, item.lang), []).append((reference, hyp))

    replies = _written_replies(model, items, max_new_tokens, batch_size, progress) if run["round_trip"] else {}
    for item in tqdm(items, desc="speech eval", unit="item", disable=not progress):
        row = {"id": item.id, "lang": item.lang, "question": item.question}
        records.append(row)
        for name in SYSTEMS:
            if not run[name] or (name != "round_trip" and not item.answer_audio):
                continue
            try:
                if name == "source":
                    judge_into(item, name, load_audio(item.answer_audio), item.answer, row)
                elif name == "resynthesis":
                    units, _ = extractor.extract(item.answer_audio)
                    judge_into(item, name, vocoder.synthesize(units), item.answer, row)
                else:
                    if not item.question:
                        raise ValueError("the item has no question text")
                    if item.id in replies:
                        text = replies[item.id]
                        audio = speak_text(model, text, model.vocoder)
                    else:
                        text, audio = model.chat(text=item.question, speak=True, max_new_tokens=max_new_tokens)
                    judge_into(item, name, audio, text, row)
            except Exception as err:  # noqa: BLE001 — one bad item must not stop the run
                logger.warning("speech %s %s: %s", name, item.id, err)
                errors.append({"task": "speech", "system": name, "id": item.id, "error": f"{type(err).__name__}: {err}"})

    results: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (name, lang), scored in sorted(pairs.items(), key=lambda kv: (SYSTEMS.index(kv[0][0]), kv[0][1])):
        try:
            rate = M.asr_error_rate([r for r, _ in scored], [h for _, h in scored], lang)
        except ValueError as err:  # e.g. every reference empty after normalization
            notes.append(f"speech {name} {lang}: not scored ({err})")
            continue
        results.setdefault(name, {}).setdefault(lang, {})[rate["metric"]] = rate["value"]
        counts.setdefault(name, {}).setdefault(lang, {})["speech"] = len(scored)
    return {"results": results, "counts": counts, "details": {"speech": records}, "errors": errors, "notes": notes}


def _written_replies(model, items: Sequence[SpeechItem], max_new_tokens: int, batch_size: int,
                     progress: bool) -> dict[str, str]:
    """``{item id: reply}`` written ``batch_size`` questions at a time, for a head that reads the reply's
    text (empty for a head on the LLM's states); :func:`call_batched` runs a failed batch item by item,
    and an item that still fails is left to ``chat`` in the loop, where its error is recorded."""
    if model.unit_head.config.input != "phonemes":
        return {}
    system = LlasmSystem(model, prompts={}, max_new_tokens=max_new_tokens)
    asked = [item for item in items if item.question]
    replies: dict[str, str] = {}
    for start in tqdm(range(0, len(asked), batch_size), desc="speech eval: answers", unit="batch",
                      disable=not progress):
        batch = asked[start : start + batch_size]
        texts = call_batched(system, "answer_text", [item.question for item in batch])
        replies.update((item.id, text) for item, text in zip(batch, texts) if not isinstance(text, Exception))
    return replies


# -- the speech task on the command line (``llasm eval --vocoder ...``) ------------------------------
def speech_meta(args, judge) -> dict:
    """The report's ``meta.speech``: which vocoder, unit k-means and Whisper judge were used."""
    return {"vocoder": args.vocoder, "kmeans": args.kmeans, "judge_whisper": str(judge),
            "durations": "as the token2wav makes them in generation (predicted, or the chosen runs' recorded lengths)",
            "judge_loop_guard": None if args.keep_loops else LOOP_GUARD_RULE}


def run_speech(args, model, items, judge) -> dict:
    """The speech-output task (:mod:`llasm.evaluation.speech`) with the parts named on the command line."""
    vocoder = extractor = None
    if args.vocoder:
        vocoder = load_token2wav(args.vocoder)
    if args.kmeans:
        extractor = UnitExtractor.load(args.kmeans, device=str(model.device))
    return evaluate_speech(items, judge, model=model, vocoder=vocoder, extractor=extractor,
                           max_new_tokens=args.max_new_tokens, samples_dir=Path(args.output) / "speech_samples",
                           progress=not args.no_progress, keep_loops=args.keep_loops, batch_size=args.batch_size)


def merge_speech(report: dict, speech: dict) -> None:
    """Speech systems join the report as ``speech_<name>`` columns."""
    for name, langs in speech["results"].items():
        report["results"][f"speech_{name}"] = langs
    for name, langs in speech["counts"].items():
        report.setdefault("counts", {})[f"speech_{name}"] = langs
    report.setdefault("details", {}).update(speech["details"])
    report["errors"] += speech["errors"]
    report["notes"] += speech["notes"]
