"""LLaMA-Omni's CTC unit head: the LLM's answer hidden states -> discrete speech units.

``(B, L, D_llm)`` last-layer hidden states of the answer tokens -> Linear to ``hidden_size`` (with
``text_embeddings``, LLaMA-Omni 2's gate fusion with each token's input embedding, given after the
state: ``(B, L, 2 * D_llm)``) -> repeat each ``upsample_factor`` times (λ = 25 in the paper) -> ``num_layers`` causal
``LlamaDecoderLayer`` s (RoPE, no cache) -> Linear to ``num_units + 1`` classes; the blank is
``num_units`` (the last class). With ``input: phonemes`` the head reads the answer's phonemes
(:mod:`llasm.speech.phonemes`) instead of LLM states: an embedding and ``conv_layers`` residual
convolutions (kernel ``conv_kernel``, centred: each phoneme sees ``conv_layers * (conv_kernel // 2)``
phonemes ahead) stand where the state projection was, with λ frames per phoneme — text -> speech
tokens as CosyVoice's LM does it, but with phonemes a few thousand answers can generalize from.
Trained with ``F.ctc_loss(blank=num_units, zero_infinity=True)``;
unit targets are padded with ``-100`` (padding with 0 would be unit 0, LLaMA-Omni's reproduction bug).

Because every layer is causal and position ``j`` of the upsampled sequence only sees tokens
``<= j // λ``, the log-probs of a prefix do not change when more tokens arrive, so units can be
decided while the text is still being generated (:class:`UnitStreamer`, :func:`stream_units`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from llasm.processing import IGNORE_INDEX
from llasm.speech.phonemes import LANG_TAGS, PhonemeStream, phoneme_ids, phoneme_inventory, phonemize


@dataclass
class UnitHeadConfig:
    num_units: int = 1000  # K; the CTC blank is class K
    upsample_factor: int = 25  # λ: upsampled frames per text token
    hidden_size: int = 512
    num_layers: int = 2
    num_heads: int = 8
    intermediate_size: int = 2048
    input_size: int | None = None  # D_llm; None -> take it from the LLM when building (see from_llm)
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192  # upsampled frames (RoPE is computed, this is only a hint)
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0
    # which LLM state stands for answer token y_i: "input" — where y_i is the input (the head sees the
    # chosen token; its units come one LLM step after the token), or "output" — the state that
    # produced y_i (LLaMA-Omni's inference: text and its units come from the same step, one step sooner)
    state: str = "input"
    # LLaMA-Omni 2's input (arXiv 2505.02625, "gate fusion"): the head also reads the chosen token's
    # input embedding, so it need not recover the token from the LLM state; the caller appends that
    # embedding to each state (``(..., 2 * D_llm)``: ``model.unit_head_inputs``)
    text_embeddings: bool = False
    # what the head reads: "states" (the LLM's answer states, LLaMA-Omni) or "phonemes" (the answer's text
    # phonemized, llasm.speech.phonemes; the LLM is not run to train it and its units follow the text)
    input: str = "states"
    phonemes: list[str] | None = None  # the phoneme inventory (ids are positions); filled when the head is built
    conv_layers: int = 2  # phoneme encoder: residual convolutions over the phonemes
    conv_kernel: int = 5  # odd; centred, so each layer looks conv_kernel // 2 phonemes ahead

    def __post_init__(self) -> None:
        for name in ("num_units", "upsample_factor", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"unit_head.{name} must be >= 1, got {getattr(self, name)}")
        if self.state not in ("input", "output"):
            raise ValueError(f"unit_head.state must be 'input' or 'output', got {self.state!r}")
        if self.input not in ("states", "phonemes"):
            raise ValueError(f"unit_head.input must be 'states' or 'phonemes', got {self.input!r}")
        if self.input == "phonemes" and self.text_embeddings:
            raise ValueError("unit_head.text_embeddings adds the LLM's token embeddings to its states; a head with "
                             "input: phonemes reads no states (set one of them)")
        if self.conv_layers < 0 or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"unit_head.conv_layers must be >= 0 and conv_kernel odd and >= 1, got "
                             f"{self.conv_layers} / {self.conv_kernel}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"unit_head.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")

    @property
    def blank(self) -> int:
        return self.num_units

    @property
    def languages(self) -> tuple[str, ...] | None:
        """The answer languages a head that reads phonemes can speak (``None``: any, for a head on states)."""
        return tuple(LANG_TAGS) if self.input == "phonemes" else None

    @property
    def lookahead(self) -> int:
        """Phonemes ahead that a phoneme's frames depend on (0 for LLM states: the head is causal)."""
        return self.conv_layers * (self.conv_kernel // 2) if self.input == "phonemes" else 0

    @classmethod
    def from_dict(cls, data: dict) -> "UnitHeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown unit_head settings: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


class CtcUnitHead(nn.Module):
    def __init__(self, config: UnitHeadConfig | dict, input_size: int | None = None):
        super().__init__()

        config = UnitHeadConfig.from_dict(config) if isinstance(config, dict) else config
        if config.input == "phonemes":  # the encoder gives hidden_size features; the LLM's width does not matter
            if config.phonemes is None:
                config.phonemes = list(phoneme_inventory())
            config.input_size = config.hidden_size
        elif input_size is not None:
            config.input_size = int(input_size)
        if config.input_size is None:
            raise ValueError("unit_head.input_size (the LLM hidden size) is not set")
        self.config = config
        llama = LlamaConfig(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads, rope_theta=config.rope_theta,
            max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
            attention_dropout=config.dropout, vocab_size=config.num_units + 1,
        )
        llama._attn_implementation = "sdpa"
        self.llama_config = llama
        self.input_proj = nn.Linear(config.input_size, config.hidden_size)
        if config.input == "phonemes":
            self.phoneme_encoder = PhonemeEncoder(len(config.phonemes), config.hidden_size, config.conv_layers,
                                                  config.conv_kernel)
        if config.text_embeddings:  # g = sigmoid(W [h; e]); g * h + (1 - g) * e (LLaMA-Omni 2's gate fusion)
            self.text_proj = nn.Linear(config.input_size, config.hidden_size)
            self.gate = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(llama, layer_idx=i) for i in range(config.num_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(llama)
        self.output_proj = nn.Linear(config.hidden_size, config.num_units + 1)

    @property
    def blank(self) -> int:
        return self.config.num_units

    def upsample(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L, D)`` + ``(B, L)`` -> ``(B, L*λ, D)`` + ``(B, L*λ)`` by repetition."""
        lam = self.config.upsample_factor
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return hidden.repeat_interleave(lam, dim=1), mask.bool().repeat_interleave(lam, dim=1)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, L, D_llm)`` states (``(B, L, 2 * D_llm)`` with ``text_embeddings``; ``(B, L)`` phoneme ids
        with ``input: phonemes``) -> ``(B, L, H)``.

        Raises ``ValueError`` when the input is not the one the config expects."""
        if self.config.input == "phonemes":
            if hidden.is_floating_point() or hidden.ndim != 2:
                raise ValueError(f"this unit head reads phoneme ids (B, L) (unit_head.input: phonemes), got a "
                                 f"{hidden.dtype} tensor of shape {tuple(hidden.shape)}")
            return self.input_proj(self.phoneme_encoder(hidden))
        d = self.config.input_size
        want = 2 * d if self.config.text_embeddings else d
        if hidden.shape[-1] != want:
            extra = " (the state, then the token's input embedding: model.unit_head_inputs)" if self.config.text_embeddings else ""
            raise ValueError(f"unit head input has {hidden.shape[-1]} features, expected {want}{extra}")
        hidden = hidden.to(self.input_proj.weight.dtype)
        x = self.input_proj(hidden[..., :d])
        if self.config.text_embeddings:
            e = self.text_proj(hidden[..., d:])
            g = torch.sigmoid(self.gate(torch.cat([x, e], dim=-1)))
            x = g * x + (1 - g) * e
        return x

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, units: torch.Tensor | None = None,
                unit_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """hidden ``(B, L, D_llm)`` (``(B, L, 2 * D_llm)``, state then token embedding, with
        ``text_embeddings``; phoneme ids ``(B, L)`` with ``input: phonemes``: :meth:`phoneme_batch`); mask ``(B, L)`` 1 = answer token (right padding); units ``(B, U)``
        padded with -100 (``unit_lengths`` optional: derived from the padding).

        Returns ``log_probs (B, L*λ, K+1)``, ``lengths (B,)`` (valid upsampled frames) and, with
        targets, ``loss`` (CTC, mean over the batch of per-sample loss / target length, as
        ``reduction="mean"``). Raises ``ValueError`` for an input width the config does not expect.
        """
        # projecting per token before the repetition is the same map as after it, λ times cheaper
        x, frame_mask = self.upsample(self.project(hidden), mask)  # (B, T, H)
        b, t, _ = x.shape
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        # right padding: padded keys are only seen by padded queries, whose outputs are ignored; keep each
        # query's own key so no row is fully masked (NaN-free)
        allowed = causal[None] & (frame_mask[:, None, :] | torch.eye(t, dtype=torch.bool, device=x.device)[None])
        attn = torch.zeros(b, 1, t, t, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed[:, None], torch.finfo(x.dtype).min)
        positions = torch.arange(t, device=x.device)[None].expand(b, t)
        pos_emb = self.rotary_emb(x, positions)
        for layer in self.layers:
            out = layer(x, attention_mask=attn, position_ids=positions, position_embeddings=pos_emb)
            x = out[0] if isinstance(out, tuple) else out
        logits = self.output_proj(self.norm(x)).float()
        log_probs = logits.log_softmax(-1)  # (B, T, K+1)
        lengths = frame_mask.sum(-1)
        result = {"log_probs": log_probs, "lengths": lengths}
        if units is not None:
            result["loss"] = self.ctc_loss(log_probs, lengths, units, unit_lengths)
        return result

    def ctc_loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, units: torch.Tensor,
                 unit_lengths: torch.Tensor | None = None) -> torch.Tensor:
        units = units.to(log_probs.device).long()
        valid = units != IGNORE_INDEX
        if unit_lengths is None:
            unit_lengths = valid.sum(-1)
        if ((units[valid] < 0) | (units[valid] >= self.blank)).any():
            raise ValueError(f"unit targets must lie in [0, {self.blank}) or be {IGNORE_INDEX} (padding)")
        # padded 2-D targets: the padding value is never read past unit_lengths, but must be a legal index
        targets = units.masked_fill(~valid, 0)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths.long(), unit_lengths.to(lengths.device).long(),
                          blank=self.blank, reduction="mean", zero_infinity=True)

    def phoneme_batch(self, texts: Sequence[str], langs: Sequence[str | None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Answers' text -> ``(ids (B, L), mask (B, L))`` for a head with ``input: phonemes`` (right
        padding; ``langs`` name each answer's voice, ``None``: from its first letter)."""
        if self.config.input != "phonemes":
            raise ValueError("this unit head reads LLM states (unit_head.input: states), not phonemes")
        langs = list(langs) if langs is not None else [None] * len(texts)
        rows = [phoneme_ids(phonemize(t, lang), self.config.phonemes) for t, lang in zip(texts, langs)]
        return _pad_ids(rows, next(self.parameters()).device)

    @classmethod
    def from_llm(cls, config: UnitHeadConfig | dict, llm_hidden_size: int) -> "CtcUnitHead":
        return cls(config, input_size=llm_hidden_size)


class PhonemeEncoder(nn.Module):
    """Phoneme ids ``(B, L)`` (0 = padding) -> ``(B, L, H)``: an embedding, then residual ReLU
    convolutions with layer norm (FastSpeech 2's encoder front, without attention: the head's causal
    layers come after the upsampling)."""

    def __init__(self, num_symbols: int, hidden_size: int, layers: int, kernel: int):
        super().__init__()
        self.embed = nn.Embedding(num_symbols, hidden_size, padding_idx=0)
        self.convs = nn.ModuleList([nn.Conv1d(hidden_size, hidden_size, kernel, padding=kernel // 2) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden_size) for _ in range(layers)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != 0).unsqueeze(-1)
        x = self.embed(ids)
        for conv, norm in zip(self.convs, self.norms):  # padding is zeroed so it never leaks into the answer
            x = norm(x + torch.relu(conv((x * keep).transpose(1, 2)).transpose(1, 2)))
        return x * keep


def _pad_ids(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device), (ids != 0).to(device)


def ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None,
               blank: int | None = None) -> list[list[int]]:
    """Greedy CTC: argmax per frame, merge repeats, drop blanks (default blank: the last class)."""
    blank = log_probs.shape[-1] - 1 if blank is None else blank
    best = log_probs.argmax(-1).cpu()  # (B, T)
    if lengths is None:
        lengths = [best.shape[1]] * best.shape[0]
    out = []
    for row, n in zip(best, lengths):
        row = row[: int(n)]
        if row.numel() == 0:
            out.append([])
            continue
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != blank
        out.append(row[keep].tolist())
    return out


class UnitStreamer:
    """Incremental units while text tokens arrive.

    ``push(hidden_chunk)`` takes the new tokens' hidden states ``(n, D_llm)`` (or ``(1, n, D)``)
    and returns the units decided by them. The head is causal, so the frames of earlier tokens keep
    their log-probs when tokens are appended, and greedy CTC of a prefix of frames is a prefix of the
    greedy CTC of all frames (a run that continues across the boundary merges into the unit already
    emitted; it is not a new unit). So every unit decoded from the prefix is final at once; only its
    duration is still open, which the vocoder predicts from the units anyway. Recomputes the whole
    prefix per push (quadratic; fine for answers of a few hundred tokens, a KV cache would make it
    linear).
    """

    def __init__(self, head: CtcUnitHead):
        self.head = head
        self.hidden: list[torch.Tensor] = []
        self.units: list[int] = []

    def push(self, hidden_chunk: torch.Tensor) -> list[int]:
        chunk = hidden_chunk.reshape(-1, hidden_chunk.shape[-1])
        if chunk.shape[0] == 0:
            return []
        self.hidden.append(chunk)
        with torch.no_grad():
            log_probs = self.head(torch.cat(self.hidden)[None])["log_probs"]
        units = ctc_decode(log_probs, blank=self.head.blank)[0]
        new = units[len(self.units):]
        self.units = units
        return new

    def finish(self) -> list[int]:
        """Units still held back at the end of the answer: none (every decoded unit is final at once)."""
        return []


class PhonemeUnitStreamer:
    """Incremental units while the answer's *text* arrives, for a head with ``input: phonemes``.

    ``push(text_piece)`` phonemizes what became final (:class:`llasm.speech.phonemes.PhonemeStream`:
    a word once the next began) and decodes the frames whose phonemes have their full right context
    (``config.lookahead`` phonemes); those frames never change, so their greedy CTC units are final
    (as in :class:`UnitStreamer`). ``finish()`` decodes the rest. Everything returned, concatenated,
    is what :func:`speak_text` speaks for the text the stream phonemized — unless ``eager_units``:
    until that many units were returned, frames are decoded as soon as their phonemes came, without
    waiting for the look-ahead (a stream's first chunk trades exactness for time, as the token2wav's
    ``first_chunk_context`` does; the units after it are decoded with their full context).
    """

    def __init__(self, head: CtcUnitHead, lang: str | None = None, eager_units: int = 0):
        self.head, self.text, self.eager_units = head, PhonemeStream(lang), int(eager_units)
        self.phonemes: list[int] = []
        self.units: list[int] = []
        self.frames, self.last = 0, head.blank  # frames decoded, and the last one's label (CTC merges across calls)

    def _decode(self, settled: int) -> list[int]:
        end = settled * self.head.config.upsample_factor
        if end <= self.frames:
            return []
        with torch.no_grad():
            ids = torch.tensor([self.phonemes], device=next(self.head.parameters()).device)
            best = self.head(ids)["log_probs"][0, self.frames: end].argmax(-1).tolist()
        new = []
        for label in best:  # greedy CTC (ctc_decode), continued from the frames decoded before
            if label != self.head.blank and label != self.last:
                new.append(label)
            self.last = label
        self.frames = end
        self.units += new
        return new

    def push(self, piece: str) -> list[int]:
        new = self.text.push(piece)
        if not new:
            return []
        self.phonemes += phoneme_ids(new, self.head.config.phonemes)
        wait = 0 if len(self.units) < self.eager_units else self.head.config.lookahead
        return self._decode(len(self.phonemes) - wait)

    def finish(self) -> list[int]:
        self.phonemes += phoneme_ids(self.text.finish(), self.head.config.phonemes)
        return self._decode(len(self.phonemes))


def stream_units(head: CtcUnitHead, hidden_chunks: Iterable[torch.Tensor]) -> Iterator[list[int]]:
    """Yield the newly decided units (a possibly empty list) after each chunk of hidden states.

    The concatenation of everything yielded equals ``ctc_decode`` of the full answer.
    """
    streamer = UnitStreamer(head)
    for chunk in hidden_chunks:
        yield streamer.push(chunk)


@torch.no_grad()
def speak(model_or_head: Any, hidden_states_of_answer: torch.Tensor, vocoder, mask: torch.Tensor | None = None
          ) -> np.ndarray:
    """Answer hidden states ``(L, D)`` or ``(1, L, D)`` -> units (CTC greedy) -> 16 kHz float32 audio.

    ``model_or_head`` is a :class:`CtcUnitHead` or anything with a ``unit_head`` attribute. Durations
    come from the vocoder's duration predictor (``durations=None``). Returns an empty array when
    the head emits no unit.
    """
    head = model_or_head if isinstance(model_or_head, CtcUnitHead) else model_or_head.unit_head
    hidden = hidden_states_of_answer
    if hidden.ndim == 2:
        hidden = hidden[None]
    if hidden.shape[0] != 1:
        raise ValueError(f"speak() takes one answer, got a batch of {hidden.shape[0]}")
    param = next(head.parameters())
    return _say(_answer_units(head, hidden.to(param.device), None if mask is None else mask.to(param.device)), vocoder)


@torch.no_grad()
def text_units(model_or_head: Any, text: str, lang: str | None = None) -> list[int]:
    """An answer's text -> its units (greedy CTC) through a head with ``input: phonemes``; ``lang``
    names the voice (``None``: from the first letter). Raises ``ValueError`` for a head that reads states."""
    head = model_or_head if isinstance(model_or_head, CtcUnitHead) else model_or_head.unit_head
    return _answer_units(head, *head.phoneme_batch([text], [lang]))


def speak_text(model_or_head: Any, text: str, vocoder, lang: str | None = None) -> np.ndarray:
    """An answer's text -> units (:func:`text_units`) -> 16 kHz float32 audio (empty without units)."""
    return _say(text_units(model_or_head, text, lang), vocoder)


def _answer_units(head: CtcUnitHead, inputs: torch.Tensor, mask: torch.Tensor | None) -> list[int]:
    """One answer's greedy CTC units, the head in eval mode for the call (and as it was after)."""
    was_training = head.training
    head.eval()
    try:
        out = head(inputs, mask)
    finally:
        head.train(was_training)
    return ctc_decode(out["log_probs"], out["lengths"], blank=head.blank)[0]


def _say(units: list[int], vocoder) -> np.ndarray:
    return vocoder.synthesize(units) if units else np.zeros(0, dtype=np.float32)


def answer_hidden_states(generate_output, end_ids: Sequence[int] = (), state: str = "input",
                         embed: Any = None) -> torch.Tensor:
    """Last-layer hidden states of the generated answer tokens from ``generate(...,
    return_dict_in_generate=True, output_hidden_states=True)`` (batch of one): ``(n, D)``.

    Convention (use the same in training): the state at the position where answer token ``y_i`` is
    the *input* (teacher forcing: ``hidden_states[-1][0, answer_positions]``), end-of-turn tokens
    excluded. Generation step ``k >= 1`` ran on ``y_{k-1}``, so steps ``1..`` give the states of
    ``y_0..y_{n-2}``; the last generated token is normally an end token, which is excluded anyway
    (if generation hit ``max_new_tokens`` its last token has no state and is dropped).
    With ``state="output"`` (:attr:`UnitHeadConfig.state`) the state of ``y_i`` is the one that
    produced it: step ``k`` gives ``y_k``'s, every generated token has one. With ``embed`` (the LLM's
    input embedding module) each state is followed by its token's embedding: ``(n, 2 * D)``, the
    input of a head with ``text_embeddings``.
    """
    steps = generate_output.hidden_states
    if steps is None:
        raise ValueError("generate() was not called with output_hidden_states=True, return_dict_in_generate=True")
    if steps[0][-1].shape[0] != 1:
        raise ValueError("answer_hidden_states takes a batch of one")
    if state == "output":  # step k's last state produced y_k (step 0: the prompt's last position)
        states = [step[-1][0, -1] for step in steps]
    else:
        states = [step[-1][0, -1] for step in steps[1:]]  # state of y_0 .. y_{n-2}
    tokens = generate_output.sequences[0, -len(steps):].tolist()[: len(states)]
    keep = [(s, t) for s, t in zip(states, tokens) if t not in set(end_ids)]
    width = steps[0][-1].shape[-1] * (1 if embed is None else 2)
    if not keep:
        return steps[0][-1].new_zeros(0, width)
    hidden = torch.stack([s for s, _ in keep])
    if embed is not None:
        ids = torch.tensor([t for _, t in keep], device=hidden.device)
        hidden = torch.cat([hidden, embed(ids).to(hidden.dtype)], dim=-1)
    return hidden
