"""Training objectives beyond plain cross-entropy (``objective.type`` in a stage YAML).

``self_reply`` (Fathullah et al., "Towards General-Purpose Speech Abilities for LLMs Using
Unpaired Data"): the target for a spoken prompt is the frozen LLM's own reply to its transcript,
so the model learns to treat speech like the text it stands for. The replies are made once, before
training, by :func:`precompute_self_replies`: every rank its share of the rows, batched.

``kl`` (Ultravox's knowledge distillation): cross-entropy plus
``KL(p_LLM(. | transcript) || p_model(. | speech))`` over the assistant tokens, the teacher being
the frozen LLM reading the transcript as text: its rows come from :func:`llasm.data.dataset.teacher_row`, the loss is
:func:`llasm.training.losses.kl_loss`.
"""

from __future__ import annotations

import math

import torch

from llasm.chat import chat_batch
from llasm.data.dataset import transcript_of


def self_reply_rows(rows: list[dict]) -> list[tuple[dict, str]]:
    """The rows a self reply is made for (one audio and a transcript), with their transcripts."""
    return [(row, t) for row in rows if (t := transcript_of(row)) and len(row.get("audios", [])) == 1]


@torch.no_grad()
def precompute_self_replies(rows: list[dict], model, processor=None, max_new_tokens: int = 128, batch_size: int = 16,
                            rank: int = 0, world_size: int = 1, synced: bool = False) -> list[dict]:
    """Rows ``{<speech> -> the frozen LLM's reply to the transcript}``; rows without transcript dropped.

    Of the eligible rows this makes every ``world_size``-th, from ``rank`` (interleave the ranks' lists
    to get the source order back), ``batch_size`` per ``generate`` call on the model's device. With
    ``synced`` (ZeRO-3: every forward gathers weights from all ranks) every rank runs the same number
    of calls, padding its last with repeated rows, and ``generate`` keeps stepping until all are done.
    Each new row keeps ``audios``, ``id``, ``lang``, ``system`` and gains ``transcript`` (used by ``kl``).
    """
    eligible = self_reply_rows(rows)
    mine = eligible[rank::world_size]
    calls = math.ceil(math.ceil(len(eligible) / world_size) / batch_size) if synced else math.ceil(len(mine) / batch_size)
    was_training = model.training
    model.eval()
    out = []
    for call in range(calls):
        chunk = mine[call * batch_size:(call + 1) * batch_size]
        padded = chunk + [(mine or eligible)[0]] * (batch_size - len(chunk)) if synced else chunk
        conversations = [([{"role": "system", "content": row["system"]}] if row.get("system") else [])
                         + [{"role": "user", "content": transcript}] for row, transcript in padded]
        replies = chat_batch(model, conversations, max_new_tokens=max_new_tokens, processor=processor,
                             synced_gpus=synced)
        for (row, transcript), reply in zip(chunk, replies):
            new = {k: v for k, v in row.items() if k in ("id", "lang", "audios", "system")}
            new.update(transcript=transcript, conversations=[{"from": "human", "value": "<speech>"},
                                                             {"from": "gpt", "value": reply or "."}])
            out.append(new)
    model.train(was_training)
    return out
