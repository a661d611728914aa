"""The evaluation report: the metric legend, the per-language summary tables, ``report.md`` and the
files ``report.{json,md,png}`` (:func:`write_report`; the PNG is :func:`llasm.evaluation.metrics.plot_metrics`).
Used by :mod:`llasm.evaluation`, which re-exports every name here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llasm.evaluation import metrics as M


# ----------------------------------------------------------------------------------- report


METRIC_HELP = {
    "wer": "ASR word error rate (en, Whisper-normalized), lower is better",
    "cer": "ASR character error rate (zh, normalized), lower is better",
    "accuracy": "share of replies containing an accepted keyword",
    "chrf": "corpus chrF of replies vs reference answers (0-100)",
    "lang_consistency": "share of replies in the question's language",
    "judge": "mean LLM-judge score (1-5)",
    "agreement": "share of questions where spoken-form and text-form replies are equally correct",
    "exact_match": "share of spoken-form replies equal to the text-form reply after normalization",
    "chrf_vs_text": "corpus chrF of spoken-form replies vs text-form replies (0-100)",
    "ppl_text_reply": "perplexity of the text-prompted reply under this system's prompt, lower is better",
}


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def summary_tables(report: dict) -> str:
    """Markdown tables, one per language: a row per metric, a column per system (+ n)."""
    results = report["results"]
    systems = list(results)
    langs = [lang for lang in M.LANGUAGES if any(lang in results[s] for s in systems)]
    out = []
    for lang in langs:
        metrics: list[str] = []
        for s in systems:
            for m in results[s].get(lang, {}):
                if m not in metrics:
                    metrics.append(m)
        metrics.sort(key=lambda m: list(METRIC_HELP).index(m) if m in METRIC_HELP else 99)
        out.append(f"### {lang}\n")
        out.append("| metric | " + " | ".join(systems) + " |")
        out.append("|---|" + "---|" * len(systems))
        for m in metrics:
            out.append(f"| {m} | " + " | ".join(_fmt(results[s].get(lang, {}).get(m)) for s in systems) + " |")
        ns = []
        for s in systems:
            c = report.get("counts", {}).get(s, {}).get(lang, {})
            ns.append(", ".join(f"{k} {v}" for k, v in c.items()) or "–")
        out.append("| n items | " + " | ".join(ns) + " |")
        out.append("")
    return "\n".join(out) if out else "(no results)\n"


def render_markdown(report: dict) -> str:
    meta = report.get("meta", {})
    lines = ["# llasm evaluation report", ""]
    for key in ("model", "data", "asr_data", "split", "limit", "max_new_tokens", "tasks", "prompts_version",
                "normalizer_version", "started", "duration_s"):
        if key in meta:
            lines.append(f"- **{key}**: `{meta[key]}`")
    if "cascade" in meta:
        lines.append(f"- **cascade**: {meta['cascade']}")
    if "judge" in meta:
        lines.append(f"- **judge**: {meta['judge']}")
    lines += ["", "## Results", "", summary_tables(report), "## Metrics", ""]
    lines += [f"- `{k}`: {v}" for k, v in METRIC_HELP.items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    errors = report.get("errors", [])
    lines += ["", f"## Errors ({len(errors)})", ""]
    if errors:
        lines += ["| task | system | id | error |", "|---|---|---|---|"]
        for e in errors:
            msg = str(e["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {e['task']} | {e['system']} | {e['id']} | {msg} |")
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(report: dict, output_dir) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` (when there are results) into ``output_dir``."""
    from llasm.io import write_text

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_text(out / "report.json", json.dumps(_json_safe(report), ensure_ascii=False, indent=2) + "\n"),
             "md": write_text(out / "report.md", render_markdown(report))}
    if any(report["results"].get(s) for s in report["results"]):
        paths["png"] = M.plot_metrics(report["results"], out / "report.png", title="llasm evaluation")
    return paths
