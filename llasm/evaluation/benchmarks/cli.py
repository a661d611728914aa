"""``llasm eval --benchmark NAME[:subset] --data DIR``: the field's benchmarks on an llasm model.

    llasm eval --benchmark voicebench:mmsu --data ~/voicebench --model DIR --output out/vb-mmsu
    llasm eval --benchmark urobench:basic-en --data ~/URO-Bench-data --model DIR --output out/uro \\
        --judge-url http://localhost:8000/v1 --judge-model gpt-4o-mini --speech-judge ~/whisper-large-v3
    llasm eval --benchmark librispeech:test-clean --data ~/LibriSpeech --model DIR --output out/ls

Names: ``voicebench:<subset>`` (:mod:`llasm.evaluation.benchmarks.voicebench`), ``urobench:<dataset|basic-en|
basic-zh>`` (:mod:`llasm.evaluation.benchmarks.urobench`), ``librispeech``, ``aishell1``, ``fleurs``,
``wenetspeech`` (:mod:`llasm.evaluation.benchmarks.asr_sets`); several comma-separated. ``aishell``
(prepare-asr's name for the corpus) is an alias of ``aishell1``; reports carry the canonical name.
Writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from llasm import __version__
from llasm.builder import load_model
from llasm.evaluation.benchmarks import asr_sets, urobench, voicebench
from llasm.evaluation.benchmarks.items import ALIASES, BenchmarkError, canonical_spec, parse_spec
from llasm.evaluation.benchmarks.judging import ChatJudge
from llasm.evaluation.benchmarks.run import SPEECH, evaluate_benchmarks
from llasm.evaluation.benchmarks.scorers import PRIMARY_METRIC
from llasm.evaluation.items import load_prompts
from llasm.evaluation.report import _json_safe
from llasm.evaluation.systems import CascadeSystem, LlasmSystem, WhisperTranscriber
from llasm.io import write_text
from llasm.speech.vocoder import UnitHifiGan

FIXTURE_MARKER = "LLASM_FIXTURE.txt"  # written by llasm.evaluation.benchmarks.fixtures into every miniature copy
NAMES = ("voicebench", "urobench") + tuple(asr_sets.SETS)
ALIAS_NOTE = "aliases: " + ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())


def load_benchmark(spec: str, data: str | None, split: str | None = None, limit: int | None = None):
    """``(items, errors)`` of ``NAME[:subset]`` read from ``data`` (module docstring)."""
    name, subset = parse_spec(spec)
    if name == "voicebench":
        return voicebench.load(subset, data, split, limit)
    if name == "urobench":
        return urobench.load(subset, data, split, limit)
    if name in asr_sets.SETS:
        return asr_sets.load(name, subset, data, split, limit)
    raise BenchmarkError(f"--benchmark {spec!r}: unknown name; choose from {', '.join(NAMES)} ({ALIAS_NOTE})")


def build_parser(prog: str = "llasm eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", required=True, help="NAME[:subset], comma-separated for several; names: "
                   f"{', '.join(NAMES)} ({ALIAS_NOTE})")
    p.add_argument("--data", default=None, help="local copy in the benchmark's published layout (or a hub id); "
                   "one for all the --benchmark names given, so several names are subsets of one benchmark")
    p.add_argument("--model", required=True, help="checkpoint directory or model YAML")
    p.add_argument("--output", required=True, help="output directory for report.json/.md")
    p.add_argument("--split", default=None, help="one split instead of the subset's default")
    p.add_argument("--limit", type=int, default=None, help="at most N items per subset")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--no-cascade", action="store_true", help="skip the Whisper -> LLM cascade")
    p.add_argument("--no-text", action="store_true", help="skip the text topline (the LLM given the words spoken)")
    p.add_argument("--cascade-whisper", default=None, help="Whisper HF dir for the cascade (default: the model's)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for judge-scored subsets")
    p.add_argument("--judge-model", default=None, help="judge model name (the benchmarks used gpt-4o-mini)")
    p.add_argument("--judge-api-key-env", default="LLASM_JUDGE_API_KEY")
    p.add_argument("--speech-judge", default=None,
                   help="Whisper HF dir that transcribes spoken answers (URO-Bench used whisper-large-v3)")
    p.add_argument("--vocoder", default=None, help="unit vocoder dir, for a model with a unit head")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-progress", action="store_true")
    return p


def _fmt(value) -> str:
    return "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def render_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = ["# llasm benchmark report", ""]
    if meta.get("fixture"):
        lines += [f"> **Not the official benchmark.** {meta['fixture']}", ""]
    for key in ("benchmarks", "data", "model", "split", "limit", "max_new_tokens", "cascade", "started", "duration_s"):
        lines.append(f"- **{key}**: `{meta.get(key)}`")
    results, systems = report["results"], list(report["results"])
    groups = list(dict.fromkeys(g for s in systems for g in results[s]))
    lines += ["", "## Results", "", "| benchmark | metric | " + " | ".join(systems) + " | n |",
              "|---|---|" + "---|" * (len(systems) + 1)]
    for group in groups:
        metrics = list(dict.fromkeys(m for s in systems for m in results[s].get(group, {})))
        n = max((report["counts"].get(s, {}).get(group, 0) for s in systems), default=0)
        for metric in metrics:
            cells = [_fmt(results[s].get(group, {}).get(metric)) for s in systems]
            lines.append(f"| {group} | {metric} | " + " | ".join(cells) + f" | {n} |")
    lines += ["", f"`{SPEECH}`: the spoken answer, transcribed by the Whisper judge, scored like text; "
              "`*_peer`: the peers' ASR normalization (" + "; ".join(
                  f"{k}: {v}" for k, v in report["details"]["peer_normalizer"].items()) + ")."]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", f"## Errors ({len(report['errors'])})", ""]
    for e in report["errors"][:200]:
        lines.append(f"- {e['task']} / {e['system']} / {e['id']}: {str(e['error']).splitlines()[0][:300]}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, output: str | Path) -> dict[str, Path]:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    return {"json": write_text(out / "report.json", json.dumps(_json_safe(report), ensure_ascii=False, indent=2) + "\n"),
            "md": write_text(out / "report.md", render_markdown(report))}


def _fixture_note(data: str | None) -> str | None:
    marker = Path(data) / FIXTURE_MARKER if data else None
    return marker.read_text(encoding="utf-8").strip() if marker and marker.is_file() else None


def run(args: argparse.Namespace, *, model=None, transcriber=None, speech_transcriber=None) -> dict:
    """Everything :func:`main` does; ``model`` / ``transcriber`` / ``speech_transcriber`` may be injected."""
    started = time.time()
    if bool(args.judge_url) != bool(args.judge_model):
        raise SystemExit("--judge-url and --judge-model go together")
    items, errors, notes = [], [], []
    specs = [s.strip() for s in args.benchmark.split(",") if s.strip()]
    for spec in specs:
        try:
            got, errs = load_benchmark(spec, args.data, args.split, args.limit)
        except BenchmarkError as err:
            raise SystemExit(str(err)) from None
        items += got
        errors += errs
    if not items:
        raise SystemExit(f"--benchmark {args.benchmark}: no items loaded from {args.data} ({len(errors)} bad rows)")
    if model is None:
        model, _ = load_model(args.model, dtype=args.dtype)
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    if args.vocoder:
        model.set_vocoder(UnitHifiGan.from_pretrained(args.vocoder).eval())
    llasm_sys = LlasmSystem(model, load_prompts(), max_new_tokens=args.max_new_tokens)
    systems: dict[str, Any] = {"llasm": llasm_sys}
    whisper = args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
    cascade = "disabled (--no-cascade)"
    if not args.no_cascade:
        if transcriber is None and whisper:
            try:
                transcriber = WhisperTranscriber(whisper, device=str(model.device), dtype=model.dtype)
            except Exception as err:  # noqa: BLE001
                notes.append(f"cascade skipped: could not load Whisper {whisper} ({type(err).__name__}: {err})")
        if transcriber is not None:
            systems["cascade"] = CascadeSystem(transcriber, llasm_sys)
            cascade = f"Whisper {getattr(transcriber, 'path', 'injected')} -> the same LLM (text-only)"
        else:
            cascade = "skipped: Whisper did not load (see notes)" if whisper else \
                "skipped: no Whisper (pass --cascade-whisper DIR)"
    can_speak = getattr(model, "unit_head", None) is not None and getattr(model, "vocoder", None) is not None
    if can_speak and speech_transcriber is None and any(i.benchmark == "urobench" for i in items):
        judge_dir = args.speech_judge or whisper
        if not judge_dir:
            raise SystemExit("spoken answers need a Whisper judge: pass --speech-judge DIR")
        speech_transcriber = WhisperTranscriber(judge_dir, device=str(model.device))
    judge = ChatJudge(args.judge_url, args.judge_model, args.judge_api_key_env) if args.judge_url else None
    report = evaluate_benchmarks(items, systems, text_system=None if args.no_text else llasm_sys, judge=judge,
                                 speaker=model if can_speak else None, speech_judge=speech_transcriber,
                                 max_new_tokens=args.max_new_tokens, errors=errors, notes=notes,
                                 progress=not args.no_progress)
    meta = {"llasm_version": __version__, "benchmarks": ",".join(map(canonical_spec, specs)), "data": args.data, "model": str(args.model),
            "split": args.split, "limit": args.limit, "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
            "cascade": cascade, "primary_metric": PRIMARY_METRIC, "fixture": _fixture_note(args.data),
            "speech_judge": getattr(speech_transcriber, "path", "injected" if speech_transcriber else None),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 2)}
    return {"meta": meta, **report}


def main(argv: Sequence[str] | None = None, *, prog: str = "llasm eval", model=None, transcriber=None,
         speech_transcriber=None) -> int:
    """Parse ``argv``, run the benchmarks, write ``report.{json,md}`` and print the results table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(prog).parse_args(argv)
    report = run(args, model=model, transcriber=transcriber, speech_transcriber=speech_transcriber)
    paths = write_report(report, args.output)
    md = render_markdown(report)
    print(md[md.index("## Results"):md.index("## Errors")] if "## Errors" in md else md)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
