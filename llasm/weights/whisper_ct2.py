"""Whisper from CTranslate2 (faster-whisper's ``model.bin``) to a Hugging Face checkpoint.

:func:`whisper_state_dict` maps a CTranslate2 ``WhisperSpec`` onto the parameter names of
``WhisperForConditionalGeneration`` (undoing the fused q/k/v projections), :func:`whisper_ct2_variables`
is its inverse (the tests write synthetic files with it), and :func:`convert_whisper_ct2` writes the
HF checkpoint with its tokenizer, generation config and feature extractor.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

from llasm.weights import ConversionError
from llasm.weights.ct2 import CT2FormatError, CT2Model, read_ct2_model


def _count_layers(model: CT2Model, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    ids = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    return max(ids) + 1 if ids else 0


def whisper_dims(model: CT2Model) -> dict:
    """Infer the ``WhisperConfig`` sizes from a CTranslate2 Whisper model."""
    if model.spec_name and model.spec_name != "WhisperSpec":
        raise CT2FormatError(f"not a Whisper model: spec {model.spec_name!r}")
    emb = model["decoder/embeddings/weight"]
    conv1 = model["encoder/conv1/weight"]
    d_model = emb.shape[1]
    enc_layers = _count_layers(model, "encoder")
    dec_layers = _count_layers(model, "decoder")
    enc_heads = model.scalar("encoder/num_heads")
    dec_heads = model.scalar("decoder/num_heads", enc_heads)
    if enc_heads is None:  # older specs did not store it: Whisper uses 64-dim heads
        enc_heads = dec_heads = d_model // 64
    return dict(
        vocab_size=emb.shape[0],
        num_mel_bins=conv1.shape[1],
        d_model=d_model,
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=int(enc_heads),
        decoder_attention_heads=int(dec_heads),
        encoder_ffn_dim=model["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=model["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=model["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=model["decoder/position_encodings/encodings"].shape[0],
    )


def whisper_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """Map a CTranslate2 ``WhisperSpec`` to HF ``WhisperForConditionalGeneration`` parameter names.

    Fused self-attention ``linear_0`` (q|k|v) and cross-attention ``linear_1`` (k|v) are split;
    the zero bias CTranslate2 stores for the (bias-free) key projection is dropped. The decoder's
    output projection is tied to the token embeddings in HF, so ``proj_out.weight`` is included
    only as the embedding matrix (the caller ties them).
    """
    sd: dict[str, np.ndarray] = {}
    w = model.weight

    def linear(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = w(f"{ct2}/weight")
        if f"{ct2}/bias" in model:
            sd[f"{hf}.bias"] = model[f"{ct2}/bias"]

    def layer_norm(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = model[f"{ct2}/gamma"]
        sd[f"{hf}.bias"] = model[f"{ct2}/beta"]

    def split_linear(hf_names: list[str | None], ct2: str) -> None:
        weight = w(f"{ct2}/weight")
        bias = model[f"{ct2}/bias"] if f"{ct2}/bias" in model else None
        n = len(hf_names)
        if weight.shape[0] % n:
            raise CT2FormatError(f"{ct2}/weight rows {weight.shape[0]} do not split into {n}")
        for i, (part_w, hf) in enumerate(zip(np.split(weight, n, axis=0), hf_names)):
            sd[f"{hf}.weight"] = part_w
            if bias is not None and not hf.endswith("k_proj"):
                sd[f"{hf}.bias"] = np.split(bias, n)[i]

    def attention(hf: str, ct2: str, cross: bool) -> None:
        if cross:
            linear(f"{hf}.q_proj", f"{ct2}/linear_0")
            split_linear([f"{hf}.k_proj", f"{hf}.v_proj"], f"{ct2}/linear_1")
            linear(f"{hf}.out_proj", f"{ct2}/linear_2")
        else:
            split_linear([f"{hf}.q_proj", f"{hf}.k_proj", f"{hf}.v_proj"], f"{ct2}/linear_0")
            linear(f"{hf}.out_proj", f"{ct2}/linear_1")

    def ffn(hf: str, ct2: str) -> None:
        linear(f"{hf}.fc1", f"{ct2}/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/linear_1")
        layer_norm(f"{hf}.final_layer_norm", f"{ct2}/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        sd[f"{enc}.{conv}.weight"] = model[f"encoder/{conv}/weight"]
        sd[f"{enc}.{conv}.bias"] = model[f"encoder/{conv}/bias"]
    sd[f"{enc}.embed_positions.weight"] = model["encoder/position_encodings/encodings"]
    layer_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(_count_layers(model, "encoder")):
        hf, ct2 = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        attention(f"{hf}.self_attn", f"{ct2}/self_attention", cross=False)
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        ffn(hf, f"{ct2}/ffn")

    sd[f"{dec}.embed_tokens.weight"] = model["decoder/embeddings/weight"]
    sd[f"{dec}.embed_positions.weight"] = model["decoder/position_encodings/encodings"]
    layer_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(_count_layers(model, "decoder")):
        hf, ct2 = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        attention(f"{hf}.self_attn", f"{ct2}/self_attention", cross=False)
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        attention(f"{hf}.encoder_attn", f"{ct2}/attention", cross=True)
        layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        ffn(hf, f"{ct2}/ffn")

    if "decoder/projection/weight" in model:
        proj = w("decoder/projection/weight")
        if proj.shape != sd[f"{dec}.embed_tokens.weight"].shape or not np.array_equal(
            proj, sd[f"{dec}.embed_tokens.weight"]
        ):
            sd["proj_out.weight"] = proj  # untied projection (not the case for OpenAI checkpoints)
    return sd


def whisper_ct2_variables(state_dict: dict, num_heads: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Inverse of :func:`whisper_state_dict` (HF -> CTranslate2 names), as CTranslate2's converter does it.

    Used by tests to build synthetic model.bin files. Returns ``(variables, aliases)``; the
    projection is aliased to the embeddings like ``LayerSpec._alias_variables`` would do.
    """

    def t(name: str) -> np.ndarray:
        value = state_dict[name]
        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    out: dict[str, np.ndarray] = {}

    def linear(ct2: str, hf: str) -> None:
        out[f"{ct2}/weight"] = t(f"{hf}.weight")
        if f"{hf}.bias" in state_dict:
            out[f"{ct2}/bias"] = t(f"{hf}.bias")

    def fused(ct2: str, hfs: list[str]) -> None:
        out[f"{ct2}/weight"] = np.concatenate([t(f"{h}.weight") for h in hfs])
        biases = []
        for h in hfs:
            biases.append(t(f"{h}.bias") if f"{h}.bias" in state_dict else np.zeros(t(f"{h}.weight").shape[0], t(f"{h}.weight").dtype))
        out[f"{ct2}/bias"] = np.concatenate(biases)

    def layer_norm(ct2: str, hf: str) -> None:
        out[f"{ct2}/gamma"] = t(f"{hf}.weight")
        out[f"{ct2}/beta"] = t(f"{hf}.bias")

    enc, dec = "model.encoder", "model.decoder"
    out["encoder/num_heads"] = np.array(num_heads[0], dtype=np.int16)
    out["decoder/num_heads"] = np.array(num_heads[1], dtype=np.int16)
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"{enc}.{conv}")
    out["encoder/position_encodings/encodings"] = t(f"{enc}.embed_positions.weight")
    layer_norm("encoder/layer_norm", f"{enc}.layer_norm")
    n_enc = len({k.split(".")[3] for k in state_dict if k.startswith(f"{enc}.layers.")})
    n_dec = len({k.split(".")[3] for k in state_dict if k.startswith(f"{dec}.layers.")})
    for i in range(n_enc):
        hf, ct2 = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        fused(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        layer_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        layer_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    out["decoder/embeddings/weight"] = t(f"{dec}.embed_tokens.weight")
    out["decoder/position_encodings/encodings"] = t(f"{dec}.embed_positions.weight")
    layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
    for i in range(n_dec):
        hf, ct2 = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        fused(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        layer_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        fused(f"{ct2}/attention/linear_1", [f"{hf}.encoder_attn.{p}_proj" for p in "kv"])
        linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        layer_norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        layer_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    return out, {"decoder/projection/weight": "decoder/embeddings/weight"}


WHISPER_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


def whisper_tokenizer(tokenizer_json: str | os.PathLike, vocab_size: int):
    """Build a ``WhisperTokenizer`` from a faster-whisper ``tokenizer.json``, adding timestamp tokens.

    faster-whisper's tokenizer.json stops at ``<|notimestamps|>``; like the current openai/whisper-*
    tokenizers we add ``<|0.00|>`` .. ``<|30.00|>`` (non-special) so ``len(tokenizer) == vocab_size``.
    """
    backend = Tokenizer.from_file(str(tokenizer_json))
    specials = [t for t in backend.get_added_tokens_decoder().values() if t.special]
    special_contents = [t.content for t in sorted(specials, key=lambda t: backend.token_to_id(t.content))]
    n_before = backend.get_vocab_size(with_added_tokens=True)
    missing = vocab_size - n_before
    if missing > 0:
        stamps = [f"<|{i * 0.02:.2f}|>" for i in range(WHISPER_TIMESTAMPS)][:missing]
        backend.add_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=False, special=False) for s in stamps])
    with tempfile.TemporaryDirectory() as tmp:
        backend.save(os.path.join(tmp, "tokenizer.json"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "tokenizer_class": "WhisperTokenizer",
                    "bos_token": "<|endoftext|>",
                    "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>",
                    "additional_special_tokens": special_contents[1:],  # all but <|endoftext|>
                    "model_max_length": 1024,
                    "errors": "replace",
                    "add_prefix_space": False,
                    "processor_class": "WhisperProcessor",
                },
                f,
            )
        tok = WhisperTokenizer.from_pretrained(tmp)
    if len(tok) != vocab_size:
        raise ConversionError(f"Whisper tokenizer has {len(tok)} tokens, model vocab is {vocab_size}")
    return tok


def whisper_generation_config(tok, ct2_config: dict, dims: dict, alignment_heads=None):
    """A ``GenerationConfig`` matching the official openai/whisper-* ones."""
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    multilingual = dims["vocab_size"] >= 51865
    lang_tokens = [tok.convert_ids_to_tokens(i) for i in ct2_config.get("lang_ids") or []]
    if not lang_tokens:
        # language tokens sit between <|startoftranscript|> and <|translate|>
        lang_tokens = tok.convert_ids_to_tokens(list(range(sot + 1, ids("<|translate|>"))))
    kwargs = dict(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        max_length=dims["max_target_positions"],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, eot]),
        alignment_heads=[list(h) for h in (alignment_heads or ct2_config.get("alignment_heads") or [])],
    )
    if multilingual:
        kwargs["bos_token_id"] = eot
        kwargs["forced_decoder_ids"] = [[1, None], [2, ids("<|transcribe|>")]]
        kwargs["lang_to_id"] = {t: ids(t) for t in lang_tokens}
        kwargs["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    else:
        kwargs["bos_token_id"] = sot
        kwargs["forced_decoder_ids"] = [[1, ids("<|notimestamps|>")]]
    return GenerationConfig(**kwargs)


def convert_whisper_ct2(model_bin: str | os.PathLike, src_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                        *, dtype: str = "float32") -> Path:
    """Convert a CTranslate2 Whisper ``model.bin`` (+ ``config.json``/``tokenizer.json`` in ``src_dir``)
    to a HF ``WhisperForConditionalGeneration`` checkpoint in ``out_dir`` (weights in ``dtype``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = read_ct2_model(model_bin)
    dims = whisper_dims(model)
    ct2_config = {}
    if src_dir is not None and (Path(src_dir) / "config.json").is_file():
        ct2_config = json.loads((Path(src_dir) / "config.json").read_text(encoding="utf-8"))
    tok = None
    if src_dir is not None and (Path(src_dir) / "tokenizer.json").is_file():
        tok = whisper_tokenizer(Path(src_dir) / "tokenizer.json", dims["vocab_size"])
    multilingual = dims["vocab_size"] >= 51865
    if tok is not None:
        eot, sot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftranscript|>")
    elif dims["vocab_size"] >= 51864:  # the OpenAI vocabularies
        eot = 50257 if multilingual else 50256
        sot = eot + 1
    else:  # unknown vocabulary without tokenizer (synthetic test models): placeholder ids
        eot, sot = 0, min(1, dims["vocab_size"] - 1)
    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=eot if multilingual else sot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, eot]),
        use_cache=True,
        tie_word_embeddings=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    torch_dtype = getattr(torch, dtype)
    sd = {k: torch.from_numpy(v.astype(dtype, copy=True)) for k, v in whisper_state_dict(model).items()}
    if "proj_out.weight" in sd:  # untied output projection
        config.tie_word_embeddings = False
    with torch.device("meta"):
        hf = WhisperForConditionalGeneration(config)
    hf = hf.to(torch_dtype)
    expected = set(hf.state_dict())
    if config.tie_word_embeddings:
        expected.discard("proj_out.weight")
    if set(sd) != expected:
        raise ConversionError(
            f"{model_bin}: CTranslate2 -> HF mapping mismatch; missing {sorted(expected - set(sd))[:8]}, "
            f"unexpected {sorted(set(sd) - expected)[:8]}"
        )
    hf.load_state_dict(sd, strict=False, assign=True)
    if config.tie_word_embeddings:
        hf.tie_weights()
    hf.eval()
    hf.save_pretrained(out_dir)

    if tok is not None:
        tok.save_pretrained(out_dir)
        whisper_generation_config(tok, ct2_config, dims).save_pretrained(out_dir)
    fe = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"], sampling_rate=16000, hop_length=160,
                                 chunk_length=30, n_fft=400, padding_value=0.0, return_attention_mask=False)
    fe.save_pretrained(out_dir)
    return out_dir
