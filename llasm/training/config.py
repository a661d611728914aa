"""Training configuration: the typed stage config read from YAML, with dotted overrides.

A stage is a YAML (``configs/stage*.yaml``) read into :class:`TrainConfig`; ``train.lr=1e-4`` style
overrides change single keys, and unknown keys or unreadable values fail with the key's path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llasm import settings
from llasm.io import resolve_path

# stage 1: only the adaptor (and the <au_start>/<au_end> rows with it) trains
DEFAULT_TRAINABLE = {"audio_tower": "frozen", "adaptor": "full", "language_model": "frozen"}


@dataclass
class DataConfig:
    sources: list[dict] = field(default_factory=list)  # [{path, weight}]
    samples_per_epoch: int | None = None  # default: all rows once
    max_length: int | None = 4096
    group_size: int = 16  # batches are length-sorted within batch_size * group_size items
    num_workers: int = 0
    # several conversations per row of at most max_length tokens, each attending only to itself
    # (llasm/data/packing.py); objective ce only
    packing: bool = False


OBJECTIVES = ("ce", "self_reply", "kl", "units")


@dataclass
class ObjectiveConfig:
    type: str = "ce"  # ce | self_reply | kl | units (stage 3: CTC of the unit head)
    kl_weight: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 128  # self_reply generation length
    generate_batch_size: int = 16  # self_reply: rows per generate call (each rank makes its share)
    # units: keep the frozen LLM's answer states in memory after their first use, so later epochs run
    # only the unit head (answer tokens x hidden size x dtype bytes per conversation)
    cache_states: bool = False


@dataclass
class CacheConfig:
    enabled: bool = True  # only used while the audio tower is frozen
    dir: str | None = None  # default: $LLASM_HOME/encoder_cache
    read_only: bool = False  # a cache built beforehand by `llasm encoder-cache` and shared: never written to


@dataclass
class OptimConfig:
    epochs: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None  # stop (and save) after this much wall time: CPU demos budget by time
    # with max_minutes: time the run's first steps and end the run, and its schedule, at the steps that fit in
    # the minutes (never more than max_steps), so the schedule anneals inside the budget on any machine
    fit_steps_to_minutes: bool = False
    # auto (bf16 on CUDA, fp16 on GPUs without bf16, no on CPU) | no | bf16 (CPU autocast too:
    # AVX512-BF16 / AMX) | fp16; under DeepSpeed it fills the JSON's "auto" bf16/fp16 sections
    mixed_precision: str = "auto"
    # LM head only on answer positions + a frozen LLM's shared prompt prefix computed once (exact);
    # false = the plain full-sequence HF loss (the LLaSM recipe in bench/train_throughput.py)
    fast_loss: bool = True
    # recompute each LLM layer in the backward pass instead of keeping its activations: the layers keep
    # only their inputs (bench/capacity.py); same losses, about one more forward pass of time
    gradient_checkpointing: bool = False
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
    # a model YAML (configs/model/*.yaml) or a checkpoint directory: stage 2 starts from stage 1 with
    # model: runs/stage1_asr_align/final (its trained adaptor; a checkpoint-N works too)
    model: str = "configs/model/tiny.yaml"
    output_dir: str = "runs/train"
    seed: int = 0
    # auto: continue the newest checkpoint in output_dir when the config and data are the same (else stop,
    # naming what changed) | force: continue it anyway | none: start again | a checkpoint dir
    resume: str = "auto"
    device: str = "auto"  # auto (CUDA when present; each rank its LOCAL_RANK GPU) | cpu | cuda
    deepspeed: str | None = None  # configs/deepspeed/zero2.json
    trainable: dict = field(default_factory=lambda: dict(DEFAULT_TRAINABLE))
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05})
    unit_head: dict | None = None  # stage 3: add a CTC unit head with these settings when the model has none
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    encoder_cache: CacheConfig = field(default_factory=CacheConfig)
    train: OptimConfig = field(default_factory=OptimConfig)


def load_config(path_or_dict, overrides: list[str] | None = None) -> TrainConfig:
    """YAML (or dict) + ``dotted.key=value`` overrides -> :class:`TrainConfig` (via :mod:`llasm.settings`).
    A relative YAML path that does not exist here is read below the repository (``configs/stage1_asr_align.yaml``
    from any working directory)."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        path_or_dict = resolve_path(path_or_dict)
    return settings.load(TrainConfig, path_or_dict, overrides or ())
