"""Read CTranslate2 ``model.bin`` files (as shipped by faster-whisper) without CTranslate2.

The format (``python/ctranslate2/specs/model_spec.py`` ``ModelSpec._serialize`` writes it,
``src/models/model.cc`` reads it) is a little-endian stream::

    uint32 binary_version                      (1 .. 6)
    [binary_version >= 2] string spec_name, uint32 spec_revision
    uint32 num_variables
    num_variables x:
        string name
        uint8 rank, rank x uint32 dims
        [binary_version >= 4] uint8 dtype_id, uint32 num_bytes
        [binary_version <  4] uint8 item_size, uint32 num_items
        num_bytes of raw data
    [binary_version >= 3] uint32 num_aliases, num_aliases x (string alias, string target)

where ``string`` is ``uint16 length`` (including a trailing NUL) followed by the bytes. dtype ids
follow ``include/ctranslate2/types.h``: float32, int8, int16, int32, float16, bfloat16.

Besides :func:`read_ct2_model` this module maps a CTranslate2 ``WhisperSpec`` onto the
state dict of a Hugging Face ``WhisperForConditionalGeneration`` (:func:`whisper_state_dict`),
undoing CTranslate2's fused q/k/v projections, and offers a small writer
(:func:`write_ct2_model`) used by the tests to produce synthetic files.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

CURRENT_BINARY_VERSION = 6

# Order of the DataType enum in include/ctranslate2/types.h.
DTYPE_NAMES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_ITEMSIZE_TO_DTYPE = {4: "float32", 2: "int16", 1: "int8"}  # binary_version < 4 (no float16 then)


class CT2FormatError(ValueError):
    """A file that is not a readable CTranslate2 model.bin."""


@dataclass
class CT2Model:
    """The content of a model.bin: header plus named arrays (aliases resolved to shared arrays)."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> target name

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def scalar(self, name: str, default=None):
        if name not in self.variables:
            return default
        return self.variables[name].reshape(-1)[0].item()

    def weight(self, name: str) -> np.ndarray:
        """Return a floating-point weight, dequantizing int8/int16 ones with their ``<name>_scale``."""
        value = self.variables[name]
        if value.dtype in (np.int8, np.int16) and f"{name}_scale" in self.variables:
            scale = self.variables[f"{name}_scale"].astype(np.float32)
            if scale.ndim == 1 and value.ndim == 2:
                scale = scale[:, None]
            return value.astype(np.float32) / scale
        return value


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_exact(f: BinaryIO, n: int, path: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CT2FormatError(f"{path}: truncated CTranslate2 model file (wanted {n} bytes, got {len(data)})")
    return data


def _read_string(f: BinaryIO, path: str) -> str:
    (length,) = struct.unpack("<H", _read_exact(f, 2, path))
    data = _read_exact(f, length, path)
    return data.rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | os.PathLike, *, bf16_as_float32: bool = True) -> CT2Model:
    """Read a CTranslate2 ``model.bin``.

    bfloat16 arrays are returned as float32 (numpy has no bfloat16) unless ``bf16_as_float32`` is
    false, in which case they come back as raw ``uint16`` bit patterns.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", _read_exact(f, 4, path))
        if not 1 <= version <= CURRENT_BINARY_VERSION:
            raise CT2FormatError(
                f"{path}: unsupported CTranslate2 binary version {version} "
                f"(this reader knows 1..{CURRENT_BINARY_VERSION}); is it a model.bin?"
            )
        if version >= 2:
            spec_name = _read_string(f, path)
            (revision,) = struct.unpack("<I", _read_exact(f, 4, path))
        else:
            spec_name, revision = "", 1
        (num_variables,) = struct.unpack("<I", _read_exact(f, 4, path))
        model = CT2Model(version, spec_name, revision)
        for _ in range(num_variables):
            name = _read_string(f, path)
            (rank,) = struct.unpack("<B", _read_exact(f, 1, path))
            dims = struct.unpack(f"<{rank}I", _read_exact(f, 4 * rank, path)) if rank else ()
            if version >= 4:
                type_id, num_bytes = struct.unpack("<BI", _read_exact(f, 5, path))
                if type_id >= len(DTYPE_NAMES):
                    raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
                dtype_name = DTYPE_NAMES[type_id]
            else:
                item_size, num_items = struct.unpack("<BI", _read_exact(f, 5, path))
                if item_size not in _ITEMSIZE_TO_DTYPE:
                    raise CT2FormatError(f"{path}: variable {name!r} has unknown item size {item_size}")
                dtype_name = _ITEMSIZE_TO_DTYPE[item_size]
                num_bytes = item_size * num_items
            raw = _read_exact(f, num_bytes, path)
            np_dtype = np.uint16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
            count = int(np.prod(dims)) if dims else 1
            if count * np.dtype(np_dtype).itemsize != num_bytes:
                raise CT2FormatError(
                    f"{path}: variable {name!r} of shape {tuple(dims)} and dtype {dtype_name} "
                    f"has {num_bytes} bytes, expected {count * np.dtype(np_dtype).itemsize}"
                )
            array = np.frombuffer(raw, dtype=np_dtype).reshape(dims)
            if dtype_name == "bfloat16" and bf16_as_float32:
                array = _bf16_to_f32(array)
            model.variables[name] = array
        if version >= 3:
            (num_aliases,) = struct.unpack("<I", _read_exact(f, 4, path))
            for _ in range(num_aliases):
                alias = _read_string(f, path)
                target = _read_string(f, path)
                model.aliases[alias] = target
        # Aliases may point at aliases; resolve them (as CTranslate2 does, missing targets are skipped).
        for alias in model.aliases:
            target, seen = model.aliases[alias], {alias}
            while target in model.aliases and target not in seen:
                seen.add(target)
                target = model.aliases[target]
            if target in model.variables:
                model.variables[alias] = model.variables[target]
                if f"{target}_scale" in model.variables:
                    model.variables[f"{alias}_scale"] = model.variables[f"{target}_scale"]
    return model


def write_ct2_model(
    path: str | os.PathLike,
    variables: dict[str, np.ndarray],
    *,
    spec_name: str = "WhisperSpec",
    spec_revision: int = 3,
    aliases: dict[str, str] | None = None,
) -> None:
    """Write ``variables`` in CTranslate2's binary format, version 6 (mirrors ``ModelSpec._serialize``).

    Arrays must be float32/int8/int16/int32/float16; variables are written sorted by name like the
    original writer does. ``aliases`` maps alias names to existing variable names.
    """

    def write_string(f: BinaryIO, text: str) -> None:
        data = text.encode("utf-8")
        f.write(struct.pack("<H", len(data) + 1))
        f.write(data + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", CURRENT_BINARY_VERSION))
        write_string(f, spec_name)
        f.write(struct.pack("<I", spec_revision))
        f.write(struct.pack("<I", len(variables)))
        for name, value in sorted(variables.items()):
            value = np.ascontiguousarray(value)
            write_string(f, name)
            f.write(struct.pack("<B", value.ndim))
            for dim in value.shape:
                f.write(struct.pack("<I", dim))
            f.write(struct.pack("<B", DTYPE_NAMES.index(value.dtype.name)))
            f.write(struct.pack("<I", value.nbytes))
            f.write(value.tobytes())
        aliases = aliases or {}
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in sorted(aliases.items()):
            write_string(f, alias)
            write_string(f, target)


# --------------------------------------------------------------------------------------------
# Whisper: CTranslate2 WhisperSpec <-> Hugging Face WhisperForConditionalGeneration
# --------------------------------------------------------------------------------------------


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
