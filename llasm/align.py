"""CTC embedding alignment: a cheap warm start for the adaptor before stage 1.

Stage 1 teaches the adaptor to produce audio tokens the frozen LLM can read, but every step costs
a forward and backward pass through the LLM. This warm start needs no LLM pass at all: each audio
token is scored against the LLM's own (frozen) input embeddings of the transcript's tokens, and a
CTC loss (blank = one learned vector) makes the sequence of audio tokens spell the transcript in
embedding space. Audio tokens (6.25 per second at ``stack_factor=8``) outnumber text tokens, as
CTC needs. Afterwards stage 1's cross-entropy through the LLM starts from tokens that already sit
near the right word embeddings, which is what makes a CPU-sized run learn ASR at all.

The classifier is restricted to the token ids that occur in the training transcripts (a few
thousand rather than the LLM's 150k vocabulary): the scores are distances to embeddings, so the
restriction changes which wrong tokens compete, not where the right one lies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AlignConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    max_minutes: float | None = None
    seed: int = 0
    log_every: int = 25


class EmbeddingCTC(nn.Module):
    """Scores ``(N, T, D)`` audio tokens against a fixed set of embeddings plus a learned blank."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)  # (V', D)
        scale = embeddings.float().norm(dim=-1).mean()
        self.blank = nn.Parameter(torch.randn(embeddings.shape[1]) * scale / math.sqrt(embeddings.shape[1]))
        # logits = -(||x - e||^2) / tau, up to a per-token constant: (2 x.e - ||e||^2) / tau
        self.log_tau = nn.Parameter(torch.tensor(math.log(float(scale) ** 2 / 4 + 1e-6)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.embeddings, self.blank[None]], dim=0)  # (V'+1, D); blank is last
        logits = 2 * tokens.float() @ table.T - (table * table).sum(-1)  # (N, T, V'+1)
        return torch.log_softmax(logits / self.log_tau.exp(), dim=-1)


def ctc_align_adaptor(model, states: list[torch.Tensor], frames: list[int], texts: list[str], tokenizer,
                      config: AlignConfig = AlignConfig(), log=print) -> list[float]:
    """Train ``model.adaptor`` with embedding-space CTC on cached encoder ``states``.

    ``states[i]``: ``(T_enc_i, D_whisper)`` encoder output of clip ``i`` (one chunk, <= 30 s),
    ``frames[i]`` its mel frames, ``texts[i]`` its transcript. Returns the loss per step.
    """
    from .configuration import audio_token_lengths

    generator = torch.Generator().manual_seed(config.seed)
    targets = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    vocab = sorted({i for ids in targets for i in ids})
    remap = {tok: i for i, tok in enumerate(vocab)}
    table = model.get_input_embeddings().weight[torch.tensor(vocab)]
    scorer = EmbeddingCTC(table)
    blank = len(vocab)
    params = [p for p in model.adaptor.parameters()] + list(scorer.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    n_tokens = [audio_token_lengths([f], model.config)[0] for f in frames]
    usable = [i for i in range(len(states)) if 0 < len(targets[i]) <= n_tokens[i]]
    losses, start = [], time.time()
    model.adaptor.train()
    for step in range(config.steps):
        if config.max_minutes and time.time() - start > 60 * config.max_minutes:
            log(f"[align] stopped at step {step}: {config.max_minutes} min budget")
            break
        pick = [usable[int(i)] for i in torch.randint(len(usable), (config.batch_size,), generator=generator)]
        longest = max(states[i].shape[0] for i in pick)
        batch = torch.zeros(len(pick), longest, states[pick[0]].shape[1])
        for row, i in enumerate(pick):
            batch[row, : states[i].shape[0]] = states[i].float()
        tokens = model.adaptor(batch.to(model.adaptor_dtype))  # (B, T_tok, D_llm)
        log_probs = scorer(tokens).transpose(0, 1)  # (T_tok, B, V'+1)
        flat = torch.tensor([remap[t] for i in pick for t in targets[i]])
        loss = nn.functional.ctc_loss(log_probs, flat, torch.tensor([n_tokens[i] for i in pick]),
                                      torch.tensor([len(targets[i]) for i in pick]), blank=blank, zero_infinity=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if config.log_every and (step + 1) % config.log_every == 0:
            log(f"[align] step {step + 1}/{config.steps} ctc {sum(losses[-config.log_every:]) / config.log_every:.3f}")
    model.adaptor.eval()
    return losses
