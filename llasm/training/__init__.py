"""Training: stage configs, the trainer, objectives, the encoder cache and the CTC warm start.

``train/train.py`` (``llasm train``) is the entry point; a stage is a YAML read into
:class:`TrainConfig`, and stages differ only there.
"""

from llasm.builder import load_model
from llasm.training.config import TrainConfig, load_config
from llasm.training.parts import DEFAULT_TRAINABLE, apply_trainability, param_groups, upcast_trainable_parts
from llasm.training.resume import latest_checkpoint, list_checkpoints, plot_losses
from llasm.training.trainer import NonFiniteLoss, Trainer, end_distributed, main, train

__all__ = ["DEFAULT_TRAINABLE", "NonFiniteLoss", "TrainConfig", "Trainer", "apply_trainability", "end_distributed", "latest_checkpoint",
           "list_checkpoints", "load_config", "load_model", "main", "param_groups", "plot_losses", "train",
           "upcast_trainable_parts"]
