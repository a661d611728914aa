"""Cache of frozen-Whisper outputs for stage 1: each clip is encoded once, across epochs and runs.

Keys are content hashes (sha1 of the float32 16 kHz samples + the tower's id + feature settings,
see :func:`llasm.data.dataset.audio_key`) plus the chunk number. Values are the chunk's real encoder
frames ``(T_enc, D)`` in fp16, written as safetensors shards (one per flush and rank, atomically),
so a killed run never leaves a half-written shard behind and a second run reuses the first's.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from llasm.audio import load_audio
from llasm.configuration import encoder_frames
from llasm.data.dataset import audio_key
from llasm.io import atomic_path, read_jsonl, umask


def model_key(model, processor) -> str:
    """What the cached states depend on: the tower's weights (id, or a hash) and the mel settings."""
    cfg = model.config
    tower_id = cfg.audio_model_name_or_path
    if not tower_id:  # a random tower: fingerprint its weights
        h = hashlib.sha1()
        for name, tensor in sorted(model.audio_tower.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        tower_id = "random:" + h.hexdigest()
    fe = processor.feature_extractor
    return f"{tower_id}|{cfg.audio_source}|mels={fe.feature_size}|hop={fe.hop_length}|n_fft={fe.n_fft}|pad30={processor.pad_to_30s}"


class EncoderCache:
    """``(C, T_enc, D)`` encoder states for a batch's chunks, from disk or by running the tower once."""

    def __init__(self, directory: str | os.PathLike, flush_every: int = 256, read_only: bool = False):
        self.directory = Path(directory)
        # read_only: a cache built beforehand (``llasm encoder-cache``) and shared, e.g. on a read-only
        # mount; misses are encoded and kept only until the next flush, never written
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.where: dict[str, Path] = {}  # key -> shard
        self.pending: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    self.where[key] = shard
        self._handles: dict[Path, object] = {}

    def _get(self, key: str) -> torch.Tensor | None:
        if key in self.pending:
            return self.pending[key]
        shard = self.where.get(key)
        if shard is None:
            return None

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def missing(self, keys: list[str]) -> bool:
        """Whether any of ``keys`` is not cached yet (so :meth:`encode` will run the tower)."""
        return any(k not in self.pending and k not in self.where for k in keys)

    @torch.no_grad()
    def encode(self, model, keys: list[str], input_features: torch.Tensor, feature_attention_mask: torch.Tensor):
        """States for every chunk (padding zeroed, rounded through fp16 whether cached or not), on the
        device of ``input_features`` (which must be the tower's: the trainer moves the batch first)."""
        frames = [int(f) for f in feature_attention_mask.sum(-1).tolist()]
        states: list[torch.Tensor | None] = [self._get(k) for k in keys]
        missing = [i for i, s in enumerate(states) if s is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            longest = max(frames[i] for i in missing)
            hidden, _ = model.encode_audio(input_features[missing, :, :longest],
                                           feature_attention_mask[missing, :longest])  # (M, T_enc, D)
            for j, i in enumerate(missing):
                state = hidden[j, : encoder_frames(frames[i])].to(torch.float16).cpu().contiguous()
                states[i] = self.pending[keys[i]] = state
            if len(self.pending) >= self.flush_every:
                self.flush()
        width = max(s.shape[0] for s in states)
        out = input_features.new_zeros((len(keys), width, states[0].shape[-1]))  # (C, T_enc, D)
        for i, s in enumerate(states):
            out[i, : s.shape[0]] = s.to(out.device, out.dtype)  # cached states are read onto the CPU
        return out

    def flush(self) -> None:
        """Write pending states as one new shard (temp file + rename); read-only: forget them."""
        if not self.pending or self.read_only:
            self.pending = {}
            return

        rank = os.environ.get("RANK", "0")
        shard = self.directory / f"shard-{rank}-{uuid.uuid4().hex[:12]}.safetensors"
        with atomic_path(shard) as tmp:
            save_file(self.pending, str(tmp))
            tmp.chmod(0o666 & ~umask())  # safetensors writes a new file: readable by others on a shared cache
        for key in self.pending:
            self.where[key] = shard
        self.pending = {}


def encode_clips(model, processor, path: Path, cache_dir: Path, text=lambda row: row["conversations"][-1]["value"],
                 desc: str = "encode"):
    """Encoder states of the one-clip rows of a spoken JSONL file, through (and into) the encoder cache.

    Returns ``(states, frames, texts, langs)``: ``(T_enc, D)`` fp16 states, mel frames, ``text(row)``, languages.
    """
    cache, mkey = EncoderCache(cache_dir), model_key(model, processor)
    rows = [r for r in read_jsonl(path) if len(r.get("audios", [])) == 1]
    states, frames, texts, langs = [], [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), 8), desc=desc, unit="batch"):
            group = rows[start : start + 8]
            clips = [load_audio(path.parent / r["audios"][0]) for r in group]
            chunks = [processor.audio_features(c) for c in clips]
            keep = [i for i, c in enumerate(chunks) if len(c) == 1]  # clips under 30 s: one chunk each
            if not keep:
                continue
            batch = processor.pad_features([chunks[i][0] for i in keep])
            hidden = cache.encode(model, [f"{audio_key(clips[i], mkey)}-0" for i in keep], **batch)
            for j, i in enumerate(keep):
                f = int(batch["feature_attention_mask"][j].sum())
                states.append(hidden[j, : encoder_frames(f)].half())
                frames.append(f)
                texts.append(text(group[i]))
                langs.append(group[i].get("lang"))
    cache.flush()
    return states, frames, texts, langs
