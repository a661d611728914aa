"""Acoustic augmentation of training clips: speed, pitch, room reverberation, noise, band-limiting/codecs.

A spoken JSONL (``audios`` + ``conversations``) gets ``copies`` augmented twins per row, written next
to it as new audio files and rows (``id~augK``, ``augment_of``, and per audio the effects applied
with their drawn parameters under ``augment``). With ``replace`` only that share of the rows (drawn
per row) is augmented, its twin standing in for the clean clip: the job keeps its number of clips, so
the frozen encoder's time, which every extra clip costs, stays the same. Augmenting offline, before the frozen encoder, keeps
the encoder cache correct and useful: its key is a hash of the samples
(:func:`llasm.data.dataset.audio_key`), so an augmented clip is a different key, encoded once and
reused by the warm start and every stage that reads the file.

Everything is drawn from ``random.Random(f"{seed}:{row id}:{copy}")``: one seed, one set of files.
Effects, in the order they are applied (each with probability ``p``; YAML keys as below):

- ``speed``: ``factor`` in ``range``; resampled as if recorded at ``rate * factor`` (soxr), so the
  duration changes by ``1 / factor`` and the pitch with it (Kaldi's speed perturbation, Ko et al. 2015).
- ``pitch``: ``semitones`` shift at the same duration (pedalboard's Rubber Band ``PitchShift``).
- ``reverb``: a shoebox room simulated by the image-source method (pyroomacoustics): sides drawn from
  ``room``, absorption and reflection order from the drawn ``rt60`` (Sabine), source and microphone at
  random places; the clip is convolved with the room impulse response, aligned on the direct path.
  ``rirs`` impulse responses are computed once per job and drawn from (a room costs ~0.1-1 s).
- ``noise``: additive ``white`` / ``pink`` / ``brown`` noise or ``babble`` (a mix of 3-5 other
  clips of the job), scaled so that the signal-to-noise ratio over the whole clip is the drawn
  ``snr_db`` exactly.
- ``codec``: ``telephone`` (band-limited to 300-3,400 Hz through 8 kHz sampling), ``mp3`` / ``ogg``
  (Vorbis) / ``opus`` round trips through libsndfile (soundfile) at a drawn ``quality`` (0 best, 1
  worst), or ``lowpass`` (a 4th-order Butterworth at a drawn cut-off in ``lowpass_hz``).

Every effect keeps the clip's length except ``speed``; the mix is rescaled (never clipped) when its
peak passes 1.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, fftconvolve, sosfilt, sosfiltfilt
from tqdm import tqdm

from llasm import settings
from llasm.audio import AudioError, load_audio, save_audio
from llasm.io import load_yaml, read_jsonl, rejects_path, relative_path, write_jsonl

logger = logging.getLogger(__name__)

RATE = 16_000
EFFECTS = ("speed", "pitch", "reverb", "noise", "codec")


def _check_p(p: float, name: str) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}.p must be in [0, 1], got {p}")


@dataclass
class SpeedConfig:
    p: float = 0.5
    range: list[float] = field(default_factory=lambda: [0.9, 1.1])  # factor (> 1: faster)

    def __post_init__(self):
        _check_p(self.p, "speed")


@dataclass
class PitchConfig:
    p: float = 0.3
    semitones: list[float] = field(default_factory=lambda: [-3.0, 3.0])

    def __post_init__(self):
        _check_p(self.p, "pitch")


@dataclass
class ReverbConfig:
    p: float = 0.3
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])  # seconds
    room: list[list[float]] = field(default_factory=lambda: [[3.0, 10.0], [3.0, 8.0], [2.4, 4.0]])  # metres per side
    rirs: int = 24  # rooms simulated once per job and drawn from

    def __post_init__(self):
        _check_p(self.p, "reverb")


@dataclass
class NoiseConfig:
    p: float = 0.6
    snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0])
    kinds: list[str] = field(default_factory=lambda: ["white", "pink", "brown", "babble"])

    def __post_init__(self):
        _check_p(self.p, "noise")


@dataclass
class CodecConfig:
    p: float = 0.3
    kinds: list[str] = field(default_factory=lambda: ["telephone", "mp3", "ogg", "opus", "lowpass"])
    quality: list[float] = field(default_factory=lambda: [0.3, 0.9])  # libsndfile compression level, 0 best
    lowpass_hz: list[float] = field(default_factory=lambda: [2500.0, 5000.0])

    def __post_init__(self):
        _check_p(self.p, "codec")


@dataclass
class AugmentConfig:
    """The ``augment:`` section of a YAML (``configs/augment_demo.yaml``), read by :mod:`llasm.settings`."""

    copies: int = 1  # augmented twins per row
    # > 0: only this share of the rows is augmented, its twin in place of the clean clip (the same number
    # of clips, so no more encoder time); 0: every row keeps its clean clip beside its twins
    replace: float = 0.0
    seed: int = 0
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)


def load_augment_config(config: str | os.PathLike | dict | AugmentConfig | None = None) -> AugmentConfig:
    """An :class:`AugmentConfig` from a YAML file (its ``augment:`` section, or the whole file) or a dict.

    Raises ``ValueError`` naming the key and the file for an unknown key or a probability outside [0, 1].
    """
    if isinstance(config, AugmentConfig):
        return config
    data = {} if config is None else config if isinstance(config, dict) else load_yaml(config)
    where = "<dict>" if config is None or isinstance(config, dict) else str(config)
    if isinstance(data, dict) and "augment" in data:
        return settings.from_dict(AugmentConfig, data["augment"], where, "augment.")
    return settings.from_dict(AugmentConfig, data, where)


# -- effects on (samples,) float32 arrays at 16 kHz ------------------------------------------------
def speed_perturb(audio: np.ndarray, factor: float, rate: int = RATE) -> np.ndarray:
    """``(round(n / factor),)`` samples: played ``factor`` times faster (pitch moves with it)."""
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    return soxr.resample(audio.astype(np.float32), rate * factor, rate, quality="HQ").astype(np.float32)


def pitch_shift(audio: np.ndarray, semitones: float, rate: int = RATE) -> np.ndarray:
    """The same length, ``semitones`` higher (negative: lower); Rubber Band via pedalboard."""
    from pedalboard import PitchShift

    out = PitchShift(semitones=float(semitones))(audio.astype(np.float32)[None], rate)[0]
    return _fit(out, len(audio))


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` unit-power noise with a 1/f^beta spectrum: white (0), pink (1), brown (2)."""
    beta = {"white": 0.0, "pink": 1.0, "brown": 2.0}.get(kind)
    if beta is None:
        raise ValueError(f"noise kind must be white, pink, brown or babble, got {kind!r}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (beta / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio + g * noise`` with ``g`` such that 10 log10(P_audio / P_noise) = ``snr_db`` (P: mean power)."""
    if len(noise) < len(audio):
        noise = np.tile(noise, -(-len(audio) // len(noise)))
    noise = noise[: len(audio)]
    p_audio, p_noise = float(np.mean(audio**2)), float(np.mean(noise**2))
    if p_audio == 0 or p_noise == 0:
        raise ValueError("add_noise: the clip or the noise is silent; no SNR can be set")
    gain = np.sqrt(p_audio / (p_noise * 10 ** (snr_db / 10)))
    return (audio + gain * noise).astype(np.float32)


def room_impulse_response(rng: random.Random, rt60_range: Sequence[float], room: Sequence[Sequence[float]],
                          rate: int = RATE) -> tuple[np.ndarray, dict]:
    """One simulated shoebox room's impulse response ``(taps,)`` (peak 1, direct path first) and its parameters."""
    import pyroomacoustics as pra

    dims = [rng.uniform(lo, hi) for lo, hi in room]
    rt60 = rng.uniform(*rt60_range)
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # the room is too large for this short rt60: the most absorbent walls
        absorption, max_order = 1.0, 0
    max_order = min(max_order, 12)  # late reflections add little at these rt60s and cost most of the time
    shoebox = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption), max_order=max_order)
    inside = lambda: [rng.uniform(0.5, d - 0.5) for d in dims[:2]] + [rng.uniform(1.0, min(1.8, dims[2] - 0.3))]  # noqa: E731
    source, mic = inside(), inside()
    shoebox.add_source(source)
    shoebox.add_microphone(mic)
    shoebox.compute_rir()
    rir = np.asarray(shoebox.rir[0][0], dtype=np.float32)
    start = int(np.argmax(np.abs(rir)))  # the direct path: the output stays aligned with the input
    rir = rir[start:] / (np.max(np.abs(rir)) + 1e-12)
    distance = float(np.linalg.norm(np.subtract(source, mic)))
    return rir, {"rt60": round(rt60, 3), "room": [round(d, 2) for d in dims], "distance": round(distance, 2)}


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` convolved with ``rir`` (direct path at tap 0), cut to ``audio``'s length."""
    return fftconvolve(audio, rir)[: len(audio)].astype(np.float32)


def codec(audio: np.ndarray, kind: str, quality: float = 0.5, lowpass_hz: float = 4000.0, rate: int = RATE) -> np.ndarray:
    """``audio`` through a narrow channel or a lossy codec; the same length."""
    if kind == "telephone":
        narrow = soxr.resample(audio, rate, 8000, quality="HQ")
        narrow = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos"), narrow)
        return _fit(soxr.resample(narrow.astype(np.float32), 8000, rate, quality="HQ"), len(audio))
    if kind == "lowpass":
        return sosfiltfilt(butter(4, lowpass_hz, btype="lowpass", fs=rate, output="sos"), audio).astype(np.float32)
    formats = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS")}
    if kind not in formats:
        raise ValueError(f"codec kind must be telephone, lowpass, mp3, ogg or opus, got {kind!r}")
    fmt, subtype = formats[kind]
    buffer = io.BytesIO()
    peak = float(np.max(np.abs(audio))) or 1.0
    sf.write(buffer, audio / max(peak, 1.0), rate, format=fmt, subtype=subtype, compression_level=float(quality))
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return _fit(decoded.reshape(len(decoded), -1).mean(axis=1) * max(peak, 1.0), len(audio))


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    return audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))


class Augmenter:
    """Draws and applies the effects of a config; ``rirs`` rooms and the babble pool are made once."""

    def __init__(self, config: str | os.PathLike | dict | AugmentConfig | None = None, babble: Sequence[np.ndarray] = ()):
        self.config = load_augment_config(config)
        self.babble = [np.asarray(b, dtype=np.float32) for b in babble if np.any(b)]
        self._rirs: list[tuple[np.ndarray, dict]] | None = None

    def rirs(self) -> list[tuple[np.ndarray, dict]]:
        if self._rirs is None:
            reverb = self.config.reverb
            rng = random.Random(f"{self.config.seed}:rirs")
            self._rirs = [room_impulse_response(rng, reverb.rt60, reverb.room) for _ in range(reverb.rirs)]
        return self._rirs

    def __call__(self, audio: np.ndarray, key: str) -> tuple[np.ndarray, list[dict]]:
        """``(augmented (samples,) float32, effects applied with their parameters)``; ``key`` seeds the draw."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{key}")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        applied: list[dict] = []
        draws = {name: rng.random() < float(getattr(cfg, name).p) for name in EFFECTS}  # one coin per effect, always
        if draws["speed"]:
            factor = rng.uniform(*cfg.speed.range)
            audio = speed_perturb(audio, factor)
            applied.append({"effect": "speed", "factor": round(factor, 4)})
        if draws["pitch"]:
            semitones = rng.uniform(*cfg.pitch.semitones)
            audio = pitch_shift(audio, semitones)
            applied.append({"effect": "pitch", "semitones": round(semitones, 3)})
        if draws["reverb"] and cfg.reverb.rirs > 0:
            rir, params = rng.choice(self.rirs())
            audio = reverberate(audio, rir)
            applied.append({"effect": "reverb", **params})
        if draws["noise"] and np.any(audio):
            kinds = [k for k in cfg.noise.kinds if k != "babble" or len(self.babble) >= 3]
            kind, snr = rng.choice(kinds), rng.uniform(*cfg.noise.snr_db)
            if kind == "babble":
                noise = np.zeros(len(audio), np.float32)
                for other in rng.sample(self.babble, min(len(self.babble), rng.randint(3, 5))):
                    offset = rng.randrange(max(1, len(other) - len(audio)))
                    noise += _fit(np.tile(other, -(-len(audio) // len(other)) + 1)[offset:], len(audio))
            else:
                noise = colored_noise(len(audio), kind, np.random.default_rng(rng.randrange(2**32)))
            if np.any(noise):
                audio = add_noise(audio, noise, snr)
                applied.append({"effect": "noise", "kind": kind, "snr_db": round(snr, 2)})
        if draws["codec"]:
            options = cfg.codec
            kind = rng.choice(list(options.kinds))
            quality, cutoff = rng.uniform(*options.quality), rng.uniform(*options.lowpass_hz)
            audio = codec(audio, kind, quality=quality, lowpass_hz=cutoff)
            applied.append({"effect": "codec", "kind": kind,
                            **({"quality": round(quality, 3)} if kind in ("mp3", "ogg", "opus") else {}),
                            **({"cutoff_hz": round(cutoff)} if kind == "lowpass" else {})})
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 1.0:
            audio = audio / peak
        return audio.astype(np.float32), applied


def augment_dataset(input: str | os.PathLike, output: str | os.PathLike, config: str | os.PathLike | dict | None = None,
                    *, audio_dir: str | os.PathLike | None = None, keep_clean: bool = True,
                    progress: bool = True) -> dict:
    """Write ``output`` JSONL: the rows of ``input`` (when ``keep_clean``) and their augmented copies.

    Audio files go to ``audio_dir`` (default ``<output stem>_audio``) as FLAC, atomically; a row whose
    audio cannot be read or augmented goes to ``<output stem>.rejects.jsonl`` with the reason, and the
    job goes on. Returns counts.
    """
    input, output = Path(input), Path(output)
    augmenter = Augmenter(config)
    copies = augmenter.config.copies
    audio_dir = Path(audio_dir) if audio_dir else output.parent / f"{output.name.removesuffix('.jsonl')}_audio"
    rows = read_jsonl(input)
    pool_rng = random.Random(f"{augmenter.config.seed}:babble")
    for row in pool_rng.sample(rows, min(len(rows), 32)):  # babble: other speakers of the same job
        try:
            augmenter.babble += [load_audio(input.parent / row["audios"][0])] if row.get("audios") else []
        except (AudioError, OSError, KeyError):
            continue
    out_rows, rejects = [], []
    replace = augmenter.config.replace
    for row in tqdm(rows, desc="augment", unit="row", disable=not progress):
        clean = dict(row, audios=[relative_path(input.parent / a, output.parent) for a in row.get("audios", [])])
        # replace > 0: a drawn share of the rows is augmented in place, the others stay clean alone
        replaced = random.Random(f"{augmenter.config.seed}:replace:{row.get('id')}").random() < replace
        twins = []
        for k in range(1, (copies if row.get("audios") and (replaced or not replace) else 0) + 1):
            new_id = f"{row.get('id', '')}~aug{k}"
            try:
                paths, effects = [], []
                for j, name in enumerate(row["audios"]):
                    audio, applied = augmenter(load_audio(input.parent / name), f"{row.get('id')}:{j}:{k}")
                    target = audio_dir / f"{_safe(new_id)}_a{j}.flac"
                    save_audio(target, audio)
                    paths.append(relative_path(target, output.parent))
                    effects.append(applied)
            except (AudioError, OSError, ValueError) as err:
                rejects.append({"source": f"{input}#{row.get('id')}", "id": new_id, "reason": f"{type(err).__name__}: {err}"})
                continue
            twins.append(dict(row, id=new_id, audios=paths, augment_of=row.get("id"), augment=effects))
        out_rows += ([clean] if keep_clean and not (replaced and twins) else []) + twins
    write_jsonl(output, out_rows)
    write_jsonl(rejects_path(output), rejects)
    augmented = sum(1 for r in out_rows if "augment_of" in r)
    clean_rows = sum(1 for r in out_rows if "augment_of" not in r)
    return {"rows": len(out_rows), "augmented": augmented, "replaced": len(rows) - clean_rows if keep_clean else 0,
            "rejects": len(rejects)}


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-~]+", "_", name)[:120]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm augment", description="Augmented copies of a spoken JSONL's clips.")
    parser.add_argument("--input", required=True, help="spoken JSONL (rows with audios)")
    parser.add_argument("--output", required=True,
                        help="output JSONL: the clean rows and their augmented copies (with `replace: p` in the config a "
                             "drawn share p of the rows is replaced by its copy instead); audio paths are relative to its "
                             "folder when the audio lies below it, else absolute")
    parser.add_argument("--config", default=None, help="YAML with an `augment:` section (default: built-in)")
    parser.add_argument("--only-augmented", action="store_true", help="leave the clean rows out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = augment_dataset(args.input, args.output, args.config, keep_clean=not args.only_augmented)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
