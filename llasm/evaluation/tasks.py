"""The evaluation tasks: every system answers every item, then each metric is computed per system
and language (``results[system][lang][metric]``). :func:`evaluate` runs the selected tasks; the
ASR task and the instruction task (shared by modal invariance: the same replies) are one function each.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from llasm.audio import load_audio
from llasm.evaluation import metrics as M
from llasm.evaluation.items import AsrItem, InstructItem, _error
from llasm.evaluation.systems import Judge, collapse_loops

TASKS = ("asr", "real", "instruct", "invariance", "speech")
TEXT_TASKS = ("asr", "instruct", "invariance")  # the default; "speech" (llasm.evaluation.speech) needs a vocoder


def _progress(iterable, desc: str, enabled: bool):
    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Scores:
    """What the tasks fill in: metric values, item counts, per-task details and per-item records."""

    errors: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)
    # metrics that cannot be computed on this data, per language: {lang: {metric: why}}
    not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)

    def put(self, system: str, lang: str, metric: str, value: float) -> None:
        self.results.setdefault(system, {}).setdefault(lang, {})[metric] = value

    def count(self, system: str, lang: str, task: str, n: int) -> None:
        self.counts.setdefault(system, {}).setdefault(lang, {})[task] = n


def evaluate(
    systems: dict,
    *,
    instruct_items: Sequence[InstructItem] = (),
    asr_items: Sequence[AsrItem] = (),
    real_items: Sequence[AsrItem] = (),
    tasks: Iterable[str] = TASKS,
    text_system=None,
    scorer: Callable[[list[dict], str], tuple[float, int]] | None = None,
    judge: Judge | None = None,
    errors: list[dict] | None = None,
    notes: list[str] | None = None,
    progress: bool = True,
    keep_loops: bool = False,
) -> dict:
    """Run the tasks over the items for every system; returns the report dict (no files written).

    ``systems``: ``{name: system}`` with ``transcribe(audio, lang) -> (text, info)`` and
    ``answer_spoken(item, audio) -> (reply, user_content, info)``. ``text_system`` (default: the
    first system) answers the text questions through ``answer_text(text)``. ``scorer`` scores a
    reply under a prompt for ``ppl_text_reply`` (skipped with a note when ``None``). ASR
    hypotheses go through :func:`collapse_loops` (against the item's reference) unless ``keep_loops``
    (raw ones kept per item).
    """
    tasks = set(tasks)
    unknown = tasks - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    out = Scores(list(errors or []), list(notes or []))
    names = list(systems)
    text_system = text_system if text_system is not None else (systems[names[0]] if names else None)
    # the held-out clips, and the real-voice dev set (``real_wer`` / ``real_cer``) beside them
    for task, items in (("asr", asr_items), ("real", real_items)):
        if task not in tasks:
            continue
        if items:
            asr_task(out, systems, items, progress=progress, keep_loops=keep_loops, task=task)
        else:
            out.notes.append(f"{task}: no ASR items; skipped")
    want_instruct, want_inv = "instruct" in tasks, "invariance" in tasks
    if want_instruct or want_inv:
        if instruct_items:
            instruct_task(out, systems, instruct_items, text_system=text_system, want_instruct=want_instruct,
                          want_inv=want_inv, scorer=scorer, judge=judge, progress=progress)
        else:
            out.notes.append("instruct/invariance: no instruction items; skipped")
    if judge is not None:
        out.details["judge"] = judge.info()
    order = names + ["text"]
    results = {k: out.results[k] for k in sorted(out.results, key=lambda k: order.index(k) if k in order else len(order))}
    counts = {k: out.counts[k] for k in results if k in out.counts}
    return {"results": results, "counts": counts, "details": out.details, "items": out.records,
            "errors": out.errors, "notes": out.notes, "not_applicable": out.not_applicable}


def asr_task(out: Scores, systems: dict, asr_items: Sequence[AsrItem], *, progress: bool, keep_loops: bool,
             task: str = "asr") -> None:
    """Every system transcribes every clip; corpus WER (en) / CER (zh) per system and language. ``task``
    "real" (the real-voice dev set) names its metrics ``real_wer`` / ``real_cer``."""
    prefix = "" if task == "asr" else f"{task}_"
    hyps: dict[tuple[str, str], list[tuple[str, str]]] = {}
    out.records[task] = []
    for item in _progress(asr_items, task, progress):
        row = {"id": item.id, "lang": item.lang, "reference": item.text, "hypotheses": {}}
        out.records[task].append(row)
        try:
            audio = load_audio(item.audio)
        except Exception as err:  # noqa: BLE001
            out.errors.append(_error(task, "all", item.id, err))
            row["error"] = str(err)
            continue
        for name, system in systems.items():
            try:
                hyp, _ = system.transcribe(audio, item.lang)
            except Exception as err:  # noqa: BLE001
                out.errors.append(_error(task, name, item.id, err))
                continue
            collapsed = hyp if keep_loops else collapse_loops(hyp, reference=item.text)
            if collapsed != hyp:
                row.setdefault("raw_hypotheses", {})[name] = hyp
                hyp = collapsed
            row["hypotheses"][name] = hyp
            hyps.setdefault((name, item.lang), []).append((item.text, hyp))
    out.details[task] = {}
    for (name, lang), pairs in sorted(hyps.items()):
        try:
            score = M.asr_error_rate([r for r, _ in pairs], [h for _, h in pairs], lang)
        except ValueError as err:
            out.notes.append(f"{task} {name}/{lang}: not scored ({err})")
            continue
        out.details[task].setdefault(name, {})[lang] = score
        out.put(name, lang, prefix + score["metric"], score["value"])
        out.count(name, lang, task, score["n_utts"])


def instruct_task(out: Scores, systems: dict, instruct_items: Sequence[InstructItem], *, text_system,
                  want_instruct: bool, want_inv: bool, scorer, judge: Judge | None, progress: bool) -> None:
    """Spoken instruction following and modal invariance, which share the replies: every system answers
    the spoken question, ``text_system`` the text one; accuracy, chrF, language, judge (instruct) and
    agreement, exact match, chrF and perplexity against the text reply (invariance).

    ``accuracy`` and ``agreement`` are keyword checks: they are computed over the items that carry
    ``keywords`` only, and where none does (your own data, usually) they are marked not applicable
    (``out.not_applicable``), never scored 0; chrF against the reference (and the judge) still score."""
    names = list(systems)
    if want_inv and scorer is None:
        out.notes.append("invariance: no model to score perplexity with; ppl_text_reply skipped")
    if want_instruct and judge is None:
        out.notes.append("judge: skipped (no --judge-url/--judge-model given); no judge scores in this report")
    all_names = names + (["text"] if text_system is not None else [])
    acc: dict[tuple[str, str], dict[str, list]] = {}

    def bucket(name, lang):
        return acc.setdefault((name, lang), {"replies": [], "refs": [], "correct": [], "lang_ok": [], "judge": [],
                                             "inv_spoken": [], "inv_text": [], "agree": [], "exact": [],
                                             "nll": [], "ntok": []})

    out.records["instruct"] = []
    for item in _progress(instruct_items, "instruct", progress):
        row = {"id": item.id, "lang": item.lang, "question": item.question, "reference": item.reference,
               "keywords": item.keywords, "replies": {}, "correct": {}, "judge": {}, "transcripts": {},
               "ppl_text_reply": {}}
        out.records["instruct"].append(row)
        try:
            audio = load_audio(item.audio)
        except Exception as err:  # noqa: BLE001
            out.errors.append(_error("instruct", "all", item.id, err))
            row["error"] = str(err)
            continue
        replies: dict[str, str] = {}
        contents: dict[str, list[dict]] = {}
        text_reply = None
        if text_system is not None:
            try:
                text_reply = text_system.answer_text(item.text_prompt)
                replies["text"] = text_reply
                contents["text"] = [{"type": "text", "text": item.text_prompt}]
            except Exception as err:  # noqa: BLE001
                out.errors.append(_error("instruct", "text", item.id, err))
        for name, system in systems.items():
            try:
                reply, content, info = system.answer_spoken(item, audio)
            except Exception as err:  # noqa: BLE001
                out.errors.append(_error("instruct", name, item.id, err))
                continue
            replies[name], contents[name] = reply, content
            if info.get("transcript") is not None:
                row["transcripts"][name] = info["transcript"]
        text_correct = M.keyword_match(text_reply, item.keywords, item.lang) if text_reply is not None else None
        for name in all_names:
            if name not in replies:
                continue
            reply = replies[name]
            b = bucket(name, item.lang)
            correct = M.keyword_match(reply, item.keywords, item.lang) if item.keywords else None
            row["replies"][name], row["correct"][name] = reply, correct
            b["replies"].append(reply)
            b["refs"].append(item.reference)
            if correct is not None:
                b["correct"].append(correct)
            b["lang_ok"].append(M.language_consistent(reply, item.lang))
            if want_instruct and judge is not None:
                try:
                    s = judge.score(item.question, item.reference, reply, item.lang)
                    b["judge"].append(s)
                    row["judge"][name] = s
                except Exception as err:  # noqa: BLE001
                    out.errors.append(_error("judge", name, item.id, err))
            if want_inv and text_reply is not None:
                if name != "text":
                    b["inv_spoken"].append(reply)
                    b["inv_text"].append(text_reply)
                    if correct is not None:
                        b["agree"].append(correct == text_correct)
                    b["exact"].append(M.normalize(reply, item.lang) == M.normalize(text_reply, item.lang))
                if scorer is not None:
                    try:
                        nll, ntok = scorer(contents[name], text_reply)
                        if not math.isfinite(nll):
                            raise ValueError(f"non-finite NLL {nll}")
                        b["nll"].append(nll)
                        b["ntok"].append(ntok)
                        row["ppl_text_reply"][name] = M.perplexity(nll, ntok)
                    except Exception as err:  # noqa: BLE001
                        out.errors.append(_error("invariance", name, item.id, err))

    for (name, lang), b in sorted(acc.items(), key=lambda kv: (all_names.index(kv[0][0]), kv[0][1])):
        if want_instruct and b["replies"]:
            if b["correct"]:
                out.put(name, lang, "accuracy", _mean([float(c) for c in b["correct"]]))
                if len(b["correct"]) < len(b["replies"]):
                    out.count(name, lang, "with keywords", len(b["correct"]))
            else:
                out.not_applicable.setdefault(lang, {})["accuracy"] = "no item carries keywords"
            out.put(name, lang, "chrf", M.chrf(b["replies"], b["refs"]))
            out.put(name, lang, "lang_consistency", _mean([float(c) for c in b["lang_ok"]]))
            if b["judge"]:
                out.put(name, lang, "judge", _mean(b["judge"]))
            out.count(name, lang, "instruct", len(b["replies"]))
        if want_inv:
            if b["inv_spoken"]:
                if b["agree"]:
                    out.put(name, lang, "agreement", _mean([float(a) for a in b["agree"]]))
                else:
                    out.not_applicable.setdefault(lang, {})["agreement"] = "no item carries keywords"
                out.put(name, lang, "exact_match", _mean([float(e) for e in b["exact"]]))
                out.put(name, lang, "chrf_vs_text", M.chrf(b["inv_spoken"], b["inv_text"]))
                out.count(name, lang, "invariance", len(b["inv_spoken"]))
            if b["ntok"]:
                out.put(name, lang, "ppl_text_reply", M.perplexity(sum(b["nll"]), sum(b["ntok"])))
    for lang, metrics in sorted(out.not_applicable.items()):
        out.notes.append(f"{lang}: {', '.join(metrics)} not applicable (no item carries keywords: add "
                         "\"keywords\": [accepted answers] to rows to score them); chrf against the reference is reported")
