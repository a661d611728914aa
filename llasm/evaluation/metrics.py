"""Metric library for bilingual (zh/en) evaluation: text normalizers, ASR error rates, instruction
following checks, a perplexity helper and a report plot.

Every number an evaluation report prints goes through the rules below, so they are written out in
full; reports record :data:`NORMALIZER_VERSION` (see :func:`normalizer_info`) and any change to a
rule must bump it.

English normalization (:func:`normalize_en`)
    Whisper's ``EnglishTextNormalizer`` from the ``openai-whisper`` package (``whisper.normalizers``,
    with its British→American spelling table ``english.json``). It lowercases, expands titles and contractions (``mr`` → ``mister``, ``'s`` → ``is``, ``let's`` →
    ``let us``), drops fillers (``uh``, ``um``, ``hmm``...) and bracketed spans, strips diacritics
    and punctuation, turns spelled numbers into digits (``twenty five`` → ``25``, ``twelve`` →
    ``12``; note Whisper leaves a bare ``one`` alone) and currency/percent words into symbols
    (``20 dollars`` → ``$20``, ``3.5 percent`` → ``3.5%``), and standardizes spellings
    (``colour`` → ``color``, ``grey`` → ``gray``). Whisper's quirks are kept for comparability
    with published numbers (e.g. a trailing ``...`` leaves a lone ``.`` token).

Chinese normalization (:func:`normalize_zh`), applied in this order
    1. full-width ASCII forms (U+FF01–U+FF5E) → half-width, ideographic space U+3000 → space;
    2. traditional → simplified with OpenCC ``t2s``;
    3. ``str.lower()`` (Latin letters);
    4. ``〇`` → ``零``;
    5. Arabic numbers → Chinese reading (see :func:`arabic_to_chinese`):
       thousands separators are dropped first (``1,000`` → ``1000``: a 1–3 digit group followed by
       ``,ddd`` groups); then for every run of ASCII digits with an optional ``.digits`` fraction
       and optional trailing ``%``:

       * a 4-digit integer directly followed by ``年`` is a year, read digit by digit
         (``2024年`` → ``二零二四年``);
       * integers of 1–4 digits without a leading zero are read as cardinals with 十/百/千 and 零
         for skipped places, ``二`` never ``两``, and a leading ``一十`` shortened to ``十``
         (``12`` → ``十二``, ``305`` → ``三百零五``, ``1010`` → ``一千零一十``, ``2000`` → ``二千``);
       * integers with 5 or more digits, or with a leading zero (``10086``, ``0571``), are read
         digit by digit (``一零零八六``, ``零五七一``) — no 万/亿 reading;
       * a fraction is the integer part by the rules above, ``点``, then the fraction digits one
         by one (``3.5`` → ``三点五``, ``0.25`` → ``零点二五``);
       * a trailing ``%`` becomes a ``百分之`` prefix (``50%`` → ``百分之五十``);
    6. every character whose Unicode category is punctuation (P*), symbol (S*), separator (Z*, so
       all spaces) or other/control (C*, including tabs and newlines) is removed. Letters, digits
       in other scripts, and marks are kept.

    Both reference and hypothesis go through the same function, so e.g. ``3个`` and ``三个`` compare
    equal. Known non-merges: ``两`` vs ``二`` (``两个`` vs ``2个``) and 万-style readings of
    5+ digit numbers (``一万`` vs ``10000``) stay different in CER; keyword matching folds ``两``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from llasm.lang import detect_language, script_counts

NORMALIZER_VERSION = "1"

LANGUAGES = ("zh", "en")



# --------------------------------------------------------------------------------------------
# Normalizers
# --------------------------------------------------------------------------------------------


def english_spelling_path() -> Path:
    """Whisper's British→American spelling table, as shipped in openai-whisper."""
    return Path(str(resources.files("whisper.normalizers").joinpath("english.json")))


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    # heavy: ``import whisper`` loads numba and tiktoken (seconds), so only when English is scored
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def normalizer_info() -> dict:
    """What a report should record so its numbers can be reproduced."""
    import opencc

    return {
        "normalizer_version": NORMALIZER_VERSION,
        "en": f"whisper EnglishTextNormalizer (openai-whisper {metadata.version('openai-whisper')})",
        "en_spelling_sha256": hashlib.sha256(english_spelling_path().read_bytes()).hexdigest(),
        "zh": "fullwidth->halfwidth, opencc t2s, lower, arabic->chinese numerals, strip P/S/Z/C",
        "opencc": getattr(opencc, "__version__", "unknown"),
    }


def _as_text(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return text


def normalize_en(text: str | None) -> str:
    """Whisper's English normalizer (see module docstring); ``None`` gives ``""``.

    >>> normalize_en("Mr. Smith's colour is GREY!")
    'mister smith is color is gray'
    """
    return _english_normalizer()(_as_text(text))


_DIGITS_ZH = "零一二三四五六七八九"
_UNITS_ZH = ("千", "百", "十", "")
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20
_THOUSANDS_RE = re.compile(r"(?<![0-9.,])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9]|,[0-9])")
_NUMBER_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?(?P<pct>%)?")
_DROP_CATEGORIES = ("P", "S", "Z", "C")


def _digits_zh(digits: str) -> str:
    return "".join(_DIGITS_ZH[int(d)] for d in digits)


def _cardinal_zh(digits: str) -> str:
    """Cardinal reading of a 1–4 digit string without leading zero (or ``"0"``)."""
    n = int(digits)
    if n == 0:
        return "零"
    padded = f"{n:04d}"
    out = []
    pending_zero = False
    for d, unit in zip(padded, _UNITS_ZH):
        if d == "0":
            pending_zero = bool(out)  # a zero only matters after some non-zero place
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(_DIGITS_ZH[int(d)] + unit)
    text = "".join(out)
    if 10 <= n <= 19:
        text = text[1:]  # 一十二 -> 十二
    return text


def _integer_zh(digits: str) -> str:
    if len(digits) >= 5 or (len(digits) > 1 and digits[0] == "0"):
        return _digits_zh(digits)
    return _cardinal_zh(digits)


def arabic_to_chinese(text: str) -> str:
    """Replace Arabic numbers in ``text`` by their Chinese reading (rule 5 of the module docstring).

    >>> arabic_to_chinese("我有3个苹果, 305元, 3.5%, 2024年, 10086")
    '我有三个苹果, 三百零五元, 百分之三点五, 二零二四年, 一零零八六'
    """
    text = _THOUSANDS_RE.sub(lambda m: m.group(0).replace(",", ""), text)

    def repl(m: re.Match) -> str:
        int_part, frac, pct = m.group("int"), m.group("frac"), m.group("pct")
        if frac is None and pct is None and len(int_part) == 4 and text.startswith("年", m.end()):
            return _digits_zh(int_part)
        out = _integer_zh(int_part)
        if frac is not None:
            out += "点" + _digits_zh(frac)
        if pct:
            out = "百分之" + out
        return out

    return _NUMBER_RE.sub(repl, text)


def normalize_zh(text: str | None) -> str:
    """Chinese normalizer (rules 1–6 of the module docstring); ``None`` gives ``""``.

    >>> normalize_zh("這是一個測試。")
    '这是一个测试'
    >>> normalize_zh("我有3个苹果，")
    '我有三个苹果'
    """
    text = _as_text(text).translate(_FULLWIDTH)
    text = _t2s().convert(text).lower().replace("〇", "零")
    text = arabic_to_chinese(text)
    return "".join(c for c in text if unicodedata.category(c)[0] not in _DROP_CATEGORIES)


def _check_lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    return lang


def normalize(text: str | None, lang: str) -> str:
    """Dispatch to :func:`normalize_zh` (``lang="zh"``) or :func:`normalize_en` (``lang="en"``)."""
    return normalize_zh(text) if _check_lang(lang) == "zh" else normalize_en(text)


# --------------------------------------------------------------------------------------------
# ASR error rates
# --------------------------------------------------------------------------------------------


def _tokens(text: str, lang: str) -> str:
    """Normalized text as space-separated scoring units: words (en) or characters (zh)."""
    norm = normalize(text, lang)
    return " ".join(norm) if lang == "zh" else " ".join(norm.split())


def asr_error_rate(refs: Sequence[str], hyps: Sequence[str | None], lang: str) -> dict:
    """Corpus-level WER (``lang="en"``, normalized words) or CER (``lang="zh"``, normalized characters).

    ``value = (substitutions + deletions + insertions) / n_ref`` summed over the corpus (not a mean
    of per-utterance rates). A ``None`` hypothesis counts as empty (all deletions). Pairs whose
    reference is empty *after normalization* cannot be scored and are skipped; their number is
    returned as ``n_skipped``. Raises ``ValueError`` if the lists differ in length or no pair is
    left to score.

    Returns ``dict(metric="wer"|"cer", value, substitutions, deletions, insertions, hits, n_ref,
    n_utts, n_skipped, normalizer_version)``.
    """
    import jiwer

    _check_lang(lang)
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    ref_toks, hyp_toks, skipped = [], [], 0
    for ref, hyp in zip(refs, hyps):
        r = _tokens(ref, lang)
        if not r:
            skipped += 1
            continue
        ref_toks.append(r)
        hyp_toks.append(_tokens(hyp, lang))
    if not ref_toks:
        raise ValueError(f"no scorable pairs: all {skipped} references are empty after normalization")
    out = jiwer.process_words(ref_toks, hyp_toks)
    n_ref = out.hits + out.substitutions + out.deletions
    errors = out.substitutions + out.deletions + out.insertions
    return {
        "metric": "cer" if lang == "zh" else "wer",
        "value": errors / n_ref,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
        "n_ref": n_ref,
        "n_utts": len(ref_toks),
        "n_skipped": skipped,
        "normalizer_version": NORMALIZER_VERSION,
    }


def wer(refs: Sequence[str], hyps: Sequence[str | None]) -> float:
    """English corpus WER on Whisper-normalized words (see :func:`asr_error_rate`)."""
    return asr_error_rate(refs, hyps, "en")["value"]


def cer(refs: Sequence[str], hyps: Sequence[str | None]) -> float:
    """Chinese corpus CER on :func:`normalize_zh` characters (see :func:`asr_error_rate`)."""
    return asr_error_rate(refs, hyps, "zh")["value"]


# --------------------------------------------------------------------------------------------
# Instruction following
# --------------------------------------------------------------------------------------------

_EN_MATCH_DROP_RE = re.compile(r"[^\w\s.]|(?<![0-9])\.|\.(?![0-9])")


def _match_form(text: str, lang: str) -> str:
    """Form used by :func:`keyword_match`: the ASR normalizer plus a few number-friendly folds."""
    if lang == "zh":
        return normalize_zh(text).replace("两", "二")
    norm = _EN_MATCH_DROP_RE.sub(" ", normalize_en(text))
    words = ["1" if w == "one" else w for w in norm.split()]
    return " " + " ".join(words) + " "


def keyword_match(reply: str | None, keywords: str | Iterable[str], lang: str) -> bool:
    """True when any accepted keyword occurs in ``reply`` after normalization.

    Both the reply and each keyword are brought to the same matching form:

    * ``zh``: :func:`normalize_zh` (so ``12`` and ``十二`` are the same, as are ``3.5`` and
      ``三点五``), then ``两`` → ``二``; a keyword matches as a plain substring (Chinese has no word
      boundaries, so ``二`` also matches inside ``十二``).
    * ``en``: :func:`normalize_en` (so ``twelve`` and ``12``, ``twenty five`` and ``25``,
      ``colour`` and ``color`` are the same), then the symbols Whisper emits (``$``, ``%``, ...) and
      non-decimal dots are dropped, and a bare ``one`` becomes ``1``; a keyword matches as a
      whole-word sequence (``cat`` does not match ``category``).

    Keywords that normalize to nothing are ignored; ``keywords`` may be one string or several.
    """
    _check_lang(lang)
    if isinstance(keywords, str):
        keywords = [keywords]
    text = _match_form(_as_text(reply), lang)
    for kw in keywords:
        k = _match_form(kw, lang)
        if k.strip() and k in text:
            return True
    return False


def chrf(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu ``CHRF`` defaults: char n-grams up to 6, beta 2, whitespace
    ignored, no word n-grams) on raw text, 0–100.

    ``refs`` holds one reference string per hypothesis, or a list of references per hypothesis
    (all the same length). chrF is character-based, so it suits Chinese without segmentation.
    """
    from sacrebleu.metrics import CHRF

    hyps = ["" if h is None else h for h in hyps]
    refs = list(refs)
    if not hyps:
        raise ValueError("chrf needs at least one hypothesis")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if all(isinstance(r, str) for r in refs):
        streams = [refs]
    else:
        per_hyp = [list(r) for r in refs]
        n = {len(r) for r in per_hyp}
        if len(n) != 1 or 0 in n:
            raise ValueError("every hypothesis needs the same, non-zero number of references")
        streams = [list(s) for s in zip(*per_hyp)]
    return float(CHRF().corpus_score(hyps, streams).score)


def language_consistent(reply: str | None, lang: str) -> bool:
    """True when :func:`detect_language` of ``reply`` is ``lang`` (an empty reply is never consistent)."""
    return detect_language(reply) == _check_lang(lang)


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


def sequence_nll(logits, labels, ignore_index: int = -100) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) and the number of scored tokens.

    Shifted like HF causal LMs: ``logits[..., t, :]`` predicts ``labels[..., t + 1]``; labels equal
    to ``ignore_index`` (-100) are skipped. ``logits`` is ``(batch, seq, vocab)`` or ``(seq, vocab)``
    with ``labels`` ``(batch, seq)`` or ``(seq,)``; computed in float32 without gradients.
    Perplexity over a corpus is ``exp(sum of sum_nll / sum of n_tokens)`` (:func:`perplexity`).
    """
    import torch  # heavy: only scoring needs it, reading data and `llasm eval --help` do not
    import torch.nn.functional as F

    if logits.dim() == 2:
        logits, labels = logits.unsqueeze(0), labels.unsqueeze(0)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    with torch.no_grad():
        shift_logits = logits[:, :-1, :].float()
        shift_labels = labels[:, 1:].to(device=logits.device, dtype=torch.long)
        n_tokens = int((shift_labels != ignore_index).sum())
        if n_tokens == 0:
            return 0.0, 0
        nll = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=ignore_index,
            reduction="sum",
        )
    return float(nll), n_tokens


def perplexity(sum_nll: float, n_tokens: int) -> float:
    """``exp(sum_nll / n_tokens)``; ``nan`` when no token was scored."""
    return math.exp(sum_nll / n_tokens) if n_tokens else float("nan")


__all__ = [
    "NORMALIZER_VERSION",
    "normalizer_info",
    "normalize_en",
    "normalize_zh",
    "normalize",
    "arabic_to_chinese",
    "asr_error_rate",
    "wer",
    "cer",
    "keyword_match",
    "chrf",
    "script_counts",
    "detect_language",
    "language_consistent",
    "sequence_nll",
    "perplexity",
]
