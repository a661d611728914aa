"""Sequence packing: several conversations in one row, each attending only to itself.

``data.packing: true`` (stage 2's long, uneven conversations) lays a batch's conversations into as few
rows of at most ``data.max_length`` tokens as first-fit-decreasing allows, instead of padding every
conversation to the longest. Each conversation keeps its own positions (``position_ids`` restart at
0) and no ``attention_mask`` is passed: transformers then reads the conversation boundaries from the
restarting ``position_ids`` — a block-diagonal causal mask for sdpa and eager
(``masking_utils.find_packed_sequence_indices``), variable-length kernels (``cu_seqlens``) for
flash-attention — as its ``DataCollatorWithFlattening`` does. The first label of every
conversation is -100, so no conversation learns to predict the next one's first token; the loss is
the unpacked batch's (``tests/test_scale.py::test_packed_loss_equals_padded``). Audio chunks are
ordered row by row, conversation by conversation, so the ``<au_patch>`` slots (scattered in that
order) receive their own clips. torchtune's ``PackedDataset`` packs offline into fixed rows with the
same per-sample positions; here packing is per batch, so the data order and resume stay the
sampler's.
"""

from __future__ import annotations

import torch

from llasm.processing import IGNORE_INDEX


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity`` tokens (first-fit decreasing;
    an item longer than ``capacity`` gets a row of its own). Rows keep their items in input order."""
    if capacity < 1:
        raise ValueError(f"packing capacity must be >= 1 token, got {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if row is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[row].append(index)
            room[row] -= lengths[index]
    return [sorted(r) for r in sorted(rows, key=min)]


def collate_packed(processor, items: list[dict], capacity: int) -> tuple[dict, list[dict]]:
    """Pack encoded conversations (``input_ids``, ``labels``, ``audio_chunks``) into rows.

    Returns ``(batch, ordered)``: ``batch`` holds ``input_ids``, ``labels`` and ``position_ids`` of
    shape ``(R, L)`` (``R`` rows, ``L`` the longest row; the rest padded, labels -100, positions
    continuing the row's last conversation, which cannot see them under the causal mask) plus
    ``input_features`` / ``feature_attention_mask`` of every audio chunk; ``ordered`` is ``items``
    in the order they were laid out (row by row), which per-chunk side data must follow.
    """
    rows = pack_rows([len(item["input_ids"]) for item in items], capacity)
    ordered = [items[i] for row in rows for i in row]
    longest = max(sum(len(items[i]["input_ids"]) for i in row) for row in rows)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        col = n = 0
        for i in row:
            n = len(items[i]["input_ids"])
            ids[r, col : col + n] = torch.tensor(items[i]["input_ids"], dtype=torch.long)
            labels[r, col : col + n] = torch.tensor(items[i]["labels"], dtype=torch.long)
            labels[r, col] = IGNORE_INDEX  # never predict a conversation's first token from the previous one
            positions[r, col : col + n] = torch.arange(n)
            col += n
        positions[r, col:] = torch.arange(n, n + longest - col)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    chunks = [c for item in ordered for c in item["audio_chunks"]]
    if chunks:
        batch.update(processor.pad_features(chunks))
    return batch, ordered
