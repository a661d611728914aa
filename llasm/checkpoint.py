"""Checkpoints: safetensors only, trained parts + base ids by default, everything on ``merge``.

A ``trained_parts`` checkpoint holds the adaptor, the audio-token rows and whatever else trained
(LoRA weights, a fully tuned LLM, the unit head); loading rebuilds the frozen bases from the ids or
paths recorded in the config. A ``full`` checkpoint is a plain HF model directory.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import cached_file

from llasm.configuration import LlasmConfig
from llasm.io import atomic_dir
from llasm.lora import add_lora, merge_lora
from llasm.processing import LlasmProcessor

WEIGHTS_NAME = "model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name) -> torch.dtype:
    """``"bfloat16"`` (or a ``torch.dtype``, or ``None`` for float32) -> the ``torch.dtype``."""
    if isinstance(name, torch.dtype) or name is None:
        return name or torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def save_checkpoint(model, save_directory, merge: bool = False) -> Path:
    """Write ``model`` (and its processor, when attached) into ``save_directory`` atomically."""
    target = Path(save_directory)
    bases_known = bool(model.config.audio_model_name_or_path and model.config.text_model_name_or_path)
    with atomic_dir(target) as tmp:
        if merge or not bases_known:
            _save_full(model, tmp)
        else:
            config = copy.deepcopy(model.config)
            config.checkpoint_format = "trained_parts"
            config.save_pretrained(tmp)
            save_file(model.trained_state_dict(), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if getattr(model, "processor", None) is not None:
            model.processor.save_pretrained(tmp)
    return target


def _save_full(model, directory: Path) -> None:
    """Everything in one HF directory; LoRA is merged into the LLM first."""
    lm = model.language_model
    if model.config.lora:
        model = merge_lora(copy.deepcopy(model))
    original = model.config.checkpoint_format
    model.config.checkpoint_format = "full"
    try:
        PreTrainedModel.save_pretrained(model, directory, safe_serialization=True)
    finally:
        model.config.checkpoint_format = original
    del lm


def load_checkpoint(cls, path, *, dtype=None, config=None, **kwargs):
    """Load either checkpoint format into ``cls`` (the model class); attaches ``model.processor`` when
    the directory has one. A ``trained_parts`` checkpoint rebuilds the bases with
    ``cls.from_base_models`` and loads the trained tensors over them."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    config = config or LlasmConfig.from_pretrained(path, **hub_kwargs)
    dtype = torch_dtype(dtype if dtype not in (None, "auto") else None)
    if config.checkpoint_format == "full":
        model = PreTrainedModel.from_pretrained.__func__(cls, path, config=config, dtype=dtype, **kwargs)
    else:
        model = cls.from_base_models(config, dtype=dtype)
        if config.lora:
            add_lora(model, config.lora)
        state = load_file(cached_file(path, WEIGHTS_NAME, **hub_kwargs))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{path}: checkpoint has weights this model does not: {unexpected[:5]}")
    model.processor = _load_processor(path, hub_kwargs)
    if model.processor is not None and getattr(model.processor, "max_positions", None) is None:
        # checkpoints written before the processor kept it: the LLM's own limit
        model.processor.max_positions = getattr(config.text_config, "max_position_embeddings", None)
    model.eval()
    return model


def _load_processor(path, hub_kwargs):
    if Path(path).is_dir() and not (Path(path) / "processor_config.json").exists():
        return None
    try:
        return LlasmProcessor.from_pretrained(path, **hub_kwargs)
    except OSError:
        return None
