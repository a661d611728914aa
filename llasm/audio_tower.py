"""The audio tower: Whisper's encoder for any clip length, and loading its weights alone.

:func:`load_whisper_encoder` reads a HF Whisper checkpoint (hub id or directory, safetensors) and
keeps only the encoder's tensors, so a 1.5 GB decoder is never materialised. It also reads an
openai-whisper checkpoint (``base.pt``: ``{"dims": ..., "model_state_dict": ...}``), renaming its
encoder tensors to HF's names as transformers' ``convert_openai_to_hf.py`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import WhisperConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import cached_file


class LlasmWhisperEncoder(WhisperEncoder):
    """Whisper's encoder for any length up to 30 s, with padding masked out.

    HF's encoder insists on exactly 3000 mel frames and always adds all 1500 positions. Here the
    position table is sliced to the input length and padded frames are zeroed before each conv
    and masked in attention, so a clip in a padded batch encodes exactly as it does alone, with
    any attention implementation (``eager``, ``sdpa``, ``flash_attention_2``).
    """

    def forward(self, input_features, attention_mask=None, **kwargs) -> BaseModelOutput:
        # input_features: (B, n_mels, T_mel), T_mel <= 3000; attention_mask: (B, T_mel), 1 = real frame
        max_frames = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
        if input_features.shape[-1] > max_frames:
            raise ValueError(f"at most {max_frames} mel frames per chunk, got {input_features.shape[-1]}")
        mask = None if attention_mask is None else attention_mask.to(input_features.dtype)[:, None, :]
        if mask is not None:
            input_features = input_features * mask
        hidden = nn.functional.gelu(self.conv1(input_features))  # (B, D, T_mel)
        if mask is not None:  # conv2 must see zeros past the end, like the zero padding of a lone clip
            hidden = hidden * mask
        hidden = nn.functional.gelu(self.conv2(hidden)).permute(0, 2, 1)  # (B, T_enc, D), T_enc = ceil(T_mel/2)
        hidden = hidden + self.embed_positions(torch.arange(hidden.shape[1], device=hidden.device))
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)

        attn_mask = None
        if attention_mask is not None:
            # encoder position j covers mel frame 2j, so it is real iff frame 2j is. The mask takes the
            # form the attention implementation needs (transformers' masking utils): a 4-D additive one
            # for eager, 4-D boolean (or none without padding) for sdpa, the 2-D padding mask that
            # flash_attention_2 unpads with; built from the config, so set_attn_implementation applies.
            keep = attention_mask[:, ::2].to(torch.long)  # (B, T_enc)
            attn_mask = create_bidirectional_mask(self.config, hidden, keep)
        for layer in self.layers:
            hidden = layer(hidden, attn_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))



# openai-whisper's AudioEncoder names -> HF WhisperEncoder names (transformers' convert_openai_to_hf.py)
OPENAI_ENCODER_NAMES = (
    ("blocks.", "layers."),
    (".attn.query.", ".self_attn.q_proj."),
    (".attn.key.", ".self_attn.k_proj."),
    (".attn.value.", ".self_attn.v_proj."),
    (".attn.out.", ".self_attn.out_proj."),
    (".attn_ln.", ".self_attn_layer_norm."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
    (".mlp_ln.", ".final_layer_norm."),
    ("ln_post.", "layer_norm."),
    ("positional_embedding", "embed_positions.weight"),
)


def is_openai_checkpoint(name_or_path) -> bool:
    """True for a file named ``*.pt`` (openai-whisper's format); HF checkpoints are directories or ids."""
    return str(name_or_path).endswith(".pt") and os.path.isfile(name_or_path)


def read_openai_checkpoint(path) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """An openai-whisper ``.pt`` -> ``(WhisperConfig from its dims, encoder state dict in HF names)``.

    Raises ``ValueError`` naming ``path`` when the file is not ``{"dims", "model_state_dict"}``.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read as an openai-whisper checkpoint ({err})") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= set(checkpoint):
        raise ValueError(f"{path}: not an openai-whisper checkpoint (expected a dict with 'dims' and "
                         "'model_state_dict', as whisper.load_model reads)")
    dims, weights = checkpoint["dims"], checkpoint["model_state_dict"]
    ffn = weights["encoder.blocks.0.mlp.0.weight"].shape[0] if "encoder.blocks.0.mlp.0.weight" in weights else None
    # token ids as transformers' conversion sets them: <|endoftext|> and <|startoftranscript|>
    endoftext = 50257 if dims["n_vocab"] > 51865 else 50256
    config = WhisperConfig(
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
        encoder_ffn_dim=ffn or 4 * dims["n_audio_state"], max_source_positions=dims["n_audio_ctx"],
        decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
        decoder_ffn_dim=4 * dims["n_text_state"], max_target_positions=dims["n_text_ctx"],
        eos_token_id=endoftext, bos_token_id=endoftext, pad_token_id=endoftext, decoder_start_token_id=endoftext + 1,
    )
    state = {}
    for key, tensor in weights.items():
        if key.startswith("encoder."):
            name = key[len("encoder."):]
            for old, new in OPENAI_ENCODER_NAMES:
                name = name.replace(old, new)
            state[name] = tensor
    return config, state


def whisper_config(name_or_path) -> WhisperConfig:
    """The Whisper config of a HF checkpoint (id or dir) or of an openai-whisper ``.pt``."""
    if is_openai_checkpoint(name_or_path):
        return read_openai_checkpoint(name_or_path)[0]
    return WhisperConfig.from_pretrained(name_or_path)


def load_whisper_encoder(name_or_path: str, dtype: torch.dtype = torch.float32) -> LlasmWhisperEncoder:
    """Only the encoder weights of a Whisper checkpoint: a HF hub id or dir (read with safetensors),
    or an openai-whisper ``.pt`` file. Raises ``ValueError`` naming the checkpoint when its tensors
    do not fit the encoder."""
    if is_openai_checkpoint(name_or_path):
        config, state = read_openai_checkpoint(name_or_path)
    else:
        config, state = WhisperConfig.from_pretrained(name_or_path), _hf_encoder_state(name_or_path)
    encoder = LlasmWhisperEncoder(config)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embed_positions.weight"] if "embed_positions.weight" in state else missing
    if missing or unexpected:
        raise ValueError(f"{name_or_path}: not a Whisper checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder.to(dtype)


def _hf_encoder_state(name_or_path) -> dict[str, torch.Tensor]:
    index = cached_file(name_or_path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        files = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        files = [cached_file(name_or_path, f) for f in files]
    else:
        files = [cached_file(name_or_path, "model.safetensors")]
    state = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                for prefix in ("model.encoder.", "encoder."):
                    if key.startswith(prefix):
                        state[key[len(prefix):]] = f.get_tensor(key)
    return state
