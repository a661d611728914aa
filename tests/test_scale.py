"""Beyond one machine, in one process: sequence packing (loss and gradients equal to the padded
batch), gradient checkpointing (equal losses), sharded streamed data (disjoint ranks, every row once
per epoch, resume mid-epoch, DataLoader workers, stages 1 and 3)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import build_tiny
from test_training import _units_config, config, make_data

from llasm.audio import load_audio
from llasm.data.dataset import Collator, Source
from llasm.data.packing import collate_packed, pack_rows
from llasm.data.shards import ShardedConversations, read_index, write_shards
from llasm.training import Trainer, load_config


@pytest.fixture()
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2, 6], 8) == [[0, 1], [2], [3, 4]]  # 6+2, 5+3, 4
    assert pack_rows([9, 1], 8) == [[0], [1]]  # too long: a row of its own
    with pytest.raises(ValueError, match="capacity"):
        pack_rows([1], 0)


def test_collate_packed_restarts_positions_and_masks_each_first_label(tmp_path, data):
    trainer = Trainer(load_config(config(tmp_path, data, **{"encoder_cache.enabled": False})))
    items = [trainer.dataset[i] for i in (0, 8, 9)]  # an ASR row, the text-only row, the 2-audio row
    lengths = [len(i["input_ids"]) for i in items]
    batch, ordered = collate_packed(trainer.processor, items, capacity=sum(lengths))
    assert batch["input_ids"].shape == (1, sum(lengths)) and ordered == items
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert [int(p) for p in batch["position_ids"][0, starts]] == [0, 0, 0]
    assert all(int(batch["labels"][0, s]) == -100 for s in starts)
    assert batch["input_features"].shape[0] == 3  # the ASR clip, then the two clips of the last row


@pytest.mark.parametrize("fast_loss", [True, False])
def test_packed_loss_equals_padded(tmp_path, data, fast_loss):
    """Stage 2 (LLM trained): packing 6 conversations (audio, text-only, multi-turn with 2 clips) into
    rows of 340 tokens (3 rows) gives the padded batch's loss and gradients."""
    over = {"encoder_cache.enabled": False, "trainable.language_model": "full", "train.fast_loss": fast_loss}
    trainer = Trainer(load_config(config(tmp_path, data, **over)))
    items = [trainer.dataset[i] for i in (9, 0, 8, 3, 6, 1)]
    results = []
    for pack_length in (None, 340):
        batch = Collator(trainer.processor, trainer.dataset, pack_length=pack_length)(list(items))
        trainer.model.zero_grad()
        loss = trainer.loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((float(loss.detach()), grads, batch["input_ids"].shape))
    (padded, padded_grads, padded_shape), (packed, packed_grads, packed_shape) = results
    assert packed_shape[0] < padded_shape[0] == 6  # really packed
    assert packed_shape[0] * packed_shape[1] < padded_shape[0] * padded_shape[1]  # fewer token slots
    assert abs(packed - padded) < 1e-5, (packed, padded)
    assert packed_grads.keys() == padded_grads.keys() and any("adaptor" in n for n in packed_grads)
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packing_needs_the_ce_objective(tmp_path, data):
    from llasm.training import train
    from llasm.training.describe import InputError

    with pytest.raises(ValueError, match="data.packing works with objective.type ce only, got units"):
        Trainer(load_config(config(tmp_path, data, **{"data.packing": True, "objective.type": "units"})))
    # before any model loads, naming the setting that is wrong
    with pytest.raises(InputError, match="data.packing works with objective.type ce only, got kl"):
        train(config(tmp_path, data, **{"data.packing": True, "objective.type": "kl", "data.max_length": 64}))


@pytest.mark.parametrize("language_model", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_losses(tmp_path, data, language_model):
    """3 steps with and without checkpointing (LoRA with dropout: the recompute replays its RNG)."""
    losses = []
    for ckpt in (False, True):
        over = {"output_dir": str(tmp_path / f"ckpt{ckpt}"), "trainable.language_model": language_model,
                "train.gradient_checkpointing": ckpt, "train.max_steps": 3, "encoder_cache.enabled": False,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "train.lr": 1e-2}
        trainer = Trainer(load_config(config(tmp_path, data, **over)))
        layers = trainer.model.language_model.get_decoder().layers
        assert all(layer.gradient_checkpointing == ckpt for layer in layers)
        losses.append([loss for _, loss in trainer.fit()["losses"]])
    assert len(losses[0]) == 3
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)


# -- sharded, streamed data -------------------------------------------------------------------
def shard_data(tmp_path, n: int = 6, num_shards: int = 4):
    """make_data's rows, plus one whose audio is missing, as ``num_shards`` Parquet shards."""
    jsonl = make_data(tmp_path / "jsonl", n=n)
    with open(jsonl, "a") as f:
        f.write(json.dumps({"id": "gone", "audios": ["wavs/nope.wav"], "conversations": [
            {"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]}) + "\n")
    return jsonl, write_shards(jsonl, tmp_path / "shards", num_shards=num_shards, progress=False)


def test_write_shards_holds_every_usable_row_and_its_audio_bytes(tmp_path):
    jsonl, index = shard_data(tmp_path, n=9)  # 9 ASR + text + 2-audio rows usable, 1 rejected
    assert index["num_rows"] == [2, 3, 3, 3] and index["rejected"] == 1
    assert read_index(tmp_path / "shards") == index
    rows = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (tmp_path / "shards").glob("*.parquet")),
                                 split="train")
    assert sorted(rows["id"]) == sorted([f"asr-{i}" for i in range(9)] + ["text-0", "multi-0"])
    multi = rows[rows["id"].index("multi-0")]
    assert [a["path"] for a in multi["audios"]] == ["0.wav", "1.wav"] and multi["audio_samples"] == [8000, 12000]
    original = load_audio(jsonl.parent / "wavs" / "1.wav")
    assert (load_audio({"bytes": multi["audios"][1]["bytes"]}) == original).all()
    assert '"reason": "' in (tmp_path / "shards" / "rejects.jsonl").read_text()


def _stream(tmp_path, rank, world, **kw):
    _, processor = build_tiny()
    dataset = ShardedConversations([Source(str(tmp_path / "shards"))], processor, batch_size=2, seed=3, group_size=2,
                                   rank=rank, world_size=world, **kw)
    dataset.collate = lambda items: [item["id"] for item in items]
    return dataset


def _epoch(dataset, epoch, start=0, workers=0):
    dataset.set_epoch(epoch, start)
    return list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers))


def test_streamed_ranks_read_disjoint_rows_every_row_once_per_epoch(tmp_path):
    shard_data(tmp_path)  # 8 usable rows in 4 shards of 2; 2 ranks read 2 shards each
    ranks = [_stream(tmp_path, rank, 2) for rank in range(2)]
    assert ranks[0].batches_per_epoch() == 2  # 4 rows per rank: one window of 4 rows, 2 batches
    epochs = []
    for epoch in range(2):
        seen = [[i for batch in _epoch(d, epoch) for i in batch] for d in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted([f"asr-{i}" for i in range(6)] + ["text-0", "multi-0"])
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # another shard order and batch order each epoch
    # resume: from batch 1 the stream gives exactly the rest of the epoch
    full = _epoch(ranks[1], 1)
    assert _epoch(ranks[1], 1, start=1) == full[1:] and len(ranks[1]) == 1
    # two DataLoader worker processes give the same batches in the same order
    assert _epoch(ranks[0], 1, workers=2) == _epoch(ranks[0], 1)


@pytest.mark.parametrize("stage", ["asr", "units"])
def test_stages_train_from_shards(tmp_path, stage):
    """Stage 1 (ce, encoder cache) and stage 3 (units: the rows keep their unit targets) from shards."""
    if stage == "units":
        cfg = _units_config(tmp_path, make_data(tmp_path / "data"), "run")
        source = cfg["data"]["sources"][0]["path"]
    else:
        source = make_data(tmp_path / "data")
        cfg = config(tmp_path, source)
    write_shards(source, tmp_path / "shards", num_shards=2, progress=False)
    cfg["data"]["sources"] = [{"path": str(tmp_path / "shards")}]
    cfg["train"]["max_steps"] = 2
    trainer = Trainer(load_config(cfg))
    result = trainer.fit()
    assert result["steps"] == 2 and all(loss == loss for _, loss in result["losses"])
    if stage == "asr":
        assert trainer.cache.misses > 0


def test_shard_and_jsonl_sources_do_not_mix(tmp_path):
    jsonl, _ = shard_data(tmp_path)
    cfg = config(tmp_path, jsonl)
    cfg["data"]["sources"].append({"path": str(tmp_path / "shards")})
    with pytest.raises(ValueError, match="mixes shard folders and JSONL files"):
        Trainer(load_config(cfg))


def test_alpaca_json_becomes_a_shard_folder_and_empty_data_says_why(tmp_path):
    """Stage 2's text-only sources stream too: an Alpaca JSON list is read as it comes; a file without a
    usable row names the first reasons."""
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi!"},
                                  {"instruction": "Capital of France?", "input": "", "output": "Paris."}]))
    index = write_shards(alpaca, tmp_path / "alpaca.shards", num_shards=1, progress=False)
    assert sum(index["num_rows"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "audios": ["gone.wav"], "conversations": [
        {"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "y"}]}) + "\n")
    with pytest.raises(ValueError, match=r"no usable row \(1 rejected; the first: x: .*gone.wav: file not found"):
        write_shards(bad, tmp_path / "bad.shards", num_shards=1, progress=False)
