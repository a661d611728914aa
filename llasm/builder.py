"""Build a model + processor from a model YAML (``configs/model/*.yaml``) or a dict, and load a
model from either a YAML or a checkpoint directory (:func:`load_model`).

```yaml
audio:    {name_or_path: openai/whisper-large-v2, source: whisper_encoder, pad_to_30s: false}
text:     {name_or_path: LinkSoul/Chinese-Llama-2-7b}
adaptor:  {type: mlp, stack_factor: 8, hidden_size: 4096}
template: llama2          # llama2 | chatml | tokenizer | auto
```
Either part may give ``config: {...}`` instead of ``name_or_path`` for a random model (tests);
``text.tokenizer`` names a tokenizer dir (``builtin:tiny`` is the bundled tiny sentencepiece one).
``audio_tower: path/to/base.pt`` takes the audio tower from an openai-whisper checkpoint instead of
``audio.name_or_path`` (its dims give the architecture). The YAML is read into :class:`ModelSpec`
by :mod:`llasm.settings`: an unknown key is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoTokenizer, WhisperConfig, WhisperFeatureExtractor

from llasm import settings
from llasm.audio_tower import whisper_config
from llasm.checkpoint import torch_dtype
from llasm.configuration import LlasmConfig
from llasm.device import resolve_device, resolve_dtype
from llasm.io import ASSETS, load_yaml, resolve_path
from llasm.modeling import LlasmForConditionalGeneration
from llasm.processing import AUDIO_TOKENS, LLASM_SYSTEM_PROMPT, LlasmProcessor

TINY_TOKENIZER = ASSETS / "tiny-llama-tokenizer"


@dataclass
class AudioSpec:
    name_or_path: str | None = None  # HF Whisper id or dir (weights, config, feature extractor)
    source: str = "whisper_encoder"  # whisper_encoder | whisper_decoder_queries (LLaSM)
    pad_to_30s: bool = False
    num_query_tokens: int = 64  # whisper_decoder_queries only
    config: dict | None = None  # WhisperConfig fields of a random tower (tests)


@dataclass
class TextSpec:
    name_or_path: str | None = None  # causal LM id or dir
    tokenizer: str | None = None  # a tokenizer dir when not the LM's own; builtin:tiny for tests
    config: dict | None = None  # config fields of a random LM (tests); model_type defaults to llama


@dataclass
class AdaptorSpec:
    type: str = "mlp"  # mlp | linear (LLaSM)
    stack_factor: int = 8  # encoder frames per audio token: 6.25 tokens per second
    hidden_size: int | None = None  # mlp width; default 2 x the LLM width


@dataclass
class ModelSpec:
    """A model YAML: the base models, the adaptor, the chat template and the precision."""

    audio: AudioSpec = field(default_factory=AudioSpec)
    text: TextSpec = field(default_factory=TextSpec)
    adaptor: AdaptorSpec = field(default_factory=AdaptorSpec)
    audio_tower: str | None = None  # an openai-whisper .pt for the tower, instead of audio.name_or_path
    template: str = "auto"  # llama2 | chatml | tokenizer | auto
    system_prompt: str = LLASM_SYSTEM_PROMPT
    chain_of_modality: bool = False  # answers start with the transcript ([tq] ... [ta] ...)
    dtype: str | None = None  # float32 (default) | bfloat16 | float16
    # eager | sdpa (transformers' default) | flash_attention_2 (CUDA, the flash-attn package, bf16/fp16),
    # for the LLM and the Whisper tower alike; each gets its padding mask in the form it needs
    attn_implementation: str | None = None
    seed: int | None = None  # seeds the random parts (adaptor, random towers)
    unit_head: dict | None = None  # speech output (stage 3), UnitHeadConfig fields

    def __post_init__(self):
        if self.audio_tower and (self.audio.name_or_path or self.audio.config):
            raise ValueError("give the audio tower once: audio_tower (an openai-whisper .pt) or audio.name_or_path / "
                             "audio.config")
        if self.audio_tower and self.audio.source != "whisper_encoder":
            raise ValueError("audio_tower (an openai-whisper .pt) holds only what source whisper_encoder needs")


def load_spec(source, overrides: Sequence[str] = (), **fields) -> ModelSpec:
    """A model YAML path, a dict or a :class:`ModelSpec`, plus dotted ``overrides`` and top-level
    ``fields`` -> :class:`ModelSpec`."""
    where = str(source) if isinstance(source, (str, os.PathLike)) else "<model spec>"
    if isinstance(source, ModelSpec):
        source = dataclasses.asdict(source)
    elif isinstance(source, (str, os.PathLike)):
        source = load_yaml(resolve_path(source))  # configs/model/tiny.yaml from any working directory
    return settings.load(ModelSpec, {**source, **fields}, overrides, where=where)


def check_base_paths(paths: dict[str, str | None]) -> None:
    """Raise one ``FileNotFoundError`` naming every base model given as a local path that does not exist.

    ``paths``: setting name -> value. A value is a local path when it starts with ``/``, ``.`` or
    ``~`` or has more than one ``/``; ``org/name`` may be a hub id and is left to the loader.
    """
    missing = []
    for name, value in paths.items():
        if not value:
            continue
        text = str(value)
        local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or os.path.isabs(text)
        if local and not Path(text).expanduser().exists():
            missing.append(f"{name}: {text}")
    if missing:
        raise FileNotFoundError("base model(s) not found: " + "; ".join(missing)
                                + " (`make starter` converts the starter models into $LLASM_HOME; "
                                  "or give a hub id or another local path)")


def build_model(config_path_or_dict, overrides: Sequence[str] = (), **fields) -> tuple[LlasmForConditionalGeneration,
                                                                                     LlasmProcessor]:
    """Return ``(model, processor)`` for a model YAML path, a dict or a :class:`ModelSpec`.

    ``overrides`` are dotted ``key=value`` strings (``adaptor.stack_factor=4``); ``fields`` replace
    top-level keys (``dtype="bfloat16"``). The audio tower and the LLM are frozen, the adaptor and
    the audio-token rows trainable (stage 1); training recipes change that per component.
    """
    spec = load_spec(config_path_or_dict, overrides, **fields)
    audio, text, adaptor = spec.audio, spec.text, spec.adaptor
    if spec.seed is not None:
        torch.manual_seed(spec.seed)

    audio_path = spec.audio_tower or audio.name_or_path
    check_base_paths({"audio_tower" if spec.audio_tower else "audio.name_or_path": audio_path,
                      "text.name_or_path": text.name_or_path, "text.tokenizer": text.tokenizer})
    audio_config = whisper_config(audio_path) if audio_path else WhisperConfig(**(audio.config or {}))
    text_path = text.name_or_path
    text_config = (AutoConfig.from_pretrained(text_path) if text_path
                   else AutoConfig.for_model(**{"model_type": "llama", **(text.config or {})}))

    tokenizer = load_tokenizer(text.tokenizer or text_path)
    if audio.name_or_path:
        feature_extractor = WhisperFeatureExtractor.from_pretrained(audio.name_or_path)
    else:  # openai-whisper's front end is HF's default one: 25 ms windows, 10 ms hop, 30 s chunks
        feature_extractor = WhisperFeatureExtractor(feature_size=audio_config.num_mel_bins)
    processor = LlasmProcessor(
        feature_extractor,
        tokenizer,
        template=spec.template,
        system_prompt=spec.system_prompt,
        audio_source=audio.source,
        stack_factor=adaptor.stack_factor,
        pad_to_30s=audio.pad_to_30s,
        num_query_tokens=audio.num_query_tokens,
        chain_of_modality=spec.chain_of_modality,
        max_positions=getattr(text_config, "max_position_embeddings", None),
    )
    ids = processor.audio_token_ids
    config = LlasmConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_source=audio.source,
        pad_to_30s=processor.pad_to_30s,
        adaptor_type=adaptor.type,
        stack_factor=processor.stack_factor,
        adaptor_hidden_size=adaptor.hidden_size,
        num_query_tokens=processor.num_query_tokens,
        audio_patch_token_id=ids[AUDIO_TOKENS[0]],
        audio_start_token_id=ids[AUDIO_TOKENS[1]],
        audio_end_token_id=ids[AUDIO_TOKENS[2]],
        audio_model_name_or_path=audio_path,
        text_model_name_or_path=text_path,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        unit_head=dict(spec.unit_head) if spec.unit_head else None,  # speech output (stage 3)
    )
    model = LlasmForConditionalGeneration.from_base_models(config, dtype=torch_dtype(spec.dtype))
    if spec.attn_implementation:
        set_attention(model, spec.attn_implementation)
    model.processor = processor
    return model, processor


ATTENTION = ("eager", "sdpa", "flash_attention_2")


def set_attention(model, implementation: str) -> None:
    """Use ``implementation`` (:data:`ATTENTION`) in the LLM and the audio tower. Raises ``ValueError``
    for another name, ``ImportError`` (from transformers) when flash_attention_2 lacks its package."""
    if implementation not in ATTENTION:
        raise ValueError(f"attn_implementation must be one of {ATTENTION}, got {implementation!r}")
    model.set_attn_implementation(implementation)
    for part in (model.audio_tower, model.language_model):  # loaded bases carry configs of their own
        part.set_attn_implementation(implementation)


def load_model(path: str | os.PathLike, dtype: str | None = None, audio_tower=None, language_model=None,
               device=None, attn_implementation: str | None = None
               ) -> tuple[LlasmForConditionalGeneration, LlasmProcessor | None]:
    """A checkpoint directory (``from_pretrained``, either format; ``final/`` or any ``checkpoint-N``)
    or a model YAML (``build_model``) -> ``(model, processor)``. A relative path that does not exist
    here is tried below the repository (``configs/model/tiny.yaml`` from anywhere). ``dtype`` overrides
    the float32 default (``"auto"``: bfloat16 on CUDA, see :mod:`llasm.device`); ``audio_tower`` /
    ``language_model`` say where a checkpoint's bases are (:func:`llasm.checkpoint.resolve_base`);
    with ``device`` (``"auto"``, ``"cuda"``, ...) the model is placed there in eval mode, ready to chat.
    Raises ``FileNotFoundError`` naming ``path`` when it is neither, ``ValueError`` for a device this
    machine lacks."""
    if device is not None:
        device = resolve_device(device)
        dtype = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    elif dtype == "auto":
        dtype = None
    resolved = resolve_path(path)
    if os.path.isdir(resolved) and os.path.exists(os.path.join(resolved, "config.json")):
        model = LlasmForConditionalGeneration.from_pretrained(resolved, dtype=dtype, audio_tower=audio_tower,
                                                              language_model=language_model)
        processor = model.processor
    elif str(resolved).endswith((".yaml", ".yml")) and os.path.isfile(resolved):
        model, processor = build_model(resolved, **({"dtype": dtype} if dtype else {}))
    else:
        raise FileNotFoundError(f"{path}: not a checkpoint directory (with config.json) or a model YAML")
    if attn_implementation:
        set_attention(model, attn_implementation)
    if device is not None:
        model.to(device).eval()
    return model, processor


def load_tokenizer(name_or_path):
    if not name_or_path:
        raise ValueError("the text model needs a tokenizer: set text.name_or_path or text.tokenizer")
    if str(name_or_path) == "builtin:tiny":
        name_or_path = TINY_TOKENIZER
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:  # Llama has none: <unk> never appears in real text
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer
