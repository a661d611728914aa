"""ASR scoring the way the peers' harnesses do it, beside the project's own normalizer.

Two normalizations are reported for every ASR test set (``report["details"]``):

``llasm``
    :func:`llasm.evaluation.metrics.asr_error_rate`: the project's rules (Whisper's English normalizer; for
    Chinese full-width -> half-width, OpenCC t2s, its own Arabic -> Chinese number reading,
    punctuation/symbols/spaces out). See :mod:`llasm.evaluation.metrics`.
``peer``
    :func:`peer_error_rate`: the pipeline of Qwen-Audio's ``evaluate_asr.py`` as lmms-eval keeps it
    (``lmms_eval/tasks/librispeech/utils.py``: ``remove_sp``, then Whisper's ``EnglishTextNormalizer``
    and ``BasicTextNormalizer`` for English, a Chinese text normalizer for Chinese, a sacreBLEU
    "none" tokenizer with lower-casing and punctuation-token removal, characters for Chinese, one
    corpus edit distance over the reference length). Two changes, named in the report: traditional
    -> simplified (OpenCC ``t2s``) before anything else for Chinese, and ``cn2an``'s Arabic ->
    Chinese numbers + Unicode punctuation removal (URO-Bench's ``wer_zh``) in place of SpeechIO's
    ``cn_tn.TextNorm``, which is not packaged on PyPI.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Sequence

from llasm.evaluation.metrics import _t2s, normalize_en

PEER_NORMALIZER = {
    "en": "Whisper EnglishTextNormalizer + BasicTextNormalizer (openai-whisper), lower, punctuation tokens out "
          "(Qwen-Audio evaluate_asr / lmms-eval compute_wer)",
    "zh": "OpenCC t2s, cn2an an2cn, Unicode punctuation out, lower, characters (URO-Bench wer_zh; "
          "in place of SpeechIO cn_tn)",
}
_PUNCS = "!,.?;:"


def whisper_english():
    """Whisper's ``EnglishTextNormalizer`` with its spelling table (the one :mod:`llasm.evaluation.metrics` uses)."""
    return normalize_en


@functools.lru_cache(maxsize=1)
def _basic():
    # heavy: ``import whisper`` loads numba and tiktoken; the same package llasm's English normalizer uses
    from whisper.normalizers import BasicTextNormalizer

    return BasicTextNormalizer()


def remove_sp(text: str, lang: str) -> str:
    """lmms-eval ``remove_sp``: special ``<|...|>`` tokens out, spaces squeezed, no space before
    ``!,.?;:``; Chinese loses every space."""
    text = re.sub(r"<\|.*?\|>", " ", text or "")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(f" ?([{_PUNCS}])", r"\1", text).lstrip(" ")
    return re.sub(r"\s+", "", text) if lang == "zh" else text


def normalize_chinese_peer(text: str) -> str:
    """t2s, Arabic numbers read in Chinese (``cn2an``, 万/亿 units), punctuation out, lower case.

    >>> normalize_chinese_peer("這是3個蘋果，共10000元。")
    '这是三个苹果共一万元'
    """
    import cn2an

    text = _t2s().convert(text or "")
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    try:
        text = cn2an.transform(text, "an2cn")
    except (ValueError, KeyError):  # cn2an rejects a few malformed numbers; keep the digits then
        pass
    return text.lower()


def _tokens(text: str, lang: str) -> list[str]:
    if lang == "en":
        text = _basic()(whisper_english()(text))
    elif lang == "zh":
        text = normalize_chinese_peer(text)
    else:
        text = _basic()(text)
    # sacreBLEU's "none" tokenizer returns the text as is; then lower case and punctuation-only tokens out
    words = [w for w in text.lower().split(" ") if w and not all(unicodedata.category(c)[0] == "P" for c in w)]
    return list("".join(words)) if lang == "zh" else words


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    import jiwer

    if not a:
        return len(b)
    out = jiwer.process_words(" ".join(a), " ".join(b)) if b else None
    if out is None:
        return len(a)
    return out.substitutions + out.deletions + out.insertions


def peer_error_rate(refs: Sequence[str], hyps: Sequence[str | None], lang: str) -> dict:
    """Corpus WER (en) / CER (zh) under the peer normalization (module docstring).

    Returns ``{"metric", "value", "errors", "n_ref", "n_utts", "normalizer"}``; ``value`` is a
    fraction (0.05 = 5 %). Raises ``ValueError`` when the lists differ in length or every reference
    is empty after normalization.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = n_ref = 0
    for ref, hyp in zip(refs, hyps):
        r = _tokens(remove_sp(ref, lang), lang)
        h = _tokens(remove_sp(hyp or "", lang), lang)
        # jiwer works on words: characters of Chinese are joined with spaces to be its "words"
        errors += _edit_distance(r, h)
        n_ref += len(r)
    if n_ref == 0:
        raise ValueError("every reference is empty after normalization")
    return {"metric": "cer" if lang == "zh" else "wer", "value": errors / n_ref, "errors": errors, "n_ref": n_ref,
            "n_utts": len(refs), "normalizer": PEER_NORMALIZER.get(lang, "Whisper BasicTextNormalizer")}
