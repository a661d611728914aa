"""Training: stage configs, the trainer, objectives, the encoder cache and the CTC warm start.

``train/train.py`` (``llasm train``) is the entry point; a stage is a YAML read into
:class:`TrainConfig`, and stages differ only there.
"""

from llasm.training.config import TrainConfig, load_config, load_model
from llasm.training.trainer import (NonFiniteLoss, Trainer, apply_trainability, end_distributed, latest_checkpoint,
                                    list_checkpoints, main, param_groups, plot_losses, train, upcast_trainable_parts)

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer", "apply_trainability", "end_distributed", "latest_checkpoint",
           "list_checkpoints", "load_config", "load_model", "main", "param_groups", "plot_losses", "train",
           "upcast_trainable_parts"]
