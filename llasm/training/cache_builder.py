"""The encoder cache built before training: the work behind ``llasm encoder-cache`` (its command line,
sharded over machines, is :mod:`llasm.training.cache_cli`).

:func:`build_cache` reads a stage YAML's model and data sources and runs the frozen Whisper tower once
over every audio chunk of a shard's rows, through :class:`~llasm.training.encoder_cache.EncoderCache`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from llasm.builder import load_model
from llasm.data.dataset import Collator, ConversationDataset, Source
from llasm.device import resolve_device
from llasm.io import llasm_home
from llasm.sharding import Records, Shard
from llasm.training.config import TrainConfig
from llasm.training.encoder_cache import EncoderCache, model_key

log = logging.getLogger(__name__)


def cache_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.encoder_cache.dir or os.path.join(llasm_home(), "encoder_cache"))


@torch.no_grad()
def build_cache(cfg: TrainConfig, shard: Shard = Shard(), batch_size: int = 8, device: str | None = None,
                progress: bool = True) -> Records:
    """Encode ``shard``'s rows of ``cfg.data.sources`` into ``cfg.encoder_cache.dir``.

    Returns the :class:`~llasm.sharding.Records`: one item ``{"id", "audio_keys"}`` per row that
    decoded (``audio_keys``: its chunks' cache keys; ``[]`` for a text-only row), one reject
    ``{"id", "reason"}`` per row that did not. ``device`` defaults to CUDA when present.
    """
    device = resolve_device(device)
    model, processor = load_model(cfg.model)
    model.audio_tower.to(device).eval()
    sources = [Source(path=s["path"], weight=float(s.get("weight", 1.0)), name=s.get("name", ""))
               for s in cfg.data.sources]
    dataset = ConversationDataset(sources, processor, model_key=model_key(model, processor),
                                  max_length=cfg.data.max_length)
    cache = EncoderCache(cache_dir(cfg))
    records = Records()
    mine = []
    for position, (row, _) in enumerate(dataset.rows):
        records.saw(row.get("id", position))
        if shard.owns(position):
            mine.append(position)
    collate = Collator(processor)
    for start in tqdm(range(0, len(mine), batch_size), desc="encoder cache", unit="batch", disable=not progress):
        positions = mine[start : start + batch_size]
        items = [dataset[p] for p in positions]
        good = []
        for position, item in zip(positions, items):
            if "rejected" in item:
                records.reject(position, {"id": item["id"], "reason": item["rejected"]})
            else:
                records.item(position, {"id": item["id"], "audio_keys": item["audio_keys"]})
                good.append(item)
        audio = [g for g in good if g["audio_keys"]]
        if audio:
            batch = collate(audio)
            cache.encode(model, batch["audio_keys"], batch["input_features"].to(device),
                         batch["feature_attention_mask"].to(device))
    cache.flush()
    log.info("encoder cache %s: %d chunks encoded, %d already there", cache.directory, cache.misses, cache.hits)
    return records
