"""Convert a LinkSoul LLaSM checkpoint (LLaSM-Cllama2 layout) into a llasm checkpoint.

LLaSM's release is a Llama checkpoint whose vocabulary has 3 extra rows (``<au_patch>`` = 32000,
``<au_start>`` = 32001, ``<au_end>`` = 32002 on Llama-2's 32000) and a projector
``model.mm_projector.{weight,bias}`` = ``Linear(1280, 4096)`` over 64 Whisper-large-v2 decoder
states. llasm keeps the LLM's table at its original size and holds the two marker rows itself, so
the converter splits those rows off and writes a full (merged) llasm checkpoint.

    llasm convert-llasm LinkSoul/LLaSM-Cllama2 out/llasm-cllama2 --whisper openai/whisper-large-v2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# a command module: torch, transformers and the model core are imported where the conversion runs, so
# `llasm convert-llasm --help` answers at once (tests/test_layout.py lists the command modules)
PROJECTOR = "model.mm_projector."
AUDIO_TOKEN_IDS = {"<au_patch>": 32000, "<au_start>": 32001, "<au_end>": 32002}


def read_state_dict(path) -> dict:
    """All tensors of a HF checkpoint dir: safetensors, or ``.bin`` read with ``weights_only=True``."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in files:
        # never unpickle arbitrary objects from a downloaded checkpoint
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True))
    return state


def convert_llasm(source, output, whisper: str = "openai/whisper-large-v2", dtype: str = "bfloat16"):
    """Build a llasm model from a LinkSoul LLaSM checkpoint dir and save it (full) to ``output``."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor

    from llasm.checkpoint import DTYPES
    from llasm.configuration import LlasmConfig
    from llasm.modeling import LlasmForConditionalGeneration
    from llasm.processing import AUDIO_TOKENS, LlasmProcessor

    source = Path(_local_dir(source))
    state = read_state_dict(source)
    proj_w, proj_b = state.pop(PROJECTOR + "weight"), state.pop(PROJECTOR + "bias")
    text_config = AutoConfig.from_pretrained(source)
    raw = json.loads((source / "config.json").read_text())
    text_config = AutoConfig.for_model("llama", **{k: v for k, v in text_config.to_dict().items() if k != "model_type"})
    extended = state["model.embed_tokens.weight"].shape[0]
    base_vocab = extended - len(AUDIO_TOKEN_IDS)
    for name, index in AUDIO_TOKEN_IDS.items():
        if index - 32000 + base_vocab >= extended:
            raise ValueError(f"{source}: embedding has {extended} rows, no room for {name}")
    text_config.vocab_size = base_vocab
    markers = state["model.embed_tokens.weight"][[base_vocab + 1, base_vocab + 2]].clone()  # <au_start>, <au_end>
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in state:
            state[key] = state[key][:base_vocab].clone()
    state = {k: v for k, v in state.items() if not k.startswith("model.mm_") and "audio_tower" not in k}

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    processor = LlasmProcessor(WhisperFeatureExtractor.from_pretrained(whisper), tokenizer, template="llama2",
                               audio_source="whisper_decoder_queries", stack_factor=1, pad_to_30s=True,
                               num_query_tokens=int(raw.get("audio_query_tokens", 64)),
                               max_positions=getattr(text_config, "max_position_embeddings", None))
    ids = processor.audio_token_ids
    config = LlasmConfig(
        audio_config=WhisperConfig.from_pretrained(whisper), text_config=text_config,
        audio_source="whisper_decoder_queries", pad_to_30s=True, adaptor_type="linear", stack_factor=1,
        num_query_tokens=processor.num_query_tokens, audio_patch_token_id=ids[AUDIO_TOKENS[0]],
        audio_start_token_id=ids[AUDIO_TOKENS[1]], audio_end_token_id=ids[AUDIO_TOKENS[2]],
        audio_model_name_or_path=whisper, text_model_name_or_path=None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    if proj_w.shape != (text_config.hidden_size, config.audio_config.d_model):
        raise ValueError(f"{source}: mm_projector is {tuple(proj_w.shape)}, expected "
                         f"({text_config.hidden_size}, {config.audio_config.d_model}) for {whisper}")
    model = LlasmForConditionalGeneration.from_base_models(config, dtype=DTYPES[dtype])
    language_model = LlamaForCausalLM(text_config)
    missing, unexpected = language_model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"{source}: LLM weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.language_model = language_model.to(DTYPES[dtype]).requires_grad_(False)
    model.adaptor.proj.weight.data.copy_(proj_w)
    model.adaptor.proj.bias.data.copy_(proj_b)
    model.audio_marker_embeddings.weight.data.copy_(markers)
    model.processor = processor
    model.save_pretrained(output, merge=True)
    return model


def _local_dir(name_or_path) -> str:
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    from huggingface_hub import snapshot_download

    return snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm convert-llasm", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="LinkSoul LLaSM checkpoint: hub id or directory")
    parser.add_argument("output", help="directory for the llasm checkpoint")
    parser.add_argument("--whisper", default="openai/whisper-large-v2", help="Whisper the checkpoint was trained with")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    convert_llasm(args.source, args.output, whisper=args.whisper, dtype=args.dtype)
    print(f"wrote {args.output}")
    return 0
