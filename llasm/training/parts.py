"""The model's parts in training: which train (``trainable`` in a stage YAML), their learning rates,
and the small ones kept in fp32.

Parts are the model's top-level children: ``audio_tower``, ``adaptor``, ``audio_marker_embeddings``,
``language_model`` and, from stage 3, ``unit_head``.
"""

from __future__ import annotations

import logging

import torch

from llasm.lora import add_lora, has_lora, merge_lora
from llasm.training.config import DEFAULT_TRAINABLE

log = logging.getLogger(__name__)

PARTS = ("audio_tower", "adaptor", "language_model", "unit_head")


def trainability(trainable: dict) -> dict:
    """``trainable`` over :data:`DEFAULT_TRAINABLE`: the mode of every named part."""
    return {**DEFAULT_TRAINABLE, **trainable}


def apply_trainability(model, trainable: dict, lora: dict | None = None):
    """Set ``requires_grad`` per part: ``frozen`` | ``full`` | ``lora`` (language_model only).

    The ``<au_start>``/``<au_end>`` rows train with the adaptor unless ``audio_marker_embeddings``
    says otherwise. A language model loaded with LoRA adapters (a LoRA run's checkpoint as ``model:``)
    continues them under ``lora`` (no second adapter), keeps them frozen under ``frozen`` and is merged
    first under ``full``. Raises ``ValueError`` naming the part for an unknown mode, LoRA outside the LLM,
    or a trained ``unit_head`` on a model without one.
    """
    modes = trainability(trainable)
    modes.setdefault("audio_marker_embeddings", modes["adaptor"])
    if getattr(model, "unit_head", None) is not None:
        modes.setdefault("unit_head", "frozen")
    elif modes.get("unit_head", "frozen") != "frozen":
        raise ValueError("trainable.unit_head is set but the model has no unit head (give unit_head: {...})")
    else:
        modes.pop("unit_head", None)
    for part, mode in modes.items():
        if mode not in ("frozen", "full", "lora"):
            raise ValueError(f"trainable.{part} must be frozen, full or lora, got {mode!r}")
        if mode == "lora":
            if part != "language_model":
                raise ValueError(f"trainable.{part}: lora is only supported for the language_model")
            model.language_model.requires_grad_(False)
            if has_lora(model):  # a LoRA checkpoint: train its adapter on (peft's is_trainable=True)
                continue_lora(model, lora)
            else:
                add_lora(model, lora)
        else:
            if part == "language_model" and mode == "full" and has_lora(model):
                merge_lora(model)  # full training of a LoRA checkpoint trains the merged weights
            getattr(model, part).requires_grad_(mode == "full")
    return model


def continue_lora(model, lora: dict | None = None) -> None:
    """Make the loaded LoRA adapter trainable again, unchanged; ``lora`` settings that differ from the
    adapter's own (``model.config.lora``) are reported and not applied."""
    for name, param in model.language_model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    have = model.config.lora or {}
    asked = {"r": (lora or {}).get("r"), "alpha": (lora or {}).get("alpha"),
             "target_modules": sorted((lora or {}).get("target_modules") or []) or None}
    differ = {k: v for k, v in asked.items() if v is not None and k in have and v != have[k]}
    if differ:
        log.warning("continuing the checkpoint's LoRA adapter (%s); the run's lora settings %s are not applied",
                    ", ".join(f"{k}={have[k]}" for k in differ), differ)


def param_groups(model, lr: float, part_lr: dict) -> list[dict]:
    """Trainable parameters grouped by learning rate: ``part_lr`` overrides ``lr`` per top-level part."""
    parts = {name for name, _ in model.named_children()}
    unknown = sorted(set(part_lr) - parts)
    if unknown:
        raise ValueError(f"train.part_lr: unknown part(s) {unknown}; parts are {sorted(parts)}")
    rates = {part: float(rate) for part, rate in part_lr.items()}  # YAML reads 1e-5 as a string
    rates.setdefault("audio_marker_embeddings", rates.get("adaptor", lr))
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(rates.get(name.split(".", 1)[0], lr), []).append(param)
    return [{"params": params, "lr": rate} for rate, params in groups.items()]


def upcast_trainable_parts(model) -> list[str]:
    """Fully trained small parts (adaptor, audio-marker rows, unit head) of a bf16/fp16 model to fp32.

    Adam's updates shrink below bf16's resolution as the learning rate decays, so these parts keep
    fp32 weights (as PEFT keeps LoRA weights); the forward casts their inputs and outputs. The
    frozen parts and a fully trained LLM keep the model's dtype. Returns the parts upcast.
    """
    done = []
    for part in ("adaptor", "audio_marker_embeddings", "unit_head"):
        module = getattr(model, part, None)
        params = list(module.parameters()) if module is not None else []
        if params and all(p.requires_grad for p in params) and any(p.dtype in (torch.bfloat16, torch.float16)
                                                                   for p in params):
            module.float()
            done.append(part)
    return done


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def freeze_frozen_parts(model) -> None:
    """Frozen parts stay in eval mode while the rest trains (no dropout in a frozen LLM or tower)."""
    for part in PARTS:
        module = getattr(model, part, None)
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def enable_gradient_checkpointing(model) -> None:
    """``train.gradient_checkpointing``: the LLM's decoder layers keep only their inputs and recompute
    their activations in the backward pass (transformers' ``activation_checkpointing_enable``,
    non-reentrant: it works with frozen layers and LoRA and replays dropout's RNG, so the losses
    equal a run without it). The frozen audio tower and the small adaptor are left as they are."""
    model.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
