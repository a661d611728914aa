"""Which language a text is in, for a bilingual (zh/en) toolkit: the one definition of a CJK
character, the data-preparation rule (:func:`detect_lang`: any Chinese character -> ``"zh"``) and the
evaluation rule (:func:`detect_language`: shares of the letters, ``"other"`` allowed).
"""

from __future__ import annotations

import re

# CJK ideographs: Unified, Extension A, Compatibility, Extensions B-G, and 〇
CJK_CLASS = "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0003134f\u3007]"
CJK = re.compile(CJK_CLASS)
CJK_RUN = re.compile(CJK_CLASS + "+")

# detect_language thresholds (shares of the counted letters, see detect_language).
ZH_MIN_SHARE = 0.3
EN_MIN_SHARE = 0.5
OTHER_MAX_SHARE = 0.5


def has_cjk(text: str | None) -> bool:
    """True when ``text`` holds at least one CJK ideograph."""
    return bool(CJK.search(text or ""))


def detect_lang(text: str | None) -> str:
    """``"zh"`` when ``text`` contains any Chinese character, else ``"en"`` (the two languages we serve).

    The data-preparation rule: a turn is spoken by the Mandarin voice as soon as it has a character.
    """
    return "zh" if has_cjk(text) else "en"


def is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= cp <= 0x4DBF  # Extension A
        or 0xF900 <= cp <= 0xFAFF  # Compatibility Ideographs
        or 0x20000 <= cp <= 0x3134F  # Extensions B–G
        or cp == 0x3007  # 〇
    )


def is_latin(c: str) -> bool:
    if "a" <= c <= "z" or "A" <= c <= "Z" or "ａ" <= c <= "ｚ" or "Ａ" <= c <= "Ｚ":
        return True
    return c.isalpha() and 0x00C0 <= ord(c) <= 0x024F  # Latin-1 supplement / Extended-A/B letters


def script_counts(text: str | None) -> dict:
    """Counts of CJK ideographs, Latin letters and other letters (kana, Hangul, Cyrillic...)."""
    n_cjk = n_latin = n_other = 0
    for c in text or "":
        if is_cjk(ord(c)):
            n_cjk += 1
        elif is_latin(c):
            n_latin += 1
        elif c.isalpha():
            n_other += 1
    return {"cjk": n_cjk, "latin": n_latin, "other": n_other}


def detect_language(text: str | None) -> str:
    """``"zh"``, ``"en"`` or ``"other"`` from the script mix of ``text`` (no model).

    Only letters are counted: CJK ideographs, Latin letters (ASCII, full-width, Latin-1/Extended)
    and other letters; digits, punctuation, emoji and spaces are ignored. With ``T`` the total:

    * ``T == 0`` → ``"other"``;
    * other letters > ``OTHER_MAX_SHARE`` (0.5) of ``T`` → ``"other"`` (Japanese kana, Korean...);
    * CJK ≥ ``ZH_MIN_SHARE`` (0.3) of ``T`` → ``"zh"`` (one ideograph carries about a word, so a
      Chinese sentence with English terms such as ``这个API的latency很高`` stays ``zh``);
    * Latin ≥ ``EN_MIN_SHARE`` (0.5) of ``T`` → ``"en"``;
    * otherwise ``"other"``.

    Latin script is reported as ``"en"`` (French or German text also gives ``"en"``); mostly-kanji
    Japanese can come out as ``"zh"``.
    """
    counts = script_counts(text)
    total = sum(counts.values())
    if total == 0 or counts["other"] > OTHER_MAX_SHARE * total:
        return "other"
    if counts["cjk"] >= ZH_MIN_SHARE * total:
        return "zh"
    if counts["latin"] >= EN_MIN_SHARE * total:
        return "en"
    return "other"
