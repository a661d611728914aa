"""The evaluation report: the metric legend, the per-language summary tables, ``report.md`` and the
files ``report.{json,md,png}`` (:func:`write_report`; the PNG is :func:`plot_metrics`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from llasm.evaluation import metrics as M
from llasm.io import atomic_path, write_text

# ----------------------------------------------------------------------------------- report


METRIC_HELP = {
    "wer": "ASR word error rate (en, Whisper-normalized), lower is better",
    "cer": "ASR character error rate (zh, normalized), lower is better",
    "real_wer": "ASR word error rate on the real-voice dev set (human recordings, never trained on), lower is better",
    "real_cer": "ASR character error rate on the real-voice dev set, lower is better",
    "accuracy": "share of replies containing an accepted keyword (items with keywords only; n/a without)",
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
    not_applicable = report.get("not_applicable", {})  # {lang: {metric: why}}: shown as n/a, never a number
    systems = list(results)
    langs = [lang for lang in M.LANGUAGES if any(lang in results[s] for s in systems)]
    out = []
    for lang in langs:
        metrics: list[str] = []
        for s in systems:
            for m in list(results[s].get(lang, {})) + list(not_applicable.get(lang, {})):
                if m not in metrics:
                    metrics.append(m)
        metrics.sort(key=lambda m: list(METRIC_HELP).index(m) if m in METRIC_HELP else 99)
        out.append(f"### {lang}\n")
        out.append("| metric | " + " | ".join(systems) + " |")
        out.append("|---|" + "---|" * len(systems))
        for m in metrics:
            cells = [_fmt(results[s].get(lang, {}).get(m)) if m in results[s].get(lang, {}) or
                     m not in not_applicable.get(lang, {}) else "n/a" for s in systems]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
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
    for key in ("command", "model", "data", "asr_data", "real_data", "split", "limit", "max_new_tokens", "tasks",
                "prompts_version", "normalizer_version", "decoding", "started", "duration_s"):
        if key in meta:
            lines.append(f"- **{key}**: `{meta[key]}`")
    if "cascade" in meta:
        lines.append(f"- **cascade**: {meta['cascade']}")
    if "judge" in meta:
        lines.append(f"- **LLM judge** (instruct task): {meta['judge']}")
    for key, value in (meta.get("speech") or {}).items():  # the speech task's parts and its Whisper judge
        lines.append(f"- **speech {key.replace('_', ' ')}**: {value}")
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
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_text(out / "report.json", json.dumps(_json_safe(report), ensure_ascii=False, indent=2) + "\n"),
             "md": write_text(out / "report.md", render_markdown(report))}
    if any(report["results"].get(s) for s in report["results"]):
        paths["png"] = plot_metrics(report["results"], out / "report.png", title="llasm evaluation")
    return paths


def _metric_value(v: Any) -> float:
    if isinstance(v, Mapping):
        v = v.get("value")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def plot_metrics(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path, title: str | None = None) -> Path:
    """Write a PNG bar chart of ``results = {system: {lang: {metric: value}}}`` to ``path``.

    One subplot per metric (in first-seen order); on each, one group of bars per language that has
    the metric and one bar per system (same colour in every subplot, one shared legend), labelled
    with its value. A value may be a number or a dict with a ``"value"`` key (as
    :func:`llasm.evaluation.metrics.asr_error_rate` returns); missing or non-numeric values leave a gap. Rendered with the
    Agg canvas (no display, global backend untouched) and written atomically.
    """
    # matplotlib is heavy (a second to import): only when a report is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    systems = list(results)
    if not systems:
        raise ValueError("plot_metrics needs at least one system")
    langs: list[str] = []
    metrics: list[str] = []
    for per_lang in results.values():
        for lang, per_metric in per_lang.items():
            if lang not in langs:
                langs.append(lang)
            for metric in per_metric:
                if metric not in metrics:
                    metrics.append(metric)
    if not metrics:
        raise ValueError("plot_metrics: no metric values in results")

    colors = [f"C{i % 10}" for i in range(len(systems))]
    width = 0.8 / len(systems)
    cols = min(4, len(metrics))  # a grid, at most 4 charts per row
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(max(5.0, 3.6 * cols), 3.4 * rows + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(grid, metrics):
        values = {
            (system, lang): _metric_value(results[system].get(lang, {}).get(metric))
            for system in systems
            for lang in langs
        }
        # languages where this metric exists at all (e.g. CER only for zh, WER only for en)
        groups = [lang for lang in langs if any(not math.isnan(values[s, lang]) for s in systems)]
        for g, lang in enumerate(groups):
            for i, system in enumerate(systems):
                y = values[system, lang]
                if math.isnan(y):
                    continue
                x = g + (i - (len(systems) - 1) / 2) * width
                ax.bar(x, y, width, color=colors[i])
                ax.annotate(f"{y:.3g}", (x, y), ha="center", va="bottom", fontsize=8)
        ax.set_title(metric)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_xlim(-0.6, max(len(groups), 1) - 0.4)
        ax.margins(y=0.15)
    handles = [Patch(color=c, label=system) for c, system in zip(colors, systems)]
    fig.legend(handles=handles, loc="lower center", ncol=len(systems), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    if title:
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
