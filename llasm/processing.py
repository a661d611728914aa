"""`LlasmProcessor`: Whisper features + LLM tokenizer + chat template, with exact audio placeholders.

A conversation is rendered by a Jinja chat template (:mod:`llasm.templates`) in which every piece of
content (a text part, an audio part, a system prompt) is replaced by a sentinel. The rendered string
is split at the sentinels: template text is tokenized normally (its special tokens are real);
message text has every control marker of the template and tokenizer neutralised first
(:func:`llasm.templates.escape_markers`: a typed ``[/INST]``, ``<|im_start|>`` or ``<au_patch>``
stays text), and audio parts become ``<au_start> <au_patch>*N <au_end>`` token ids directly, N from
the one count in :mod:`llasm.configuration`. Labels fall out of the same pieces: assistant content
and its end-of-turn token, nothing else.

The model-card two-step also works: ``apply_chat_template(..., tokenize=False)`` renders one
``<au_start><au_patch><au_end>`` per audio part, and ``processor(text=..., audio=[...])`` expands each
to its clip's count — the same ids and features as ``apply_chat_template(..., tokenize=True)``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, BatchFeature, ProcessorMixin

from llasm.audio import SAMPLING_RATE, audio_part_source, load_audio
from llasm.configuration import (
    HOP_LENGTH,
    LlasmConfig,
    audio_chunks,
    audio_token_lengths,
    count_audio_tokens,
    mel_frames,
)
from llasm.templates import CHATML_TEMPLATE, LLAMA2_TEMPLATE, TEMPLATES, control_markers, escape_markers, render

AUDIO_PATCH, AUDIO_START, AUDIO_END = "<au_patch>", "<au_start>", "<au_end>"
AUDIO_TOKENS = [AUDIO_PATCH, AUDIO_START, AUDIO_END]
AUDIO_PART_TYPES = ("audio", "audio_url", "input_audio")
IGNORE_INDEX = -100
LLASM_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# Tokens that end an assistant turn in the templates we know; supervised with the answer.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
SUPPORTED_CALL = (
    "use processor.apply_chat_template(messages, add_generation_prompt=True) with audio parts "
    "{'type': 'audio', 'audio': clip}, or text = processor.apply_chat_template(messages, tokenize=False, "
    "add_generation_prompt=True) then processor(text=text, audio=[clip, ...], sampling_rate=rate), one "
    f"{AUDIO_START}{AUDIO_PATCH}{AUDIO_END} per clip")
_SENTINEL = re.compile("\ue000(\\d+)\ue001")
__all__ = ["CHATML_TEMPLATE", "LLAMA2_TEMPLATE", "TEMPLATES", "LlasmProcessor", "PromptTooLongError", "RenderedChat"]


class RenderedChat(str):
    """The text ``apply_chat_template(..., tokenize=False)`` returns: a ``str`` that also keeps the
    token ids it was decoded from (:attr:`ids`, one ``<au_start><au_patch><au_end>`` per audio part).

    :meth:`LlasmProcessor.__call__` takes the kept ids for it, so render-then-process gives exactly
    ``apply_chat_template(..., tokenize=True)``'s ids for any tokenizer. Edited or hand-written text
    (a plain ``str``) is tokenized afresh, which gives the same ids for sentencepiece tokenizers and
    templates whose content meets special tokens (a tokenizer's own); a byte-level BPE tokenizer
    under a foreign template can merge content and template text at their seams differently.
    """

    ids: list[int]

    @classmethod
    def of(cls, tokenizer, ids: list[int]) -> "RenderedChat":
        text = cls(tokenizer.decode(ids))
        text.ids = list(ids)
        return text

    def made_by(self, tokenizer) -> bool:
        """Whether :attr:`ids` are this text under ``tokenizer`` (not another model's rendering)."""
        return tokenizer.decode(self.ids) == str(self)


class PromptTooLongError(ValueError):
    """A prompt longer than the language model's positions (``text_config.max_position_embeddings``)."""


COM_QUESTION, COM_ANSWER = "[tq]", "[ta]"


def chain_of_modality(messages: list[dict]) -> list[dict]:
    """Rewrite assistant answers to spoken turns as ``[tq] {transcript}; [ta] {answer}``."""
    out, heard = [], None
    for m in messages:
        if m["role"] == "user":
            parts = m.get("content") if isinstance(m.get("content"), list) else []
            heard = " ".join(p["transcript"] for p in parts if p.get("transcript")) or None
        elif m["role"] == "assistant" and heard and isinstance(m.get("content"), str):
            m = {**m, "content": f"{COM_QUESTION} {heard}; {COM_ANSWER} {m['content']}"}
            heard = None
        out.append(m)
    return out


def answer_text(reply: str) -> str:
    """The answer part of a chain-of-modality reply (the whole reply when it has no ``[ta]``)."""
    head, sep, tail = reply.partition(COM_ANSWER)
    return tail.strip() if sep else reply.strip()


class LlasmProcessor(ProcessorMixin):
    """Turns HF-style messages with audio parts into ``input_ids``, ``input_features`` and labels.

    Args:
        feature_extractor: a ``WhisperFeatureExtractor`` (80 or 128 mels).
        tokenizer: the LLM's tokenizer; ``<au_patch>``, ``<au_start>``, ``<au_end>`` are added.
        template: ``"llama2"``, ``"chatml"``, ``"tokenizer"`` (the tokenizer's own) or ``"auto"``.
        system_prompt: used when a conversation has no system message (``""`` for none).
        chain_of_modality: SpeechGPT's chain of modality: an answer to a spoken turn whose audio part
            carries a ``transcript`` is trained as ``[tq] {transcript}; [ta] {answer}`` (the model first
            writes what it heard, then answers); :func:`answer_text` strips it at inference.
        audio_source / stack_factor / pad_to_30s / num_query_tokens: must match the model's config;
            they drive :meth:`num_audio_tokens`.
        max_positions: the language model's ``text_config.max_position_embeddings``; a longer prompt
            raises :class:`PromptTooLongError` (``None``: not checked).
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        template: str = "auto",
        system_prompt: str = LLASM_SYSTEM_PROMPT,
        audio_source: str = "whisper_encoder",
        stack_factor: int = 8,
        pad_to_30s: bool = False,
        num_query_tokens: int = 64,
        padding_side: str = "left",
        chain_of_modality: bool = False,
        max_positions: int | None = None,
        chat_template: str | None = None,
    ):
        if tokenizer is not None and any(t not in tokenizer.get_vocab() for t in AUDIO_TOKENS):
            tokenizer.add_special_tokens({"additional_special_tokens": AUDIO_TOKENS}, replace_extra_special_tokens=False)
        self.template = template
        self.system_prompt = system_prompt
        self.audio_source = audio_source
        self.stack_factor = stack_factor
        self.pad_to_30s = bool(pad_to_30s or audio_source == "whisper_decoder_queries")
        self.num_query_tokens = num_query_tokens
        self.padding_side = padding_side
        self.chain_of_modality = bool(chain_of_modality)
        self.max_positions = max_positions
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    # -- ids and counts ---------------------------------------------------------------------
    @property
    def audio_token_ids(self) -> dict[str, int]:
        return {t: self.tokenizer.convert_tokens_to_ids(t) for t in AUDIO_TOKENS}

    @property
    def end_of_turn_ids(self) -> set[int]:
        # get_vocab() builds a dict of the whole vocabulary (150k entries for Qwen): convert tokens
        # one by one instead; unknown ones map to the unk id (or None) and are dropped
        tok = self.tokenizer
        known = {i for t, i in ((t, tok.convert_tokens_to_ids(t)) for t in END_OF_TURN_TOKENS)
                 if i is not None and i != tok.unk_token_id and tok.convert_ids_to_tokens(i) == t}
        return known | ({tok.eos_token_id} if tok.eos_token_id is not None else set())

    def num_audio_tokens(self, num_samples: int) -> int:
        """Audio tokens for ``num_samples`` of 16 kHz audio — the count the model checks."""
        return count_audio_tokens(num_samples, self)

    def check_length(self, num_tokens: int, audio_samples: int = 0, audio_tokens: int = 0) -> None:
        """Raise :class:`PromptTooLongError` when ``num_tokens`` exceed :attr:`max_positions`, naming the
        count, the seconds of audio behind ``audio_tokens`` (markers included) and how much audio fits."""
        limit = self.max_positions
        if limit is None or num_tokens <= limit:
            return
        text_tokens = num_tokens - audio_tokens
        room, fits = limit - text_tokens, 0
        if audio_samples and room > 2:  # the longest clip whose tokens (+ its two markers) fit the room left
            low, high = 0, audio_samples
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if self.num_audio_tokens(mid) + 2 <= room else (low, mid - 1)
            fits = low
        raise PromptTooLongError(
            f"prompt of {num_tokens} tokens ({audio_tokens} audio tokens from {audio_samples / SAMPLING_RATE:.2f} s of "
            f"audio, {text_tokens} text tokens) is longer than the language model's {limit} positions "
            f"(text_config.max_position_embeddings); "
            + (f"about {fits / SAMPLING_RATE:.1f} s of audio fit with this text" if audio_samples
               else "shorten the conversation"))

    def resolved_template(self) -> str:
        if self.template in TEMPLATES:
            return TEMPLATES[self.template]
        own = getattr(self.tokenizer, "chat_template", None)
        if self.template == "tokenizer" and not own:
            raise ValueError("template='tokenizer' but the tokenizer has no chat_template")
        if self.template not in ("tokenizer", "auto"):
            raise ValueError(f"unknown template {self.template!r}; use llama2, chatml, tokenizer or auto")
        return own or LLAMA2_TEMPLATE

    # -- audio ------------------------------------------------------------------------------
    def audio_features(self, audio: np.ndarray) -> list[np.ndarray]:
        """Log-mel chunks of one 16 kHz clip, one per :func:`~llasm.configuration.audio_chunks`
        window: each ``(n_mels, frames)``, ``frames <= 3000`` (``== 3000`` with ``pad_to_30s``)."""
        fe = self.feature_extractor
        chunks = audio_chunks(len(audio), self.pad_to_30s)
        if self.pad_to_30s:  # LLaSM: every 30 s window featurized alone, padded with silence to 3000 frames
            return [fe(audio[c.start : c.end], sampling_rate=SAMPLING_RATE, return_tensors="np").input_features[0]
                    for c in chunks]
        mel = fe(audio, sampling_rate=SAMPLING_RATE, truncation=False, padding="longest",
                 return_tensors="np").input_features[0]  # (n_mels, len(audio) // 160 + 1)
        mel = mel[:, : mel_frames(len(audio))]
        return [mel[:, c.start // HOP_LENGTH : c.start // HOP_LENGTH + c.frames] for c in chunks]

    def _expand_audio(self, source: Any, sampling_rate: int | None, state: dict) -> list[int]:
        """One clip -> its ``<au_start> <au_patch>*N <au_end>`` ids; its chunks and sizes go to ``state``."""
        clip = load_audio(source, sampling_rate)
        clip_chunks = self.audio_features(clip)
        n = sum(audio_token_lengths([c.shape[1] for c in clip_chunks], self))
        state["chunks"] += clip_chunks
        state["samples"] += len(clip)
        state["tokens"] += n + 2
        ids = self.audio_token_ids
        return [ids[AUDIO_START]] + [ids[AUDIO_PATCH]] * n + [ids[AUDIO_END]]

    def pad_features(self, chunks: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Stack chunks into ``input_features (C, n_mels, T)`` + ``feature_attention_mask (C, T)``."""
        longest = max(c.shape[1] for c in chunks)
        feats = np.zeros((len(chunks), chunks[0].shape[0], longest), dtype=np.float32)
        mask = np.zeros((len(chunks), longest), dtype=np.int64)
        for i, c in enumerate(chunks):
            feats[i, :, : c.shape[1]] = c
            mask[i, : c.shape[1]] = 1
        return {"input_features": torch.from_numpy(feats), "feature_attention_mask": torch.from_numpy(mask)}

    # -- conversations ----------------------------------------------------------------------
    def encode_conversation(self, messages: list[dict], add_generation_prompt: bool = False,
                            expand_audio: bool = True, sampling_rate: int | None = None) -> dict[str, Any]:
        """One conversation -> ``input_ids``, ``labels`` (lists) and its audio feature chunks.

        ``expand_audio=False`` leaves each audio part as one ``<au_start><au_patch><au_end>`` without
        reading it (the rendered text of ``tokenize=False``). ``sampling_rate`` is the rate of bare
        arrays in audio parts (16 kHz when omitted). Raises :class:`PromptTooLongError` past
        :attr:`max_positions`, :class:`~llasm.audio.AudioError` for unusable audio.
        """
        messages = [dict(m) for m in messages]
        if self.chain_of_modality:
            messages = chain_of_modality(messages)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        pieces: list[tuple[str, Any]] = []  # (kind, payload) per sentinel: text / audio

        def sentinel(kind: str, payload: Any) -> str:
            pieces.append((kind, payload))
            return f"\ue000{len(pieces) - 1}\ue001"

        owners, last_of_message = [], []  # per sentinel: its message's role, whether it ends the message
        rendered_messages = []
        for m in messages:
            content = m.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            marks = []
            for part in parts:
                if part.get("type") in AUDIO_PART_TYPES or any(k in part for k in AUDIO_PART_TYPES):
                    marks.append(sentinel("audio", audio_part_source(part) if expand_audio else None))
                elif part.get("type", "text") == "text":
                    marks.append(sentinel("text", part.get("text", "")))
                else:
                    raise ValueError(f"unsupported content part type {part.get('type')!r} (use 'audio' or 'text')")
                if m["role"] == "assistant" and pieces[-1][0] == "audio":
                    raise ValueError("audio in an assistant turn is not a model input (use the turn's 'audio' key)")
                owners.append(m["role"])
                last_of_message.append(False)
            if marks:
                last_of_message[-1] = True
            rendered_messages.append({"role": m["role"], "content": "\n".join(marks)})

        tok = self.tokenizer
        template = self.resolved_template()
        text = render(template, messages=rendered_messages, add_generation_prompt=add_generation_prompt,
                      bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
        markers = control_markers(template, tok)
        ids_map = self.audio_token_ids
        input_ids: list[int] = []
        labels: list[int] = []
        audio = {"chunks": [], "samples": 0, "tokens": 0}
        supervise_end = False
        for i, segment in enumerate(_SENTINEL.split(text)):
            if i % 2 == 0:  # template text: real special tokens
                seg_ids = tok(segment, add_special_tokens=False).input_ids if segment else []
                seg_labels = [IGNORE_INDEX] * len(seg_ids)
                if supervise_end:  # the assistant turn's end token is part of the answer
                    ends = self.end_of_turn_ids
                    for j, t in enumerate(seg_ids):
                        seg_labels[j] = t
                        if t in ends:
                            break
                    else:
                        seg_labels = [IGNORE_INDEX] * len(seg_ids)
                    supervise_end = False
                input_ids += seg_ids
                labels += seg_labels
                continue
            index = int(segment)
            kind, payload = pieces[index]
            is_answer = owners[index] == "assistant"
            if kind == "audio":
                seg_ids = (self._expand_audio(payload, sampling_rate, audio) if expand_audio
                           else [ids_map[AUDIO_START], ids_map[AUDIO_PATCH], ids_map[AUDIO_END]])
                input_ids += seg_ids
                labels += [IGNORE_INDEX] * len(seg_ids)
                continue
            payload = escape_markers(payload, markers)  # typed markers stay text, never the template's ids
            seg_ids = tok(payload, add_special_tokens=False, split_special_tokens=True).input_ids if payload else []
            input_ids += seg_ids
            labels += seg_ids if is_answer else [IGNORE_INDEX] * len(seg_ids)
            supervise_end = is_answer and last_of_message[index]  # its end-of-turn token comes next
        if expand_audio:
            self.check_length(len(input_ids), audio["samples"], audio["tokens"])
        return {"input_ids": input_ids, "labels": labels, "audio_chunks": audio["chunks"]}

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = True,
                            return_dict: bool = True, return_tensors: str | None = "pt", padding_side: str | None = None,
                            sampling_rate: int | None = None, **kwargs):
        """HF-style ``apply_chat_template`` for one conversation or a batch of them.

        ``tokenize=False`` returns the rendered text, each audio part as one
        ``<au_start><au_patch><au_end>`` (its audio is not read), ready for :meth:`__call__`.
        With ``return_dict`` the result (a ``BatchFeature``) has ``input_ids``, ``attention_mask``,
        ``input_features``, ``feature_attention_mask`` (when there is audio) and ``labels`` (unless
        generating). ``sampling_rate``: the rate of bare arrays in audio parts (default 16 kHz).
        """
        batch = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        if not tokenize:
            texts = [RenderedChat.of(self.tokenizer, self.encode_conversation(c, add_generation_prompt, expand_audio=False)
                                     ["input_ids"]) for c in batch]
            return texts if len(texts) > 1 or batch is conversation else texts[0]
        if return_tensors not in ("pt", None):
            raise ValueError("only return_tensors='pt' is supported")
        encoded = [self.encode_conversation(c, add_generation_prompt, sampling_rate=sampling_rate) for c in batch]
        out = self.collate(encoded, padding_side=padding_side, with_labels=not add_generation_prompt)
        return BatchFeature(out) if return_dict else out["input_ids"]

    def __call__(self, text=None, audio=None, sampling_rate: int | None = None, return_tensors: str | None = "pt",
                 padding: bool | str = True, padding_side: str | None = None, add_special_tokens: bool = True,
                 audios=None, **kwargs) -> BatchFeature:
        """Rendered text(s) + clips -> the same batch as :meth:`apply_chat_template` gives.

        ``text``: a string or a list (a batch), with one ``<au_start><au_patch><au_end>`` (or a bare
        ``<au_patch>`` run) per clip, in order, as ``apply_chat_template(..., tokenize=False)`` renders
        it. ``audio``: one clip or a list of clips in any form :func:`~llasm.audio.load_audio` takes (an
        array or tensor is one clip); ``sampling_rate`` is the rate of bare arrays (resampled to 16 kHz).
        The tokenizer's own special tokens (its BOS) are added only to text that is not rendered chat
        (rendered chat begins as this processor's template renders it, which placed every special token)
        and does not start with them already: never a second BOS. Returns
        ``input_ids``, ``attention_mask`` and, with audio, ``input_features`` + ``feature_attention_mask``.
        Raises ``ValueError`` when placeholders and clips differ in number, :class:`PromptTooLongError`
        past :attr:`max_positions`.
        """
        if kwargs:
            raise TypeError(f"LlasmProcessor() got unsupported argument(s) {sorted(kwargs)}; {SUPPORTED_CALL}")
        if padding not in (True, "longest"):
            raise ValueError("LlasmProcessor pads to the longest prompt (padding=True); other padding is not supported")
        if return_tensors not in ("pt", None):
            raise ValueError("only return_tensors='pt' is supported")
        audio = audios if audio is None else audio
        if text is None:
            raise ValueError(f"LlasmProcessor needs text with one audio placeholder per clip; {SUPPORTED_CALL}")
        texts = [text] if isinstance(text, str) else list(text)
        clips = _clip_list(audio)
        tok = self.tokenizer
        token_ids = [t.ids if isinstance(t, RenderedChat) and t.made_by(tok) else tok(t, add_special_tokens=False).input_ids
                     for t in texts]
        spans = [_placeholders(ids, self.audio_token_ids) for ids in token_ids]
        if sum(len(s) for s in spans) != len(clips):
            raise ValueError(f"text has {sum(len(s) for s in spans)} audio placeholder(s) but {len(clips)} audio clip(s) "
                             f"were given; {SUPPORTED_CALL}")
        prefix = _bos_prefix(tok) if add_special_tokens else []
        chat_start = self._chat_start()
        encoded, queue = [], iter(clips)
        for t, ids, places in zip(texts, token_ids, spans):
            state = {"chunks": [], "samples": 0, "tokens": 0}
            out, at = [], 0
            for first, end in places:
                out += ids[at:first] + self._expand_audio(next(queue), sampling_rate, state)
                at = end
            out = out + ids[at:]
            rendered = bool(chat_start) and t.startswith(chat_start)  # the template placed its special tokens
            if prefix and not rendered and out[: len(prefix)] != prefix:
                out = prefix + out
            self.check_length(len(out), state["samples"], state["tokens"])
            encoded.append({"input_ids": out, "labels": [IGNORE_INDEX] * len(out), "audio_chunks": state["chunks"]})
        return BatchFeature(self.collate(encoded, padding_side=padding_side, with_labels=False))

    def _chat_start(self) -> str:
        """How every conversation this processor renders begins (``"<s>[INST]"``, ``"<|im_start|>"``):
        the text before the first message content, with and without a system message."""
        starts = []
        for messages in ([{"role": "user", "content": "\ue000"}],
                         [{"role": "system", "content": "\ue000"}, {"role": "user", "content": "\ue000"}]):
            try:
                text = render(self.resolved_template(), messages=messages, add_generation_prompt=True,
                              bos_token=self.tokenizer.bos_token or "", eos_token=self.tokenizer.eos_token or "")
            except Exception:  # noqa: BLE001 - a template that refuses one of the shapes (no system role)
                continue
            starts.append(text.split("\ue000")[0])
        return os.path.commonprefix(starts).strip() if starts else ""

    def collate(self, encoded: list[dict], padding_side: str | None = None, with_labels: bool = True):
        """Pad encoded conversations into a batch (also the training collator)."""
        side = padding_side or self.padding_side
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        longest = max(len(e["input_ids"]) for e in encoded)
        ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e["input_ids"])
            cols = slice(longest - n, longest) if side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[row, cols] = 1
            labels[row, cols] = torch.tensor(e["labels"], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if with_labels:
            out["labels"] = labels
        chunks = [c for e in encoded for c in e["audio_chunks"]]
        if chunks:
            out.update(self.pad_features(chunks))
        return out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "input_features", "feature_attention_mask"]


def _clip_list(audio) -> list:
    """``audio`` of :meth:`LlasmProcessor.__call__` as a list of clips: an array, tensor, path, dict or
    ``(rate, array)`` pair is one clip; a list (or a tuple that is not a pair) holds several."""
    if audio is None:
        return []
    if isinstance(audio, (list, tuple)) and audio and not all(isinstance(x, (int, float)) for x in audio):
        pair = len(audio) == 2 and sum(isinstance(x, (int, float, np.integer)) for x in audio) == 1
        return [audio] if pair else list(audio)
    return [audio]


def _placeholders(ids: list[int], audio_ids: dict[str, int]) -> list[tuple[int, int]]:
    """``[first, end)`` of each audio placeholder in ``ids``: ``<au_start>? <au_patch>+ <au_end>?`` or
    ``<au_start><au_end>``; a stray marker is an error."""
    start, patch, end = audio_ids[AUDIO_START], audio_ids[AUDIO_PATCH], audio_ids[AUDIO_END]
    code = "".join("S" if t == start else "P" if t == patch else "E" if t == end else "x" for t in ids)
    spans = [m.span() for m in re.finditer("S?P+E?|SE", code)]
    stray = sum(code.count(c) for c in "SPE") - sum(b - a for a, b in spans)
    if stray:
        raise ValueError(f"text has {AUDIO_START}/{AUDIO_END} without an audio placeholder between them; {SUPPORTED_CALL}")
    return spans


def _bos_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts in front of a text (``[bos]`` for Llama, none for Qwen)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return full[:at]


# `AutoProcessor.from_pretrained(dir)` on a llasm checkpoint (see llasm/__init__.py for when this runs)
AutoProcessor.register(LlasmConfig, LlasmProcessor, exist_ok=True)
