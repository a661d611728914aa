"""CTC embedding alignment: a cheap warm start for the adaptor before stage 1.

Stage 1 teaches the adaptor to produce audio tokens the frozen LLM can read, but every step costs
a forward and backward pass through the LLM. This warm start needs no LLM pass at all: each audio
token is scored against the LLM's own (frozen) input embeddings of the transcript's tokens, and a
CTC loss (blank = one learned direction) makes the sequence of audio tokens spell the transcript in
embedding space. Audio tokens (6.25 per second at ``stack_factor=8``) outnumber text tokens, as
CTC needs. Afterwards stage 1's cross-entropy through the LLM starts from tokens that already point
at the right word embeddings.

Scores are cosines around the mean embedding, not distances: with distances, a softmax over
``-||x - e||^2`` rewards running away from every wrong embedding, and the audio tokens end far from
every embedding, decoding only ".". Cosines learn, and one exact rescale of the adaptor's last layer
afterwards (:func:`rescale_adaptor_output`) puts the tokens at the embeddings' own distance from the
mean, where the LLM expects its inputs.

The classifier is restricted to the token ids that occur in the training transcripts (a few
thousand rather than the LLM's 150k vocabulary): it changes which wrong tokens compete, not where
the right one lies.

A few thousand TTS clips are learned by heart long before the adaptor reads speech in general, so
the cached states are augmented SpecAugment-style as they are drawn: spans of frames zeroed
(``time_mask``) and channel dropout (``channel_dropout``). bf16 autocast (``mixed_precision``)
nearly halves a step's time on CPUs with AVX512-BF16 / AMX.

Chinese transcripts are spelled one character at a time (``cjk_chars``). Qwen's tokenizer merges
frequent words (时候, 公园) into single tokens, so a few hundred sentences leave many held-out tokens
never seen in training; as characters, few are. The frozen LLM does not read that spelling well; the
LoRA of stage 2 learns to. Every measurement behind these choices: docs/experiments/warm-start.md.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from llasm.configuration import audio_token_lengths
from llasm.lang import CJK_RUN


@dataclass
class AlignConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    max_minutes: float | None = None
    seed: int = 0
    log_every: int = 25
    time_mask: float = 0.0  # fraction of each clip's encoder frames zeroed, in spans of ``mask_span``
    mask_span: int = 10  # encoder frames (20 ms each)
    channel_dropout: float = 0.0  # dropout on the encoder states' channels
    mixed_precision: str = "no"  # no | bf16 (autocast; the adaptor's weights stay as they are)
    cjk_chars: bool = True  # spell Chinese words one character at a time (``ctc_targets``)


def ctc_targets(text: str, tokenizer, cjk_chars: bool = True) -> list[int]:
    """The LLM token ids the audio tokens of ``text`` should spell: ``text``'s own tokens, except that with
    ``cjk_chars`` a token of several CJK ideographs (公园) becomes one token per character (公, 园).

    Decoding gives the same text. Tokens that start a word (sentencepiece's ``▁``) stay whole, and so does
    any token with a character the tokenizer cannot write on its own.
    """
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not cjk_chars:
        return ids
    out = []
    for token, name in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        piece = tokenizer.decode([token])
        chars = [_char_ids(tokenizer, c) for c in piece] if len(piece) > 1 and CJK_RUN.fullmatch(piece) else None
        if chars and all(chars) and not name.startswith("\u2581"):
            out += [i for ids_of_char in chars for i in ids_of_char]
        else:
            out.append(token)
    return out


_CHAR_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {char: ids}; dies with it


def _char_ids(tokenizer, char: str) -> tuple[int, ...] | None:
    """The ids of ``char`` in the middle of a text (no word-start marker), or None."""
    known = _CHAR_IDS.setdefault(tokenizer, {})
    if char not in known:
        anchor = tokenizer("\n", add_special_tokens=False).input_ids
        ids = tokenizer("\n" + char, add_special_tokens=False).input_ids
        ok = ids[: len(anchor)] == anchor and tokenizer.decode(ids[len(anchor):]) == char
        known[char] = tuple(ids[len(anchor):]) if ok else None
    return known[char]


class EmbeddingCTC(nn.Module):
    """Scores ``(N, T, D)`` audio tokens by cosine to fixed embeddings (around ``center``) plus a blank."""

    def __init__(self, embeddings: torch.Tensor, center: torch.Tensor | None = None):
        super().__init__()
        embeddings = embeddings.detach().float()
        center = embeddings.mean(0) if center is None else center.detach().float()
        self.register_buffer("center", center, persistent=False)  # (D,)
        self.register_buffer("directions", nn.functional.normalize(embeddings - center, dim=-1), persistent=False)
        self.blank = nn.Parameter(torch.randn(embeddings.shape[1]))  # a learned direction, normalized in use
        self.scale = nn.Parameter(torch.tensor(10.0))  # inverse temperature of the cosines

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.directions, nn.functional.normalize(self.blank, dim=0)[None]])  # (V'+1, D)
        cosines = nn.functional.normalize(tokens.float() - self.center, dim=-1) @ table.T  # (N, T, V'+1)
        return torch.log_softmax(self.scale * cosines, dim=-1)

    @torch.no_grad()
    def greedy(self, tokens: torch.Tensor, lengths: list[int]) -> list[list[int]]:
        """Greedy CTC decoding of ``(N, T, D)`` audio tokens: rows of the embedding table, per sequence."""
        blank = self.directions.shape[0]
        out = []
        for best, n in zip(self(tokens).argmax(-1).tolist(), lengths):
            out.append([b for k, b in enumerate(best[:n]) if b != blank and (k == 0 or b != best[k - 1])])
        return out


def time_mask(frames: int, fraction: float, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(frames,)`` bool mask: ``round(fraction * frames / span)`` spans of ``span`` frames at random starts
    (they may overlap, so at most ``fraction`` of the frames is masked)."""
    mask = torch.zeros(frames, dtype=torch.bool)
    starts = torch.randint(max(1, frames - span + 1), (round(fraction * frames / span),), generator=generator)
    for start in starts.tolist():
        mask[start : start + span] = True
    return mask


def rescale_adaptor_output(adaptor: nn.Module, factor: float, center: torch.Tensor) -> None:
    """Make the adaptor output ``center + factor * (x - center)`` by rewriting its last Linear (exact)."""
    last = [m for m in adaptor.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.copy_(factor * (last.bias - center.to(last.bias)) + center.to(last.bias))


def ctc_align_adaptor(model, states: list[torch.Tensor], frames: list[int], texts: list[str], tokenizer,
                      config: AlignConfig = AlignConfig(), log=print, return_scorer: bool = False):
    """Train ``model.adaptor`` with embedding-space CTC on cached encoder ``states``.

    ``states[i]``: ``(T_enc_i, D_whisper)`` encoder output of clip ``i`` (one chunk, <= 30 s),
    ``frames[i]`` its mel frames, ``texts[i]`` its transcript. Returns the loss per step; with
    ``return_scorer``, ``(losses, scorer, vocab)``: ``scorer.greedy`` decodes audio tokens into rows of
    ``vocab`` (LLM token ids), e.g. to see how well the adaptor reads held-out clips (``bench/warm_start.py``).
    """
    if config.mixed_precision not in ("no", "bf16"):
        raise ValueError(f"AlignConfig.mixed_precision must be 'no' or 'bf16', got {config.mixed_precision!r}")
    generator = torch.Generator().manual_seed(config.seed)
    targets = [ctc_targets(t, tokenizer, config.cjk_chars) for t in texts]
    vocab = sorted({i for ids in targets for i in ids})
    remap = {tok: i for i, tok in enumerate(vocab)}
    embeddings = model.get_input_embeddings().weight.detach()
    center = embeddings.float().mean(0)  # (D_llm,) the centre of the whole vocabulary
    table = embeddings[torch.tensor(vocab)]
    scorer = EmbeddingCTC(table, center).to(table.device)
    blank = len(vocab)
    params = [p for p in model.adaptor.parameters()] + list(scorer.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    n_tokens = [audio_token_lengths([f], model.config)[0] for f in frames]
    usable = [i for i in range(len(states)) if 0 < len(targets[i]) <= n_tokens[i]]
    losses, start = [], time.time()

    device = next(model.adaptor.parameters()).device

    def project(pick, augment=False):  # cached states of clips ``pick`` -> (B, T_tok, D_llm) audio tokens
        batch = torch.zeros(len(pick), max(states[i].shape[0] for i in pick), states[pick[0]].shape[1])
        for row, i in enumerate(pick):
            clip = states[i].float()
            if augment and config.time_mask:
                clip = clip.masked_fill(time_mask(clip.shape[0], config.time_mask, config.mask_span, generator)[:, None], 0.0)
            batch[row, : clip.shape[0]] = clip
        if augment and config.channel_dropout:
            batch = nn.functional.dropout(batch, config.channel_dropout)
        return model.adaptor(batch.to(device, model.adaptor_dtype))

    model.adaptor.train()
    for step in range(config.steps):
        if config.max_minutes and time.time() - start > 60 * config.max_minutes:
            log(f"[align] stopped at step {step}: {config.max_minutes} min budget")
            break
        pick = [usable[int(i)] for i in torch.randint(len(usable), (config.batch_size,), generator=generator)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16"):
            log_probs = scorer(project(pick, augment=True)).float().transpose(0, 1)  # (T_tok, B, V'+1)
        flat = torch.tensor([remap[t] for i in pick for t in targets[i]], device=log_probs.device)
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
    # cosines ignore the norm, which grows far past the embeddings'; bring the
    # tokens' mean distance from the centre to the transcript embeddings' own
    with torch.no_grad():
        pick = usable[:64]
        tokens = project(pick).float()
        real = torch.arange(tokens.shape[1])[None] < torch.tensor([n_tokens[i] for i in pick])[:, None]
        spread = (tokens[real] - center).norm(dim=-1).mean()
        target = (table.float() - center).norm(dim=-1).mean()
        rescale_adaptor_output(model.adaptor, float(target / spread), center)
    log(f"[align] audio tokens rescaled by {float(target / spread):.4g} to the embeddings' spread {float(target):.3f}")
    return (losses, scorer, vocab) if return_scorer else losses
