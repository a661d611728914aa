"""Discrete speech units: k-means over one encoder layer, deduplicated units with durations.

By default the features are the frozen Whisper encoder's layer at two-thirds depth (layer 4 of
whisper-base's 6, the most intelligible in ``bench/unit_choice.py``; no second model needed);
a HuBERT model through transformers can be used instead when its weights are available. Both run
at 50 Hz (320 samples at 16 kHz per frame), matching the unit vocoder's 320 samples per unit.

``layer`` follows HF's ``hidden_states`` numbering: 0 is the input of the first transformer layer
(after the convolutions and positions), ``i`` is the output of transformer layer ``i`` (1-based).

The k-means model is stored without pickle: ``kmeans.safetensors`` (``centroids``, ``(K, D)``)
plus ``kmeans.json`` (K, layer, encoder id and type, feature dim).

CLI (``llasm units --help``, :mod:`llasm.speech.units_cli`)::

    fit       --encoder openai/whisper-small --num-units 500 --input a.jsonl [dir ...] --output km/
    annotate  --kmeans km/ --input conv.jsonl --output conv.units.jsonl   # gpt turns with "audio"
    manifest  --kmeans km/ --input a.jsonl [dir ...] --output vocoder.jsonl  # {"id","audio","units","durations"}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import HubertModel, WhisperFeatureExtractor

from llasm.audio import SAMPLING_RATE, AudioError, load_audio
from llasm.audio_tower import load_whisper_encoder
from llasm.device import resolve_device
from llasm.io import atomic_path, read_jsonl, write_json
from llasm.sharding import Records, Shard

logger = logging.getLogger(__name__)
# faiss's Clustering.min_points_per_centroid: below it, it warns that the centroids are poorly estimated
MIN_FRAMES_PER_UNIT = 39

SAMPLES_PER_FRAME = 320  # 50 Hz at 16 kHz for both Whisper (hop 160, conv stride 2) and HuBERT
CHUNK_SAMPLES = 30 * SAMPLING_RATE  # Whisper encodes at most 30 s at a time
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}
KMEANS_WEIGHTS = "kmeans.safetensors"
KMEANS_CONFIG = "kmeans.json"


def dedup_units(frame_units: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[list[int], list[int]]:
    """Merge consecutive duplicates: frame units -> (units, durations); ``sum(durations) == len(frame_units)``."""
    if isinstance(frame_units, torch.Tensor):
        frame_units = frame_units.detach().cpu().numpy()
    array = np.asarray(frame_units, dtype=np.int64).reshape(-1)
    if array.size == 0:
        return [], []
    starts = np.flatnonzero(np.concatenate([[True], array[1:] != array[:-1]]))
    durations = np.diff(np.concatenate([starts, [array.size]]))
    return array[starts].tolist(), durations.tolist()


# --------------------------------------------------------------------------------------------
# Feature encoders
# --------------------------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, value: torch.Tensor):
        self.value = value


class WhisperLayerFeatures:
    """Frame features of one layer of the (Llasm) Whisper encoder: audio -> ``(T, D)`` float32, 50 Hz.

    Clips over 30 s are encoded in 30 s chunks and concatenated. The layers after ``layer`` are
    not run (a forward hook stops the encoder there).
    """

    encoder_type = "whisper"

    def __init__(self, name_or_path: str, layer: int | None = None, device: str = "cpu", encoder=None,
                 feature_extractor=None):

        self.name_or_path = str(name_or_path)
        self.encoder = (encoder if encoder is not None else load_whisper_encoder(name_or_path)).to(device).eval()
        self.encoder.requires_grad_(False)
        self.feature_extractor = feature_extractor or WhisperFeatureExtractor.from_pretrained(name_or_path)
        num_layers = len(self.encoder.layers)
        # two-thirds deep: on whisper-base (6 layers) layer 4 carried the words best, layer 3 (the middle)
        # worse, at every K (bench/unit_choice.py; docs/experiments/token2wav.md)
        self.layer = (2 * num_layers) // 3 if layer is None else int(layer)
        if not 0 <= self.layer <= num_layers:
            raise ValueError(f"layer must lie in [0, {num_layers}] for {name_or_path}, got {self.layer}")
        self.device = device
        self.feature_dim = self.encoder.config.d_model

    def _hook(self):
        if self.layer == 0:
            def pre(_module, args, kwargs):
                raise _Stop(args[0] if args else kwargs["hidden_states"])
            return self.encoder.layers[0].register_forward_pre_hook(pre, with_kwargs=True)

        def post(_module, _args, output):
            raise _Stop(output[0] if isinstance(output, tuple) else output)
        return self.encoder.layers[self.layer - 1].register_forward_hook(post)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        pieces = []
        for begin in range(0, len(audio), CHUNK_SAMPLES):
            chunk = audio[begin : begin + CHUNK_SAMPLES]
            if len(chunk) < 160 and pieces:  # a sliver past a 30 s boundary gives no mel frame
                continue
            feats = self.feature_extractor(
                chunk, sampling_rate=SAMPLING_RATE, truncation=False, padding="longest", return_tensors="pt"
            ).input_features[..., : max(1, len(chunk) // 160)]
            handle = self._hook()
            try:
                self.encoder(feats.to(self.device, self.encoder.conv1.weight.dtype))
                raise RuntimeError("encoder hook did not fire")
            except _Stop as stop:
                pieces.append(stop.value[0].float().cpu())
            finally:
                handle.remove()
        return torch.cat(pieces)  # (T, D), T = ceil((len(audio) // 160) / 2) per chunk


class HubertLayerFeatures:
    """Frame features of ``hidden_states[layer]`` of a transformers ``HubertModel`` (raw 16 kHz input)."""

    encoder_type = "hubert"

    def __init__(self, name_or_path: str, layer: int | None = None, device: str = "cpu", model=None,
                 normalize: bool = False):
        self.name_or_path = str(name_or_path)
        self.model = (model if model is not None else HubertModel.from_pretrained(name_or_path)).to(device).eval()
        self.model.requires_grad_(False)
        num_layers = self.model.config.num_hidden_layers
        self.layer = num_layers // 2 if layer is None else int(layer)
        if not 0 <= self.layer <= num_layers:
            raise ValueError(f"layer must lie in [0, {num_layers}] for {name_or_path}, got {self.layer}")
        self.device = device
        self.normalize = normalize
        self.feature_dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if self.normalize:
            x = (x - x.mean()) / (x.std() + 1e-7)
        out = self.model(x[None].to(self.device), output_hidden_states=True)
        return out.hidden_states[self.layer][0].float().cpu()  # (T, D)


def load_feature_encoder(name_or_path: str, encoder_type: str = "whisper", layer: int | None = None,
                         device: str = "auto"):
    """The frame-feature encoder (``whisper`` | ``hubert``) on ``device`` (``auto``: CUDA when present)."""
    device = str(resolve_device(device))
    if encoder_type == "whisper":
        return WhisperLayerFeatures(name_or_path, layer, device)
    if encoder_type == "hubert":
        return HubertLayerFeatures(name_or_path, layer, device)
    raise ValueError(f"encoder_type must be 'whisper' or 'hubert', got {encoder_type!r}")


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


def fit_kmeans(features: Iterable[torch.Tensor | np.ndarray], num_units: int, seed: int = 0,
               batch_size: int = 10_000, max_iter: int = 100, n_init: int = 3) -> np.ndarray:
    """Fit ``MiniBatchKMeans`` on stacked ``(T, D)`` frame features; return centroids ``(K, D)`` float32."""
    from sklearn.cluster import MiniBatchKMeans

    arrays = [np.asarray(f, dtype=np.float32) for f in features]
    if not arrays:
        raise ValueError("no features to fit k-means on")
    data = np.concatenate(arrays)
    if data.shape[0] < num_units:
        raise ValueError(f"k-means with K={num_units} needs at least {num_units} frames, got {data.shape[0]}")
    if data.shape[0] < MIN_FRAMES_PER_UNIT * num_units:
        logger.warning("k-means with K=%d on %d frames (%.1f a unit; faiss asks for at least %d): many units will be "
                       "fitted to a handful of frames; give it more audio or a smaller K", num_units, data.shape[0],
                       data.shape[0] / num_units, MIN_FRAMES_PER_UNIT)
    km = MiniBatchKMeans(n_clusters=num_units, random_state=seed, batch_size=min(batch_size, data.shape[0]),
                         max_iter=max_iter, n_init=n_init, compute_labels=False)
    km.fit(data)
    return km.cluster_centers_.astype(np.float32)


class UnitExtractor:
    """Audio -> frame units (nearest centroid, in torch) -> deduplicated units + durations."""

    def __init__(self, centroids: torch.Tensor | np.ndarray, meta: dict | None = None, features=None):
        self.centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32))  # (K, D)
        if self.centroids.ndim != 2:
            raise ValueError(f"centroids must be (K, D), got {tuple(self.centroids.shape)}")
        self.meta = dict(meta or {})
        self.meta.update(num_units=self.num_units, feature_dim=self.centroids.shape[1])
        self.features = features
        if features is not None:
            self.meta.setdefault("layer", features.layer)
            self.meta.setdefault("encoder", features.name_or_path)
            self.meta.setdefault("encoder_type", features.encoder_type)
            if features.feature_dim != self.centroids.shape[1]:
                raise ValueError(f"encoder features are {features.feature_dim}-d, centroids {self.centroids.shape[1]}-d")
        self.meta.setdefault("samples_per_frame", SAMPLES_PER_FRAME)
        self._sq = (self.centroids**2).sum(-1)  # (K,)

    @property
    def num_units(self) -> int:
        return self.centroids.shape[0]

    def assign(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(T, D)`` features -> ``(T,)`` int64 nearest-centroid ids (squared Euclidean)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        dist = (x**2).sum(-1, keepdim=True) - 2 * x @ self.centroids.T + self._sq  # (T, K)
        return dist.argmin(-1)

    def frame_units(self, audio: Any) -> torch.Tensor:
        if self.features is None:
            raise ValueError("UnitExtractor has no feature encoder (load with an encoder to extract from audio)")
        return self.assign(self.features(load_audio(audio)))

    def extract(self, audio: Any) -> tuple[list[int], list[int]]:
        """Audio (path/array, see :func:`llasm.audio.load_audio`) -> (units, durations); may raise AudioError."""
        return dedup_units(self.frame_units(audio))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / KMEANS_WEIGHTS) as tmp:
            save_file({"centroids": self.centroids.contiguous()}, str(tmp))
        write_json(directory / KMEANS_CONFIG, self.meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, features=None, with_encoder: bool = True,
             device: str = "auto", encoder: str | None = None) -> "UnitExtractor":
        """Load ``kmeans.safetensors`` + ``kmeans.json``; builds the feature encoder it names unless
        ``features`` is given or ``with_encoder=False`` (``encoder`` overrides the stored id/path)."""
        directory = Path(directory)
        for name in (KMEANS_WEIGHTS, KMEANS_CONFIG):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name}: not found (not a k-means unit model dir)")
        meta = json.loads((directory / KMEANS_CONFIG).read_text(encoding="utf-8"))
        centroids = load_file(str(directory / KMEANS_WEIGHTS))["centroids"]
        if features is None and with_encoder:
            features = load_feature_encoder(encoder or meta["encoder"], meta.get("encoder_type", "whisper"),
                                            meta.get("layer"), device)
            if features.layer != meta.get("layer", features.layer):
                raise ValueError("feature layer mismatch")
        return cls(centroids, meta, features)


def fit_unit_extractor(features, audios: Iterable[Any], num_units: int, seed: int = 0,
                       max_frames: int | None = None, rejects: list | None = None, progress: bool = True,
                       encoded: dict | None = None, **kmeans_kwargs) -> UnitExtractor:
    """Encode ``audios`` with ``features`` (skipping bad audio into ``rejects``) and fit k-means
    (``kmeans_kwargs``: :func:`fit_kmeans`'s).

    With ``max_frames`` the clips are read in a seeded random order until that many frames are encoded:
    a sample of the whole list, not its head (a list ordered by language or source would otherwise give
    the first part nearly all the clusters; fairseq's HuBERT k-means samples a random share the same way).
    ``encoded``: a dict that receives each encoded clip's ``(T, D)`` features under its entry of ``audios``,
    so a caller that extracts units from the same clips next need not encode them again
    (``dedup_units(extractor.assign(encoded[clip]))`` equals ``extractor.extract(clip)``)."""
    if max_frames:
        audios = list(audios)
        audios = [audios[i] for i in np.random.default_rng(seed).permutation(len(audios))]
    feats, total, read = [], 0, 0
    for source in tqdm(audios, desc="k-means features", unit="clip", disable=not progress):
        read += 1
        try:
            f = features(load_audio(source))
        except AudioError as err:
            if rejects is not None:
                rejects.append({"audio": str(source), "reason": str(err)})
            logger.warning("skip: %s", err)
            continue
        feats.append(f)
        if encoded is not None:
            encoded[source] = f
        total += f.shape[0]
        if max_frames and total >= max_frames:
            break
    centroids = fit_kmeans(feats, num_units, seed=seed, **kmeans_kwargs)
    return UnitExtractor(centroids, {"seed": seed, "num_frames": total, "max_frames": max_frames, "clips_read": read},
                         features)


# --------------------------------------------------------------------------------------------
# Batch jobs
# --------------------------------------------------------------------------------------------


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # other drive (Windows)
        return str(path.resolve())


def collect_audio(inputs: Sequence[str | os.PathLike]) -> Iterator[tuple[str, Path]]:
    """(id, path) of every audio in ``inputs``: audio files, directories (recursive) or JSONL files
    (top-level ``"audio"`` of manifest rows, and the ``"audio"`` of conversation turns)."""
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for p in sorted(item.rglob("*")):
                if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file():
                    yield _relative(p, item).rsplit(".", 1)[0], p
        elif item.suffix == ".jsonl":
            for n, row in enumerate(read_jsonl(item)):
                rid = str(row.get("id", f"{item.stem}-{n}"))
                if isinstance(row.get("audio"), str):
                    yield rid, _resolve(row["audio"], item.parent)
                for t, turn in enumerate(row.get("conversations") or []):
                    if isinstance(turn, dict) and isinstance(turn.get("audio"), str):
                        yield f"{rid}-{t}", _resolve(turn["audio"], item.parent)
        else:
            yield item.stem, item


def annotate_conversations(extractor: UnitExtractor, input_path: str | os.PathLike,
                           output_path: str | os.PathLike, shard: Shard = Shard()) -> Records:
    """Add ``units``/``durations`` to every gpt turn that has ``"audio"`` (relative to the JSONL).

    Audio paths are rewritten relative to the output file. An item whose answer audio is bad goes
    to the rejects (with the reason) as a whole. Returns the :class:`~llasm.sharding.Records` of
    ``shard``'s rows (unpacks as ``(items, rejects)``); the caller writes them.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    records = Records()
    for n, row in enumerate(read_jsonl(input_path)):
        records.saw(row.get("id", n))
        if not shard.owns(n):
            continue
        row = json.loads(json.dumps(row))  # deep copy
        try:
            for turn in row.get("conversations") or []:
                if turn.get("from") in ("gpt", "assistant") and isinstance(turn.get("audio"), str):
                    path = _resolve(turn["audio"], input_path.parent)
                    turn["units"], turn["durations"] = extractor.extract(path)
                    turn["audio"] = _relative(path, output_path.parent)
        except AudioError as err:
            records.reject(n, {"id": row.get("id", n), "line": n + 1, "reason": str(err)})
            logger.warning("reject %s: %s", row.get("id", n), err)
            continue
        records.item(n, row)
    return records


def build_manifest(extractor: UnitExtractor, inputs: Sequence[str | os.PathLike],
                   output_path: str | os.PathLike, shard: Shard = Shard()) -> Records:
    """Vocoder training rows ``{"id", "audio", "units", "durations"}`` (audio relative to the output),
    of ``shard``'s clips; unpacks as ``(rows, rejects)``."""
    output_path = Path(output_path)
    records = Records()
    for n, (rid, path) in enumerate(collect_audio(inputs)):
        records.saw(rid)
        if not shard.owns(n):
            continue
        try:
            units, durations = extractor.extract(path)
        except AudioError as err:
            records.reject(n, {"id": rid, "audio": str(path), "reason": str(err)})
            logger.warning("reject %s: %s", rid, err)
            continue
        records.item(n, {"id": rid, "audio": _relative(path, output_path.parent), "units": units,
                         "durations": durations})
    return records

