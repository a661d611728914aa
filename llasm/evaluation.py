"""Evaluation: ASR, spoken instruction following, modal invariance, and a cascade baseline.

Everything a report prints is computed here; ``eval/*.py`` are thin entry points over :func:`main`.

Systems, each scored with the same metrics side by side:

``llasm``
    the model under test: audio in, text out (``model.chat``, greedy).
``cascade``
    Whisper (the model's own base Whisper, ``model.config.audio_model_name_or_path``, or
    ``--cascade-whisper``) transcribes; the **same llasm model, text-only**, answers the transcript.
    A turn without audio runs the LLM inside llasm exactly as the base LLM would (same tokens,
    same template) — and after stage-2 training it is the *trained* LLM, which is the fair
    comparison: the two systems differ only in how the question gets in (speech encoder + adaptor
    vs. Whisper ASR → text).
``text`` (instruction tasks only)
    the same LLM given the reference question text: a topline, and the reference reply for modal
    invariance.

Tasks and metrics (``results[system][lang][metric]``):

ASR (``asr``)
    llasm is prompted with the pinned prompt of ``llasm/assets/eval/prompts.json`` (``asr.<lang>``,
    not the item's own training instruction); corpus ``wer`` (en, Whisper normalizer) or ``cer``
    (zh) via :func:`llasm.metrics.asr_error_rate`.
Spoken instruction following (``instruct``)
    ``accuracy`` (share of replies where :func:`llasm.metrics.keyword_match` finds an accepted
    keyword), ``chrf`` (corpus chrF vs the reference answer), ``lang_consistency`` (share of
    replies in the item's language), and ``judge`` (mean 1–5 score from an LLM judge through an
    OpenAI-compatible endpoint; skipped with a note when none is configured).
Modal invariance (``invariance``, seed 3 / AudioChatLlama)
    per question, the system's reply to the spoken form vs the ``text`` system's reply to the text
    form: ``agreement`` (same keyword correctness), ``exact_match`` (equal after
    :func:`llasm.metrics.normalize`), ``chrf_vs_text`` (corpus chrF of spoken-form replies against
    text-form replies), and ``ppl_text_reply``: the perplexity of the text-prompted reply (the
    LLM's own answer to the text question) scored under this system's prompt — the audio prompt for
    ``llasm``, the Whisper transcript for ``cascade``, the true text for ``text``.

Failures: an item that cannot be used (missing/corrupt audio, a generation error, a bad record)
is recorded in ``report["errors"]`` with its task, system and id; the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import metrics as M

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets" / "eval"
PROMPTS_PATH = ASSETS / "prompts.json"
JUDGE_PROMPT_PATH = ASSETS / "judge_prompt.txt"
SPEECH_TOKEN = "<speech>"
TASKS = ("asr", "instruct", "invariance", "speech")
TEXT_TASKS = ("asr", "instruct", "invariance")  # the default; "speech" (llasm.speech_eval) needs a vocoder
LANG_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}

# default data: the held-out split of the synthesized seed corpus (make it with data_prep/synthesize.py)
DEFAULT_DATA = "data/eval/seed_instructions.jsonl"
DEFAULT_ASR_DATA = "data/eval/seed_asr.jsonl"
MAKE_DATA_HINT = (
    "make it with: python data_prep/synthesize.py --input data/seed/instructions.jsonl --output {instruct} && "
    "python data_prep/synthesize.py --input data/seed/asr_sentences.jsonl --output {asr}"
).format(instruct=DEFAULT_DATA, asr=DEFAULT_ASR_DATA)


# ----------------------------------------------------------------------------------- assets


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_prompts(path: str | os.PathLike = PROMPTS_PATH) -> dict:
    """The pinned evaluation prompts (``version``, ``asr.{en,zh}``)."""
    prompts = json.loads(Path(path).read_text(encoding="utf-8"))
    for lang in M.LANGUAGES:
        if not prompts.get("asr", {}).get(lang):
            raise ValueError(f"{path}: missing asr prompt for {lang!r}")
    return prompts


def prompt_info(prompts_path=PROMPTS_PATH, judge_prompt_path=JUDGE_PROMPT_PATH) -> dict:
    prompts = load_prompts(prompts_path)
    return {
        "prompts_version": prompts["version"],
        "prompts_sha256": _sha256(Path(prompts_path)),
        "asr_prompts": prompts["asr"],
        "judge_prompt_sha256": _sha256(Path(judge_prompt_path)),
    }


# ------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class InstructItem:
    """One spoken question: the audio, any typed text after it, the question text and the answer."""

    id: str
    lang: str
    audio: str | None  # absolute path
    question: str  # the words spoken in the audio
    reference: str
    keywords: list[str]
    extra_text: str = ""  # typed text that follows the audio in the same turn

    @property
    def text_prompt(self) -> str:
        return f"{self.question}\n{self.extra_text}" if self.extra_text else self.question


@dataclasses.dataclass
class AsrItem:
    id: str
    lang: str
    audio: str | None
    text: str


def _first_spoken_turn(record: dict) -> tuple[int, dict, dict | None]:
    """(index in ``audios``, the human turn holding the first ``<speech>``, the gpt turn after it)."""
    convs = record.get("conversations") or []
    n_audio = 0
    for i, turn in enumerate(convs):
        value = str(turn.get("value") or "")
        if turn.get("from") in ("human", "user") and SPEECH_TOKEN in value:
            answer = next((t for t in convs[i + 1:] if t.get("from") in ("gpt", "assistant")), None)
            return n_audio, turn, answer
        n_audio += value.count(SPEECH_TOKEN)
    raise ValueError("no human turn with <speech>")


def _resolve_audio(record: dict, index: int, base: Path) -> str:
    audios = record.get("audios") or []
    if index >= len(audios):
        raise ValueError(f"<speech> #{index} has no entry in 'audios'")
    path = Path(audios[index])
    return str(path if path.is_absolute() else base / path)


def _lang(record: dict, text: str) -> str:
    lang = record.get("lang") or ("zh" if re.search(r"[\u4e00-\u9fff]", text) else "en")
    if lang not in M.LANGUAGES:
        raise ValueError(f"unsupported lang {lang!r} (expected one of {M.LANGUAGES})")
    return lang


def _select(records: list[dict], split: str | None, limit: int | None) -> list[dict]:
    if split and any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
    return records[:limit] if limit else records


def load_instruct_items(path, split: str | None = "test", limit: int | None = None) -> tuple[list[InstructItem], list[dict]]:
    """Spoken instruction items of a DESIGN.md JSONL (``split`` filter when records carry one).

    The question text is the spoken turn's ``transcript``; the reference is the next gpt turn;
    ``keywords`` come from the record. Returns ``(items, errors)``: a bad record is an error.
    """
    path = Path(path)
    items, errors = [], []
    for n, record in enumerate(_select(_read_jsonl(path), split, limit)):
        rid = str(record.get("id") or f"{path.stem}-{n}")
        try:
            index, turn, answer = _first_spoken_turn(record)
            question = str(turn.get("transcript") or "").strip()
            if not question:
                raise ValueError("spoken turn has no 'transcript' (the spoken words)")
            if answer is None:
                raise ValueError("no gpt answer after the spoken turn")
            extra = str(turn["value"]).replace(SPEECH_TOKEN, "").strip()
            keywords = record.get("keywords") or []
            keywords = [keywords] if isinstance(keywords, str) else [str(k) for k in keywords]
            items.append(InstructItem(rid, _lang(record, question), _resolve_audio(record, index, path.parent),
                                      question, str(answer.get("value") or ""), keywords, extra))
        except Exception as err:  # noqa: BLE001 - a bad record must not stop the run
            errors.append(_error("instruct", "data", rid, err))
    return items, errors


def load_asr_items(path, split: str | None = "test", limit: int | None = None) -> tuple[list[AsrItem], list[dict]]:
    """ASR items of a DESIGN.md JSONL: the first clip and its reference text.

    The reference is the spoken turn's ``transcript`` when present, else the gpt answer (ASR data
    answers with the words). Returns ``(items, errors)``.
    """
    path = Path(path)
    items, errors = [], []
    for n, record in enumerate(_select(_read_jsonl(path), split, limit)):
        rid = str(record.get("id") or f"{path.stem}-{n}")
        try:
            index, turn, answer = _first_spoken_turn(record)
            text = str(turn.get("transcript") or (answer or {}).get("value") or "").strip()
            if not text:
                raise ValueError("no reference text (transcript or gpt answer)")
            items.append(AsrItem(rid, _lang(record, text), _resolve_audio(record, index, path.parent), text))
        except Exception as err:  # noqa: BLE001
            errors.append(_error("asr", "data", rid, err))
    return items, errors


def _read_jsonl(path: Path) -> list[dict]:
    from .io import read_jsonl

    return read_jsonl(path)


def _error(task: str, system: str, item_id: str, err: BaseException | str) -> dict:
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {"task": task, "system": system, "id": item_id, "error": message}


# ---------------------------------------------------------------------------------- systems


def _user(content: list[dict]) -> dict:
    return {"role": "user", "content": content}


class LlasmSystem:
    """The model under test: audio goes in as audio."""

    name = "llasm"

    def __init__(self, model, prompts: dict | None = None, max_new_tokens: int = 128, **generate_kwargs):
        self.model = model
        self.prompts = prompts or load_prompts()
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs

    def _chat(self, content: list[dict]) -> str:
        return self.model.chat([_user(content)], max_new_tokens=self.max_new_tokens, **self.generate_kwargs)

    def transcribe(self, audio, lang: str) -> tuple[str, dict]:
        return self._chat([{"type": "audio", "audio": audio}, {"type": "text", "text": self.prompts["asr"][lang]}]), {}

    def answer_spoken(self, item: InstructItem, audio) -> tuple[str, list[dict], dict]:
        """``(reply, the user content used as prompt, extra info)``."""
        content = [{"type": "audio", "audio": audio}]
        if item.extra_text:
            content.append({"type": "text", "text": item.extra_text})
        return self._chat(content), content, {}

    def answer_text(self, text: str) -> str:
        return self._chat([{"type": "text", "text": text}])


class CascadeSystem:
    """ASR (a ``transcriber(audio, lang) -> str``) then the same LLM answers the transcript as text."""

    name = "cascade"

    def __init__(self, transcriber: Callable[[Any, str], str], answerer: LlasmSystem):
        self.transcriber = transcriber
        self.answerer = answerer

    def transcribe(self, audio, lang: str) -> tuple[str, dict]:
        return self.transcriber(audio, lang), {}

    def answer_spoken(self, item: InstructItem, audio) -> tuple[str, list[dict], dict]:
        transcript = self.transcriber(audio, item.lang)
        text = f"{transcript}\n{item.extra_text}" if item.extra_text else transcript
        content = [{"type": "text", "text": text}]
        return self.answerer._chat(content), content, {"transcript": transcript}


class WhisperTranscriber:
    """``WhisperForConditionalGeneration`` + ``WhisperProcessor`` from one HF dir, greedy decoding.

    Multilingual checkpoints (a ``lang_to_id`` table in the generation config) get
    ``language=<item lang>, task="transcribe"``; English-only ones get no language. Audio longer
    than 30 s uses transformers' sequential long-form decoding.
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, dtype=None):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.path = str(path)
        self.processor = WhisperProcessor.from_pretrained(self.path)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.path, dtype=dtype or torch.float32)
        self.model.to(device or "cpu").eval()
        gc = self.model.generation_config
        self.multilingual = bool(getattr(gc, "lang_to_id", None)) and getattr(gc, "is_multilingual", True) is not False

    def __call__(self, audio, lang: str) -> str:
        import torch

        from .audio import load_audio

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
        # at most 12 tokens per second of audio (speech needs 3-6): bounds Whisper's repetition loops on
        # unclear audio, which otherwise run to its 448-token limit (slow, and a huge insertion count)
        kwargs["max_length"] = min(448, 14 + int(12 * len(audio) / sr))  # (+4 prompt tokens)
        with torch.inference_mode():
            ids = self.model.generate(features, **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def make_ppl_scorer(model) -> Callable[[list[dict], str], tuple[float, int]]:
    """``scorer(user_content, reply) -> (sum_nll, n_tokens)`` of ``reply`` (+ end token) after the prompt."""
    import torch

    def score(content: list[dict], reply: str) -> tuple[float, int]:
        messages = [_user(content), {"role": "assistant", "content": reply}]
        batch = model.processor.apply_chat_template(messages, add_generation_prompt=False)
        labels = batch.pop("labels")
        batch = {k: v.to(model.device) for k, v in batch.items()}
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


# ----------------------------------------------------------------------------------- engine


def _progress(iterable, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate(
    systems: dict,
    *,
    instruct_items: Sequence[InstructItem] = (),
    asr_items: Sequence[AsrItem] = (),
    tasks: Iterable[str] = TASKS,
    text_system=None,
    scorer: Callable[[list[dict], str], tuple[float, int]] | None = None,
    judge: Judge | None = None,
    errors: list[dict] | None = None,
    notes: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Run the tasks over the items for every system; returns the report dict (no files written).

    ``systems``: ``{name: system}`` with ``transcribe(audio, lang) -> (text, info)`` and
    ``answer_spoken(item, audio) -> (reply, user_content, info)``. ``text_system`` (default: the
    first system) answers the text questions through ``answer_text(text)``. ``scorer`` scores a
    reply under a prompt for ``ppl_text_reply`` (skipped with a note when ``None``).
    """
    from .audio import load_audio

    tasks = set(tasks)
    unknown = tasks - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    errors = list(errors or [])
    notes = list(notes or [])
    names = list(systems)
    text_system = text_system if text_system is not None else (systems[names[0]] if names else None)
    results: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    details: dict[str, Any] = {}
    records: dict[str, list[dict]] = {}

    def put(system, lang, metric, value):
        results.setdefault(system, {}).setdefault(lang, {})[metric] = value

    def count(system, lang, task, n):
        counts.setdefault(system, {}).setdefault(lang, {})[task] = n

    # ---- ASR
    if "asr" in tasks and asr_items:
        hyps: dict[tuple[str, str], list[tuple[str, str]]] = {}
        records["asr"] = []
        for item in _progress(asr_items, "asr", progress):
            row = {"id": item.id, "lang": item.lang, "reference": item.text, "hypotheses": {}}
            records["asr"].append(row)
            try:
                audio = load_audio(item.audio)
            except Exception as err:  # noqa: BLE001
                errors.append(_error("asr", "all", item.id, err))
                row["error"] = str(err)
                continue
            for name, system in systems.items():
                try:
                    hyp, _ = system.transcribe(audio, item.lang)
                except Exception as err:  # noqa: BLE001
                    errors.append(_error("asr", name, item.id, err))
                    continue
                row["hypotheses"][name] = hyp
                hyps.setdefault((name, item.lang), []).append((item.text, hyp))
        details["asr"] = {}
        for (name, lang), pairs in sorted(hyps.items()):
            try:
                score = M.asr_error_rate([r for r, _ in pairs], [h for _, h in pairs], lang)
            except ValueError as err:
                notes.append(f"asr {name}/{lang}: not scored ({err})")
                continue
            details["asr"].setdefault(name, {})[lang] = score
            put(name, lang, score["metric"], score["value"])
            count(name, lang, "asr", score["n_utts"])
    elif "asr" in tasks:
        notes.append("asr: no ASR items; skipped")

    # ---- instruction following + modal invariance (share the replies)
    want_instruct, want_inv = "instruct" in tasks, "invariance" in tasks
    if (want_instruct or want_inv) and instruct_items:
        if want_inv and scorer is None:
            notes.append("invariance: no model to score perplexity with; ppl_text_reply skipped")
        if want_instruct and judge is None:
            notes.append("judge: skipped (no --judge-url/--judge-model given); no judge scores in this report")
        all_names = names + (["text"] if text_system is not None else [])
        acc: dict[tuple[str, str], dict[str, list]] = {}

        def bucket(name, lang):
            return acc.setdefault((name, lang), {"replies": [], "refs": [], "correct": [], "lang_ok": [], "judge": [],
                                                 "inv_spoken": [], "inv_text": [], "agree": [], "exact": [],
                                                 "nll": [], "ntok": []})

        records["instruct"] = []
        for item in _progress(instruct_items, "instruct", progress):
            row = {"id": item.id, "lang": item.lang, "question": item.question, "reference": item.reference,
                   "keywords": item.keywords, "replies": {}, "correct": {}, "judge": {}, "transcripts": {},
                   "ppl_text_reply": {}}
            records["instruct"].append(row)
            try:
                audio = load_audio(item.audio)
            except Exception as err:  # noqa: BLE001
                errors.append(_error("instruct", "all", item.id, err))
                row["error"] = str(err)
                continue
            replies: dict[str, str] = {}
            contents: dict[str, list[dict]] = {}
            text_reply = None
            if text_system is not None:
                try:
                    text_reply = text_system.answer_text(item.text_prompt)
                    replies["text"] = text_reply
                    contents["text"] = [{"type": "text", "text": item.text_prompt}]
                except Exception as err:  # noqa: BLE001
                    errors.append(_error("instruct", "text", item.id, err))
            for name, system in systems.items():
                try:
                    reply, content, info = system.answer_spoken(item, audio)
                except Exception as err:  # noqa: BLE001
                    errors.append(_error("instruct", name, item.id, err))
                    continue
                replies[name], contents[name] = reply, content
                if info.get("transcript") is not None:
                    row["transcripts"][name] = info["transcript"]
            text_correct = M.keyword_match(text_reply, item.keywords, item.lang) if text_reply is not None else None
            for name in all_names:
                if name not in replies:
                    continue
                reply = replies[name]
                b = bucket(name, item.lang)
                correct = M.keyword_match(reply, item.keywords, item.lang)
                row["replies"][name], row["correct"][name] = reply, correct
                b["replies"].append(reply)
                b["refs"].append(item.reference)
                b["correct"].append(correct)
                b["lang_ok"].append(M.language_consistent(reply, item.lang))
                if want_instruct and judge is not None:
                    try:
                        s = judge.score(item.question, item.reference, reply, item.lang)
                        b["judge"].append(s)
                        row["judge"][name] = s
                    except Exception as err:  # noqa: BLE001
                        errors.append(_error("judge", name, item.id, err))
                if want_inv and text_reply is not None:
                    if name != "text":
                        b["inv_spoken"].append(reply)
                        b["inv_text"].append(text_reply)
                        b["agree"].append(correct == text_correct)
                        b["exact"].append(M.normalize(reply, item.lang) == M.normalize(text_reply, item.lang))
                    if scorer is not None:
                        try:
                            nll, ntok = scorer(contents[name], text_reply)
                            if not math.isfinite(nll):
                                raise ValueError(f"non-finite NLL {nll}")
                            b["nll"].append(nll)
                            b["ntok"].append(ntok)
                            row["ppl_text_reply"][name] = M.perplexity(nll, ntok)
                        except Exception as err:  # noqa: BLE001
                            errors.append(_error("invariance", name, item.id, err))

        for (name, lang), b in sorted(acc.items(), key=lambda kv: (all_names.index(kv[0][0]), kv[0][1])):
            if want_instruct and b["replies"]:
                put(name, lang, "accuracy", _mean([float(c) for c in b["correct"]]))
                put(name, lang, "chrf", M.chrf(b["replies"], b["refs"]))
                put(name, lang, "lang_consistency", _mean([float(c) for c in b["lang_ok"]]))
                if b["judge"]:
                    put(name, lang, "judge", _mean(b["judge"]))
                count(name, lang, "instruct", len(b["replies"]))
            if want_inv:
                if b["inv_spoken"]:
                    put(name, lang, "agreement", _mean([float(a) for a in b["agree"]]))
                    put(name, lang, "exact_match", _mean([float(e) for e in b["exact"]]))
                    put(name, lang, "chrf_vs_text", M.chrf(b["inv_spoken"], b["inv_text"]))
                    count(name, lang, "invariance", len(b["inv_spoken"]))
                if b["ntok"]:
                    put(name, lang, "ppl_text_reply", M.perplexity(sum(b["nll"]), sum(b["ntok"])))
    elif want_instruct or want_inv:
        notes.append("instruct/invariance: no instruction items; skipped")

    if judge is not None:
        details["judge"] = judge.info()
    order = names + ["text"]
    results = {k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else len(order))}
    counts = {k: counts[k] for k in results if k in counts}
    return {"results": results, "counts": counts, "details": details, "items": records,
            "errors": errors, "notes": notes}


# ----------------------------------------------------------------------------------- report


METRIC_HELP = {
    "wer": "ASR word error rate (en, Whisper-normalized), lower is better",
    "cer": "ASR character error rate (zh, normalized), lower is better",
    "accuracy": "share of replies containing an accepted keyword",
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
    systems = list(results)
    langs = [lang for lang in M.LANGUAGES if any(lang in results[s] for s in systems)]
    out = []
    for lang in langs:
        metrics: list[str] = []
        for s in systems:
            for m in results[s].get(lang, {}):
                if m not in metrics:
                    metrics.append(m)
        metrics.sort(key=lambda m: list(METRIC_HELP).index(m) if m in METRIC_HELP else 99)
        out.append(f"### {lang}\n")
        out.append("| metric | " + " | ".join(systems) + " |")
        out.append("|---|" + "---|" * len(systems))
        for m in metrics:
            out.append(f"| {m} | " + " | ".join(_fmt(results[s].get(lang, {}).get(m)) for s in systems) + " |")
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
    for key in ("model", "data", "asr_data", "split", "limit", "max_new_tokens", "tasks", "prompts_version",
                "normalizer_version", "started", "duration_s"):
        if key in meta:
            lines.append(f"- **{key}**: `{meta[key]}`")
    if "cascade" in meta:
        lines.append(f"- **cascade**: {meta['cascade']}")
    if "judge" in meta:
        lines.append(f"- **judge**: {meta['judge']}")
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
    from .io import write_text

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_text(out / "report.json", json.dumps(_json_safe(report), ensure_ascii=False, indent=2) + "\n"),
             "md": write_text(out / "report.md", render_markdown(report))}
    if any(report["results"].get(s) for s in report["results"]):
        paths["png"] = M.plot_metrics(report["results"], out / "report.png", title="llasm evaluation")
    return paths


# ------------------------------------------------------------------------------------- CLI


def load_model(spec: str, device: str | None = None):
    """A checkpoint dir (``from_pretrained``) or a model YAML (``build_model``), in eval mode."""
    import torch

    path = Path(spec)
    if path.is_dir():
        from .modeling import LlasmForConditionalGeneration

        model = LlasmForConditionalGeneration.from_pretrained(str(path))
    elif path.suffix in (".yaml", ".yml"):
        from .builder import build_model

        model, _ = build_model(str(path))
    else:
        raise FileNotFoundError(f"--model {spec}: not a checkpoint directory or a .yaml model config")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def build_parser(prog: str = "llasm eval", default_tasks: Sequence[str] = TEXT_TASKS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate an llasm model (ASR, spoken instruction following, "
                                "modal invariance) against a Whisper -> LLM cascade; writes report.{json,md,png}.")
    p.add_argument("--model", required=True, help="checkpoint directory or model YAML (configs/model/*.yaml)")
    p.add_argument("--data", default=None, help=f"spoken instruction JSONL (default {DEFAULT_DATA})")
    p.add_argument("--asr-data", default=None, help=f"ASR JSONL (default {DEFAULT_ASR_DATA})")
    p.add_argument("--split", default="test", help="keep records with this 'split' ('all' keeps every record)")
    p.add_argument("--output", required=True, help="output directory for report.json/.md/.png")
    p.add_argument("--tasks", default=",".join(default_tasks), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="at most N items per data file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1)")
    p.add_argument("--judge-model", default=None, help="judge model name sent to the endpoint")
    p.add_argument("--judge-api-key-env", default="LLASM_JUDGE_API_KEY",
                   help="environment variable holding the judge API key (optional)")
    p.add_argument("--no-cascade", action="store_true", help="skip the Whisper -> LLM cascade baseline")
    p.add_argument("--cascade-whisper", default=None,
                   help="Whisper HF dir for the cascade (default: the model's own base Whisper)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    speech = p.add_argument_group("speech output (task 'speech', llasm.speech_eval; added when --vocoder is given)")
    speech.add_argument("--vocoder", default=None, help="unit HiFi-GAN dir (train/train_vocoder.py output)")
    speech.add_argument("--kmeans", default=None, help="k-means unit dir (data_prep/units.py fit) for resynthesis")
    speech.add_argument("--judge", default=None,
                        help="Whisper HF dir that transcribes the speech (default: the cascade's Whisper)")
    return p


def speech_meta(args, judge) -> dict:
    return {"vocoder": args.vocoder, "kmeans": args.kmeans, "judge_whisper": str(judge),
            "durations": "predicted by the vocoder (as in generation)"}


def run_speech(args, model, items, judge) -> dict:
    """The speech-output task (:mod:`llasm.speech_eval`) with the parts named on the command line."""
    from .speech_eval import evaluate_speech

    vocoder = extractor = None
    if args.vocoder:
        from .vocoder import UnitHifiGan

        vocoder = UnitHifiGan.from_pretrained(args.vocoder).eval()
    if args.kmeans:
        from .units import UnitExtractor

        extractor = UnitExtractor.load(args.kmeans, device=str(model.device))
    return evaluate_speech(items, judge, model=model, vocoder=vocoder, extractor=extractor,
                           max_new_tokens=args.max_new_tokens, samples_dir=Path(args.output) / "speech_samples",
                           progress=not args.no_progress)


def merge_speech(report: dict, speech: dict) -> None:
    """Speech systems join the report as ``speech_<name>`` columns."""
    for name, langs in speech["results"].items():
        report["results"][f"speech_{name}"] = langs
    for name, langs in speech["counts"].items():
        report.setdefault("counts", {})[f"speech_{name}"] = langs
    report.setdefault("details", {}).update(speech["details"])
    report["errors"] += speech["errors"]
    report["notes"] += speech["notes"]


def run(args: argparse.Namespace, *, model=None, transcriber: Callable[[Any, str], str] | None = None,
        speech_transcriber: Callable[[Any, str], str] | None = None) -> dict:
    """Everything :func:`main` does, with optional injected ``model`` / cascade ``transcriber`` (tests)."""
    import torch

    started = time.time()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if getattr(args, "vocoder", None) and "speech" not in tasks:
        tasks.append("speech")
    bad = set(tasks) - set(TASKS)
    if bad:
        raise SystemExit(f"unknown --tasks {sorted(bad)}; choose from {','.join(TASKS)}")
    split = None if args.split in (None, "", "all") else args.split
    errors: list[dict] = []
    notes: list[str] = []

    def data_path(given, default, task):
        if given:
            if not Path(given).is_file():
                raise SystemExit(f"{task} data {given}: file not found")
            return given
        if Path(default).is_file():
            return default
        notes.append(f"{task}: default data {default} not found; skipped ({MAKE_DATA_HINT})")
        return None

    instruct_path = asr_path = None
    instruct_items: list[InstructItem] = []
    asr_items: list[AsrItem] = []
    if {"instruct", "invariance", "speech"} & set(tasks):
        instruct_path = data_path(args.data, DEFAULT_DATA, "instruct")
        if instruct_path and {"instruct", "invariance"} & set(tasks):
            instruct_items, errs = load_instruct_items(instruct_path, split, args.limit)
            errors += errs
    speech_items = []
    if "speech" in tasks and instruct_path:
        from .speech_eval import load_speech_items

        speech_items, errs = load_speech_items(instruct_path, split, args.limit)
        errors += errs
    if "asr" in tasks:
        asr_path = data_path(args.asr_data, DEFAULT_ASR_DATA, "asr")
        if asr_path:
            asr_items, errs = load_asr_items(asr_path, split, args.limit)
            errors += errs
    if not instruct_items and not asr_items and not speech_items and not errors:
        raise SystemExit(f"nothing to evaluate: no items found ({MAKE_DATA_HINT})")

    if model is None:
        model = load_model(args.model, args.device)
    prompts = load_prompts()
    llasm_sys = LlasmSystem(model, prompts, max_new_tokens=args.max_new_tokens)
    systems: dict[str, Any] = {"llasm": llasm_sys}

    cascade_info = "disabled (--no-cascade)"
    if not args.no_cascade:
        whisper_path = args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
        if transcriber is not None:
            cascade_info = "injected transcriber -> same LLM (text-only chat)"
        elif whisper_path:
            try:
                transcriber = WhisperTranscriber(whisper_path, device=str(model.device))
                cascade_info = f"Whisper {whisper_path} -> same LLM (text-only chat of the llasm model)"
            except Exception as err:  # noqa: BLE001
                cascade_info = f"skipped: could not load Whisper {whisper_path} ({type(err).__name__}: {err})"
                notes.append("cascade " + cascade_info)
        else:
            cascade_info = "skipped: the model has no base Whisper path; pass --cascade-whisper DIR"
            notes.append("cascade " + cascade_info)
        if transcriber is not None:
            systems["cascade"] = CascadeSystem(transcriber, llasm_sys)

    judge = None
    if bool(args.judge_url) != bool(args.judge_model):
        raise SystemExit("--judge-url and --judge-model go together")
    if "instruct" not in tasks:
        judge_meta = {"status": "not run", "note": "the instruct task is not selected"}
    elif args.judge_url and args.judge_model:
        judge = Judge(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env)
        judge_meta = judge.info()
    else:
        judge_meta = {"status": "skipped", "note": "no --judge-url/--judge-model given; no judge scores"}

    report = evaluate(systems, instruct_items=instruct_items, asr_items=asr_items,
                      tasks=[t for t in tasks if t != "speech"], scorer=make_ppl_scorer(model), judge=judge,
                      errors=errors, notes=notes, progress=not args.no_progress)
    if "speech" in tasks:
        speech_judge = speech_transcriber or transcriber
        judge_path = args.judge or args.cascade_whisper or getattr(model.config, "audio_model_name_or_path", None)
        if speech_judge is None or args.judge:
            if not judge_path:
                raise SystemExit("the speech task needs a Whisper judge: pass --judge DIR")
            speech_judge = WhisperTranscriber(judge_path, device=str(model.device))
        report["meta_speech"] = speech_meta(args, getattr(speech_judge, "path", "injected transcriber"))
        merge_speech(report, run_speech(args, model, speech_items, speech_judge))
    from . import __version__

    report["meta"] = {
        "llasm_version": __version__,
        "model": str(args.model),
        "data": instruct_path,
        "asr_data": asr_path,
        "split": split or "all",
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "tasks": tasks,
        "systems": list(report["results"]),
        "cascade": cascade_info,
        "judge": judge_meta,
        **prompt_info(),
        **{k: v for k, v in M.normalizer_info().items()},
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 2),
    }
    report["meta"]["judge_prompt"] = str(JUDGE_PROMPT_PATH.relative_to(ASSETS.parents[2]))
    # meta first in the JSON file
    if "meta_speech" in report:
        report["meta"]["speech"] = report.pop("meta_speech")
    return {"meta": report.pop("meta"), **report}


def main(argv: Sequence[str] | None = None, *, prog: str = "llasm eval", default_tasks: Sequence[str] = TEXT_TASKS,
         model=None, transcriber=None, speech_transcriber=None) -> int:
    """Parse ``argv``, evaluate, write the report files and print the summary table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(prog, default_tasks).parse_args(argv)
    report = run(args, model=model, transcriber=transcriber, speech_transcriber=speech_transcriber)
    paths = write_report(report, args.output)
    print(summary_tables(report))
    for note in report["notes"]:
        print(f"note: {note}")
    if report["errors"]:
        print(f"{len(report['errors'])} item error(s), see {paths['md']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
