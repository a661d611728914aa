"""VoiceBench (Chen et al. 2024, arXiv:2410.17196): spoken questions, answered in text.

Layout, from VoiceBench's ``main.py`` (``load_dataset('hlt-lab/voicebench', subset, split=...)``,
columns ``audio``, ``prompt`` and, by subset, ``reference``, ``id``, ``key``,
``instruction_id_list``, ``kwargs``) and the hub repo ``hlt-lab/voicebench`` (one folder per subset,
``<subset>/<split>-00000-of-00001.parquet``); the splits of ``mmsu`` (12 domains) and ``sd-qa``
(11 accents, the leaderboard uses ``usa``) are those of Ultravox's VoiceBench configs
(``ultravox/data/configs/voicebench.py``). Scorers per subset follow VoiceBench's README
("Use ``open`` for alpacaeval ...").

``--data`` is a local copy of the hub repo (``huggingface-cli download hlt-lab/voicebench
--repo-type dataset --local-dir DIR``) or the hub id itself when the network allows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llasm.evaluation.benchmarks.items import BenchItem, BenchmarkError, hub_dataset, iter_parquet_rows, parquet_files

HUB_ID = "hlt-lab/voicebench"
MMSU_SPLITS = ("law", "engineering", "other", "biology", "business", "economics", "health", "philosophy",
               "psychology", "history", "chemistry", "physics")
SDQA_SPLITS = ("aus", "gbr", "ind_n", "ind_s", "irl", "kenya", "nga", "nzl", "phl", "usa", "zaf")
# subset -> (scorer, default splits)
SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alpacaeval": ("open", ("test",)),
    "alpacaeval_full": ("open", ("test",)),
    "commoneval": ("open", ("test",)),
    "wildvoice": ("open", ("test",)),
    "sd-qa": ("qa", ("usa",)),
    "openbookqa": ("mcq", ("test",)),
    "mmsu": ("mcq", MMSU_SPLITS),
    "ifeval": ("ifeval", ("test",)),
    "bbh": ("bbh", ("test",)),
    "advbench": ("harm", ("test",)),
}
RULE_BASED = ("openbookqa", "mmsu", "ifeval", "bbh", "advbench")
# the leaderboard's columns; Overall is their mean with the 1-5 judge scores times 20
LEADERBOARD = ("alpacaeval_full", "commoneval", "wildvoice", "sd-qa", "mmsu", "openbookqa", "bbh", "ifeval", "advbench")


def _kwargs(value: Any) -> list[dict]:
    if isinstance(value, str):  # some exports keep the list as JSON text
        value = json.loads(value)
    return [dict(k or {}) for k in (value or [])]


def _item(row: dict, subset: str, split: str, index: int, scorer: str) -> BenchItem:
    prompt = str(row.get("prompt") or "").strip()
    if not prompt:
        raise ValueError("no 'prompt' text")
    if row.get("audio") is None:
        raise ValueError("no 'audio'")
    reference = row.get("reference")
    if scorer in ("mcq", "bbh", "qa") and not reference:
        raise ValueError(f"the {scorer} scorer needs a 'reference'")
    meta: dict = {"split": split}
    if scorer == "ifeval":
        if not row.get("instruction_id_list"):
            raise ValueError("IFEval row without 'instruction_id_list'")
        meta.update(key=row.get("key"), instruction_id_list=list(row["instruction_id_list"]),
                    kwargs=_kwargs(row.get("kwargs")))
    item_id = str(row.get("id") or row.get("key") or f"{subset}-{split}-{index:05d}")
    if scorer == "bbh" and row.get("id"):
        meta["task_id"] = str(row["id"])
    return BenchItem(id=item_id, benchmark="voicebench", subset=subset, lang="en", audio=row["audio"],
                     prompt=prompt, reference=None if reference is None else str(reference), scorer=scorer, meta=meta)


def load(subset: str | None, data: str | None = None, split: str | None = None,
         limit: int | None = None) -> tuple[list[BenchItem], list[dict]]:
    """Items of one VoiceBench subset; returns ``(items, errors)`` (a bad row is an error, not a stop).

    ``subset``: a key of :data:`SUBSETS`. ``data``: a folder holding ``<subset>/<split>-*.parquet``
    (or ``<split>/*.parquet``), or ``hlt-lab/voicebench``. ``split``: one split (default: the
    subset's, all 12 domains for ``mmsu``). ``limit``: at most N items. Raises
    :class:`BenchmarkError` for an unknown subset or a missing folder.
    """
    if subset not in SUBSETS:
        raise BenchmarkError(f"voicebench subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    scorer, default_splits = SUBSETS[subset]
    splits = (split,) if split else default_splits
    data = data or HUB_ID
    items: list[BenchItem] = []
    errors: list[dict] = []
    items: list[BenchItem] = []
    errors: list[dict] = []
    if Path(data).exists() and not split and len(splits) > 1:  # a partial copy: the domains it has
        folder = Path(data) / subset if (Path(data) / subset).is_dir() else Path(data)
        missing = [sp for sp in splits if not parquet_files(folder, sp)]
        if missing and len(missing) < len(splits):
            errors.append({"task": f"voicebench:{subset}", "system": "data", "id": ",".join(missing),
                           "error": f"splits missing from {folder}: {', '.join(missing)}"})
            splits = tuple(sp for sp in splits if sp not in missing)
    for sp in splits:
        if Path(data).exists():
            folder = Path(data) / subset if (Path(data) / subset).is_dir() else Path(data)
            files = parquet_files(folder, sp)
            if not files:
                raise BenchmarkError(f"voicebench {subset}/{sp}: no {sp}-*.parquet under {folder} "
                                     f"(expected the hub layout {HUB_ID}/{subset}/{sp}-00000-of-00001.parquet)")
            rows = (row for f in files for row in iter_parquet_rows(f))
        elif data == HUB_ID:
            rows = iter(hub_dataset(HUB_ID, subset, sp))
        else:
            raise BenchmarkError(f"voicebench --data {data}: not a folder (and not {HUB_ID})")
        for index, row in enumerate(rows):
            if limit is not None and len(items) >= limit:
                break
            try:
                items.append(_item(row, subset, sp, index, scorer))
            except (ValueError, TypeError) as err:
                errors.append({"task": f"voicebench:{subset}", "system": "data", "id": f"{sp}-{index}",
                               "error": f"{type(err).__name__}: {err}"})
    return items, errors
