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

Besides :func:`read_ct2_model` this module offers a small writer (:func:`write_ct2_model`) the tests
use to produce synthetic files. Whisper's variables map onto HF names in :mod:`llasm.weights.whisper_ct2`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from llasm.io import atomic_path

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

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
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
