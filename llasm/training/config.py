"""Training configuration: the typed stage config read from YAML, with dotted overrides.

A stage is a YAML (``configs/stage*.yaml``) read into :class:`TrainConfig`; ``train.lr=1e-4`` style
overrides change single keys, and unknown keys or unreadable values fail with the key's path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llasm.io import load_yaml, resolve_path



# -- config -------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    sources: list[dict] = field(default_factory=list)  # [{path, weight}]
    samples_per_epoch: int | None = None  # default: all rows once
    max_length: int | None = 4096
    group_size: int = 16  # batches are length-sorted within batch_size * group_size items
    num_workers: int = 0


@dataclass
class ObjectiveConfig:
    type: str = "ce"  # ce | self_reply | kl | units (stage 3: CTC of the unit head)
    kl_weight: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 128  # self_reply generation length
    # units: keep the frozen LLM's answer states in memory after their first use, so later epochs run
    # only the unit head (answer tokens x hidden size x dtype bytes per conversation)
    cache_states: bool = False


@dataclass
class CacheConfig:
    enabled: bool = True  # only used while the audio tower is frozen
    dir: str | None = None  # default: $LLASM_HOME/encoder_cache


@dataclass
class OptimConfig:
    epochs: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None  # stop (and save) after this much wall time: CPU demos budget by time
    mixed_precision: str = "no"  # no | bf16 (CPU autocast too: AVX512-BF16 / AMX) | fp16
    # LM head only on answer positions + a frozen LLM's shared prompt prefix computed once (exact);
    # false = the plain full-sequence HF loss (the LLaSM recipe in bench/train_throughput.py)
    fast_loss: bool = True
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    # per-part learning rates overriding lr, e.g. {adaptor: 1e-5} (LLaVA's mm_projector_lr); the
    # <au_start>/<au_end> rows follow the adaptor's unless audio_marker_embeddings is given
    part_lr: dict = field(default_factory=dict)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "cosine"  # any transformers get_scheduler name
    max_grad_norm: float = 1.0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1


@dataclass
class TrainConfig:
    model: str = "configs/model/tiny.yaml"
    output_dir: str = "runs/train"
    seed: int = 0
    resume: str = "auto"  # auto | none | a checkpoint dir
    deepspeed: str | None = None  # configs/deepspeed/zero2.json
    trainable: dict = field(default_factory=lambda: {"audio_tower": "frozen", "adaptor": "full",
                                                     "language_model": "frozen"})
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05})
    unit_head: dict | None = None  # stage 3: add a CTC unit head with these settings when the model has none
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    encoder_cache: CacheConfig = field(default_factory=CacheConfig)
    train: OptimConfig = field(default_factory=OptimConfig)


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) if text != "" else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """YAML reads ``1e-4`` as a string: convert scalars to the field's declared type."""
    import typing

    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if value is None or not isinstance(value, str) or str in kinds:
        return value
    for kind in (int, float, bool):
        if kind in kinds:
            if kind is bool:
                return value.lower() in ("1", "true", "yes", "on")
            try:
                return kind(value)
            except ValueError:
                continue
    raise ValueError(f"config {where}: cannot read {value!r} as {hint}")


def _from_dict(cls, data: dict, where: str = ""):
    import typing

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in fields:
            raise ValueError(f"unknown config key '{where}{key}'; known: {sorted(fields)}")
        factory = fields[key].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[key] = _from_dict(type(default), value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def load_config(path_or_dict, overrides: list[str] | None = None) -> TrainConfig:
    """YAML (or dict) + ``dotted.key=value`` overrides -> :class:`TrainConfig`."""
    data = load_yaml(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else json.loads(json.dumps(path_or_dict))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return _from_dict(TrainConfig, data)


def load_model(path: str):
    """A model YAML (``configs/model/*.yaml``) or a checkpoint directory -> ``(model, processor)``."""
    path = resolve_path(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        from llasm.modeling import LlasmForConditionalGeneration

        model = LlasmForConditionalGeneration.from_pretrained(path)
        return model, model.processor
    from llasm.builder import build_model

    return build_model(path)
