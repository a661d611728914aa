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
from llasm.evaluation.systems import Judge, call_batched, collapse_loops

TASKS = ("asr", "real", "instruct", "invariance", "speech")
TEXT_TASKS = ("asr", "instruct", "invariance")  # the default; "speech" (llasm.evaluation.speech) needs a vocoder


def _loaded_chunks(items: Sequence, batch_size: int, task: str, out: "Scores", row_of: Callable, progress: bool):
    """Items in chunks of ``batch_size`` with their records and decoded audio; an item whose audio
    cannot be read is recorded as an error and left out. Yields ``[(item, row, audio), ...]``."""
    with tqdm(total=len(items), desc=task, disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(items), batch_size):
            chunk = []
            for item in items[start:start + batch_size]:
                row = row_of(item)
                out.records[task].append(row)
                try:
                    chunk.append((item, row, load_audio(item.audio)))
                except Exception as err:  # noqa: BLE001
                    out.errors.append(_error(task, "all", item.id, err))
                    row["error"] = str(err)
            yield chunk
            bar.update(len(items[start:start + batch_size]))


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
    batch_size: int = 8,
) -> dict:
    """Run the tasks over the items for every system; returns the report dict (no files written).

    ``systems``: ``{name: system}`` with ``transcribe(audio, lang) -> (text, info)`` and
    ``answer_spoken(item, audio) -> (reply, user_content, info)``. ``text_system`` (default: the
    first system) answers the text questions through ``answer_text(text)``. ``scorer`` scores a
    reply under a prompt for ``ppl_text_reply`` (skipped with a note when ``None``). ASR
    hypotheses go through :func:`collapse_loops` (against the item's reference) unless ``keep_loops``
    (raw ones kept per item).
    Systems that have ``<method>_batch`` variants answer ``batch_size`` items per call.
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
            asr_task(out, systems, items, progress=progress, keep_loops=keep_loops, task=task, batch_size=batch_size)
        else:
            out.notes.append(f"{task}: no ASR items; skipped")
    want_instruct, want_inv = "instruct" in tasks, "invariance" in tasks
    if want_instruct or want_inv:
        if instruct_items:
            instruct_task(out, systems, instruct_items, text_system=text_system, want_instruct=want_instruct,
                          want_inv=want_inv, scorer=scorer, judge=judge, progress=progress, batch_size=batch_size)
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
             task: str = "asr", batch_size: int = 8) -> None:
    """Every system transcribes every clip; corpus WER (en) / CER (zh) per system and language. ``task``
    "real" (the real-voice dev set) names its metrics ``real_wer`` / ``real_cer``."""
    prefix = "" if task == "asr" else f"{task}_"
    hyps: dict[tuple[str, str], list[tuple[str, str]]] = {}
    out.records[task] = []

    def row_of(item):
        return {"id": item.id, "lang": item.lang, "reference": item.text, "hypotheses": {}}

    for chunk in _loaded_chunks(asr_items, batch_size, task, out, row_of, progress):
        if not chunk:
            continue
        answers = {name: call_batched(system, "transcribe", [a for _, _, a in chunk], [i.lang for i, _, _ in chunk])
                   for name, system in systems.items()}
        for k, (item, row, _audio) in enumerate(chunk):
            for name in systems:
                _store_hypothesis(out, hyps, row, item, name, answers[name][k], keep_loops, task)
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


def _store_hypothesis(out: Scores, hyps: dict, row: dict, item: AsrItem, name: str, answer, keep_loops: bool,
                      task: str = "asr") -> None:
    """One system's transcript of one item (or the error it raised) into the record and the scores."""
    if isinstance(answer, Exception):
        out.errors.append(_error(task, name, item.id, answer))
        return
    hyp, _ = answer
    collapsed = hyp if keep_loops else collapse_loops(hyp, reference=item.text)
    if collapsed != hyp:
        row.setdefault("raw_hypotheses", {})[name] = hyp
        hyp = collapsed
    row["hypotheses"][name] = hyp
    hyps.setdefault((name, item.lang), []).append((item.text, hyp))


def instruct_task(out: Scores, systems: dict, instruct_items: Sequence[InstructItem], *, text_system,
                  want_instruct: bool, want_inv: bool, scorer, judge: Judge | None, progress: bool,
                  batch_size: int = 8) -> None:
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

    def row_of(item):
        return {"id": item.id, "lang": item.lang, "question": item.question, "reference": item.reference,
                "keywords": item.keywords, "replies": {}, "correct": {}, "judge": {}, "transcripts": {},
                "ppl_text_reply": {}}

    for chunk in _loaded_chunks(instruct_items, batch_size, "instruct", out, row_of, progress):
        if not chunk:
            continue
        text_answers = (call_batched(text_system, "answer_text", [i.text_prompt for i, _, _ in chunk])
                        if text_system is not None else [None] * len(chunk))
        spoken = {name: call_batched(system, "answer_spoken", [i for i, _, _ in chunk], [a for _, _, a in chunk])
                  for name, system in systems.items()}
        for k, (item, row, _audio) in enumerate(chunk):
            replies, contents, text_reply = _item_replies(out, item, row, text_answers[k],
                                                          {name: spoken[name][k] for name in systems})
            _score_item(out, bucket, item, row, replies, contents, text_reply, all_names, want_instruct=want_instruct,
                        want_inv=want_inv, scorer=scorer, judge=judge)
    _put_instruct_scores(out, acc, all_names, want_instruct, want_inv)


def _item_replies(out: Scores, item: InstructItem, row: dict, text_answer, spoken: dict):
    """One item's replies per system (``"text"`` for the text question) and the prompts they answered;
    a system that failed on the item is recorded as an error."""
    replies: dict[str, str] = {}
    contents: dict[str, list[dict]] = {}
    text_reply = None
    if isinstance(text_answer, Exception):
        out.errors.append(_error("instruct", "text", item.id, text_answer))
    elif text_answer is not None:
        text_reply = replies["text"] = text_answer
        contents["text"] = [{"type": "text", "text": item.text_prompt}]
    for name, answer in spoken.items():
        if isinstance(answer, Exception):
            out.errors.append(_error("instruct", name, item.id, answer))
            continue
        reply, content, info = answer
        replies[name], contents[name] = reply, content
        if info.get("transcript") is not None:
            row["transcripts"][name] = info["transcript"]
    return replies, contents, text_reply


def _score_item(out: Scores, bucket, item: InstructItem, row: dict, replies: dict, contents: dict, text_reply,
                all_names: list[str], *, want_instruct: bool, want_inv: bool, scorer, judge) -> None:
    """An item's metrics for every system that replied, into the per-(system, language) buckets."""
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


def _put_instruct_scores(out: Scores, acc: dict, all_names: list[str], want_instruct: bool, want_inv: bool) -> None:
    """The buckets' corpus metrics per system and language."""
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
