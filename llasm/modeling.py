"""`LlasmForConditionalGeneration`: frozen Whisper -> trainable adaptor -> causal LM.

The processor expands every audio into ``<au_start> <au_patch>*N <au_end>``; the model encodes the
audio, checks N against the shared token-count function and places the audio tokens with one
``masked_scatter``. Parts: ``audio_tower``, ``adaptor``, ``language_model`` (+ ``unit_head`` later).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel, WhisperModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llasm import chat as chat_lib
from llasm.audio_tower import LlasmWhisperEncoder, load_whisper_encoder
from llasm.checkpoint import load_checkpoint, save_checkpoint
from llasm.configuration import LlasmConfig, audio_token_lengths, encoder_frames
from llasm.processing import IGNORE_INDEX, SUPPORTED_CALL
from llasm.speech.token2wav import load_token2wav
from llasm.unit_head import CtcUnitHead


class AudioAdaptor(nn.Module):
    """Stack ``stack_factor`` encoder frames into one token and project to the LLM width.

    ``linear`` with ``stack_factor=1`` is LLaSM's ``mm_projector``; ``mlp`` is the Ultravox/SLAM
    style projector (LayerNorm -> Linear -> GELU -> Linear).
    """

    def __init__(self, config: LlasmConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        d_in = config.audio_config.d_model * config.stack_factor
        d_out = config.text_config.hidden_size
        if config.adaptor_type == "linear":
            self.proj = nn.Linear(d_in, d_out)
        else:
            hidden = config.adaptor_hidden_size or 2 * d_out
            self.proj = nn.Sequential(
                nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out)
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, t, d = frames.shape  # (N, T_enc, D)
        k = self.stack_factor
        frames = nn.functional.pad(frames, (0, 0, 0, (-t) % k))  # (N, ceil(T/k)*k, D), zero padded
        stacked = frames.reshape(n, -1, d * k)  # (N, T_enc // k, D * k)
        return self.proj(stacked)  # (N, T_enc // k, D_llm)


class LlasmPreTrainedModel(PreTrainedModel):
    config_class = LlasmConfig
    config: LlasmConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module):
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif "RotaryEmbedding" in type(module).__name__:
            # the unit head's RoPE table: a non-persistent buffer, so no checkpoint restores it and
            # from_pretrained would leave it as uninitialized memory; transformers' own init rebuilds it
            super()._init_weights(module)


class LlasmForConditionalGeneration(LlasmPreTrainedModel, GenerationMixin):
    def __init__(self, config: LlasmConfig, empty_bases: tuple[str, ...] = ()):
        """``empty_bases``: the base parts (``"audio_tower"``, ``"language_model"``) built on the meta
        device, without memory or random init, because the caller puts loaded ones in their place."""
        super().__init__(config)
        # a random init of a 7B LLM costs minutes and its memory again, only to be overwritten
        with torch.device("meta") if "audio_tower" in empty_bases else contextlib.nullcontext():
            if config.audio_source == "whisper_decoder_queries":
                self.audio_tower = WhisperModel(config.audio_config)
            else:
                self.audio_tower = LlasmWhisperEncoder(config.audio_config)
        self.adaptor = AudioAdaptor(config)
        # the trainable rows of <au_start> and <au_end>; the LLM's own table is never resized
        self.audio_marker_embeddings = nn.Embedding(2, config.text_config.hidden_size)
        with torch.device("meta") if "language_model" in empty_bases else contextlib.nullcontext():
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # speech output (LLaMA-Omni): answer hidden states -> CTC units; trained in stage 3
        self.unit_head = None
        if config.unit_head:
            self.add_unit_head(config.unit_head)
        self.processor = None  # set by build_model / from_pretrained, used by chat()
        self.__dict__["vocoder"] = None  # a token2wav (llasm.speech.token2wav); not a submodule, never in checkpoints
        self.post_init()

    # -- embeddings -------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def encode_audio(self, input_features, feature_attention_mask=None):
        """Run the audio tower: ``(C, T_enc, D)`` states (padding zeroed) and true mel frames per chunk.

        These are what a stage-1 encoder cache stores: the tower is frozen, the adaptor is not.
        """
        cfg = self.config
        tower_trains = any(p.requires_grad for p in self.audio_tower.parameters())
        input_features = input_features.to(self.audio_tower.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):
            if cfg.audio_source == "whisper_decoder_queries":
                # LLaSM: decoder positions all fed the start token, read through cross-attention
                start = cfg.audio_config.decoder_start_token_id
                queries = input_features.new_full((input_features.shape[0], cfg.num_query_tokens), start).long()
                hidden = self.audio_tower(input_features, decoder_input_ids=queries).last_hidden_state  # (C, Q, D)
                return hidden, [input_features.shape[-1]] * input_features.shape[0]
            if feature_attention_mask is None:
                feature_attention_mask = torch.ones(input_features.shape[::2], device=input_features.device)
            hidden = self.audio_tower(input_features, attention_mask=feature_attention_mask).last_hidden_state
            frames = [int(f) for f in feature_attention_mask.sum(-1).tolist()]  # true mel frames per chunk
            return self._zero_padding(hidden, frames), frames

    @staticmethod
    def _zero_padding(hidden, frames):
        enc_len = torch.tensor([encoder_frames(f) for f in frames], device=hidden.device)
        real = torch.arange(hidden.shape[1], device=hidden.device)[None] < enc_len[:, None]
        return hidden * real[..., None]  # (C, T_enc, D): padding zeroed, as in a lone clip

    def project_audio(self, hidden, frames) -> torch.Tensor:
        """Adaptor over encoder states; the audio tokens of all chunks in order, ``(N_tokens, D_llm)``."""
        tokens = self.adaptor(hidden.to(self.adaptor_dtype))  # (C, T_tok, D_llm)
        lengths = torch.tensor(audio_token_lengths(frames, self.config), device=tokens.device)
        keep = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        return tokens[keep]  # (sum of lengths, D_llm), chunk after chunk

    @property
    def adaptor_dtype(self):
        return next(self.adaptor.parameters()).dtype

    def placeholder_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One silent chunk, long enough for one audio token: ``(1, n_mels, T_mel)`` mel and its mask,
        on the tower's device and dtype (3000 frames when the tower only takes 30 s windows)."""
        frames = 3000 if self.config.pad_to_30s else 2 * self.config.stack_factor
        # not self.audio_tower.conv1.weight: under ZeRO-3, reading a parameter attribute gathers it (a collective)
        weight = next(self.audio_tower.parameters())
        mel = torch.zeros(1, self.config.audio_config.num_mel_bins, frames, dtype=weight.dtype, device=weight.device)
        return mel, torch.ones(1, frames, dtype=torch.long, device=weight.device)

    def placeholder_audio_pass(self, kind: str) -> torch.Tensor:
        """``0 x`` the audio tokens of :meth:`placeholder_features`: a zero scalar whose graph runs the
        adaptor (and the tower for ``kind="input_features"``; ``"audio_encoder_outputs"``: the tower's
        states come from a cache). A rank whose batch has no audio adds it, so it gathers (ZeRO-3) and
        reduces (ZeRO-2, DDP) the same weights as the ranks with audio; the outputs do not change."""
        mel, mask = self.placeholder_features()
        if kind == "input_features":
            tokens = self.get_audio_embeddings(mel, mask)
        elif kind == "audio_encoder_outputs":
            frames = [mel.shape[-1]]
            states = mel.new_zeros(1, encoder_frames(frames[0]), self.config.audio_config.d_model)
            tokens = self.project_audio(states, frames)
        else:
            raise ValueError(f"placeholder_audio must be input_features or audio_encoder_outputs, got {kind!r}")
        return tokens.sum() * 0

    def get_audio_embeddings(self, input_features, feature_attention_mask=None) -> torch.Tensor:
        """Encode audio chunks and project them: ``(N_tokens, D_llm)``."""
        return self.project_audio(*self.encode_audio(input_features, feature_attention_mask))

    def embed_inputs(self, input_ids, input_features=None, feature_attention_mask=None, audio_embeds=None,
                     audio_encoder_outputs=None, placeholder_audio=None):
        """Token embeddings with audio tokens scattered into the ``<au_patch>`` slots.

        Audio comes as ``input_features`` (mel), as cached ``audio_encoder_outputs`` (``(C, T_enc, D)``
        with ``feature_attention_mask`` giving mel frames per chunk), or as ready ``audio_embeds``.
        ``placeholder_audio`` (a batch without audio in a multi-rank step): see :meth:`placeholder_audio_pass`.
        """
        cfg = self.config
        patch = input_ids == cfg.audio_patch_token_id  # (B, L)
        start = input_ids == cfg.audio_start_token_id
        end = input_ids == cfg.audio_end_token_id
        # audio ids may lie outside the LLM's vocabulary: look up a harmless id, then overwrite
        text_ids = input_ids.masked_fill(patch | start | end, 0)
        table = self.get_input_embeddings()
        if input_ids.shape[1] > 1 and (text_ids >= table.num_embeddings).any():  # prompts; decoding feeds model ids
            bad = int(text_ids[text_ids >= table.num_embeddings][0])
            raise ValueError(f"input_ids hold id {bad} but the language model has {table.num_embeddings} embeddings: "
                             "the tokenizer has tokens the model lacks (resize the model's token embeddings)")
        embeds = table(text_ids)  # (B, L, D)
        markers = self.audio_marker_embeddings(torch.arange(2, device=embeds.device)).to(embeds.dtype)
        embeds = torch.where(start[..., None], markers[0], embeds)
        embeds = torch.where(end[..., None], markers[1], embeds)
        n_slots = int(patch.sum())
        if audio_embeds is None and audio_encoder_outputs is not None:
            frames = [int(f) for f in feature_attention_mask.sum(-1).tolist()]
            audio_embeds = self.project_audio(self._zero_padding(audio_encoder_outputs, frames), frames)
        if audio_embeds is None and input_features is not None:
            audio_embeds = self.get_audio_embeddings(input_features, feature_attention_mask)
        if audio_embeds is None:
            if n_slots:
                raise ValueError(f"input_ids have {n_slots} <au_patch> slots but no audio was given")
            if placeholder_audio:
                embeds = embeds + self.placeholder_audio_pass(placeholder_audio).to(embeds.dtype)
            return embeds
        if audio_embeds.shape[0] != n_slots:
            raise ValueError(
                f"audio/token count mismatch: the audio gives {audio_embeds.shape[0]} tokens but input_ids have "
                f"{n_slots} <au_patch> slots (stack_factor={cfg.stack_factor}, pad_to_30s={cfg.pad_to_30s}); "
                f"make input_ids and input_features in one call of this model's processor: {SUPPORTED_CALL}"
            )
        return embeds.masked_scatter(patch[..., None], audio_embeds.to(embeds.dtype))

    # -- forward / generate -----------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        input_features=None,
        feature_attention_mask=None,
        labels=None,
        past_key_values=None,
        inputs_embeds=None,
        position_ids=None,
        use_cache=None,
        logits_to_keep=0,
        audio_embeds=None,
        audio_encoder_outputs=None,
        unit_targets=None,
        unit_mask=None,
        answer_states=None,
        answer_mask=None,
        placeholder_audio=None,
        **kwargs,
    ):
        if unit_targets is not None and self.unit_head is None:
            raise ValueError("unit_targets given but the model has no unit head (set config.unit_head)")
        # stage 3 from ready LLM states (a trainer's cache of the frozen LLM), or a phoneme head's phoneme ids
        if answer_states is not None:
            return self._unit_head_loss(answer_states, answer_mask, unit_targets)
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, input_features, feature_attention_mask, audio_embeds,
                                              audio_encoder_outputs, placeholder_audio)
        if unit_targets is not None:
            return self._unit_head_loss(*self.answer_states(inputs_embeds, attention_mask, unit_mask), unit_targets)
        if labels is not None:
            labels = self.loss_labels(labels, input_ids, attention_mask)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def loss_labels(self, labels, input_ids=None, attention_mask=None) -> torch.Tensor:
        """``labels (B, L)`` as the loss may read them: -100 wherever no text is predicted.

        Positions holding audio ids (``<au_start>``, ``<au_patch>``, ``<au_end>``) and padding
        (``attention_mask == 0``) are ignored, so ``labels=input_ids.clone()`` trains on the text
        only — as Qwen2-Audio's ``_merge_input_ids_with_audio_features`` sets ``ignore_index`` at
        audio positions. Raises ``ValueError`` naming the id and its position when any other label
        lies outside the language model's vocabulary ``[0, vocab_size)`` (or is negative but not -100).
        """
        cfg = self.config
        if input_ids is not None:
            audio_ids = [cfg.audio_patch_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id]
            audio = torch.isin(input_ids, torch.tensor([i for i in audio_ids if i is not None], device=input_ids.device))
            labels = labels.masked_fill(audio.to(labels.device), IGNORE_INDEX)
        if attention_mask is not None and attention_mask.shape == labels.shape:
            labels = labels.masked_fill(attention_mask.to(labels.device) == 0, IGNORE_INDEX)
        head = self.get_output_embeddings()
        vocab = getattr(head, "out_features", None) or head.weight.shape[0]  # the attribute: ZeRO-3 empties .weight
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"labels[{row}, {col}] = {int(labels[row, col])} is outside the language model's vocabulary "
                f"(ids 0..{vocab - 1}; {int(bad.sum())} such label(s)); use -100 for positions without a target")
        return labels

    def _unit_head_loss(self, rows, keep, unit_targets):
        """Stage 3: answer states ``rows (B, L_ans, D)`` (``keep`` marks real ones) -> unit head -> CTC
        against ``unit_targets`` (``(B, U)``, -100 padded)."""
        return CausalLMOutputWithPast(loss=self.unit_head(rows, keep, units=unit_targets)["loss"])

    def answer_states(self, inputs_embeds, attention_mask, unit_mask):
        """The LLM's last hidden states where the answer tokens are the input (``unit_mask``,
        ``(B, L)``; one position earlier with ``unit_head.state: output``), moved to the left:
        ``rows (B, L_ans, D)`` (``2 * D`` with ``unit_head.text_embeddings``: each state, then its
        token's input embedding) and ``keep (B, L_ans)`` (True = an answer token)."""
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1]  # (B, L, D)
        tokens = unit_mask.bool()  # where y_i is the input: its input embedding
        if self.unit_head.config.state == "output":  # y_i's state is the one that produced it: position - 1
            unit_mask = torch.cat([unit_mask[:, 1:], unit_mask.new_zeros(len(unit_mask), 1)], dim=1)
        states = hidden[unit_mask.bool()]  # (N, D), the answers of all rows in order
        if self.unit_head.config.text_embeddings:  # LLaMA-Omni 2: the state, then the token's embedding
            states = torch.cat([states, inputs_embeds[tokens].to(states.dtype)], dim=-1)
        lengths = unit_mask.sum(-1)  # answer tokens per row
        rows = states.new_zeros(len(hidden), int(lengths.max()), states.shape[-1])
        keep = torch.arange(rows.shape[1], device=hidden.device)[None] < lengths[:, None]  # (B, L_ans)
        rows[keep] = states  # answers moved to the left, in order
        return rows, keep

    def unit_head_inputs(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The unit head's input for answer states ``hidden (..., D)`` of tokens ``token_ids (...)``: the
        states themselves, or with ``unit_head.text_embeddings`` each followed by its token's input
        embedding ``(..., 2 * D)`` (what :meth:`answer_states` gives in training)."""
        if not self.unit_head.config.text_embeddings:
            return hidden
        embeds = self.language_model.get_input_embeddings()(token_ids.to(hidden.device))
        return torch.cat([hidden, embeds.to(hidden.dtype)], dim=-1)

    def add_unit_head(self, unit_head: dict) -> CtcUnitHead:
        """Give the model a (fresh) CTC unit head with these :class:`~llasm.unit_head.UnitHeadConfig`
        settings; ``config.unit_head`` records them with what the head filled in (its input size, a
        phoneme inventory), so a checkpoint rebuilds the same head."""
        self.unit_head = CtcUnitHead(dict(unit_head), input_size=self.config.text_config.hidden_size)
        self.config.unit_head = self.unit_head.config.to_dict()
        return self.unit_head

    def set_vocoder(self, vocoder) -> None:
        """Attach a token2wav for ``chat(speak=True)`` / ``chat_stream``: a units -> mel -> mel vocoder
        (:class:`llasm.speech.token2wav.UnitMelToken2Wav`) or a unit HiFi-GAN, or the path of either's
        directory (:func:`llasm.speech.token2wav.load_token2wav`). Returns None, as transformers' setters
        do (``model.vocoder`` is what was attached)."""
        if isinstance(vocoder, (str, os.PathLike)):
            vocoder = load_token2wav(vocoder, device=str(self.device))
        if isinstance(vocoder, torch.nn.Module):  # beside the model: units go straight from the unit head
            vocoder.to(self.device)
        self.__dict__["vocoder"] = vocoder

    def chat(self, messages=None, *, audio=None, text=None, max_new_tokens: int = 128, speak: bool = False,
             streamer=None, cache=None, **generate_kwargs):
        """Answer a conversation (HF-style ``messages``) or one user turn given as ``audio``/``text``.

        Returns the reply text (greedy by default; pass ``do_sample=True`` etc. to sample), or
        ``(text, waveform)`` with ``speak=True`` (16 kHz float32; needs a unit head and a vocoder).
        ``cache=llasm.chat.PromptCache()``, passed turn after turn, runs only what a conversation
        does not share with the previous call (multi-turn chat: the new reply and turn).
        """
        return chat_lib.chat(self, messages, audio=audio, text=text, max_new_tokens=max_new_tokens, speak=speak,
                             streamer=streamer, cache=cache, **generate_kwargs)

    def chat_batch(self, conversations: list[list[dict]], max_new_tokens: int | list[int] = 128,
                   **generate_kwargs) -> list[str]:
        """Replies to several conversations in one left-padded ``generate`` call
        (:func:`llasm.chat.chat_batch`: evaluation, ``self_reply`` teachers)."""
        return chat_lib.chat_batch(self, conversations, max_new_tokens=max_new_tokens, **generate_kwargs)

    def chat_stream(self, messages=None, *, audio=None, text=None, max_new_tokens: int = 128, chunk_units: int = 40,
                    first_chunk_units: int | None = None, first_chunk_context: int | None = 0):
        """Streaming speech reply: yields ``("text", str)`` and ``("audio", np.ndarray)`` events."""
        return chat_lib.chat_stream(self, messages, audio=audio, text=text, max_new_tokens=max_new_tokens,
                           chunk_units=chunk_units, first_chunk_units=first_chunk_units,
                           first_chunk_context=first_chunk_context)

    # -- construction and checkpoints --------------------------------------------------------
    @classmethod
    def from_base_models(cls, config: LlasmConfig, dtype: torch.dtype = torch.float32) -> "LlasmForConditionalGeneration":
        """A model whose audio tower and LLM come from ``config``'s base ids/paths (random if none).

        The bases are frozen; the adaptor, the audio-marker rows and the unit head start random. A base
        that is loaded is not first built at random (except inside ZeRO-3's ``zero.Init``, which
        partitions what is built and cannot take meta tensors).
        """
        from transformers.integrations import is_deepspeed_zero3_enabled

        loaded = (("audio_tower",) if config.audio_model_name_or_path else ()) + (
            ("language_model",) if config.text_model_name_or_path else ())
        model = cls(config, empty_bases=() if is_deepspeed_zero3_enabled() else loaded)
        if config.audio_model_name_or_path:
            if config.audio_source == "whisper_decoder_queries":
                model.audio_tower = WhisperModel.from_pretrained(config.audio_model_name_or_path, dtype=dtype)
            else:
                model.audio_tower = load_whisper_encoder(config.audio_model_name_or_path, dtype)
        if config.text_model_name_or_path:
            model.language_model = AutoModelForCausalLM.from_pretrained(config.text_model_name_or_path, dtype=dtype)
            # LLaSM initialises the new token rows to the mean embedding (gathered: under ZeRO-3 each rank
            # holds an empty slice of it, whose mean is NaN)
            embedding = model.get_input_embeddings().weight
            with gathered([embedding]):
                mean = embedding.detach().float().mean(0)
            model.audio_marker_embeddings.weight.data.copy_(mean.expand_as(model.audio_marker_embeddings.weight))
        for part in model.children():  # parts ZeRO-3 already partitioned (loaded in dtype) keep their slices
            if not any(hasattr(p, "ds_id") for p in part.parameters()):
                part.to(dtype)
        for part in (model.audio_tower, model.language_model):
            part.requires_grad_(False)
        model.audio_tower.eval()
        return model

    # -- checkpoints ------------------------------------------------------------------------
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The parts a default checkpoint holds: adaptor, audio-token rows and whatever trains."""
        always = ("adaptor.", "audio_marker_embeddings.", "unit_head.")
        names = {n for n, p in self.named_parameters() if p.requires_grad or n.startswith(always)}
        names |= {n for n in self.state_dict() if "lora_" in n}
        return _dedupe_shared({n: t for n, t in self.state_dict().items() if n in names})

    def save_pretrained(self, save_directory: str | os.PathLike, merge: bool = False, **kwargs):
        """Write safetensors: trained parts + base ids by default, everything with ``merge=True``.

        A model whose base weights have no id/path (random tiny models) is always saved whole.
        """
        save_checkpoint(self, save_directory, merge=merge)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a checkpoint written by :meth:`save_pretrained` (either format) and its processor."""
        return load_checkpoint(cls, pretrained_model_name_or_path, **kwargs)


def gathered(params: list[torch.Tensor]):
    """Context in which ZeRO-3-partitioned ``params`` hold their full values on every rank (read only);
    a no-op for ordinary parameters. DeepSpeed's ``GatheredParameters``, as transformers uses it."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed  # optional (llasm[train]); partitioned parameters mean it is there

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop second names of tied tensors (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            out[name] = tensor.contiguous()
    return out


# `AutoModel.from_pretrained(dir)` on a llasm checkpoint (see llasm/__init__.py for when this runs)
AutoModel.register(LlasmConfig, LlasmForConditionalGeneration, exist_ok=True)
