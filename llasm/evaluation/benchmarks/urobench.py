"""URO-Bench (Yan et al. 2025, arXiv:2502.17810), basic track: speech in, speech out, en and zh.

Layout, from URO-Bench's ``scripts/example.sh`` and ``examples/example-test/inference_for_eval.py``:
``<data>/<level>/<Dataset>/test.jsonl`` (``URO-Bench-data.zip`` from the hub repo
``Honggao/URO-Bench``; the miniset ``URO-Bench-mini.zip`` has the same tree), one JSON object per
line with ``source_wav`` (relative to the dataset folder), ``source_text`` and, where a reference
exists, ``target_text`` (a string or a list, joined with ``" / "``; without it the reference is
``source_text``). The basic datasets, their scoring modes and languages are those of
``scripts/config.sh``; overall scores are per-language means (``evaluate.py``).

URO-Bench scores the *spoken* answer: its Whisper (en) / Paraformer (zh) transcript goes to the
judge. llasm scores both the text answer and the transcript of the spoken answer, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from llasm.evaluation.benchmarks.items import BenchItem, BenchmarkError

HUB_ID = "Honggao/URO-Bench"
# dataset -> (mode, lang); the modes are URO-Bench's mark.py modes
BASIC: dict[str, tuple[str, str]] = {
    "Repeat": ("wer", "en"), "Summary": ("semi-open", "en"), "GaokaoEval": ("qa", "en"),
    "StoralEval": ("semi-open", "en"), "TruthfulEval": ("semi-open", "en"), "Gsm8kEval": ("qa", "en"),
    "MLC": ("qa", "en"), "AlpacaEval": ("open", "en"), "CommonEval": ("open", "en"), "WildchatEval": ("open", "en"),
    "Repeat-zh": ("wer", "zh"), "LCSTS-zh": ("semi-open", "zh"), "HSK5-zh": ("qa", "zh"), "SQuAD-zh": ("qa", "zh"),
    "APE-zh": ("qa", "zh"), "MLC-zh": ("qa", "zh"), "OpenbookQA-zh": ("qa", "zh"), "AlpacaEval-zh": ("open", "zh"),
    "Claude-zh": ("open", "zh"), "Wildchat-zh": ("open", "zh"),
}
SCORER = {"wer": "repeat", "open": "uro-open", "semi-open": "uro-semi-open", "qa": "uro-qa"}
GROUPS = {"basic-en": [k for k, (_, lang) in BASIC.items() if lang == "en"],
          "basic-zh": [k for k, (_, lang) in BASIC.items() if lang == "zh"]}
RULE_BASED = ("Repeat", "Repeat-zh")


def datasets_of(subset: str | None) -> list[str]:
    """``"Repeat"`` -> ``["Repeat"]``; ``"basic-en"`` / ``"basic-zh"`` / ``"basic"`` -> the group."""
    if subset in BASIC:
        return [subset]
    if subset in GROUPS:
        return GROUPS[subset]
    if subset in (None, "basic"):
        return list(BASIC)
    lower = {k.lower(): k for k in BASIC}
    if subset.lower() in lower:
        return [lower[subset.lower()]]
    raise BenchmarkError(f"urobench subset {subset!r}: choose a basic dataset ({', '.join(BASIC)}) "
                         f"or a group ({', '.join(GROUPS)}, basic)")


def _folder(data: Path, name: str) -> Path:
    for candidate in (data / "basic" / name, data / name):
        if (candidate / "test.jsonl").is_file():
            return candidate
    raise BenchmarkError(f"urobench {name}: no {name}/test.jsonl under {data} or {data / 'basic'} "
                         f"(unzip URO-Bench-data.zip from {HUB_ID} and pass its folder with --data)")


def load(subset: str | None, data: str | None = None, split: str | None = None,
         limit: int | None = None) -> tuple[list[BenchItem], list[dict]]:
    """Items of URO-Bench basic datasets; returns ``(items, errors)``.

    ``subset``: a dataset (``Repeat``, ``MLC-zh``...) or a group (``basic-en``, ``basic-zh``,
    ``basic``). ``data``: the unzipped ``URO-Bench-data`` folder (required: the data is a zip on the
    hub, not a dataset). ``limit``: at most N items per dataset. ``split`` is not used (one split).
    """
    if not data:
        raise BenchmarkError(f"urobench needs --data: the unzipped URO-Bench-data folder (from {HUB_ID})")
    root = Path(data)
    items: list[BenchItem] = []
    errors: list[dict] = []
    names = datasets_of(subset)
    if len(names) > 1:  # a group on a partial copy (the miniset, a fixture): the datasets it has
        missing = [n for n in names if not any((d / n / "test.jsonl").is_file() for d in (root, root / "basic"))]
        if missing and len(missing) < len(names):
            errors.append({"task": f"urobench:{subset}", "system": "data", "id": ",".join(missing),
                           "error": f"datasets missing from {root}: {', '.join(missing)}"})
            names = [n for n in names if n not in missing]
    for name in names:
        mode, lang = BASIC[name]
        folder = _folder(root, name)
        lines = (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()
        count = 0
        for step, line in enumerate(lines):
            if limit is not None and count >= limit:
                break
            if not line.strip():
                continue
            item_id = f"{name}-{step:04d}"  # URO-Bench names outputs by line number
            try:
                row = json.loads(line)
                wav, text = row.get("source_wav"), str(row.get("source_text") or "").strip()
                if not wav or not text:
                    raise ValueError("needs 'source_wav' and 'source_text'")
                target = row.get("target_text", text)
                reference = " / ".join(map(str, target)) if isinstance(target, list) else str(target)
                items.append(BenchItem(id=item_id, benchmark="urobench", subset=name, lang=lang,
                                       audio=str(folder / wav), prompt=text, reference=reference,
                                       scorer=SCORER[mode], meta={"mode": mode}))
                count += 1
            except (ValueError, TypeError) as err:
                errors.append({"task": f"urobench:{name}", "system": "data", "id": item_id,
                               "error": f"{type(err).__name__}: {err}"})
    return items, errors
