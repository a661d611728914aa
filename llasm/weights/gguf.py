"""A GGUF causal LM (llama.cpp's format, as the starter packages ship Qwen2.5 and SmolLM2) to a plain
Hugging Face checkpoint, dequantized by transformers' own GGUF reader (needs the ``gguf`` package)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llasm.weights import ConversionError


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "bfloat16",
                 eos_tokens: tuple[str, ...] = ()) -> Path:
    """Dequantize a GGUF causal LM with transformers and save a plain HF checkpoint (``dtype`` weights).

    transformers refuses ``save_pretrained`` on a GGUF-loaded (quantizer-attached) model, so a plain model
    is rebuilt from its config and the dequantized state dict is copied into it. ``eos_tokens`` are
    extra end-of-sequence tokens for ``generation_config.json`` (e.g. ``<|im_end|>`` for chat models).
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src_dir, fname = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)

    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = loaded.config.__class__.from_dict(config_dict)
    config.dtype = dtype
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    sd = {k: v.detach().to(torch_dtype).clone() for k, v in loaded.state_dict().items()}
    expected = set(plain.state_dict())
    tied = getattr(config, "tie_word_embeddings", False)
    if tied:
        sd.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    if set(sd) != expected:
        raise ConversionError(
            f"{gguf_path}: state dict mismatch; missing {sorted(expected - set(sd))[:8]}, "
            f"unexpected {sorted(set(sd) - expected)[:8]}"
        )
    plain.load_state_dict(sd, strict=False, assign=True)
    if tied:
        plain.tie_weights()
    # Buffers (e.g. rotary inv_freq) are not in the state dict: materialize them from a CPU init.
    if any(b.is_meta for b in plain.buffers()):
        with torch.device("cpu"):
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        for name, buf in fresh.named_buffers():
            module_name, _, attr = name.rpartition(".")
            module = plain.get_submodule(module_name) if module_name else plain
            if getattr(module, attr).is_meta:
                module._buffers[attr] = buf
        del fresh
    plain.eval()

    gen = GenerationConfig.from_model_config(config)
    eos_ids = [] if tok.eos_token_id is None else [tok.eos_token_id]
    vocab = tok.get_vocab()
    for token in eos_tokens:
        if token in vocab and vocab[token] not in eos_ids:
            eos_ids.append(vocab[token])
    if eos_ids:
        gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        config.eos_token_id = gen.eos_token_id
    if gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    plain.generation_config = gen
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and (tok.model_max_length is None or tok.model_max_length > max_pos):
        tok.model_max_length = max_pos
    plain.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    gen.save_pretrained(out_dir)
    return out_dir
