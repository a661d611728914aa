"""Evaluation: ASR, spoken instruction following, modal invariance, and a cascade baseline.

``eval/*.py`` and ``llasm eval`` are thin entry points over :func:`main` (this module: the command
line, loading data and systems). The tasks and their metrics run in :mod:`llasm.evaluation.tasks`;
items and prompts live in :mod:`llasm.evaluation.items`, the systems and the judge in
:mod:`llasm.evaluation.systems`, the report files in :mod:`llasm.evaluation.report`.

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
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from llasm import __version__
from llasm.device import add_device_arguments
from llasm.evaluation import metrics as M
from llasm.evaluation.items import (
    ASSETS,
    JUDGE_PROMPT_PATH,
    AsrItem,
    InstructItem,
    load_asr_items,
    load_instruct_items,
    load_prompts,
    prompt_info,
    split_note,
    text_only_note,
)
from llasm.evaluation.report import summary_tables, write_report
from llasm.evaluation.systems import (
    LOOP_GUARD_RULE,
    LOOP_GUARD_VERSION,
    CascadeSystem,
    Judge,
    LlasmSystem,
    WhisperTranscriber,
    make_ppl_scorer,
)
from llasm.evaluation.tasks import TASKS, TEXT_TASKS, evaluate

logger = logging.getLogger(__name__)

# default data: the held-out split of the synthesized seed corpus (make it with data_prep/synthesize.py)
DEFAULT_DATA = "data/eval/seed_instructions.jsonl"
DEFAULT_ASR_DATA = "data/eval/seed_asr.jsonl"
MAKE_DATA_HINT = (
    "make it with: python data_prep/synthesize.py --input data/seed/instructions.jsonl --output {instruct} && "
    "python data_prep/synthesize.py --input data/seed/asr_sentences.jsonl --output {asr}"
).format(instruct=DEFAULT_DATA, asr=DEFAULT_ASR_DATA)

# ------------------------------------------------------------------------------------- CLI


def load_model(spec: str, device: str | None = None, dtype: str | None = None, **bases):
    """A checkpoint dir or a model YAML (:func:`llasm.builder.load_model`), on ``device`` in ``dtype``
    (default: CUDA and bfloat16 when there is a GPU, else the CPU and float32; :mod:`llasm.device`),
    in eval mode; ``bases`` (``audio_tower=``, ``language_model=``) say where a checkpoint's base
    models are."""
    from llasm import builder  # heavy (torch): not for --help

    model, _ = builder.load_model(spec, dtype=dtype, device=device or "auto", **bases)
    return model


def build_parser(prog: str = "llasm eval", default_tasks: Sequence[str] = TEXT_TASKS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate an llasm model (ASR, spoken instruction following, "
                                "modal invariance) against a Whisper -> LLM cascade; writes report.{json,md,png}.",
                                epilog="The field's benchmarks (VoiceBench, URO-Bench, LibriSpeech, AISHELL-1, Fleurs, "
                                "WenetSpeech): llasm eval --benchmark NAME[:subset] --data DIR ... "
                                "(llasm eval --benchmark x --help lists their options).")
    p.add_argument("--model", required=True, help="checkpoint directory (final/ or checkpoint-N) or model YAML "
                   "(configs/model/*.yaml)")
    p.add_argument("--audio-tower", default=None, help="where the checkpoint's base Whisper is, when not where it "
                   "was trained (a copied checkpoint)")
    p.add_argument("--language-model", default=None, help="where the checkpoint's base LLM is, likewise")
    p.add_argument("--data", default=None, help=f"spoken instruction JSONL (default {DEFAULT_DATA})")
    p.add_argument("--asr-data", default=None, help=f"ASR JSONL (default {DEFAULT_ASR_DATA})")
    p.add_argument("--split", default="test", help="keep records with this 'split' ('all' keeps every record)")
    p.add_argument("--output", required=True, help="output directory for report.json/.md/.png")
    p.add_argument("--tasks", default=",".join(default_tasks), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="at most N items per data file (the speech task: N per language)")
    p.add_argument("--asr-limit", type=int, default=None, help="at most N ASR items (default: --limit)")
    p.add_argument("--real-data", default=None,
                   help="real-voice dev set JSONL (llasm real-voices); adds the task 'real': real_wer / real_cer")
    p.add_argument("--real-limit", type=int, default=None, help="at most N real-voice items (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1)")
    p.add_argument("--judge-model", default=None, help="judge model name sent to the endpoint")
    p.add_argument("--judge-api-key-env", default="LLASM_JUDGE_API_KEY",
                   help="environment variable holding the judge API key (optional)")
    p.add_argument("--keep-loops", action="store_true",
                   help="score ASR hypotheses as generated (default: a unit repeated 4+ times in a row is cut to the "
                        "reference's own run of it, at least one copy; loop guard v2)")
    p.add_argument("--no-cascade", action="store_true", help="skip the Whisper -> LLM cascade baseline")
    p.add_argument("--cascade-whisper", default=None,
                   help="Whisper HF dir for the cascade (default: the model's own base Whisper)")
    add_device_arguments(p)  # --device, --dtype: the model's and the cascade's Whisper
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    speech = p.add_argument_group("speech output (task 'speech', llasm.evaluation.speech; added when --vocoder is given)")
    speech.add_argument("--vocoder", default=None,
                        help="token2wav dir (train/train_token2wav.py or train/train_vocoder.py output)")
    speech.add_argument("--kmeans", default=None, help="k-means unit dir (data_prep/units.py fit) for resynthesis")
    speech.add_argument("--judge", default=None,
                        help="Whisper HF dir that transcribes the speech (default: the cascade's Whisper)")
    return p


def run(args: argparse.Namespace, *, model=None, transcriber: Callable[[Any, str], str] | None = None,
        speech_transcriber: Callable[[Any, str], str] | None = None) -> dict:
    """Everything :func:`main` does, with optional injected ``model`` / cascade ``transcriber`` (tests)."""
    # torch and the vocoder come with the speech task's helpers: loaded here, not for --help
    from llasm.evaluation.speech import load_speech_items, merge_speech, run_speech, speech_meta

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
            notes += [n for n in [text_only_note(instruct_path, split, args.limit)] if n]
            notes += [] if instruct_items else [n for n in [split_note(instruct_path, split)] if n]
    speech_items = []
    if "speech" in tasks and instruct_path:
        speech_items, errs = load_speech_items(instruct_path, split, args.limit)
        errors += errs
    asr_limit = args.limit if args.asr_limit is None else args.asr_limit
    if "asr" in tasks:
        asr_path = data_path(args.asr_data, DEFAULT_ASR_DATA, "asr")
        if asr_path:
            asr_items, errs = load_asr_items(asr_path, split, asr_limit)
            errors += errs
            notes += [] if asr_items else [n for n in [split_note(asr_path, split)] if n]
    real_items: list[AsrItem] = []
    real_path = getattr(args, "real_data", None)
    if real_path:  # the real-voice dev set (llasm.prep.real_voices): every record, whatever its split
        if not Path(real_path).is_file():
            raise SystemExit(f"real-voice data {real_path}: file not found (make it with: llasm real-voices)")
        tasks += [] if "real" in tasks else ["real"]
        real_items, errs = load_asr_items(real_path, None, args.real_limit)
        errors += errs
    if not instruct_items and not asr_items and not speech_items and not real_items and not errors:
        raise SystemExit("nothing to evaluate: " + ("; ".join(notes) if notes else f"no items found ({MAKE_DATA_HINT})"))

    if model is None:
        model = load_model(args.model, args.device, args.dtype, audio_tower=getattr(args, "audio_tower", None),
                           language_model=getattr(args, "language_model", None))
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

    report = evaluate(systems, instruct_items=instruct_items, asr_items=asr_items, real_items=real_items,
                      tasks=[t for t in tasks if t != "speech"], scorer=make_ppl_scorer(model), judge=judge,
                      errors=errors, notes=notes, progress=not args.no_progress, keep_loops=args.keep_loops,
                      batch_size=args.batch_size)
    if "speech" in tasks:
        speech_judge = speech_transcriber or transcriber
        judge_path = args.judge or args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
        if speech_judge is None or args.judge:
            if not judge_path:
                raise SystemExit("the speech task needs a Whisper judge: pass --judge DIR")
            speech_judge = WhisperTranscriber(judge_path, device=str(model.device))
        report["meta_speech"] = speech_meta(args, getattr(speech_judge, "path", "injected transcriber"))
        merge_speech(report, run_speech(args, model, speech_items, speech_judge))
    report["meta"] = {
        "llasm_version": __version__,
        "model": str(args.model),
        "data": instruct_path,
        "asr_data": asr_path,
        "real_data": real_path,
        "split": split or "all",
        "limit": args.limit,
        "asr_limit": asr_limit,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy" + ("" if args.keep_loops else f"; ASR hypotheses: {LOOP_GUARD_RULE}"),
        "loop_guard_version": None if args.keep_loops else LOOP_GUARD_VERSION,
        "tasks": tasks,
        "systems": list(report["results"]),
        "cascade": cascade_info,
        "judge": judge_meta,
        **prompt_info(),
        **{k: v for k, v in M.normalizer_info().items()},
        "torch": sys.modules["torch"].__version__,
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
    """Parse ``argv``, evaluate, write the report files and print the summary table.

    With ``--benchmark NAME[:subset]`` it runs one of the field's benchmarks instead
    (:mod:`llasm.evaluation.benchmarks`: VoiceBench, URO-Bench, LibriSpeech, AISHELL-1, Fleurs, WenetSpeech).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--benchmark" or a.startswith("--benchmark=") for a in argv):
        from llasm.evaluation.benchmarks.cli import main as benchmark_main  # torch and the model core

        return benchmark_main(argv, prog=prog, model=model, transcriber=transcriber,
                              speech_transcriber=speech_transcriber)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(prog, default_tasks).parse_args(argv)
    report = run(args, model=model, transcriber=transcriber, speech_transcriber=speech_transcriber)
    report["meta"]["command"] = shlex.join([*prog.split(), *argv])  # what made these numbers, to run again
    paths = write_report(report, args.output)
    print(summary_tables(report))
    for note in report["notes"]:
        print(f"note: {note}")
    if report["errors"]:
        print(f"{len(report['errors'])} item error(s), see {paths['md']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
