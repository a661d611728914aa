"""Evaluation: ASR, spoken instruction following, modal invariance, and a cascade baseline.

Everything a report prints is computed here; ``eval/*.py`` are thin entry points over :func:`main`.
Items and prompts live in :mod:`llasm.evaluation.items`, the systems and the judge in
:mod:`llasm.evaluation.systems`, the report files in :mod:`llasm.evaluation.report`; all re-exported here.

Systems, each scored with the same metrics side by side:

``llasm``
    the model under test: audio in, text out (``model.chat``, greedy).
``cascade``
    Whisper (the model's own base Whisper, ``model.config.audio_model_name_or_path``, or
    ``--cascade-whisper``) transcribes; the **same llasm model, text-only**, answers the transcript.
    A turn without audio runs the LLM inside llasm exactly as the base LLM would (same tokens,
    same template) — and after stage-2 training it is the *trained* LLM, which is the fair
    comparison: the two systems differ only in how the question gets in (speech encoder + adaptor
    vs. Whisper ASR → text).
``text`` (instruction tasks only)
    the same LLM given the reference question text: a topline, and the reference reply for modal
    invariance.

Tasks and metrics (``results[system][lang][metric]``):

ASR (``asr``)
    llasm is prompted with the pinned prompt of ``llasm/assets/eval/prompts.json`` (``asr.<lang>``,
    not the item's own training instruction); corpus ``wer`` (en, Whisper normalizer) or ``cer``
    (zh) via :func:`llasm.evaluation.metrics.asr_error_rate`.
Spoken instruction following (``instruct``)
    ``accuracy`` (share of replies where :func:`llasm.evaluation.metrics.keyword_match` finds an accepted
    keyword), ``chrf`` (corpus chrF vs the reference answer), ``lang_consistency`` (share of
    replies in the item's language), and ``judge`` (mean 1–5 score from an LLM judge through an
    OpenAI-compatible endpoint; skipped with a note when none is configured).
Modal invariance (``invariance``, seed 3 / AudioChatLlama)
    per question, the system's reply to the spoken form vs the ``text`` system's reply to the text
    form: ``agreement`` (same keyword correctness), ``exact_match`` (equal after
    :func:`llasm.evaluation.metrics.normalize`), ``chrf_vs_text`` (corpus chrF of spoken-form replies against
    text-form replies), and ``ppl_text_reply``: the perplexity of the text-prompted reply (the
    LLM's own answer to the text question) scored under this system's prompt — the audio prompt for
    ``llasm``, the Whisper transcript for ``cascade``, the true text for ``text``.

Failures: an item that cannot be used (missing/corrupt audio, a generation error, a bad record)
is recorded in ``report["errors"]`` with its task, system and id; the run goes on.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from llasm.evaluation import metrics as M
from llasm.evaluation.items import (ASSETS, JUDGE_PROMPT_PATH, PROMPTS_PATH, SPEECH_TOKEN, AsrItem, InstructItem, _error,
                        _first_spoken_turn, _lang, _read_jsonl, _resolve_audio, _select, _sha256, load_asr_items,
                        load_instruct_items, load_prompts, prompt_info)
from llasm.evaluation.report import METRIC_HELP, _fmt, _json_safe, render_markdown, summary_tables, write_report
from llasm.evaluation.systems import (LANG_NAMES, CascadeSystem, Judge, JudgeError, LlasmSystem, WhisperTranscriber, _user,
                           collapse_loops, make_ppl_scorer)

logger = logging.getLogger(__name__)

TASKS = ("asr", "instruct", "invariance", "speech")
TEXT_TASKS = ("asr", "instruct", "invariance")  # the default; "speech" (llasm.evaluation.speech) needs a vocoder

# default data: the held-out split of the synthesized seed corpus (make it with data_prep/synthesize.py)
DEFAULT_DATA = "data/eval/seed_instructions.jsonl"
DEFAULT_ASR_DATA = "data/eval/seed_asr.jsonl"
MAKE_DATA_HINT = (
    "make it with: python data_prep/synthesize.py --input data/seed/instructions.jsonl --output {instruct} && "
    "python data_prep/synthesize.py --input data/seed/asr_sentences.jsonl --output {asr}"
).format(instruct=DEFAULT_DATA, asr=DEFAULT_ASR_DATA)

# the names moved to eval_data / eval_systems / eval_report stay importable from here
__all__ = [
    "ASSETS", "PROMPTS_PATH", "JUDGE_PROMPT_PATH", "SPEECH_TOKEN", "TASKS", "TEXT_TASKS", "LANG_NAMES",
    "DEFAULT_DATA", "DEFAULT_ASR_DATA", "MAKE_DATA_HINT", "METRIC_HELP",
    "load_prompts", "prompt_info", "InstructItem", "AsrItem", "load_instruct_items", "load_asr_items",
    "LlasmSystem", "CascadeSystem", "WhisperTranscriber", "make_ppl_scorer", "JudgeError", "Judge",
    "evaluate", "summary_tables", "render_markdown", "write_report",
    "load_model", "build_parser", "speech_meta", "run_speech", "merge_speech", "run", "main",
    # private helpers, re-exported for callers that imported them from here
    "_sha256", "_first_spoken_turn", "_resolve_audio", "_lang", "_select", "_read_jsonl", "_error", "_user",
    "_fmt", "_json_safe",
]


# ----------------------------------------------------------------------------------- engine


def _progress(iterable, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate(
    systems: dict,
    *,
    instruct_items: Sequence[InstructItem] = (),
    asr_items: Sequence[AsrItem] = (),
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
    hypotheses go through :func:`collapse_loops` unless ``keep_loops`` (raw ones kept per item).
    """
    from llasm.audio import load_audio

    tasks = set(tasks)
    unknown = tasks - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    errors = list(errors or [])
    notes = list(notes or [])
    names = list(systems)
    text_system = text_system if text_system is not None else (systems[names[0]] if names else None)
    results: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    details: dict[str, Any] = {}
    records: dict[str, list[dict]] = {}

    def put(system, lang, metric, value):
        results.setdefault(system, {}).setdefault(lang, {})[metric] = value

    def count(system, lang, task, n):
        counts.setdefault(system, {}).setdefault(lang, {})[task] = n

    # ---- ASR
    if "asr" in tasks and asr_items:
        hyps: dict[tuple[str, str], list[tuple[str, str]]] = {}
        records["asr"] = []
        for item in _progress(asr_items, "asr", progress):
            row = {"id": item.id, "lang": item.lang, "reference": item.text, "hypotheses": {}}
            records["asr"].append(row)
            try:
                audio = load_audio(item.audio)
            except Exception as err:  # noqa: BLE001
                errors.append(_error("asr", "all", item.id, err))
                row["error"] = str(err)
                continue
            for name, system in systems.items():
                try:
                    hyp, _ = system.transcribe(audio, item.lang)
                except Exception as err:  # noqa: BLE001
                    errors.append(_error("asr", name, item.id, err))
                    continue
                collapsed = hyp if keep_loops else collapse_loops(hyp)
                if collapsed != hyp:
                    row.setdefault("raw_hypotheses", {})[name] = hyp
                    hyp = collapsed
                row["hypotheses"][name] = hyp
                hyps.setdefault((name, item.lang), []).append((item.text, hyp))
        details["asr"] = {}
        for (name, lang), pairs in sorted(hyps.items()):
            try:
                score = M.asr_error_rate([r for r, _ in pairs], [h for _, h in pairs], lang)
            except ValueError as err:
                notes.append(f"asr {name}/{lang}: not scored ({err})")
                continue
            details["asr"].setdefault(name, {})[lang] = score
            put(name, lang, score["metric"], score["value"])
            count(name, lang, "asr", score["n_utts"])
    elif "asr" in tasks:
        notes.append("asr: no ASR items; skipped")

    # ---- instruction following + modal invariance (share the replies)
    want_instruct, want_inv = "instruct" in tasks, "invariance" in tasks
    if (want_instruct or want_inv) and instruct_items:
        if want_inv and scorer is None:
            notes.append("invariance: no model to score perplexity with; ppl_text_reply skipped")
        if want_instruct and judge is None:
            notes.append("judge: skipped (no --judge-url/--judge-model given); no judge scores in this report")
        all_names = names + (["text"] if text_system is not None else [])
        acc: dict[tuple[str, str], dict[str, list]] = {}

        def bucket(name, lang):
            return acc.setdefault((name, lang), {"replies": [], "refs": [], "correct": [], "lang_ok": [], "judge": [],
                                                 "inv_spoken": [], "inv_text": [], "agree": [], "exact": [],
                                                 "nll": [], "ntok": []})

        records["instruct"] = []
        for item in _progress(instruct_items, "instruct", progress):
            row = {"id": item.id, "lang": item.lang, "question": item.question, "reference": item.reference,
                   "keywords": item.keywords, "replies": {}, "correct": {}, "judge": {}, "transcripts": {},
                   "ppl_text_reply": {}}
            records["instruct"].append(row)
            try:
                audio = load_audio(item.audio)
            except Exception as err:  # noqa: BLE001
                errors.append(_error("instruct", "all", item.id, err))
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
                    errors.append(_error("instruct", "text", item.id, err))
            for name, system in systems.items():
                try:
                    reply, content, info = system.answer_spoken(item, audio)
                except Exception as err:  # noqa: BLE001
                    errors.append(_error("instruct", name, item.id, err))
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
                correct = M.keyword_match(reply, item.keywords, item.lang)
                row["replies"][name], row["correct"][name] = reply, correct
                b["replies"].append(reply)
                b["refs"].append(item.reference)
                b["correct"].append(correct)
                b["lang_ok"].append(M.language_consistent(reply, item.lang))
                if want_instruct and judge is not None:
                    try:
                        s = judge.score(item.question, item.reference, reply, item.lang)
                        b["judge"].append(s)
                        row["judge"][name] = s
                    except Exception as err:  # noqa: BLE001
                        errors.append(_error("judge", name, item.id, err))
                if want_inv and text_reply is not None:
                    if name != "text":
                        b["inv_spoken"].append(reply)
                        b["inv_text"].append(text_reply)
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
                            errors.append(_error("invariance", name, item.id, err))

        for (name, lang), b in sorted(acc.items(), key=lambda kv: (all_names.index(kv[0][0]), kv[0][1])):
            if want_instruct and b["replies"]:
                put(name, lang, "accuracy", _mean([float(c) for c in b["correct"]]))
                put(name, lang, "chrf", M.chrf(b["replies"], b["refs"]))
                put(name, lang, "lang_consistency", _mean([float(c) for c in b["lang_ok"]]))
                if b["judge"]:
                    put(name, lang, "judge", _mean(b["judge"]))
                count(name, lang, "instruct", len(b["replies"]))
            if want_inv:
                if b["inv_spoken"]:
                    put(name, lang, "agreement", _mean([float(a) for a in b["agree"]]))
                    put(name, lang, "exact_match", _mean([float(e) for e in b["exact"]]))
                    put(name, lang, "chrf_vs_text", M.chrf(b["inv_spoken"], b["inv_text"]))
                    count(name, lang, "invariance", len(b["inv_spoken"]))
                if b["ntok"]:
                    put(name, lang, "ppl_text_reply", M.perplexity(sum(b["nll"]), sum(b["ntok"])))
    elif want_instruct or want_inv:
        notes.append("instruct/invariance: no instruction items; skipped")

    if judge is not None:
        details["judge"] = judge.info()
    order = names + ["text"]
    results = {k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else len(order))}
    counts = {k: counts[k] for k in results if k in counts}
    return {"results": results, "counts": counts, "details": details, "items": records,
            "errors": errors, "notes": notes}


# ------------------------------------------------------------------------------------- CLI


def load_model(spec: str, device: str | None = None, dtype: str | None = None):
    """A checkpoint dir (``from_pretrained``) or a model YAML (``build_model``), in eval mode.

    ``dtype`` (float32 | bfloat16 | float16) overrides the float32 default (the YAML's ``dtype``)."""
    import torch

    path = Path(spec)
    if path.is_dir():
        from llasm.modeling import LlasmForConditionalGeneration

        model = LlasmForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    elif path.suffix in (".yaml", ".yml"):
        from llasm.builder import build_model

        model, _ = build_model(str(path), **({"dtype": dtype} if dtype else {}))
    else:
        raise FileNotFoundError(f"--model {spec}: not a checkpoint directory or a .yaml model config")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def build_parser(prog: str = "llasm eval", default_tasks: Sequence[str] = TEXT_TASKS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate an llasm model (ASR, spoken instruction following, "
                                "modal invariance) against a Whisper -> LLM cascade; writes report.{json,md,png}.")
    p.add_argument("--model", required=True, help="checkpoint directory or model YAML (configs/model/*.yaml)")
    p.add_argument("--data", default=None, help=f"spoken instruction JSONL (default {DEFAULT_DATA})")
    p.add_argument("--asr-data", default=None, help=f"ASR JSONL (default {DEFAULT_ASR_DATA})")
    p.add_argument("--split", default="test", help="keep records with this 'split' ('all' keeps every record)")
    p.add_argument("--output", required=True, help="output directory for report.json/.md/.png")
    p.add_argument("--tasks", default=",".join(default_tasks), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="at most N items per data file")
    p.add_argument("--asr-limit", type=int, default=None, help="at most N ASR items (default: --limit)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1)")
    p.add_argument("--judge-model", default=None, help="judge model name sent to the endpoint")
    p.add_argument("--judge-api-key-env", default="LLASM_JUDGE_API_KEY",
                   help="environment variable holding the judge API key (optional)")
    p.add_argument("--keep-loops", action="store_true",
                   help="score ASR hypotheses as generated (default: a unit repeated 4+ times in a row counts once)")
    p.add_argument("--no-cascade", action="store_true", help="skip the Whisper -> LLM cascade baseline")
    p.add_argument("--cascade-whisper", default=None,
                   help="Whisper HF dir for the cascade (default: the model's own base Whisper)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights of the model and the cascade's Whisper (default float32; bfloat16 on GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    speech = p.add_argument_group("speech output (task 'speech', llasm.evaluation.speech; added when --vocoder is given)")
    speech.add_argument("--vocoder", default=None, help="unit HiFi-GAN dir (train/train_vocoder.py output)")
    speech.add_argument("--kmeans", default=None, help="k-means unit dir (data_prep/units.py fit) for resynthesis")
    speech.add_argument("--judge", default=None,
                        help="Whisper HF dir that transcribes the speech (default: the cascade's Whisper)")
    return p


def speech_meta(args, judge) -> dict:
    return {"vocoder": args.vocoder, "kmeans": args.kmeans, "judge_whisper": str(judge),
            "durations": "predicted by the vocoder (as in generation)"}


def run_speech(args, model, items, judge) -> dict:
    """The speech-output task (:mod:`llasm.evaluation.speech`) with the parts named on the command line."""
    from llasm.evaluation.speech import evaluate_speech

    vocoder = extractor = None
    if args.vocoder:
        from llasm.speech.vocoder import UnitHifiGan

        vocoder = UnitHifiGan.from_pretrained(args.vocoder).eval()
    if args.kmeans:
        from llasm.speech.units import UnitExtractor

        extractor = UnitExtractor.load(args.kmeans, device=str(model.device))
    return evaluate_speech(items, judge, model=model, vocoder=vocoder, extractor=extractor,
                           max_new_tokens=args.max_new_tokens, samples_dir=Path(args.output) / "speech_samples",
                           progress=not args.no_progress)


def merge_speech(report: dict, speech: dict) -> None:
    """Speech systems join the report as ``speech_<name>`` columns."""
    for name, langs in speech["results"].items():
        report["results"][f"speech_{name}"] = langs
    for name, langs in speech["counts"].items():
        report.setdefault("counts", {})[f"speech_{name}"] = langs
    report.setdefault("details", {}).update(speech["details"])
    report["errors"] += speech["errors"]
    report["notes"] += speech["notes"]


def run(args: argparse.Namespace, *, model=None, transcriber: Callable[[Any, str], str] | None = None,
        speech_transcriber: Callable[[Any, str], str] | None = None) -> dict:
    """Everything :func:`main` does, with optional injected ``model`` / cascade ``transcriber`` (tests)."""
    import torch

    started = time.time()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if getattr(args, "vocoder", None) and "speech" not in tasks:
        tasks.append("speech")
    bad = set(tasks) - set(TASKS)
    if bad:
        raise SystemExit(f"unknown --tasks {sorted(bad)}; choose from {','.join(TASKS)}")
    split = None if args.split in (None, "", "all") else args.split
    errors: list[dict] = []
    notes: list[str] = []

    def data_path(given, default, task):
        if given:
            if not Path(given).is_file():
                raise SystemExit(f"{task} data {given}: file not found")
            return given
        if Path(default).is_file():
            return default
        notes.append(f"{task}: default data {default} not found; skipped ({MAKE_DATA_HINT})")
        return None

    instruct_path = asr_path = None
    instruct_items: list[InstructItem] = []
    asr_items: list[AsrItem] = []
    if {"instruct", "invariance", "speech"} & set(tasks):
        instruct_path = data_path(args.data, DEFAULT_DATA, "instruct")
        if instruct_path and {"instruct", "invariance"} & set(tasks):
            instruct_items, errs = load_instruct_items(instruct_path, split, args.limit)
            errors += errs
    speech_items = []
    if "speech" in tasks and instruct_path:
        from llasm.evaluation.speech import load_speech_items

        speech_items, errs = load_speech_items(instruct_path, split, args.limit)
        errors += errs
    asr_limit = args.limit if args.asr_limit is None else args.asr_limit
    if "asr" in tasks:
        asr_path = data_path(args.asr_data, DEFAULT_ASR_DATA, "asr")
        if asr_path:
            asr_items, errs = load_asr_items(asr_path, split, asr_limit)
            errors += errs
    if not instruct_items and not asr_items and not speech_items and not errors:
        raise SystemExit(f"nothing to evaluate: no items found ({MAKE_DATA_HINT})")

    if model is None:
        model = load_model(args.model, args.device, args.dtype)
    prompts = load_prompts()
    llasm_sys = LlasmSystem(model, prompts, max_new_tokens=args.max_new_tokens)
    systems: dict[str, Any] = {"llasm": llasm_sys}

    cascade_info = "disabled (--no-cascade)"
    if not args.no_cascade:
        whisper_path = args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
        if transcriber is not None:
            cascade_info = "injected transcriber -> same LLM (text-only chat)"
        elif whisper_path:
            try:
                transcriber = WhisperTranscriber(whisper_path, device=str(model.device), dtype=model.dtype)
                cascade_info = f"Whisper {whisper_path} -> same LLM (text-only chat of the llasm model)"
            except Exception as err:  # noqa: BLE001
                cascade_info = f"skipped: could not load Whisper {whisper_path} ({type(err).__name__}: {err})"
                notes.append("cascade " + cascade_info)
        else:
            cascade_info = "skipped: the model has no base Whisper path; pass --cascade-whisper DIR"
            notes.append("cascade " + cascade_info)
        if transcriber is not None:
            systems["cascade"] = CascadeSystem(transcriber, llasm_sys)

    judge = None
    if bool(args.judge_url) != bool(args.judge_model):
        raise SystemExit("--judge-url and --judge-model go together")
    if "instruct" not in tasks:
        judge_meta = {"status": "not run", "note": "the instruct task is not selected"}
    elif args.judge_url and args.judge_model:
        judge = Judge(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env)
        judge_meta = judge.info()
    else:
        judge_meta = {"status": "skipped", "note": "no --judge-url/--judge-model given; no judge scores"}

    report = evaluate(systems, instruct_items=instruct_items, asr_items=asr_items,
                      tasks=[t for t in tasks if t != "speech"], scorer=make_ppl_scorer(model), judge=judge,
                      errors=errors, notes=notes, progress=not args.no_progress, keep_loops=args.keep_loops)
    if "speech" in tasks:
        speech_judge = speech_transcriber or transcriber
        judge_path = args.judge or args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
        if speech_judge is None or args.judge:
            if not judge_path:
                raise SystemExit("the speech task needs a Whisper judge: pass --judge DIR")
            speech_judge = WhisperTranscriber(judge_path, device=str(model.device))
        report["meta_speech"] = speech_meta(args, getattr(speech_judge, "path", "injected transcriber"))
        merge_speech(report, run_speech(args, model, speech_items, speech_judge))
    from llasm import __version__

    report["meta"] = {
        "llasm_version": __version__,
        "model": str(args.model),
        "data": instruct_path,
        "asr_data": asr_path,
        "split": split or "all",
        "limit": args.limit,
        "asr_limit": asr_limit,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy" + ("" if args.keep_loops else "; ASR hypotheses: a unit repeated 4+ times in a row kept once"),
        "tasks": tasks,
        "systems": list(report["results"]),
        "cascade": cascade_info,
        "judge": judge_meta,
        **prompt_info(),
        **{k: v for k, v in M.normalizer_info().items()},
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 2),
    }
    report["meta"]["judge_prompt"] = str(JUDGE_PROMPT_PATH.relative_to(ASSETS.parents[2]))
    # meta first in the JSON file
    if "meta_speech" in report:
        report["meta"]["speech"] = report.pop("meta_speech")
    return {"meta": report.pop("meta"), **report}


def main(argv: Sequence[str] | None = None, *, prog: str = "llasm eval", default_tasks: Sequence[str] = TEXT_TASKS,
         model=None, transcriber=None, speech_transcriber=None) -> int:
    """Parse ``argv``, evaluate, write the report files and print the summary table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(prog, default_tasks).parse_args(argv)
    report = run(args, model=model, transcriber=transcriber, speech_transcriber=speech_transcriber)
    paths = write_report(report, args.output)
    print(summary_tables(report))
    for note in report["notes"]:
        print(f"note: {note}")
    if report["errors"]:
        print(f"{len(report['errors'])} item error(s), see {paths['md']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
