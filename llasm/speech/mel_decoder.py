"""Units -> mel-spectrogram: a small non-autoregressive decoder (the learned half of ``token2wav``).

Deduplicated units (K ids, 50 Hz frames when expanded) -> unit embedding -> a convolutional encoder
over the units -> duration predictor (frames per unit, trained on the units' run lengths) -> length
regulator (repeat by durations, then map the 50 Hz unit frames onto the mel frame rate) -> a
convolutional decoder -> log-mel frames of the *target vocoder's* mel domain (:class:`MelConfig`).
The waveform is left to a pretrained mel vocoder (:mod:`llasm.speech.mel_vocoder`).

Design: FastSpeech 2's encoder / variance adaptor / decoder with the phonemes replaced by units
(Ren et al. 2021; the duration predictor is fairseq's ``VariancePredictor``, as in the unit
HiFi-GAN), regression on the log-mel (L1 + L2) instead of CosyVoice's flow matching: a regression
decoder trains in minutes on a CPU, which is what this stage is for. Every layer is a convolution,
so an output frame depends on a bounded window (:meth:`UnitMelDecoder.receptive_field`) and the
streaming synthesis in :mod:`llasm.speech.token2wav` can cut chunks that equal the whole.

Saved as ``mel_decoder.safetensors`` + ``mel_decoder_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from llasm import settings
from llasm.io import atomic_path, write_json
from llasm.speech.mel import MelConfig, mel_frames, unit_frame_of_mel
from llasm.speech.vocoder import DurationPredictor
from llasm.speech.vocoder_config import unit_ids

WEIGHTS, CONFIG = "mel_decoder.safetensors", "mel_decoder_config.json"


@dataclass
class UnitMelDecoderConfig:
    """Size of the decoder and the mel domain it writes (``mel``: the target vocoder's, see :class:`MelConfig`)."""

    num_units: int = 500  # K of the unit k-means
    hidden_size: int = 256
    encoder_layers: int = 3  # conv blocks over the deduplicated units
    decoder_layers: int = 6  # conv blocks over the mel frames
    kernel_size: int = 5
    dropout: float = 0.1
    duration_predictor_kernel_size: int = 3
    duration_predictor_dropout: float = 0.5
    # a learned per-unit log-mel (K, num_mels) added to the output; the trainer starts it at each unit's
    # mean target frame and the output projection at zero, so step 0 already speaks the closed-form
    # "unit -> average frame" map and the convolutions learn the residual (docs/experiments/token2wav.md)
    unit_prior: bool = False
    mel: MelConfig = dataclasses.field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mel, dict):
            self.mel = settings.from_dict(MelConfig, self.mel, "mel_decoder config", "mel.")
        for name in ("num_units", "hidden_size", "encoder_layers", "decoder_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"mel_decoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"mel_decoder.kernel_size must be odd and >= 1, got {self.kernel_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = CONFIG) -> "UnitMelDecoderConfig":
        return settings.from_dict(cls, data, where)


class ConvBlock(nn.Module):
    """Pre-norm residual conv block: ``x + W2 · GELU(Conv_k(LayerNorm(x)))`` (FastSpeech's conv FFN, 1-D)."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, padding=kernel_size // 2)
        self.proj = nn.Linear(2 * channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, T, C)
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)  # (B, T, 2C)
        return x + self.dropout(self.proj(F.gelu(h)))


class UnitMelDecoder(nn.Module):
    """(B, U) deduplicated units [+ (B, U) durations in 50 Hz frames] -> (B, T_mel, num_mels) log-mel."""

    def __init__(self, config: UnitMelDecoderConfig):
        super().__init__()
        self.config = c = config
        self.unit_embedding = nn.Embedding(c.num_units, c.hidden_size)
        self.encoder = nn.ModuleList(ConvBlock(c.hidden_size, c.kernel_size, c.dropout) for _ in range(c.encoder_layers))
        self.duration_predictor = DurationPredictor(c.hidden_size, c.duration_predictor_kernel_size,
                                                    c.duration_predictor_dropout)
        self.decoder = nn.ModuleList(ConvBlock(c.hidden_size, c.kernel_size, c.dropout) for _ in range(c.decoder_layers))
        self.norm = nn.LayerNorm(c.hidden_size)
        self.mel_proj = nn.Linear(c.hidden_size, c.mel.num_mels)
        self.unit_mel = nn.Embedding(c.num_units, c.mel.num_mels) if c.unit_prior else None

    # -- frame arithmetic ------------------------------------------------------------------------

    @property
    def mel_rate(self) -> float:
        """Mel frames per second of the target vocoder (24 kHz / hop 300 = 80 for the Baker MB-MelGAN)."""
        return self.config.mel.sampling_rate / self.config.mel.hop_size

    def mel_frames(self, unit_frames: int) -> int:
        """Mel frames that ``unit_frames`` 50 Hz frames make: ``floor(unit_frames * mel_rate / 50)``."""
        return mel_frames(self.config.mel, unit_frames)

    def source_frames(self, mel_begin: int, mel_end: int) -> torch.Tensor:
        """The 50 Hz unit frame each mel frame in ``[mel_begin, mel_end)`` reads (nearest, exact integers)."""
        return torch.from_numpy(unit_frame_of_mel(self.config.mel, mel_begin, mel_end))

    @property
    def unit_radius(self) -> int:
        """Units of context on each side that an encoder output depends on."""
        return self.config.encoder_layers * (self.config.kernel_size // 2)

    @property
    def mel_radius(self) -> int:
        """Mel frames of context on each side that a decoder output frame depends on."""
        return self.config.decoder_layers * (self.config.kernel_size // 2)

    # -- forward ---------------------------------------------------------------------------------

    def encode(self, units: torch.Tensor) -> torch.Tensor:
        """(B, U) -> (B, U, H) unit encodings; with ``unit_prior`` (B, U, H + num_mels): each unit's
        prior log-mel rides along, so the length regulator carries it to the frames :meth:`decode` adds it to."""
        x = self.unit_embedding(units)
        for block in self.encoder:
            x = block(x)
        if self.unit_mel is not None:
            x = torch.cat([x, self.unit_mel(units)], dim=-1)
        return x

    def log_durations(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, U, H[+M]) -> (B, U) predicted log(d + 1), d in 50 Hz frames."""
        return self.duration_predictor(encoded[..., : self.config.hidden_size])

    @torch.no_grad()
    def init_unit_prior(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Start the prior at each unit's mean frame: ``sums`` (K, M) of target log-mel frames per unit,
        ``counts`` (K,); unseen units take the mean of all frames. Zeroes the output projection, so
        the decoder's first output is exactly the prior. ``ValueError`` without ``unit_prior``."""
        if self.unit_mel is None:
            raise ValueError("init_unit_prior needs mel_decoder.unit_prior: true")
        if sums.shape != self.unit_mel.weight.shape or counts.shape != sums.shape[:1]:
            raise ValueError(f"sums {tuple(sums.shape)} / counts {tuple(counts.shape)} must be "
                             f"{tuple(self.unit_mel.weight.shape)} / ({self.config.num_units},)")
        overall = sums.sum(0) / counts.sum().clamp_min(1)
        mean = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], overall)
        self.unit_mel.weight.copy_(mean.to(self.unit_mel.weight))
        self.mel_proj.weight.zero_()
        self.mel_proj.bias.zero_()

    def predict_durations(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, U, H) -> (B, U) long frames per unit, at least 1 (fairseq's rounding)."""
        return torch.clamp(torch.round(torch.exp(self.log_durations(encoded)) - 1), min=1).long()

    def regulate(self, encoded: torch.Tensor, durations: torch.Tensor, mel_begin: int = 0,
                 mel_end: int | None = None) -> torch.Tensor:
        """Length regulator: (B, U, H) + (B, U) durations -> (B, T_mel, H) at the mel frame rate.

        Every row must expand to the same number of 50 Hz frames (a padding unit with duration 0
        takes none). ``mel_begin``/``mel_end`` select a window of the mel frames (streaming).
        """
        totals = durations.sum(dim=1)
        if (totals != totals[0]).any():
            raise ValueError(f"rows expand to different frame counts {totals.tolist()}; pad them with durations")
        index = torch.repeat_interleave(torch.arange(encoded.shape[1], device=encoded.device)[None].expand_as(durations)
                                        .reshape(-1), durations.reshape(-1)).view(len(durations), -1)  # (B, T_u)
        end = self.mel_frames(index.shape[1]) if mel_end is None else mel_end
        source = self.source_frames(mel_begin, end).to(encoded.device).clamp(max=index.shape[1] - 1)
        frames = index[:, source]  # (B, T_mel) unit index of every mel frame
        return torch.gather(encoded, 1, frames[..., None].expand(-1, -1, encoded.shape[-1]))

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T_mel, H[+M]) -> (B, T_mel, num_mels) log-mel (+ the frames' prior with ``unit_prior``)."""
        x = frames[..., : self.config.hidden_size]
        for block in self.decoder:
            x = block(x)
        mel = self.mel_proj(self.norm(x))
        return mel + frames[..., self.config.hidden_size:] if self.unit_mel is not None else mel

    def forward(self, units: torch.Tensor, durations: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``mel`` (B, T_mel, M), ``log_durations`` (B, U) and the ``durations`` used (given or predicted)."""
        encoded = self.encode(units)
        log_durations = self.log_durations(encoded)
        if durations is None:
            durations = torch.clamp(torch.round(torch.exp(log_durations) - 1), min=1).long()
        mel = self.decode(self.regulate(encoded, durations.long()))
        return {"mel": mel, "log_durations": log_durations, "durations": durations}

    # -- inference -------------------------------------------------------------------------------

    def unit_tensor(self, units: Sequence[int] | np.ndarray) -> torch.Tensor:
        """A list of unit ids -> (1, U) long; raises ``ValueError`` when empty or out of ``[0, K)``."""
        array = unit_ids(units, self.config.num_units)
        if array.size == 0:
            raise ValueError("no units to synthesize")
        return torch.from_numpy(array).to(self.mel_proj.weight.device)[None]

    @torch.inference_mode()
    def generate(self, units: Sequence[int] | np.ndarray, durations: Sequence[int] | None = None) -> np.ndarray:
        """Deduplicated units (+ optional 50 Hz frames per unit) -> ``(T_mel, num_mels)`` float32 log-mel."""
        was_training = self.training
        self.eval()
        try:
            unit_tensor = self.unit_tensor(units)
            duration_tensor = None
            if durations is not None:
                duration_tensor = torch.as_tensor(np.asarray(durations, dtype=np.int64)).reshape(1, -1)
                duration_tensor = duration_tensor.to(unit_tensor.device)
                if duration_tensor.shape != unit_tensor.shape or (duration_tensor < 0).any():
                    raise ValueError("durations must be one non-negative count per unit")
                if self.mel_frames(int(duration_tensor.sum())) == 0:  # nothing to say (as unit selection)
                    return np.zeros((0, self.config.mel.num_mels), np.float32)
            return self(unit_tensor, duration_tensor)["mel"][0].float().cpu().numpy()
        finally:
            self.train(was_training)

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``mel_decoder.safetensors`` + ``mel_decoder_config.json`` (atomic writes)."""
        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        write_json(directory / CONFIG, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu") -> "UnitMelDecoder":
        """Load a :meth:`save_pretrained` directory (eval mode); ``FileNotFoundError`` names a missing file."""
        directory = Path(directory)
        for name in (WEIGHTS, CONFIG):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name}: missing (expected a UnitMelDecoder.save_pretrained directory)")
        config = UnitMelDecoderConfig.from_dict(json.loads((directory / CONFIG).read_text(encoding="utf-8")),
                                                str(directory / CONFIG))
        model = cls(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        return model.to(device).eval()


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mel_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 + L2 over the real frames: ``predicted``/``target`` (B, T, M), ``mask`` (B, T) 1 = real."""
    weight = mask[..., None].to(predicted.dtype)
    count = weight.sum().clamp_min(1) * predicted.shape[-1]
    diff = (predicted - target) * weight
    return (diff.abs().sum() + (diff**2).sum()) / count

