"""The audio tower: Whisper's encoder for any clip length, and loading its weights alone.

``load_whisper_encoder`` reads a HF Whisper checkpoint (hub id or directory, safetensors) and keeps
only the encoder's tensors, so a 1.5 GB decoder is never materialised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import WhisperConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import cached_file


class LlasmWhisperEncoder(WhisperEncoder):
    """Whisper's encoder for any length up to 30 s, with padding masked out.

    HF's encoder insists on exactly 3000 mel frames and always adds all 1500 positions. Here the
    position table is sliced to the input length and padded frames are zeroed before each conv
    and masked in attention, so a clip in a padded batch encodes exactly as it does alone.
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
            # encoder position j covers mel frame 2j, so it is real iff frame 2j is
            keep = attention_mask[:, ::2].bool()  # (B, T_enc)
            attn_mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
            attn_mask = attn_mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, attn_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))



def load_whisper_encoder(name_or_path: str, dtype: torch.dtype = torch.float32) -> LlasmWhisperEncoder:
    """Only the encoder weights of a Whisper checkpoint (hub id or dir), read with safetensors."""
    config = WhisperConfig.from_pretrained(name_or_path)
    encoder = LlasmWhisperEncoder(config)
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
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embed_positions.weight"] if "embed_positions.weight" in state else missing
    if missing or unexpected:
        raise ValueError(f"{name_or_path}: not a Whisper checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder.to(dtype)
