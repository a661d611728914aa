"""Training: stage configs, the trainer, objectives, the encoder cache and the CTC warm start.

``train/train.py`` (``llasm train``) is the entry point; a stage is a YAML read into
:class:`TrainConfig`, and stages differ only there. The names below load on first use (PEP 562), so
``llasm train --help`` (:mod:`llasm.training.cli`) starts without torch.
"""

import importlib

_NAMES = {"load_model": "llasm.builder", "TrainConfig": "llasm.training.config", "load_config": "llasm.training.config",
          "DEFAULT_TRAINABLE": "llasm.training.config", "apply_trainability": "llasm.training.parts",
          "param_groups": "llasm.training.parts", "upcast_trainable_parts": "llasm.training.parts",
          "latest_checkpoint": "llasm.training.resume", "list_checkpoints": "llasm.training.resume",
          "plot_losses": "llasm.training.resume", "NonFiniteLoss": "llasm.training.trainer",
          "Trainer": "llasm.training.trainer", "end_distributed": "llasm.training.distributed",
          "main": "llasm.training.trainer", "train": "llasm.training.trainer"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'llasm.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
