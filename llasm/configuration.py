"""`LlasmConfig`: a Whisper audio config + any causal-LM text config + adaptor settings.

Also home of the one count of a clip's chunks, mel frames and audio tokens (:func:`audio_chunks`,
:func:`audio_token_lengths`, :func:`count_audio_tokens`): the processor cuts and expands with it,
the model checks the placeholders against it, the training dataset keys its encoder cache with it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from transformers import AutoConfig, PretrainedConfig, WhisperConfig

# Whisper front end: 10 ms mel hop at 16 kHz, conv2 stride 2, 30 s windows of 3000 mel frames.
HOP_LENGTH = 160
CHUNK_FRAMES = 3000
AUDIO_SOURCES = ("whisper_encoder", "whisper_decoder_queries")
ADAPTOR_TYPES = ("linear", "mlp")


def mel_frames(num_samples: int) -> int:
    """Mel frames `WhisperFeatureExtractor(truncation=False)` makes of ``num_samples`` at 16 kHz.

    The last partial hop (``num_samples % 160`` samples, under 10 ms) makes no frame.
    """
    return num_samples // HOP_LENGTH


class AudioChunk(NamedTuple):
    """One 30 s window of a clip: the samples it reads ``[start, end)`` and the mel frames the
    encoder gets from it (3000 with ``pad_to_30s``, the window's own frames otherwise)."""

    start: int
    end: int
    frames: int


def audio_chunks(num_samples: int, pad_to_30s: bool = False) -> list[AudioChunk]:
    """Cut a clip of ``num_samples`` (16 kHz) into 30 s windows: THE chunk count of llasm.

    Windows hold whole mel frames only, so the samples past the last full hop belong to no window
    (the same rule as :func:`mel_frames`): 480,159 samples are one window, 480,160 two. With
    ``pad_to_30s`` (LLaSM) each window is padded with silence to 3000 frames.
    61 s -> frames [3000, 3000, 100] (or [3000, 3000, 3000] padded).
    """
    total = mel_frames(num_samples)
    chunks = []
    for first in range(0, total, CHUNK_FRAMES):
        frames = min(CHUNK_FRAMES, total - first)
        start = first * HOP_LENGTH
        chunks.append(AudioChunk(start, start + frames * HOP_LENGTH, CHUNK_FRAMES if pad_to_30s else frames))
    return chunks


def chunk_frames(num_samples: int, pad_to_30s: bool = False) -> list[int]:
    """Mel frames per chunk of a clip of ``num_samples`` (see :func:`audio_chunks`)."""
    return [c.frames for c in audio_chunks(num_samples, pad_to_30s)]


def encoder_frames(frames: int) -> int:
    """Whisper encoder output length: conv1 keeps the length, conv2 (k=3, s=2, p=1) halves it."""
    return (frames - 1) // 2 + 1


def audio_token_lengths(frames_per_chunk: list[int], config) -> list[int]:
    """Audio tokens each chunk becomes, from its mel frames; ``config`` is a :class:`LlasmConfig` or
    a processor (anything with ``audio_source``, ``stack_factor``, ``num_query_tokens``). The
    adaptor type does not change the count. The single source of truth for placeholder counts."""
    if config.audio_source == "whisper_decoder_queries":
        return [config.num_query_tokens] * len(frames_per_chunk)
    return [math.ceil(encoder_frames(f) / config.stack_factor) for f in frames_per_chunk]


def count_audio_tokens(num_samples: int, config) -> int:
    """Audio tokens of a clip of ``num_samples`` at 16 kHz: the sum over its :func:`audio_chunks`."""
    return sum(audio_token_lengths(chunk_frames(num_samples, config.pad_to_30s), config))


class LlasmConfig(PretrainedConfig):
    r"""Configuration of :class:`LlasmForConditionalGeneration`.

    Args:
        audio_config: a `WhisperConfig` (or dict) for the audio tower.
        text_config: the causal LM's config (or dict with ``model_type``).
        audio_source: ``"whisper_encoder"`` (frames of the encoder, variable length) or
            ``"whisper_decoder_queries"`` (LLaSM: 64 decoder positions fed the start token).
        pad_to_30s: pad every 30 s chunk to 3000 mel frames (LLaSM's behaviour) instead of masking.
        adaptor_type: ``"linear"`` (LLaSM) or ``"mlp"``.
        stack_factor: encoder frames stacked into one audio token (1 for LLaSM).
        adaptor_hidden_size: hidden width of the ``mlp`` adaptor.
        num_query_tokens: decoder positions for ``whisper_decoder_queries``.
        audio_patch_token_id / audio_start_token_id / audio_end_token_id: ids of ``<au_patch>``,
            ``<au_start>``, ``<au_end>`` in the processor's tokenizer.
        audio_model_name_or_path / text_model_name_or_path: where the base weights came from
            (hub id or path), so a checkpoint of trained parts only can rebuild the rest.
        base_locations: ``{"audio_tower": [...], "language_model": [...]}``, more places to find the
            bases (relative to the checkpoint, below ``$LLASM_HOME``); written by ``save_pretrained``.
        lora: peft LoRA settings of the language model (``None`` when not used).
        unit_head: speech-output head settings (``None`` when absent).
        checkpoint_format: ``"trained_parts"`` or ``"full"`` — what `save_pretrained` wrote.
    """

    model_type = "llasm"
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        audio_source: str = "whisper_encoder",
        pad_to_30s: bool = False,
        adaptor_type: str = "mlp",
        stack_factor: int = 8,
        adaptor_hidden_size: int | None = None,
        num_query_tokens: int = 64,
        audio_patch_token_id: int | None = None,
        audio_start_token_id: int | None = None,
        audio_end_token_id: int | None = None,
        audio_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        base_locations: dict | None = None,
        lora: dict | None = None,
        unit_head: dict | None = None,
        checkpoint_format: str = "full",
        **kwargs,
    ):
        if isinstance(audio_config, dict):
            audio_config = WhisperConfig(**{k: v for k, v in audio_config.items() if k != "model_type"})
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**{"model_type": "llama", **text_config})
        if audio_source not in AUDIO_SOURCES:
            raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
        if adaptor_type not in ADAPTOR_TYPES:
            raise ValueError(f"adaptor_type must be one of {ADAPTOR_TYPES}, got {adaptor_type!r}")
        if stack_factor < 1:
            raise ValueError(f"stack_factor must be >= 1, got {stack_factor}")
        self.audio_config = audio_config if audio_config is not None else WhisperConfig()
        self.text_config = text_config if text_config is not None else AutoConfig.for_model("llama")
        self.audio_source = audio_source
        # LLaSM's decoder queries always read a full 30 s window.
        self.pad_to_30s = bool(pad_to_30s or audio_source == "whisper_decoder_queries")
        self.adaptor_type = adaptor_type
        self.stack_factor = int(stack_factor)
        self.adaptor_hidden_size = adaptor_hidden_size
        self.num_query_tokens = num_query_tokens
        self.audio_patch_token_id = audio_patch_token_id
        self.audio_start_token_id = audio_start_token_id
        self.audio_end_token_id = audio_end_token_id
        self.audio_model_name_or_path = audio_model_name_or_path
        self.text_model_name_or_path = text_model_name_or_path
        self.base_locations = base_locations
        self.lora = lora
        self.unit_head = unit_head
        self.checkpoint_format = checkpoint_format
        super().__init__(**kwargs)

    def num_audio_tokens(self, num_samples: int) -> int:
        """Audio tokens for a clip of ``num_samples`` at 16 kHz (sum over its 30 s chunks)."""
        return count_audio_tokens(num_samples, self)


# `AutoConfig.from_pretrained(dir)` on a llasm checkpoint (see llasm/__init__.py for when this runs)
AutoConfig.register("llasm", LlasmConfig, exist_ok=True)
