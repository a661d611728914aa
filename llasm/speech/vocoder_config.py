"""Settings of the unit vocoder (:class:`UnitVocoderConfig`, saved with the model as
``vocoder_config.json``) and of its training run (:class:`VocoderTrainConfig`): the ``vocoder:`` and
``train:`` sections of ``configs/vocoder*.yaml``, read by :func:`load_vocoder_configs`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from llasm import settings

FRAME_RATE = 50  # unit frames per second (HuBERT / Whisper-encoder units)


def unit_ids(units, num_units: int) -> np.ndarray:
    """A 1-D sequence of integer unit ids -> int64 array (may be empty). Raises ``ValueError`` for
    another shape, non-integer values or ids outside ``[0, num_units)``."""
    array = np.asarray(units)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"units must be a 1-D sequence of integer ids, got shape {array.shape} of {array.dtype}")
    if array.min() < 0 or array.max() >= num_units:
        raise ValueError(f"unit ids must lie in [0, {num_units}); got {array.min()}..{array.max()}")
    return array.astype(np.int64)


@dataclass
class UnitVocoderConfig:
    """Model, mel and optimiser settings of the unit vocoder (paper size by default: SpeechGPT's)."""

    num_units: int = 1000  # K of the unit k-means (500 or 1000)
    embedding_dim: int = 128
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 4, 4])
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    duration_predictor: bool = True
    duration_predictor_kernel_size: int = 3
    duration_predictor_dropout: float = 0.5
    sampling_rate: int = 16_000
    segment_size: int = 8960  # training crop in samples (28 unit frames)
    # log-mel for the L1 loss and the sample plots (HiFi-GAN's meldataset settings)
    n_fft: int = 1024
    hop_size: int = 256
    win_size: int = 1024
    num_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    # 1 = HiFi-GAN's discriminators; 8 divides every channel count by 8 (CPU training)
    discriminator_channel_divisor: int = 1
    learning_rate: float = 2e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01  # HiFi-GAN / speech-resynthesis use AdamW with its default decay
    lr_decay: float = 0.999  # per epoch, as in HiFi-GAN
    mel_loss_weight: float = 45.0
    duration_loss_weight: float = 1.0
    # steps of generator-only training on mel L1 (+ duration) before the GAN losses start
    # (ParallelWaveGAN's discriminator_train_start_steps): intelligible speech sooner on a small budget
    gan_start_step: int = 0

    def __post_init__(self) -> None:
        self.resblock_dilation_sizes = [list(d) for d in self.resblock_dilation_sizes]
        problems = []
        if self.num_units <= 0:
            problems.append(f"num_units={self.num_units} must be positive")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append("upsample_rates and upsample_kernel_sizes differ in length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if k < u or (k - u) % 2:  # otherwise a stage does not output exactly u samples per input
                problems.append(f"upsample kernel {k} with rate {u}: need kernel >= rate and (kernel - rate) even")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            problems.append(f"upsample_initial_channel must be divisible by {2 ** len(self.upsample_rates)}")
        if self.sampling_rate != self.samples_per_frame * FRAME_RATE:
            problems.append(
                f"prod(upsample_rates)={self.samples_per_frame} samples per frame does not give "
                f"{FRAME_RATE} Hz units at {self.sampling_rate} Hz"
            )
        if self.segment_size % self.samples_per_frame:
            problems.append(f"segment_size={self.segment_size} is not a multiple of {self.samples_per_frame}")
        if problems:
            raise ValueError("UnitVocoderConfig: " + "; ".join(problems))

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, data: dict, where: str = "vocoder_config.json") -> "UnitVocoderConfig":
        return settings.from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> "UnitVocoderConfig":
        return load_vocoder_configs(path, overrides)[0]


@dataclass
class VocoderTrainConfig:
    """Run control for :class:`VocoderTrainer` (the ``train:`` section of a vocoder YAML)."""

    train_manifest: str = "data/vocoder/train.jsonl"  # JSONL: id, audio, units, durations
    output_dir: str = "runs/vocoder"
    batch_size: int = 16
    max_steps: int | None = None
    max_minutes: float | None = None  # wall-clock bound of this run (a resumed run gets a fresh one)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    sample_every: int = 1000  # wav + mel PNG; 0 disables
    sample_seconds: float = 5.0
    log_every: int = 10
    resume: str | None = "auto"  # "auto" (latest checkpoint in output_dir), "never", or a checkpoint dir
    seed: int = 1234
    num_threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N; see llasm.device
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict, where: str = "<dict>") -> "VocoderTrainConfig":
        return settings.from_dict(cls, data, where, "train.")


def load_vocoder_configs(
    path: str | os.PathLike, overrides: Sequence[str] = ()
) -> tuple[UnitVocoderConfig, VocoderTrainConfig]:
    """Read a vocoder YAML (sections ``vocoder:`` and ``train:``) plus ``key=value`` overrides.

    An override is ``vocoder.upsample_initial_channel=64``, ``train.max_steps=100`` or a bare
    ``max_steps=100`` (the section is found from the field name); values are parsed as YAML. Unknown
    keys are errors naming the key and the file (:mod:`llasm.settings`).
    """
    return settings.load_sections(path, SECTIONS, overrides, bare=True)


SECTIONS = {"vocoder": UnitVocoderConfig, "train": VocoderTrainConfig}
