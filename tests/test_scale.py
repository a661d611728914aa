"""Memory and speed where the paper runs: sequence packing (loss and gradients equal to the padded
batch) and gradient checkpointing (equal losses)."""

from __future__ import annotations

import pytest
import torch
from test_training import config, make_data

from llasm.data.dataset import Collator
from llasm.data.packing import collate_packed, pack_rows
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
    with pytest.raises(ValueError, match="data.packing needs objective.type ce"):
        Trainer(load_config(config(tmp_path, data, **{"data.packing": True, "objective.type": "units"})))


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
