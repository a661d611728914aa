"""Run systems over benchmark items and score them: :func:`evaluate_benchmarks`.

Systems are those of ``llasm eval`` (``transcribe(audio, lang)``, ``answer_spoken(item, audio)``,
``answer_text(text)``): ``llasm`` (audio in), ``cascade`` (Whisper -> the same LLM) and ``text``
(the same LLM given the words spoken: VoiceBench's ``--modality text``, a topline). A speaking model
adds ``llasm-speech``: ``model.chat(audio, speak=True)``, the spoken answer transcribed by the
Whisper judge and scored like a text answer (URO-Bench's protocol), beside ``llasm``'s text answer;
``asr_wer`` is the judge's error on the model's own words (URO-Bench's ASR-WER/CER).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from llasm.evaluation import metrics as M
from llasm.evaluation.benchmarks.asr_norm import PEER_NORMALIZER, peer_error_rate
from llasm.evaluation.benchmarks.items import BenchItem, load_item_audio
from llasm.evaluation.benchmarks.judging import JUDGE_SCORERS, ChatJudge, score_with_judge
from llasm.evaluation.benchmarks.scorers import RULE_SCORERS, uro_error_rate
from llasm.evaluation.systems import hear

SPEECH = "llasm-speech"


def _progress(items, desc: str, enabled: bool):
    return tqdm(items, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _error(group: str, system: str, item_id: str, err: BaseException | str) -> dict:
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {"task": group, "system": system, "id": item_id, "error": message}


def _speak(model, audio, lang: str, judge: Callable, max_new_tokens: int) -> tuple[str, str]:
    text, wav = model.chat(audio=audio, speak=True, max_new_tokens=max_new_tokens)
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    # URO-bench's speech WER reads the raw transcript: no loop guard; "" when it said nothing
    return text, hear(judge, wav, lang, keep_loops=True)[0]


def _score_asr(rows: list[dict]) -> dict:
    lang = rows[0]["lang"]
    refs, hyps = [r["reference"] for r in rows], [r["response"] for r in rows]
    ours = M.asr_error_rate(refs, hyps, lang)
    peer = peer_error_rate(refs, hyps, lang)
    return {ours["metric"]: ours["value"], f"{peer['metric']}_peer": peer["value"]}


def evaluate_benchmarks(
    items: Sequence[BenchItem],
    systems: dict[str, Any],
    *,
    text_system=None,
    judge: ChatJudge | None = None,
    speaker=None,
    speech_judge: Callable[[Any, str], str] | None = None,
    speak_groups: Callable[[BenchItem], bool] = lambda item: item.benchmark == "urobench",
    max_new_tokens: int = 512,
    errors: list[dict] | None = None,
    notes: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Answer every item with every system and score each ``benchmark:subset`` group.

    ``speaker``: a model whose ``chat(audio=..., speak=True)`` returns ``(text, 16 kHz audio)``;
    with ``speech_judge`` (``(audio, lang) -> text``) it answers the items ``speak_groups`` selects.
    Returns ``{"results", "counts", "items", "details", "errors", "notes"}`` with
    ``results[system][group][metric]``; a failed item is an error and the run goes on.
    """
    errors, notes = list(errors or []), list(notes or [])
    rows: dict[tuple[str, str], list[dict]] = {}
    records = []
    speech_wer: dict[str, list[float]] = {}
    for item in _progress(items, "benchmarks", progress):
        record = {"id": item.id, "group": item.group, "prompt": item.prompt, "reference": item.reference, "replies": {}}
        records.append(record)
        try:
            audio = load_item_audio(item.audio)
        except Exception as err:  # noqa: BLE001 - unreadable audio costs one item, not the run
            errors.append(_error(item.group, "all", item.id, err))
            record["error"] = str(err)
            continue
        replies: dict[str, str] = {}
        for name, system in systems.items():
            try:
                if item.scorer == "asr":
                    replies[name] = system.transcribe(audio, item.lang)[0]
                else:
                    replies[name] = system.answer_spoken(item, audio)[0]
            except Exception as err:  # noqa: BLE001
                errors.append(_error(item.group, name, item.id, err))
        if text_system is not None and item.scorer != "asr":
            try:
                replies["text"] = text_system.answer_text(item.prompt)
            except Exception as err:  # noqa: BLE001
                errors.append(_error(item.group, "text", item.id, err))
        if speaker is not None and speech_judge is not None and item.scorer != "asr" and speak_groups(item):
            try:
                said, heard = _speak(speaker, audio, item.lang, speech_judge, max_new_tokens)
                replies[SPEECH] = heard
                record["speech_text"] = said
                if said.strip():
                    speech_wer.setdefault(item.group, []).append(uro_error_rate(said, heard, item.lang))
            except Exception as err:  # noqa: BLE001
                errors.append(_error(item.group, SPEECH, item.id, err))
        record["replies"] = replies
        for name, reply in replies.items():
            rows.setdefault((item.group, name), []).append(
                {"id": item.id, "group": item.group, "lang": item.lang, "prompt": item.prompt, "response": reply,
                 "reference": item.reference, "scorer": item.scorer, **item.meta})

    results: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    scored_rows: dict[str, dict[str, list[dict]]] = {}
    skipped_judge = set()
    for (group, name), group_rows in rows.items():
        scorer = group_rows[0]["scorer"]
        try:
            if scorer == "asr":
                scores = _score_asr(group_rows)
            elif scorer in RULE_SCORERS:
                scores = RULE_SCORERS[scorer](group_rows)
                errors += [_error(group, name, r["id"], r["error"]) for r in group_rows if "error" in r]
            elif scorer in JUDGE_SCORERS:
                if judge is None:
                    skipped_judge.add(group)
                    continue
                scores = score_with_judge(scorer, group_rows, judge, errors, name)
            else:
                raise ValueError(f"no scorer {scorer!r}")
        except Exception as err:  # noqa: BLE001 - one group failing to score must not lose the others
            notes.append(f"{group} {name}: not scored ({type(err).__name__}: {err})")
            continue
        if scores:
            results.setdefault(name, {})[group] = scores
            counts.setdefault(name, {})[group] = len(group_rows)
        scored_rows.setdefault(group, {})[name] = group_rows
    for group, wers in speech_wer.items():
        results.setdefault(SPEECH, {}).setdefault(group, {})["asr_wer"] = sum(wers) / len(wers)
    for group in sorted(skipped_judge):
        notes.append(f"{group}: judge-scored; skipped (no --judge-url/--judge-model given)")
    if speaker is None and any(i.benchmark == "urobench" for i in items):
        notes.append("urobench: spoken answers not scored (the model cannot speak: no unit head/vocoder; "
                     "text answers only)")
    order = list(systems) + ["text", SPEECH]
    results = {k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else 99)}
    details = {"peer_normalizer": PEER_NORMALIZER, "rows": scored_rows}
    if judge is not None:
        details["judge"] = judge.info()
    return {"results": results, "counts": counts, "items": records, "details": details, "errors": errors,
            "notes": notes}
