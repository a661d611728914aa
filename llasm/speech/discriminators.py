"""HiFi-GAN's discriminators and losses for the unit vocoder: multi-period and multi-scale
discriminators (channels divisible for CPU training), LSGAN losses, feature matching, and the
duration predictor's loss. Follows HiFi-GAN (Kong et al. 2020) and fairseq's ``codehifigan``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from llasm.speech.vocoder import LRELU_SLOPE, _padding


def _width(channels: int, divisor: int) -> int:
    return max(4, channels // divisor)


def _run_convs(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack + output conv: (flattened scores, every layer's feature map)."""
    feature_maps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        feature_maps.append(x)
    x = conv_post(x)
    feature_maps.append(x)
    return torch.flatten(x, 1, -1), feature_maps


class PeriodDiscriminator(nn.Module):
    """Reshapes audio to (T / p, p) and runs 2-D convs over time: sees one phase of period p."""

    def __init__(self, period: int, divisor: int = 1, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        widths = [1] + [_width(c, divisor) for c in (32, 128, 512, 1024, 1024)]
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv2d(widths[i], widths[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1),
                          padding=(_padding(5), 0))
            )
            for i in range(5)
        )  # fmt: skip
        self.conv_post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, channels, length = x.shape
        if length % self.period:
            x = F.pad(x, (0, self.period - length % self.period), mode="reflect")
        x = x.view(batch, channels, -1, self.period)  # (B, 1, S) -> (B, 1, S / p, p)
        return _run_convs(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """Strided grouped 1-D convs over the waveform (MelGAN's discriminator)."""

    def __init__(self, use_spectral_norm: bool = False, divisor: int = 1):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        specs = [  # (out channels, kernel, stride, groups)
            (128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16),
            (1024, 41, 4, 16), (1024, 41, 1, 16), (1024, 5, 1, 1),
        ]  # fmt: skip
        self.convs = nn.ModuleList()
        in_channels = 1
        for out, kernel, stride, groups in specs:
            out = _width(out, divisor)
            groups = math.gcd(groups, math.gcd(in_channels, out))  # narrow widths need fewer groups
            conv = nn.Conv1d(in_channels, out, kernel, stride, groups=groups, padding=(kernel - 1) // 2)
            self.convs.append(norm(conv))
            in_channels = out
        self.conv_post = norm(nn.Conv1d(in_channels, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _run_convs(self.convs, self.conv_post, x)


class _PairDiscriminator(nn.Module):
    """Runs every sub-discriminator on real and generated audio: (scores_real, scores_fake, fmaps...)."""

    discriminators: nn.ModuleList

    def _inputs(self, index: int, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        real_scores, fake_scores, real_maps, fake_maps = [], [], [], []
        for i, discriminator in enumerate(self.discriminators):
            y, y_hat = self._inputs(i, y), self._inputs(i, y_hat)
            score, maps = discriminator(y)
            real_scores.append(score)
            real_maps.append(maps)
            score, maps = discriminator(y_hat)
            fake_scores.append(score)
            fake_maps.append(maps)
        return real_scores, fake_scores, real_maps, fake_maps


class MultiPeriodDiscriminator(_PairDiscriminator):
    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), divisor: int = 1):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, divisor) for p in periods)


class MultiScaleDiscriminator(_PairDiscriminator):
    """3 scales: raw audio (spectral norm), then x1/2 and x1/4 by average pooling."""

    def __init__(self, divisor: int = 1):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(True, divisor), ScaleDiscriminator(False, divisor), ScaleDiscriminator(False, divisor)]
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def _inputs(self, index: int, y: torch.Tensor) -> torch.Tensor:
        return y if index == 0 else self.pool(y)  # each scale halves the previous one


def feature_loss(real_maps: list[list[torch.Tensor]], fake_maps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Feature matching: 2 x sum of L1 distances between discriminator activations."""
    loss = sum(torch.mean(torch.abs(r - g)) for rs, gs in zip(real_maps, fake_maps) for r, g in zip(rs, gs))
    return 2 * loss


def discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: real -> 1, generated -> 0, summed over sub-discriminators."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(g**2) for r, g in zip(real_scores, fake_scores))


def generator_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: generated -> 1."""
    return sum(torch.mean((1 - g) ** 2) for g in fake_scores)


def duration_loss(log_durations: torch.Tensor, durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between predicted log(d + 1) and the true one over ``mask`` (whole units only)."""
    target = torch.log(durations.float() + 1)
    if not mask.any():
        return log_durations.sum() * 0.0
    return F.mse_loss(log_durations[mask], target[mask])
