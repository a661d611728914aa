"""Build a model + processor from a model YAML (``configs/model/*.yaml``) or a dict.

```yaml
audio:    {name_or_path: openai/whisper-large-v2, source: whisper_encoder, pad_to_30s: false}
text:     {name_or_path: LinkSoul/Chinese-Llama-2-7b}
adaptor:  {type: mlp, stack_factor: 8, hidden_size: 4096}
template: llama2          # llama2 | chatml | tokenizer | auto
```
Either part may give ``config: {...}`` instead of ``name_or_path`` for a random model (tests);
``text.tokenizer`` names a tokenizer dir (``builtin:tiny`` is the bundled tiny sentencepiece one).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, WhisperConfig, WhisperFeatureExtractor

from llasm.checkpoint import torch_dtype
from llasm.configuration import LlasmConfig
from llasm.io import ASSETS, load_yaml
from llasm.modeling import LlasmForConditionalGeneration
from llasm.processing import AUDIO_TOKENS, LLASM_SYSTEM_PROMPT, LlasmProcessor

TINY_TOKENIZER = ASSETS / "tiny-llama-tokenizer"


def build_model(config_path_or_dict, **overrides) -> tuple[LlasmForConditionalGeneration, LlasmProcessor]:
    """Return ``(model, processor)`` for a model YAML path or dict.

    The audio tower and the LLM are frozen, the adaptor and the audio-token rows trainable
    (stage 1); training recipes change that per component.
    """
    spec = load_yaml(config_path_or_dict) if isinstance(config_path_or_dict, (str, os.PathLike)) else dict(config_path_or_dict)
    spec.update(overrides)
    audio, text, adaptor = spec.get("audio", {}), spec.get("text", {}), spec.get("adaptor", {})
    if "seed" in spec:
        torch.manual_seed(int(spec["seed"]))
    source = audio.get("source", "whisper_encoder")

    audio_path = audio.get("name_or_path")
    audio_config = WhisperConfig.from_pretrained(audio_path) if audio_path else WhisperConfig(**audio.get("config", {}))
    text_path = text.get("name_or_path")
    text_config = AutoConfig.from_pretrained(text_path) if text_path else AutoConfig.for_model(**{"model_type": "llama", **text.get("config", {})})

    tokenizer = load_tokenizer(text.get("tokenizer") or text_path)
    if audio_path:
        feature_extractor = WhisperFeatureExtractor.from_pretrained(audio_path)
    else:
        feature_extractor = WhisperFeatureExtractor(feature_size=audio_config.num_mel_bins)
    processor = LlasmProcessor(
        feature_extractor,
        tokenizer,
        template=spec.get("template", "auto"),
        system_prompt=spec.get("system_prompt", LLASM_SYSTEM_PROMPT),
        audio_source=source,
        stack_factor=int(adaptor.get("stack_factor", 8)),
        pad_to_30s=bool(audio.get("pad_to_30s", False)),
        num_query_tokens=int(audio.get("num_query_tokens", 64)),
        chain_of_modality=bool(spec.get("chain_of_modality", False)),
    )
    ids = processor.audio_token_ids
    config = LlasmConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_source=source,
        pad_to_30s=processor.pad_to_30s,
        adaptor_type=adaptor.get("type", "mlp"),
        stack_factor=processor.stack_factor,
        adaptor_hidden_size=adaptor.get("hidden_size"),
        num_query_tokens=processor.num_query_tokens,
        audio_patch_token_id=ids[AUDIO_TOKENS[0]],
        audio_start_token_id=ids[AUDIO_TOKENS[1]],
        audio_end_token_id=ids[AUDIO_TOKENS[2]],
        audio_model_name_or_path=audio_path,
        text_model_name_or_path=text_path,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        unit_head=dict(spec["unit_head"]) if spec.get("unit_head") else None,  # speech output (stage 3)
    )
    model = LlasmForConditionalGeneration.from_base_models(config, dtype=torch_dtype(spec.get("dtype")))
    model.processor = processor
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
