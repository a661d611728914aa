"""Evaluated systems: the llasm model (:class:`LlasmSystem`), the Whisper -> LLM cascade
(:class:`CascadeSystem`, :class:`WhisperTranscriber`), the perplexity scorer
(:func:`make_ppl_scorer`) and the LLM judge (:class:`Judge`). Used by :mod:`llasm.evaluation`,
which re-exports every name here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llasm.audio import load_audio
from llasm.evaluation import metrics as M
from llasm.evaluation.items import JUDGE_PROMPT_PATH, InstructItem, load_prompts

LANG_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}


# ---------------------------------------------------------------------------------- systems


def _user(content: list[dict]) -> dict:
    return {"role": "user", "content": content}


def transcript_token_limit(seconds: float) -> int:
    """At most 12 tokens per second of audio (+10; speech needs 3-6) for any transcriber.

    Bounds repetition loops on unclear audio (Whisper's "哎呀, 哎呀, …", llasm's "把把把…"), which
    otherwise run to the generation limit: slow, and a huge insertion count.
    """
    return 10 + int(12 * seconds)


_LOOP = re.compile(r"(\S.{0,39}?)(?:\s*\1){3,}", re.DOTALL | re.IGNORECASE)
SEPARATORS = " \t\n,.;:!?，。；：！？、…"  # what may end a copy: the last copy of a loop often lacks it
LOOP_GUARD_VERSION = "3"
LOOP_GUARD_RULE = (f"loop guard v{LOOP_GUARD_VERSION}: a unit of 1-40 characters (not all digits, any case) repeated 4+ "
                   "times in a row in a hypothesis (the last copy may lack its separator) is cut to as many copies as the "
                   "reference has in a row (at least one): of the unit, or of a unit the reference repeats that is alike "
                   "(difflib ratio >= 0.5, lengths within 2x)")
SIMILAR_UNIT = 0.5  # difflib ratio from which a misheard copy of a reference's repeated unit counts as that unit


def _core(text: str) -> str:
    """Letters and digits only, lowercased: how a unit is matched against the reference."""
    return "".join(c for c in text.lower() if c.isalnum())


def _longest_run(unit: str, reference: str) -> int:
    """Most copies of ``unit`` in a row in ``reference`` (both in :func:`_core` form)."""
    if not unit:
        return 0
    return max((len(run) // len(unit) for run in re.findall(f"(?:{re.escape(unit)})+", reference)), default=0)


def _alike_copies(unit: str, reference: str) -> int:
    """Most copies in a row (2+) that ``reference`` has of any unit alike to ``unit`` (:func:`_alike`; both
    in :func:`_core` form), at every offset; 0 when it repeats none."""
    copies: dict[str, int] = {}
    for length in range(max(1, (len(unit) + 1) // 2), 2 * len(unit) + 1):
        for m in re.finditer(rf"(?=((.{{{length}}})\2+))", reference, re.DOTALL):
            copies[m.group(2)] = max(copies.get(m.group(2), 0), len(m.group(1)) // length)
    return max((n for other, n in copies.items() if _alike(unit, other)), default=0)


def _alike(unit: str, other: str) -> bool:
    """Whether ``unit`` may be a misheard ``other`` (both in :func:`_core` form): lengths within 2x and a
    ``difflib`` ratio of at least :data:`SIMILAR_UNIT`."""
    return (2 * min(len(unit), len(other)) >= max(len(unit), len(other))
            and difflib.SequenceMatcher(None, unit, other, autojunk=False).ratio() >= SIMILAR_UNIT)


def collapse_loops(text: str, reference: str | None = None) -> str:
    """Cut runaway repetitions in a transcript; the rule is :data:`LOOP_GUARD_RULE` (version
    :data:`LOOP_GUARD_VERSION`, recorded in every report).

    A decoding loop guard for transcripts, in the spirit of Whisper's compression-ratio check: a
    model that loses the audio repeats itself ("把把把…", "請問,請問,…") until the token limit. A
    unit (1-40 characters, not only digits) repeated 4+ times in a row (its last copy may lack the
    separator: "請問,請問,請問,請問,請問") keeps as many copies as the ``reference`` has of it in a row,
    compared on letters and digits, lowercased — so a verbatim transcript of "哈哈哈哈" or "ha ha ha ha"
    is left whole, and a loop never scores more than the reference's own run. Where the reference
    repeats (2+ times in a row) a unit alike to the loop's (lengths within 2x, ``difflib`` ratio >=
    :data:`SIMILAR_UNIT`), the loop keeps that many copies: a judge that mishears a phrase the speaker
    really repeated ("住自" for "竹子" in every copy) keeps the copies that were said, each scored with
    its misheard characters. Without a reference one copy is kept. Applied alike to every
    system's ASR hypotheses by :mod:`llasm.evaluation` (``--keep-loops`` turns it off); the report keeps
    the raw hypothesis wherever it changed. (Version 1 kept one copy even where the reference repeats;
    version 2 kept one copy of a repetition the judge misheard.)

    >>> collapse_loops("基本我们把把把把把把把把")
    '基本我们把'
    >>> collapse_loops("請問,請問,請問,請問,請問,")
    '請問,'
    >>> collapse_loops("哈哈哈哈，太好笑了。", reference="哈哈哈哈，太好笑了。")
    '哈哈哈哈，太好笑了。'
    >>> collapse_loops("Ha ha ha ha ha ha ha ha ha", reference="Ha, ha ha ha!")
    'Ha ha ha ha'
    >>> collapse_loops("It costs 10000 dollars, really really.")
    'It costs 10000 dollars, really really.'
    >>> collapse_loops("大的住自,大的住自,大的住自,大的住自,大的住自,", reference="大的竹子，大的竹子，大的竹子。")
    '大的住自,大的住自,大的住自,'
    >>> collapse_loops("I know, I know, I know, I know, I know", reference="I know, I know, I know, I know.")
    'I know, I know, I know, I know,'
    """
    target = _core(reference or "")
    out, position = [], 0
    while (m := _LOOP.search(text, position)) is not None:
        unit, core = m.group(1), _core(m.group(1))
        stem = unit.rstrip(SEPARATORS)  # the last copy without its separator is a copy too
        tail = re.compile(r"\s*" + re.escape(stem), re.IGNORECASE).match(text, m.end()) if stem and stem != unit else None
        end = tail.end() if tail else m.end()
        out.append(text[position:m.start()])
        if core.isdigit():  # "10000", "1, 1, 1, 1": numbers are kept
            out.append(text[m.start():end])
        else:
            keep = max(1, _longest_run(core, target), _alike_copies(core, target))
            ends = [copy.end() for copy in re.finditer(re.escape(unit), text[m.start():m.end()], re.IGNORECASE)]
            ends += [end - m.start()] if tail else []
            out.append(text[m.start():m.start() + ends[min(keep, len(ends)) - 1]])
        position = end
    return "".join(out) + text[position:]


MIN_JUDGE_SAMPLES = 1600  # 0.1 s: Whisper needs a few frames; a few units make only milliseconds
Transcriber = Callable[[Any, str], str]  # (16 kHz audio or path, lang) -> text


def hear(judge: Transcriber, audio: np.ndarray, lang: str, reference: str | None = None,
         keep_loops: bool = False) -> tuple[str, str | None]:
    """What ``judge`` hears in ``audio`` (16 kHz samples, ``(samples,)``): ``(transcript, raw)``, the
    transcript after the loop guard (against ``reference``) and, where the guard changed it, the one
    before (else None). Empty audio is heard as "" (every reference word a deletion); audio shorter
    than ``MIN_JUDGE_SAMPLES`` (a few units make a few ms) is padded with silence."""
    if len(audio) == 0:
        return "", None
    heard = judge(np.pad(audio, (0, max(0, MIN_JUDGE_SAMPLES - len(audio)))), lang)
    collapsed = heard if keep_loops else collapse_loops(heard, reference=reference)
    return collapsed, (heard if collapsed != heard else None)


class LlasmSystem:
    """The model under test: audio goes in as audio."""

    name = "llasm"

    def __init__(self, model, prompts: dict | None = None, max_new_tokens: int = 128, **generate_kwargs):
        self.model = model
        self.prompts = prompts or load_prompts()
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs

    def _chat(self, content: list[dict], max_new_tokens: int | None = None) -> str:
        return self._chat_batch([content], [max_new_tokens])[0]

    def _chat_batch(self, contents: list[list[dict]], max_new_tokens: list[int | None]) -> list[str]:
        """One user turn each, answered in one ``generate`` call (:func:`llasm.chat.chat_batch`)."""
        limits = [n or self.max_new_tokens for n in max_new_tokens]
        return self.model.chat_batch([[_user(c)] for c in contents], max_new_tokens=limits, **self.generate_kwargs)

    def _asr_content(self, audio, lang: str) -> tuple[list[dict], int]:
        audio = load_audio(audio)  # 16 kHz
        content = [{"type": "audio", "audio": audio}, {"type": "text", "text": self.prompts["asr"][lang]}]
        return content, min(self.max_new_tokens, transcript_token_limit(len(audio) / 16000))

    def transcribe(self, audio, lang: str) -> tuple[str, dict]:
        return self.transcribe_batch([audio], [lang])[0]

    def transcribe_batch(self, audios: list, langs: list[str]) -> list[tuple[str, dict]]:
        contents, limits = zip(*(self._asr_content(a, lang) for a, lang in zip(audios, langs)))
        return [(text, {}) for text in self._chat_batch(list(contents), list(limits))]

    @staticmethod
    def _spoken_content(item: InstructItem, audio) -> list[dict]:
        content = [{"type": "audio", "audio": audio}]
        if item.extra_text:
            content.append({"type": "text", "text": item.extra_text})
        return content

    def answer_spoken(self, item: InstructItem, audio) -> tuple[str, list[dict], dict]:
        """``(reply, the user content used as prompt, extra info)``."""
        return self.answer_spoken_batch([item], [audio])[0]

    def answer_spoken_batch(self, items: list[InstructItem], audios: list) -> list[tuple[str, list[dict], dict]]:
        contents = [self._spoken_content(item, audio) for item, audio in zip(items, audios)]
        return [(reply, content, {}) for reply, content in zip(self._chat_batch(contents, [None] * len(items)), contents)]

    def answer_text(self, text: str) -> str:
        return self.answer_text_batch([text])[0]

    def answer_text_batch(self, texts: list[str]) -> list[str]:
        return self._chat_batch([[{"type": "text", "text": t}] for t in texts], [None] * len(texts))


class CascadeSystem:
    """ASR (a ``transcriber(audio, lang) -> str``) then the same LLM answers the transcript as text."""

    name = "cascade"

    def __init__(self, transcriber: Callable[[Any, str], str], answerer: LlasmSystem):
        self.transcriber = transcriber
        self.answerer = answerer

    def transcribe(self, audio, lang: str) -> tuple[str, dict]:
        return self.transcriber(audio, lang), {}

    def answer_spoken(self, item: InstructItem, audio) -> tuple[str, list[dict], dict]:
        return self.answer_spoken_batch([item], [audio])[0]

    def answer_spoken_batch(self, items: list[InstructItem], audios: list) -> list[tuple[str, list[dict], dict]]:
        """Whisper transcribes clip by clip; the LLM answers the transcripts in one batch."""
        transcripts = [self.transcriber(audio, item.lang) for item, audio in zip(items, audios)]
        contents = [[{"type": "text", "text": f"{t}\n{item.extra_text}" if item.extra_text else t}]
                    for t, item in zip(transcripts, items)]
        replies = self.answerer._chat_batch(contents, [None] * len(items))
        return [(r, c, {"transcript": t}) for r, c, t in zip(replies, contents, transcripts)]


def call_batched(system, method: str, *columns: list) -> list:
    """``system.<method>_batch(*columns)`` when the system has it, else ``system.<method>`` per item.

    Returns one entry per item: its result, or the exception it raised. A batch that fails is run
    again item by item, so one unusable item fails alone, named in the report's errors.
    """
    batched = getattr(system, method + "_batch", None)
    if batched is not None and len(columns[0]) > 1:
        try:
            return list(batched(*columns))
        except Exception:  # noqa: BLE001 - retried one by one below, where the error is attributed
            pass
    results = []
    for args in zip(*columns):
        try:
            results.append(getattr(system, method)(*args))
        except Exception as err:  # noqa: BLE001
            results.append(err)
    return results


class WhisperTranscriber:
    """``WhisperForConditionalGeneration`` + ``WhisperProcessor`` from one HF dir, greedy decoding.

    Multilingual checkpoints (a ``lang_to_id`` table in the generation config) get
    ``language=<item lang>, task="transcribe"``; English-only ones get no language. Audio longer
    than 30 s uses transformers' sequential long-form decoding.
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, dtype=None):
        # torch and transformers take seconds to import: only where a model runs (reading items, the
        # judge and `llasm eval --help` do without them)
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.path = str(path)
        self.processor = WhisperProcessor.from_pretrained(self.path)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.path, dtype=dtype or torch.float32)
        self.model.to(device or "cpu").eval()
        gc = self.model.generation_config
        self.multilingual = bool(getattr(gc, "lang_to_id", None)) and getattr(gc, "is_multilingual", True) is not False

    def __call__(self, audio, lang: str) -> str:

        audio = load_audio(audio)
        sr = self.processor.feature_extractor.sampling_rate
        kwargs: dict[str, Any] = {}
        if self.multilingual:
            kwargs.update(language=lang, task="transcribe")
        if len(audio) > 30 * sr:
            inputs = self.processor(audio, sampling_rate=sr, return_tensors="pt", truncation=False,
                                    padding="longest", return_attention_mask=True)
            kwargs["attention_mask"] = inputs.attention_mask.to(self.model.device)
        else:
            inputs = self.processor(audio, sampling_rate=sr, return_tensors="pt")
        features = inputs.input_features.to(self.model.device, self.model.dtype)
        kwargs["max_length"] = min(448, 4 + transcript_token_limit(len(audio) / sr))  # (+4 prompt tokens)
        import torch

        with torch.inference_mode():
            ids = self.model.generate(features, **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def make_ppl_scorer(model) -> Callable[[list[dict], str], tuple[float, int]]:
    """``scorer(user_content, reply) -> (sum_nll, n_tokens)`` of ``reply`` (+ end token) after the prompt."""
    def score(content: list[dict], reply: str) -> tuple[float, int]:
        messages = [_user(content), {"role": "assistant", "content": reply}]
        batch = model.processor.apply_chat_template(messages, add_generation_prompt=False)
        labels = batch.pop("labels")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        import torch

        with torch.inference_mode():
            logits = model(**batch).logits
        return M.sequence_nll(logits, labels.to(logits.device))

    return score


# ------------------------------------------------------------------------------------ judge


class JudgeError(RuntimeError):
    pass


class Judge:
    """LLM-as-judge through an OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib``).

    ``url`` is the base (``http://host:8000/v1``) or the full ``.../chat/completions`` address.
    An API key, when needed, is read from the environment variable named by ``api_key_env``.
    The prompt is ``llasm/assets/eval/judge_prompt.txt`` (its sha256 goes in the report); the reply
    must contain ``Score: N`` (N in 1–5), temperature 0.
    """

    def __init__(self, url: str, model: str, prompt_path=JUDGE_PROMPT_PATH, api_key_env: str = "LLASM_JUDGE_API_KEY",
                 timeout: float = 120.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.template = Path(prompt_path).read_text(encoding="utf-8")
        self.api_key_env = api_key_env
        self.timeout = timeout

    def info(self) -> dict:
        return {"status": "used", "url": self.url, "model": self.model,
                "prompt_sha256": hashlib.sha256(self.template.encode("utf-8")).hexdigest()}

    def prompt(self, question: str, reference: str, reply: str, lang: str) -> str:
        return self.template.format(question=question, reference=reference, reply=reply,
                                    lang_name=LANG_NAMES.get(lang, lang))

    def score(self, question: str, reference: str, reply: str, lang: str) -> int:
        body = {"model": self.model, "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": self.prompt(question, reference, reply, lang)}]}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            raise JudgeError(f"judge request to {self.url} failed: {err}") from err
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge reply is not OpenAI chat JSON: {str(data)[:200]}") from None
        match = re.search(r"score\s*[:：]\s*([1-5])", content or "", re.IGNORECASE)
        if not match:
            raise JudgeError(f"judge reply has no 'Score: N': {content!r:.200}")
        return int(match.group(1))
