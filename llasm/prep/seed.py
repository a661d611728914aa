"""The seed corpus the demos speak: balanced subsets, language interleaving, and Faker sentences for
vocabulary beyond ``data/seed/`` (the bundled questions, answers and ASR sentences)."""

from __future__ import annotations

import random

from llasm.io import REPO

SEED = REPO / "data" / "seed"


def generated_sentences(n: int, seed: int = 0) -> list[dict]:
    """Sentences from Faker's English and Chinese word lists: vocabulary the seed corpus lacks.

    They are word salad on purpose: ASR alignment needs many words heard, not meaning. The LLM-written
    everyday sentences of ``data/seed/generated_sentences.jsonl`` help the warm start but not the demo's
    model within its budget (docs/experiments/demo-budget.md), so the demo keeps these.
    """
    from faker import Faker  # llasm[demo]

    rows = []
    for lang, locale in (("en", "en_US"), ("zh", "zh_CN")):
        fake = Faker(locale)
        fake.seed_instance(seed)
        for i in range(n):
            text = fake.sentence(nb_words=random.Random(seed * 7919 + i).randint(5, 10))
            if lang == "zh":
                text = text.rstrip(".") + "。"
            rows.append({"id": f"gen-{lang}-{i:05d}", "lang": lang, "text": text, "split": "train"})
    return rows


def balanced_subset(rows: list[dict], n: int) -> list[dict]:
    """``n // 4`` rows of each (language, split) pair: en/zh x train/test."""
    return [r for lang in ("en", "zh") for split in ("train", "test")
            for r in [x for x in rows if x["lang"] == lang and x["split"] == split][: n // 4]]


def interleave_languages(rows: list[dict]) -> list[dict]:
    """Interleave languages (en, zh, en, ...) so that the first N items hold both."""
    by_lang = [[r for r in rows if r.get("lang") == lang] for lang in ("en", "zh")]
    others = [r for r in rows if r.get("lang") not in ("en", "zh")]
    mixed = [r for pair in zip(*by_lang) for r in pair]
    longest = max(by_lang, key=len)
    return mixed + longest[min(map(len, by_lang)):] + others
