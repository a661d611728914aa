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
from pathlib import Path

import torch

from llasm.chat import chat_batch
from llasm.data.dataset import Source, transcript_of
from llasm.io import read_jsonl, write_jsonl


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


def self_reply_sources(sources: list[Source], out_dir: Path, model, processor, objective, accelerator,
                       synced: bool = False) -> list[Source]:
    """Replace each source by its self-reply version, kept in ``out_dir`` (made once: a rerun or a
    resume reuses it). Every rank generates every ``world``-th row, batched, on its device, into
    its own shard; rank 0 merges the shards in the source's order. ``synced``: ZeRO-3 (every rank
    steps ``generate`` until all are done)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    out = []
    for i, source in enumerate(sources):
        target = Path(out_dir) / f"self_replies-{i}-{Path(source.path).stem}.jsonl"
        out.append(Source(str(target), source.weight, source.name))
        if target.exists():  # output_dir is on a filesystem every rank sees
            continue
        shard = target.with_suffix(f".rank{rank}.jsonl")
        if not shard.exists():
            root = Path(source.path).resolve().parent
            rows = read_jsonl(source.path)
            for row in rows:  # the new file lives elsewhere: make audio paths absolute
                row["audios"] = [str(root / a) for a in row.get("audios", [])]
            write_jsonl(shard, precompute_self_replies(
                rows, model, processor, objective.max_new_tokens, objective.generate_batch_size,
                rank=rank, world_size=world, synced=synced))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shards = [read_jsonl(target.with_suffix(f".rank{r}.jsonl")) for r in range(world)]
            # rank r made eligible rows r, r + world, ...: interleave the shards to get the source order back
            write_jsonl(target, [s[k] for k in range(max(map(len, shards), default=0)) for s in shards if k < len(s)])
            for r in range(world):
                target.with_suffix(f".rank{r}.jsonl").unlink()
        accelerator.wait_for_everyone()
    return out
