"""Audio input: decode any common file or take any array, and return 16 kHz mono float32.

Accepted forms (:data:`ACCEPTED_FORMS`): what the Python audio ecosystem hands over — paths, URLs,
base64, encoded bytes, numpy/torch arrays of any PCM or float dtype, ``(array, rate)`` and
``(rate, array)`` pairs (``scipy.io.wavfile.read``, ``gr.Audio(type="numpy")``), HF datasets'
audio dicts and decoders, and the chat message parts transformers accepts for audio.
Everything that is not usable speech raises :class:`AudioError` (a ``ValueError``) whose message
names the input and the reason, so batch jobs can log it and move on.
"""

from __future__ import annotations

import array
import base64
import binascii
import io
import numbers
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from llasm.io import atomic_path

SAMPLING_RATE = 16_000
# One Whisper STFT window (25 ms): anything shorter gives no mel frame worth encoding.
MIN_SAMPLES = 400
URL_TIMEOUT_S = 30
ACCEPTED_FORMS = (
    "a path (str or os.PathLike) to a wav/flac/ogg/mp3/... file; an http(s):// or file:// URL; a data: URI or "
    "base64 string; encoded file bytes or a binary file object; a numpy array, torch tensor, array.array or list "
    "of samples ((samples,), (samples, channels) or (channels, samples); float in [-1, 1] or int8/16/32, "
    "uint8/16/32 PCM); an (array, rate) or (rate, array) pair; a dict {'array', 'sampling_rate'}, {'bytes'} or "
    "{'path'} (HF datasets); an object with get_all_samples() (torchcodec AudioDecoder)")
# Keys of a chat message's audio part, as transformers' processors read them ("audio", "url", "path",
# "base64"), Qwen2-Audio's template ("audio_url") and OpenAI's chat API ("input_audio": {"data", "format"}).
PART_KEYS = ("audio", "url", "path", "base64", "audio_url", "input_audio")
_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\s]+")


class AudioError(ValueError):
    """Audio that cannot be used: missing, empty, corrupt, silent of samples, non-finite or too short."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return text if len(text) <= 120 else text[:60] + "…" + f" ({len(text)} characters)"
    return f"<{type(source).__name__} audio>"


def audio_part_source(part: dict) -> Any:
    """The audio a chat message part holds, under any key of :data:`PART_KEYS`.

    ``{"type": "audio", "audio": clip}``, ``{"type": "audio", "path"|"url"|"base64": ...}``,
    ``{"type": "audio_url", "audio_url": {"url": ...}}`` and OpenAI's
    ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}``. Raises
    :class:`AudioError` naming the accepted keys when the part has none of them.
    """
    for key in PART_KEYS:
        value = part.get(key)
        if value is None:
            continue
        if isinstance(value, dict) and key in ("audio_url", "input_audio"):
            value = value.get("url", value.get("data"))
        if key == "base64" and isinstance(value, str) and not value.startswith("data:"):
            value = "data:;base64," + value
        return value
    raise AudioError(f"audio part {sorted(part)} has no audio: give one of the keys {', '.join(PART_KEYS)}")


def load_audio(source: Any, sampling_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
    """Return ``source`` (any of :data:`ACCEPTED_FORMS`) as a 16 kHz mono float32 array ``(samples,)``.

    ``sampling_rate`` is the rate of a bare array (16 kHz when omitted); pairs and dicts carry
    their own. Integer PCM is scaled by its type's full range as soundfile and librosa do
    (int16 / 32768, int32 / 2**31, uint8 as (x - 128) / 128); 64-bit integers have no PCM
    convention and are refused. ``name`` replaces the default description in error messages.
    Raises :class:`AudioError` for anything unusable, listing the accepted forms for unknown types.
    """
    label = name or _describe(source)
    if isinstance(source, dict):
        if source.get("array") is not None:
            return load_audio(source["array"], source.get("sampling_rate"), name=name or source.get("path"))
        if source.get("bytes"):
            return _decode(io.BytesIO(source["bytes"]), label)
        if source.get("path"):
            return load_audio(source["path"], name=name)
        if source.get("type") or any(k in source for k in PART_KEYS):  # a whole message part
            return load_audio(audio_part_source(source), sampling_rate, name=name)
        raise AudioError(f"{label}: audio dict {sorted(source)} has neither 'array', 'bytes' nor 'path'")
    if isinstance(source, (tuple, list)) and len(source) == 2 and _is_rate(source[0]) != _is_rate(source[1]):
        rate, data = (source[0], source[1]) if _is_rate(source[0]) else (source[1], source[0])
        return load_audio(data, int(rate), name=name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), label)
    if hasattr(source, "read") and not hasattr(source, "shape"):  # an open binary file
        return _decode(source, label)
    if hasattr(source, "get_all_samples"):  # torchcodec's AudioDecoder (HF datasets >= 4)
        samples = source.get_all_samples()
        return _finish(_array(samples.data), int(samples.sample_rate), label)
    if isinstance(source, str) and not os.path.exists(source):
        if source.startswith(("http://", "https://", "file://")):
            return _decode(io.BytesIO(_fetch(source, label)), label)
        if source.startswith("data:"):
            return _decode(io.BytesIO(_base64(source, label)), label)
        if len(source) > 64 and _BASE64.fullmatch(source):  # raw base64, as transformers' load_audio takes it
            try:
                return _decode(io.BytesIO(_base64(source, label)), label)
            except AudioError:
                raise AudioError(f"{label}: file not found (nor base64-encoded audio)") from None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: file not found")
        if path.is_dir():
            raise AudioError(f"{label}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: file is empty (0 bytes)")
        return _decode(path, label)
    if hasattr(source, "detach") or isinstance(source, (list, tuple, np.ndarray, array.array)):
        return _finish(_array(source, label), sampling_rate or SAMPLING_RATE, label)
    raise AudioError(f"{label}: unsupported audio input type {type(source).__name__}; accepted: {ACCEPTED_FORMS}")


def _is_rate(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool) and np.ndim(value) == 0


def _array(source: Any, label: str = "audio") -> np.ndarray:
    """Any array-like as numpy, keeping its dtype (a torch bfloat16 tensor becomes float32)."""
    if hasattr(source, "detach"):  # torch tensor
        source = source.detach().cpu()
        if not source.dtype.is_floating_point or source.dtype.itemsize >= 4:
            return source.numpy()
        return source.float().numpy()
    try:
        return np.asarray(source)
    except ValueError as err:  # ragged lists
        raise AudioError(f"{label}: not an array of samples ({err})") from None


def _fetch(url: str, label: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except (OSError, ValueError) as err:
        raise AudioError(f"{label}: cannot fetch ({err})") from None


def _base64(text: str, label: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, altchars=b"-_" if "-" in payload or "_" in payload else None, validate=False)
    except (binascii.Error, ValueError) as err:
        raise AudioError(f"{label}: not valid base64 audio ({err})") from None


def _decode(file: Any, label: str) -> np.ndarray:
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{label}: cannot decode audio ({err})") from None
    return _finish(data, rate, label)


def pcm_to_float(data: np.ndarray, label: str = "audio") -> np.ndarray:
    """Samples of any numeric dtype as float32 in [-1, 1]: integer PCM divided by its full scale
    (``2**(bits-1)``; unsigned types centred first, as 8-bit WAV is), floats kept as they are."""
    kind = data.dtype.kind
    if kind == "f":
        return data.astype(np.float32, copy=False)
    if kind in "iu":
        bits = 8 * data.dtype.itemsize
        if bits > 32:
            raise AudioError(f"{label}: {data.dtype} samples have no PCM scale; cast them to the PCM type they came "
                             "from (np.int16, np.int32) or to float in [-1, 1]")
        scale = float(2 ** (bits - 1))
        centred = data.astype(np.float64) - (scale if kind == "u" else 0.0)
        return (centred / scale).astype(np.float32)
    raise AudioError(f"{label}: audio array has dtype {data.dtype}, expected int or float samples")


def _finish(data: np.ndarray, rate: int, label: str) -> np.ndarray:
    data = pcm_to_float(data, label)
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
