"""LoRA on the language model through peft (``trainable: lora`` in a stage YAML)."""

from __future__ import annotations

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_lora(model, settings: dict | None = None):
    """Wrap ``model.language_model`` with LoRA adapters; only they (of the LLM) train afterwards.

    ``settings``: ``r``, ``alpha``, ``dropout``, ``target_modules`` (peft ``LoraConfig`` names also
    accepted). Recorded in ``model.config.lora`` so checkpoints can rebuild the wrapper. The
    adapters of a bf16/fp16 LLM are kept in fp32 (peft's ``autocast_adapter_dtype``, what
    ``get_peft_model`` does by default): Adam's small updates would round away in bf16, and peft's
    layers cast activations to the adapter's dtype and back.
    """
    from peft import LoraConfig, LoraModel
    from peft.tuners.tuners_utils import cast_adapter_dtype

    if has_lora(model):
        raise ValueError("the language model already has LoRA adapters (a LoRA checkpoint): continue them "
                         "(llasm.training.parts.apply_trainability does) or merge them first (merge_lora)")
    settings = dict(settings or {})
    lora_config = LoraConfig(
        r=int(settings.get("r", 16)),
        lora_alpha=int(settings.get("alpha", settings.get("lora_alpha", 32))),
        lora_dropout=float(settings.get("dropout", settings.get("lora_dropout", 0.05))),
        target_modules=list(settings.get("target_modules", DEFAULT_TARGETS)),
        bias="none",
    )
    model.language_model = LoraModel(model.language_model, lora_config, "default")
    cast_adapter_dtype(model.language_model, "default", autocast_adapter_dtype=True)
    model.config.lora = {
        "r": lora_config.r,
        "alpha": lora_config.lora_alpha,
        "dropout": lora_config.lora_dropout,
        "target_modules": sorted(lora_config.target_modules),
    }
    return model


def has_lora(model) -> bool:
    """Whether ``model.language_model`` carries LoRA adapters (a LoRA run's checkpoint does)."""
    return any("lora_" in name for name, _ in model.language_model.named_parameters())


def merge_lora(model):
    """Fold the LoRA adapters into the language model's weights (``merge_and_unload``); ``config.lora`` -> None."""
    if has_lora(model):
        model.language_model = model.language_model.merge_and_unload()
        model.config.lora = None
    return model
