"""More English voices from Debian's speech synthesizers: flite and festival, each a TTS-router backend.

- ``flite`` (Debian ``flite``): CMU Flite 2.2's built-in voices ``kal``, ``kal16`` (diphone),
  ``awb``, ``rms``, ``slt`` (unit selection from the CMU ARCTIC recordings of three speakers:
  Scottish male, US male, US female). Per seed: a voice, ``duration_stretch`` (speaking rate) and
  ``int_f0_target_mean`` (pitch in Hz; the voices' own are 95-170 Hz). ``awb_time`` speaks times of day
  only and is left out.
- ``festival`` (Debian ``festival`` + ``festvox-kallpc16k``, ``festvox-kdlpc16k``,
  ``festvox-us-slt-hts``): the ``kal_diphone`` and ``ked_diphone`` US male diphone voices and the
  ``cmu_us_slt_arctic_hts`` US female HMM voice, through ``text2wave``. Per seed: a voice and
  ``Duration_Stretch`` (the diphone voices' rate; the HTS voice keeps its own).

Both are English-only: their Mandarin front ends do not exist in Debian.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llasm.prep.tts_base import TTSBackend, TTSError, TTSUnavailable, _uniform, run_synthesizer

FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}


class FliteBackend(TTSBackend):
    """CMU Flite through its CLI: five English voices, rate and pitch varied per seed."""

    name = "flite"
    languages = ("en",)

    def __init__(self, binary: str = "flite", voices: Sequence[str] = FLITE_VOICES, stretch: Any = (0.85, 1.2),
                 f0_mean: Any = None, timeout: float = 60, **unused: Any):
        self.check({"binary": binary})
        self.binary = shutil.which(binary) or binary
        unknown = set(voices) - set(FLITE_VOICES)
        if unknown or not voices:
            raise TTSUnavailable(f"flite: unknown voice(s) {sorted(unknown)}; known: {list(FLITE_VOICES)}")
        # f0 means per voice family: the male voices' own ~100 Hz and slt's ~170 Hz, +-20 %
        self.voices, self.stretch, self.timeout = list(voices), stretch, timeout
        self.f0_mean = f0_mean or {"kal": [85, 125], "kal16": [85, 125], "awb": [85, 125], "rms": [85, 125],
                                   "slt": [140, 200]}

    @classmethod
    def check(cls, options: dict) -> None:
        binary = options.get("binary") or "flite"
        if shutil.which(binary) is None:
            raise TTSUnavailable(f"flite: the {binary!r} program is not installed (Debian/Ubuntu: apt-get install flite)")

    def settings(self, voice_seed: int) -> tuple[str, float, int]:
        """``(voice, duration stretch, mean f0 in Hz)`` that ``voice_seed`` stands for."""
        rng = self._rng(voice_seed)
        voice = rng.choice(self.voices)
        f0 = self.f0_mean.get(voice, [90, 130]) if isinstance(self.f0_mean, dict) else self.f0_mean
        return voice, round(_uniform(rng, self.stretch), 3), round(_uniform(rng, f0))

    def voice_name(self, lang: str, voice_seed: int) -> str:
        voice, stretch, f0 = self.settings(voice_seed)
        return f"flite:{voice} x{stretch:.2f} f0{f0}"

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        if lang not in self.languages:
            raise TTSError(f"flite: speaks English only, not {lang!r}")
        voice, stretch, f0 = self.settings(voice_seed)
        with tempfile.TemporaryDirectory(prefix="llasm-flite-") as tmp:
            # flite reads the text from a file (-f) and cannot write WAV to stdout
            source, target = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
            source.write_text(text, encoding="utf-8")
            command = [self.binary, "-voice", voice, "--setf", f"duration_stretch={stretch}",
                       "--setf", f"int_f0_target_mean={f0}", "-f", str(source), "-o", str(target)]
            return run_synthesizer(command, text, label=f"flite ({voice})", timeout=self.timeout, stdin=False,
                                   output=str(target))


def festival_voice_dirs() -> dict[str, Path]:
    """Installed festival voices: ``{name: folder}`` under ``/usr/share/festival/voices/*/``."""
    root = Path(os.environ.get("LLASM_FESTIVAL_VOICES", "/usr/share/festival/voices"))
    return {d.name: d for d in sorted(root.glob("*/*")) if d.is_dir()}


class FestivalBackend(TTSBackend):
    """The Festival Speech Synthesis System through ``text2wave``: diphone and HTS English voices."""

    name = "festival"
    languages = ("en",)

    def __init__(self, binary: str = "text2wave", voices: Sequence[str] = FESTIVAL_VOICES, stretch: Any = (0.85, 1.2),
                 timeout: float = 120, **unused: Any):
        self.check({"binary": binary, "voices": voices})
        self.binary = shutil.which(binary) or binary
        installed = festival_voice_dirs()
        self.voices = [v for v in voices if v in installed]
        self.stretch, self.timeout = stretch, timeout

    @classmethod
    def check(cls, options: dict) -> None:
        binary = options.get("binary") or "text2wave"
        if shutil.which(binary) is None:
            raise TTSUnavailable(f"festival: the {binary!r} program is not installed "
                                 "(Debian/Ubuntu: apt-get install festival festvox-kallpc16k)")
        wanted = list(options.get("voices") or FESTIVAL_VOICES)
        installed = festival_voice_dirs()
        if not any(v in installed for v in wanted):
            packages = " ".join(FESTIVAL_PACKAGES.get(v, v) for v in wanted)
            raise TTSUnavailable(f"festival: none of the voices {wanted} is installed (apt-get install {packages})")

    def settings(self, voice_seed: int) -> tuple[str, float]:
        """``(voice, duration stretch)`` that ``voice_seed`` stands for."""
        rng = self._rng(voice_seed)
        return rng.choice(self.voices), round(_uniform(rng, self.stretch), 3)

    def voice_name(self, lang: str, voice_seed: int) -> str:
        voice, stretch = self.settings(voice_seed)
        return f"festival:{voice} x{stretch:.2f}"

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        if lang not in self.languages:
            raise TTSError(f"festival: speaks English only, not {lang!r}")
        voice, stretch = self.settings(voice_seed)
        with tempfile.TemporaryDirectory(prefix="llasm-festival-") as tmp:
            # a WAV written to a pipe keeps a zero data length in its header: write a file
            target = Path(tmp) / "out.wav"
            command = [self.binary, "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch})",
                       "-o", str(target)]
            return run_synthesizer(command, text, label=f"festival ({voice})", timeout=self.timeout, output=str(target))
