"""Unit vocoder: discrete speech units -> 16 kHz audio (fairseq's unit HiFi-GAN, "CodeHiFiGAN").

The speech-output path is LLM -> units (deduplicated, K = 500 or 1000) -> this vocoder -> audio.
Design (fairseq ``codehifigan.py`` + speech-resynthesis ``DurationCodeGenerator``):

* each deduplicated unit gets a duration in 50 Hz frames: given (training, resynthesis) or predicted
  by a small convolutional duration predictor trained with MSE on ``log(d + 1)``;
* units are repeated by their durations, embedded (K x 128) and fed to a HiFi-GAN generator whose
  transposed convolutions upsample 5 * 4 * 4 * 2 * 2 = 320 samples per frame (20 ms at 16 kHz);
* training is HiFi-GAN's: multi-period + multi-scale discriminators, LSGAN losses, feature
  matching, L1 log-mel loss x 45, plus the duration loss.

Module names follow fairseq's (``conv_pre``, ``ups``, ``resblocks``, ``conv_post``) so a released
fairseq vocoder (e.g. SpeechGPT's mHuBERT-1000 one) loads with :meth:`UnitHifiGan.from_fairseq`.

Library entry points: :class:`~llasm.speech.vocoder_config.UnitVocoderConfig`, :class:`UnitHifiGan` (``forward``,
``synthesize``, ``stream``, ``save_pretrained`` / ``from_pretrained``) and :class:`VocoderStream`;
training (discriminators, losses, :class:`~llasm.speech.vocoder_training.MelSpectrogram`,
:class:`~llasm.speech.vocoder_training.UnitAudioDataset`, :class:`~llasm.speech.vocoder_training.VocoderTrainer`) lives
in :mod:`llasm.speech.vocoder_training` (``train/train_vocoder.py`` is the thin script around it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from llasm.io import atomic_path, write_json
from llasm.speech.vocoder_config import UnitVocoderConfig, unit_ids

LRELU_SLOPE = 0.1


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module, std: float = 0.01) -> None:
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        module.weight.data.normal_(0.0, std)


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def _remove_weight_norm(module: nn.Module) -> None:
    for child in module.modules():
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1: per dilation, a dilated conv then a plain conv, both after leaky ReLU."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size)))
            for _ in dilations
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """fairseq's VariancePredictor: 2 x (Conv1d + ReLU, LayerNorm, dropout) -> Linear -> log(d + 1)."""

    def __init__(self, channels: int, kernel_size: int = 3, dropout: float = 0.5):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Sequential(nn.Conv1d(channels, channels, kernel_size, padding=pad), nn.ReLU())
        self.ln1 = nn.LayerNorm(channels)
        self.conv2 = nn.Sequential(nn.Conv1d(channels, channels, kernel_size, padding=pad), nn.ReLU())
        self.ln2 = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, 1)
        self.dropout = dropout
        self.radius = 2 * pad  # units of context on each side that an output depends on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, U, E) -> (B, U) predicted log(d + 1)
        x = self.conv1(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln1(x), self.dropout, self.training)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(-1)


class UnitHifiGan(nn.Module):
    """Unit HiFi-GAN generator: (B, T_units) unit ids [+ durations] -> (B, 1, 320 * frames) audio."""

    def __init__(self, config: UnitVocoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.unit_embedding = nn.Embedding(c.num_units, c.embedding_dim)
        self.duration_predictor = (
            DurationPredictor(c.embedding_dim, c.duration_predictor_kernel_size, c.duration_predictor_dropout)
            if c.duration_predictor
            else None
        )
        self.num_kernels = len(c.resblock_kernel_sizes)
        self.conv_pre = weight_norm(nn.Conv1d(c.embedding_dim, c.upsample_initial_channel, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = c.upsample_initial_channel
        for rate, kernel in zip(c.upsample_rates, c.upsample_kernel_sizes):
            self.ups.append(
                weight_norm(nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2))
            )
            channels //= 2
            for k, dilations in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(channels, k, dilations))
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, padding=3))
        self.ups.apply(_init_weights)
        self.conv_post.apply(_init_weights)

    # -- core ------------------------------------------------------------------------------

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def num_units(self) -> int:
        return self.config.num_units

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        """(B, U) unit ids -> (B, U) predicted log(d + 1), d in 50 Hz frames."""
        if self.duration_predictor is None:
            raise ValueError("this vocoder has no duration predictor (config.duration_predictor is false)")
        return self.duration_predictor(self.unit_embedding(units))

    def predict_durations(self, units: torch.Tensor) -> torch.Tensor:
        """(B, U) -> (B, U) long frames per unit, at least 1 (fairseq's rounding)."""
        return torch.clamp(torch.round(torch.exp(self.log_durations(units)) - 1), min=1).long()

    def expand_units(self, units: torch.Tensor, durations: torch.Tensor | None = None) -> torch.Tensor:
        """Deduplicated units -> frame-level units (B, T_frames).

        ``durations`` (B, U) repeats each unit (0 drops a padding position). Without durations the
        duration predictor decides; a vocoder without one treats ``units`` as already frame-level.
        Every row must expand to the same number of frames.
        """
        if durations is None:
            if self.duration_predictor is None:
                return units
            durations = self.predict_durations(units)
        durations = torch.as_tensor(durations, device=units.device).long()
        if durations.shape != units.shape:
            raise ValueError(f"durations shape {tuple(durations.shape)} != units shape {tuple(units.shape)}")
        totals = durations.sum(dim=1)
        if (totals != totals[0]).any():
            raise ValueError(
                f"rows expand to different frame counts {totals.tolist()}; vocode them one at a time"
            )
        # (B, U) -> (B * T_frames,) -> (B, T_frames)
        return torch.repeat_interleave(units.flatten(), durations.flatten()).view(units.shape[0], -1)

    def vocode_frames(self, frame_units: torch.Tensor) -> torch.Tensor:
        """(B, T_frames) frame-level unit ids -> (B, 1, T_frames * 320) audio in [-1, 1]."""
        x = self.unit_embedding(frame_units).transpose(1, 2)  # (B, T, E) -> (B, E, T)
        x = self.conv_pre(x)  # (B, C0, T)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C_i, L) -> (B, C_i / 2, L * rate_i)
            # multi-receptive-field fusion: the mean of resblocks with different kernels
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # (B, C_last, S) -> (B, 1, S); fairseq's default slope here
        return torch.tanh(x)

    def forward(self, units: torch.Tensor, durations: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T_units) long [+ (B, T_units) durations] -> (B, 1, 320 * frames)."""
        return self.vocode_frames(self.expand_units(units, durations))

    def remove_weight_norm(self) -> "UnitHifiGan":
        """Fold weight norm into plain weights (inference: same outputs, less work per call)."""
        _remove_weight_norm(self)
        return self

    @property
    def has_weight_norm(self) -> bool:
        return parametrize.is_parametrized(self.conv_pre, "weight")

    # -- inference ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    def _unit_tensor(self, units: Any) -> torch.Tensor:
        array = unit_ids(units, self.config.num_units)
        if array.size == 0:
            raise ValueError("no units to synthesize")
        return torch.from_numpy(array).to(self.conv_post.bias.device)[None]

    def synthesize(
        self, units: Sequence[int] | np.ndarray, durations: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Deduplicated units (+ optional frames per unit) -> float32 audio at 16 kHz (eval mode)."""
        unit_tensor = self._unit_tensor(units)
        duration_tensor = None
        if durations is not None:
            duration_tensor = torch.as_tensor(np.asarray(durations, dtype=np.int64).reshape(1, -1)).to(unit_tensor.device)
            if (duration_tensor < 0).any():
                raise ValueError("durations must be >= 0")
        with self._inference():
            audio = self(unit_tensor, duration_tensor)
        return audio[0, 0].float().cpu().numpy()

    def receptive_field_frames(self) -> int:
        """Frames of context on each side that one output frame depends on (rounded up, +1 margin).

        Sums the radius of every layer, converted to frames at that layer's rate: conv_pre (k7),
        each transposed conv (ceil(k / rate) input samples), each multi-receptive-field stage (the
        widest resblock: (k - 1) / 2 * (sum of dilations + number of dilations)) and conv_post.
        """
        c = self.config
        radius, rate = 3.0, 1
        for up_rate, kernel in zip(c.upsample_rates, c.upsample_kernel_sizes):
            radius += math.ceil(kernel / up_rate) / rate
            rate *= up_rate
            mrf = max(
                (k - 1) // 2 * (sum(dilations) + len(dilations))
                for k, dilations in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)
            )
            radius += mrf / rate
        radius += 3 / rate
        return math.ceil(radius) + 1

    def stream(
        self, units_iter: Iterable[int | Sequence[int]], chunk_units: int = 40, context_frames: int | None = None,
        first_chunk_units: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks while deduplicated units arrive (ints or lists of ints).

        See :class:`VocoderStream` (this is its pull form): the concatenated chunks equal
        :meth:`synthesize` of the whole sequence up to float rounding.
        """
        streamer = VocoderStream(self, chunk_units, context_frames, first_chunk_units)
        for item in units_iter:
            yield from streamer.push(item)
        yield from streamer.finish()

    def streamer(self, chunk_units: int = 40, first_chunk_units: int | None = None,
                 first_chunk_context: int | None = None) -> "VocoderStream":
        """Push-style streaming, the token2wav interface (:mod:`llasm.speech.token2wav`): a :class:`VocoderStream`."""
        return VocoderStream(self, chunk_units, first_chunk_units=first_chunk_units,
                             first_chunk_context=first_chunk_context)

    def _extend_durations(self, units: list[int], durations: list[int], final: bool) -> None:
        if self.duration_predictor is None:
            durations.extend([1] * (len(units) - len(durations)))
            return
        radius = self.duration_predictor.radius
        n_final = len(units) if final else len(units) - radius
        first = len(durations)
        if n_final <= first:
            return
        # units before ``first`` only matter as left context: ``radius`` of them suffice
        start = max(0, first - radius)
        predicted = self.predict_durations(self._unit_tensor(units[start:]))[0]
        durations.extend(predicted[first - start : n_final - start].tolist())

    def _vocode_window(self, units: list[int], durations: list[int], begin: int, end: int, context: int) -> np.ndarray:
        known = np.repeat(np.asarray(units[: len(durations)]), durations)  # frame-level units so far
        lo, hi = max(0, begin - context), min(len(known), end + context)
        frames = torch.from_numpy(known[lo:hi].astype(np.int64)).to(self.conv_post.bias.device)[None]
        audio = self.vocode_frames(frames)[0, 0]
        hop = self.samples_per_frame
        return audio[(begin - lo) * hop : (end - lo) * hop].float().cpu().numpy()

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vocoder.safetensors`` + ``vocoder_config.json`` (atomic; weights as they are)."""
        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / "vocoder.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"weight_norm": str(self.has_weight_norm).lower()})
        write_json(directory / "vocoder_config.json", self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, for_inference: bool = True, device: str = "cpu"
    ) -> "UnitHifiGan":
        """Load a :meth:`save_pretrained` directory; ``for_inference`` removes weight norm and sets eval."""
        directory = Path(directory)
        weights, config_path = directory / "vocoder.safetensors", directory / "vocoder_config.json"
        for path in (weights, config_path):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing (expected a UnitHifiGan.save_pretrained directory)")
        config = UnitVocoderConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        model = cls(config)
        with safe_open(str(weights), framework="pt") as f:
            saved_with_weight_norm = (f.metadata() or {}).get("weight_norm", "true") == "true"
        if not saved_with_weight_norm:
            model.remove_weight_norm()
        model.load_state_dict(load_file(str(weights)))
        if for_inference:
            model.remove_weight_norm().eval()
        return model.to(device)

    @classmethod
    def from_fairseq(cls, checkpoint: str | os.PathLike, config_json: str | os.PathLike) -> "UnitHifiGan":
        """Load a fairseq CodeHiFiGAN vocoder (``g_XXXXXXXX`` + its ``config.json``), single speaker only."""
        fairseq = json.loads(Path(config_json).read_text(encoding="utf-8"))
        if fairseq.get("multispkr") or fairseq.get("f0"):
            raise ValueError(f"{config_json}: multi-speaker / F0-conditioned vocoders are not supported")
        keys = ["upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
                "resblock_dilation_sizes", "embedding_dim", "sampling_rate", "segment_size", "num_mels",
                "n_fft", "hop_size", "win_size", "fmin", "fmax"]  # fmt: skip
        values = {k: fairseq[k] for k in keys if k in fairseq and fairseq[k] is not None}
        values["num_units"] = fairseq["num_embeddings"]
        predictor = fairseq.get("dur_predictor_params") or {}
        values["duration_predictor"] = bool(predictor)
        if predictor:
            values["duration_predictor_kernel_size"] = predictor.get("var_pred_kernel_size", 3)
            values["duration_predictor_dropout"] = predictor.get("var_pred_dropout", 0.5)
        model = cls(UnitVocoderConfig(**values))
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        saved = saved.get("generator", saved)
        renamed = {}
        for key, tensor in saved.items():
            key = key.replace("dict.", "unit_embedding.", 1) if key.startswith("dict.") else key
            key = key.replace("dur_predictor.", "duration_predictor.", 1)
            if key.endswith(".weight_g"):
                key = key[: -len("weight_g")] + "parametrizations.weight.original0"
            elif key.endswith(".weight_v"):
                key = key[: -len("weight_v")] + "parametrizations.weight.original1"
            renamed[key] = tensor
        model.load_state_dict(renamed)
        return model.remove_weight_norm().eval()


class VocoderStream:
    """Push-style streaming synthesis: ``push(units)`` returns the audio chunks that became ready.

    Once ``chunk_units`` new units have final durations (``first_chunk_units`` for the first
    chunk, default ``min(10, chunk_units)``: LLaMA-Omni's smallest chunk, so the first sound comes
    early), the frames whose right context is known are vocoded together with ``context_frames``
    frames of context on each side (default: the generator's receptive field,
    :meth:`UnitHifiGan.receptive_field_frames`) and the context samples are trimmed. Because the
    context covers the receptive field, the concatenated chunks equal :meth:`UnitHifiGan.synthesize`
    of the whole sequence up to float rounding, with no crossfade. A unit's predicted duration
    depends on 2 units either side, so it is final once 2 more units arrived. ``finish()`` vocodes
    the rest. Cost: the context is vocoded twice (about 1.5x compute for 40-unit chunks).

    ``first_chunk_context`` trades exactness for latency on the first chunk only: it is vocoded with
    that many frames of right context (0: none, as LLaMA-Omni does for every chunk) instead of the
    receptive field, so it comes one or two LLM steps sooner; the samples within the receptive field
    before its end may then differ from :meth:`UnitHifiGan.synthesize`, the rest is unchanged.
    """

    def __init__(self, vocoder: UnitHifiGan, chunk_units: int = 40, context_frames: int | None = None,
                 first_chunk_units: int | None = None, first_chunk_context: int | None = None):
        if chunk_units < 1:
            raise ValueError(f"chunk_units must be >= 1, got {chunk_units}")
        self.vocoder = vocoder
        self.chunk_units = int(chunk_units)
        self.first_chunk_units = min(10, self.chunk_units) if first_chunk_units is None else int(first_chunk_units)
        if self.first_chunk_units < 1:
            raise ValueError(f"first_chunk_units must be >= 1, got {first_chunk_units}")
        self.context = vocoder.receptive_field_frames() if context_frames is None else int(context_frames)
        self.first_context = self.context if first_chunk_context is None else min(int(first_chunk_context), self.context)
        self.units: list[int] = []
        self.durations: list[int] = []  # final durations of units[: len(durations)]
        self.frames_done = 0  # frames already returned
        self.units_at_last_chunk = 0

    def _run(self, final: bool) -> list[np.ndarray]:
        v = self.vocoder
        with v._inference():
            v._extend_durations(self.units, self.durations, final=final)
            if final:
                end = sum(self.durations)
            else:
                need = self.chunk_units if self.frames_done else self.first_chunk_units
                if len(self.durations) - self.units_at_last_chunk < need:
                    return []
                right = self.context if self.frames_done else self.first_context
                end = sum(self.durations) - right  # frames whose right context is known
            if end <= self.frames_done:
                return []
            chunk = v._vocode_window(self.units, self.durations, self.frames_done, end, self.context)
        self.frames_done, self.units_at_last_chunk = end, len(self.durations)
        return [chunk]

    def push(self, units: int | Sequence[int]) -> list[np.ndarray]:
        self.units.extend(int(u) for u in np.atleast_1d(np.asarray(units, dtype=np.int64)))
        return self._run(final=False) if self.units else []

    def finish(self) -> list[np.ndarray]:
        return self._run(final=True) if self.units else []
