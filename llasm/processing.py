"""`LlasmProcessor`: Whisper features + LLM tokenizer + chat template, with exact audio placeholders.

A conversation is rendered by a Jinja chat template in which every piece of content (a text part,
an audio part, a system prompt) is replaced by a sentinel. The rendered string is split at the
sentinels: template text is tokenized normally (its special tokens are real), user and assistant
text with ``split_special_tokens=True`` (so ``<au_patch>`` or ``<|im_start|>`` typed by a user
stay plain text), and audio parts become ``<au_start> <au_patch>*N <au_end>`` token ids directly.
Labels fall out of the same pieces: assistant content and its end-of-turn token, nothing else.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

import numpy as np
import torch
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import ProcessorMixin

from llasm.audio import SAMPLING_RATE, load_audio
from llasm.configuration import CHUNK_FRAMES, audio_token_lengths, chunk_frames, mel_frames

AUDIO_PATCH, AUDIO_START, AUDIO_END = "<au_patch>", "<au_start>", "<au_end>"
AUDIO_TOKENS = [AUDIO_PATCH, AUDIO_START, AUDIO_END]
IGNORE_INDEX = -100
LLASM_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# Tokens that end an assistant turn in the templates we know; supervised with the answer.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")

# Llama-2 chat (Chinese-LLaMA-2, LLaSM). Written without spaces around content: sentencepiece
# tokenizers add the word-initial "▁" to each content piece themselves.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}[INST]"
    "{% if loop.first and system %} <<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }}[/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = {"llama2": LLAMA2_TEMPLATE, "chatml": CHATML_TEMPLATE}
_SENTINEL = re.compile("\ue000(\\d+)\ue001")


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def _render(template: str, **context) -> str:
    return _compile(template).render(**context)


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
        return sum(audio_token_lengths(chunk_frames(mel_frames(num_samples), self.pad_to_30s), self))

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
        """Log-mel chunks of one 16 kHz clip: each ``(n_mels, frames <= 3000)``."""
        fe = self.feature_extractor
        if self.pad_to_30s:  # LLaSM: every 30 s window padded with silence to 3000 frames
            window = CHUNK_FRAMES * fe.hop_length
            pieces = [audio[i : i + window] for i in range(0, len(audio), window)]
            return [fe(p, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features[0] for p in pieces]
        mel = fe(audio, sampling_rate=SAMPLING_RATE, truncation=False, padding="longest",
                 return_tensors="np").input_features[0]  # (n_mels, len(audio) // 160)
        mel = mel[:, : mel_frames(len(audio))]
        return [mel[:, i : i + CHUNK_FRAMES] for i in range(0, mel.shape[1], CHUNK_FRAMES)]

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
    def encode_conversation(self, messages: list[dict], add_generation_prompt: bool = False) -> dict[str, Any]:
        """One conversation -> ``input_ids``, ``labels`` (lists) and its audio feature chunks."""
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
                if part.get("type") == "audio" or "audio" in part:
                    source = part.get("audio", part.get("path"))
                    marks.append(sentinel("audio", source))
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
        text = _render(self.resolved_template(), messages=rendered_messages, add_generation_prompt=add_generation_prompt,
                       bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
        ids_map = self.audio_token_ids
        input_ids: list[int] = []
        labels: list[int] = []
        chunks: list[np.ndarray] = []
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
                clip_chunks = self.audio_features(load_audio(payload))
                n = sum(audio_token_lengths([c.shape[1] for c in clip_chunks], self))
                seg_ids = [ids_map[AUDIO_START]] + [ids_map[AUDIO_PATCH]] * n + [ids_map[AUDIO_END]]
                chunks += clip_chunks
                input_ids += seg_ids
                labels += [IGNORE_INDEX] * len(seg_ids)
                continue
            seg_ids = tok(payload, add_special_tokens=False, split_special_tokens=True).input_ids if payload else []
            input_ids += seg_ids
            labels += seg_ids if is_answer else [IGNORE_INDEX] * len(seg_ids)
            supervise_end = is_answer and last_of_message[index]  # its end-of-turn token comes next
        return {"input_ids": input_ids, "labels": labels, "audio_chunks": chunks}

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = True,
                            return_dict: bool = True, return_tensors: str | None = "pt", padding_side: str | None = None,
                            **kwargs):
        """HF-style ``apply_chat_template`` for one conversation or a batch of them.

        ``tokenize=False`` returns the rendered text (audio shown as ``<au_start>…<au_end>``).
        With ``return_dict`` the result has ``input_ids``, ``attention_mask``, ``input_features``,
        ``feature_attention_mask`` (when there is audio) and ``labels`` (unless generating).
        """
        batch = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        encoded = [self.encode_conversation(c, add_generation_prompt) for c in batch]
        if not tokenize:
            texts = [self.tokenizer.decode(e["input_ids"]) for e in encoded]
            return texts if len(texts) > 1 or batch is conversation else texts[0]
        out = self.collate(encoded, padding_side=padding_side, with_labels=not add_generation_prompt)
        if not return_dict:
            return out["input_ids"]
        if return_tensors not in ("pt", None):
            raise ValueError("only return_tensors='pt' is supported")
        return out

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
