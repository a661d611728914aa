"""Fast sanity checks for the bundled bilingual seed corpus in data/seed/."""

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

SEED_DIR = Path(__file__).resolve().parent.parent / "data" / "seed"
ASR_PATH = SEED_DIR / "asr_sentences.jsonl"
INST_PATH = SEED_DIR / "instructions.jsonl"

LANGS = {"en", "zh"}
SPLITS = {"train", "test"}

ASR_MIN_PER_LANG = 320
INST_MIN_PER_LANG = 110
ASR_KEYS = {"id", "lang", "text", "split"}
INST_KEYS = {"id", "lang", "category", "question", "answer", "keywords", "split"}

CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
DIGIT_RE = re.compile(r"[0-9]")
LATIN_RE = re.compile(r"[A-Za-z]")


def _load(path):
    assert path.is_file(), f"missing {path}"
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:  # pragma: no cover - message only
                pytest.fail(f"{path.name}:{lineno}: invalid JSON: {e}")
    return records


def _normalize(s):
    """Lowercase, drop punctuation/symbols, collapse whitespace."""
    s = s.lower()
    s = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in s)
    return " ".join(s.split())


@pytest.fixture(scope="module")
def asr():
    return _load(ASR_PATH)


@pytest.fixture(scope="module")
def inst():
    return _load(INST_PATH)


def _by_lang(records):
    out = {lang: [] for lang in LANGS}
    for r in records:
        out[r["lang"]].append(r)
    return out


# ----------------------------------------------------------------- ASR sentences


def test_asr_schema(asr):
    for r in asr:
        assert set(r) == ASR_KEYS, r
        assert r["lang"] in LANGS, r
        assert r["split"] in SPLITS, r
        assert isinstance(r["text"], str) and r["text"].strip() == r["text"] != "", r
        assert re.fullmatch(rf"asr-{r['lang']}-\d{{4}}", r["id"]), r


def test_asr_counts(asr):
    by_lang = _by_lang(asr)
    for lang in LANGS:
        items = by_lang[lang]
        assert len(items) >= ASR_MIN_PER_LANG, (lang, len(items))
        n_test = sum(r["split"] == "test" for r in items)
        n_train = len(items) - n_test
        assert n_test >= ASR_MIN_PER_LANG // 10, (lang, n_test)
        assert n_train >= ASR_MIN_PER_LANG - ASR_MIN_PER_LANG // 10, (lang, n_train)


def test_asr_ids_and_texts_unique(asr):
    ids = Counter(r["id"] for r in asr)
    assert not [k for k, v in ids.items() if v > 1]
    texts = Counter(r["text"] for r in asr)
    assert not [k for k, v in texts.items() if v > 1]
    norm = Counter(_normalize(r["text"]) for r in asr)
    assert not [k for k, v in norm.items() if v > 1]


def test_asr_script_and_length(asr):
    for r in asr:
        text = r["text"]
        assert not DIGIT_RE.search(text), r
        if r["lang"] == "en":
            assert not CJK_RE.search(text), r
            assert text.isascii(), r
            n_words = len(text.split())
            assert 5 <= n_words <= 20, (n_words, r)
        else:
            assert CJK_RE.search(text), r
            assert not LATIN_RE.search(text), r
            # Chinese text uses full-width punctuation only, no ASCII at all
            assert not any(ord(ch) < 128 for ch in text), r
            n_chars = len(CJK_RE.findall(text))
            assert 8 <= n_chars <= 30, (n_chars, r)


def test_asr_split_rule(asr):
    for lang, items in _by_lang(asr).items():
        for i, r in enumerate(items):
            assert r["id"] == f"asr-{lang}-{i + 1:04d}", r
            assert r["split"] == ("test" if i % 10 == 9 else "train"), r


# ------------------------------------------------------------------ instructions


def test_inst_schema(inst):
    for r in inst:
        assert set(r) == INST_KEYS, r
        assert r["lang"] in LANGS, r
        assert r["split"] in SPLITS, r
        for key in ("category", "question", "answer"):
            assert isinstance(r[key], str) and r[key].strip() == r[key] != "", r
        assert re.fullmatch(rf"inst-{r['lang']}-\d{{3}}", r["id"]), r
        assert isinstance(r["keywords"], list) and r["keywords"], r


def test_inst_counts(inst):
    by_lang = _by_lang(inst)
    for lang in LANGS:
        items = by_lang[lang]
        assert len(items) >= INST_MIN_PER_LANG, (lang, len(items))
        n_test = sum(r["split"] == "test" for r in items)
        n_train = len(items) - n_test
        assert n_test >= INST_MIN_PER_LANG // 5, (lang, n_test)
        assert n_train >= INST_MIN_PER_LANG - INST_MIN_PER_LANG // 5, (lang, n_train)


def test_inst_ids_and_questions_unique(inst):
    ids = Counter(r["id"] for r in inst)
    assert not [k for k, v in ids.items() if v > 1]
    qs = Counter(r["question"] for r in inst)
    assert not [k for k, v in qs.items() if v > 1]
    norm = Counter(_normalize(r["question"]) for r in inst)
    assert not [k for k, v in norm.items() if v > 1]


def test_inst_script(inst):
    for r in inst:
        q = r["question"]
        assert not DIGIT_RE.search(q), r
        if r["lang"] == "en":
            assert not CJK_RE.search(q), r
            assert q.isascii(), r
        else:
            assert CJK_RE.search(q), r
            assert not any(ord(ch) < 128 for ch in q), r
        assert CJK_RE.search(r["answer"]) if r["lang"] == "zh" else True, r


def test_inst_keywords(inst):
    for r in inst:
        nq = _normalize(r["question"])
        na = _normalize(r["answer"])
        for kw in r["keywords"]:
            assert isinstance(kw, str), r
            nkw = _normalize(kw)
            assert nkw, (kw, r)
            assert len(kw) <= 40, (kw, r)
            # the question must not already contain the answer keyword
            assert nkw not in nq, (kw, r)
        # the reference answer itself is judged correct
        assert any(_normalize(kw) in na for kw in r["keywords"]), r


def test_inst_categories_balanced(inst):
    for lang, items in _by_lang(inst).items():
        counts = Counter(r["category"] for r in items)
        assert len(counts) >= 8, (lang, counts)
        assert max(counts.values()) - min(counts.values()) <= 2, (lang, counts)
        # every category has at least one test item
        test_cats = {r["category"] for r in items if r["split"] == "test"}
        assert test_cats == set(counts), (lang, set(counts) - test_cats)
    cats = {lang: {r["category"] for r in items} for lang, items in _by_lang(inst).items()}
    assert cats["en"] == cats["zh"]


def test_inst_split_rule(inst):
    for lang, items in _by_lang(inst).items():
        for i, r in enumerate(items):
            assert r["id"] == f"inst-{lang}-{i + 1:03d}", r
            assert r["split"] == ("test" if i % 5 == 4 else "train"), r
