"""Audio input: decode any common file (or take an array) and return 16 kHz mono float32.

Everything that is not usable speech raises :class:`AudioError` (a ``ValueError``) whose message
names the file and the reason, so batch jobs can log it and move on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from llasm.io import atomic_path

SAMPLING_RATE = 16_000
# One Whisper STFT window (25 ms): anything shorter gives no mel frame worth encoding.
MIN_SAMPLES = 400


class AudioError(ValueError):
    """Audio that cannot be used: missing, empty, corrupt, silent of samples, non-finite or too short."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__} audio>"


def load_audio(source: Any, sampling_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
    """Return ``source`` as a 16 kHz mono float32 array.

    ``source`` may be a path (wav/flac/ogg/mp3/...), a numpy array or torch tensor (``(samples,)``
    or ``(samples, channels)``; ``sampling_rate`` is its rate, 16 kHz when omitted), a
    ``(array, rate)`` tuple, or a HF-datasets audio dict ``{"array": ..., "sampling_rate": ...}``
    (or ``{"path": ...}``). ``name`` is used in error messages instead of the default description.
    """
    label = name or _describe(source)
    if isinstance(source, dict):
        if source.get("array") is not None:
            return load_audio(source["array"], source.get("sampling_rate"), name=name or source.get("path"))
        if source.get("bytes"):
            return _decode(io.BytesIO(source["bytes"]), label)
        if source.get("path"):
            return load_audio(source["path"], name=name)
        raise AudioError(f"{label}: audio dict has neither 'array', 'bytes' nor 'path'")
    if isinstance(source, tuple) and len(source) == 2:
        return load_audio(source[0], source[1], name=name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: file not found")
        if path.is_dir():
            raise AudioError(f"{label}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: file is empty (0 bytes)")
        return _decode(path, label)
    if hasattr(source, "detach"):  # torch tensor
        source = source.detach().cpu().float().numpy()
    if isinstance(source, (list, np.ndarray)):
        return _finish(np.asarray(source), sampling_rate or SAMPLING_RATE, label)
    raise AudioError(f"{label}: unsupported audio input type {type(source).__name__}")


def _decode(file: Any, label: str) -> np.ndarray:
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{label}: cannot decode audio ({err})") from None
    return _finish(data, rate, label)


def _finish(data: np.ndarray, rate: int, label: str) -> np.ndarray:
    if data.dtype.kind not in "fiu":
        raise AudioError(f"{label}: audio array has dtype {data.dtype}, expected numbers")
    if data.dtype.kind in "iu":  # PCM integers -> [-1, 1]
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32, copy=False)
    if data.size == 0:
        raise AudioError(f"{label}: 0 samples after decoding")
    if data.ndim == 2:
        # (samples, channels) as soundfile returns it; a (channels, samples) array is transposed.
        if data.shape[0] < data.shape[1] and data.shape[0] <= 8:
            data = data.T
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise AudioError(f"{label}: audio array has {data.ndim} dimensions, expected 1 or 2")
    if not np.isfinite(data).all():
        raise AudioError(f"{label}: contains NaN or infinite samples")
    if rate <= 0:
        raise AudioError(f"{label}: invalid sampling rate {rate}")
    if rate != SAMPLING_RATE:
        data = soxr.resample(data, rate, SAMPLING_RATE, quality="HQ").astype(np.float32, copy=False)
    if data.size < MIN_SAMPLES:
        raise AudioError(
            f"{label}: too short to encode ({data.size} samples = {1000 * data.size / SAMPLING_RATE:.1f} ms "
            f"at 16 kHz; at least {MIN_SAMPLES} needed)"
        )
    return np.ascontiguousarray(data)


def save_audio(path: str | os.PathLike, audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> Path:
    """Write ``audio`` atomically (temp file + rename); the format follows the file suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_path(path) as tmp:
        sf.write(tmp, np.asarray(audio, dtype=np.float32), sampling_rate, format=fmt)
    return path
