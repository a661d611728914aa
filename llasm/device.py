"""Device and precision: one decision, made here, for every tool that runs a model.

The trainer, ``llasm chat``, ``llasm serve``, evaluation, the vocoder trainer and the units and TTS
tools all ask this module where to run (``--device`` / ``device:``) and in which precision
(``--dtype`` / ``dtype:`` for weights, ``train.mixed_precision`` for autocast), and move every
tensor that reaches a model with :func:`to_device`.

Defaults: CUDA when present, else the CPU; bfloat16 weights on CUDA (float16 on GPUs without
bf16, e.g. V100/T4), float32 on the CPU. A device that was asked for but is missing is an error,
not a silent fall back to the CPU. Follows transformers' ``TrainingArguments`` (``bf16`` on
Ampere+, ``fp16`` before) and accelerate's one ``device`` per process.

torch is imported where a function needs it, so the command modules can declare ``--device`` with
:func:`add_device_arguments` and still answer ``--help`` without loading it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
AUTO = (None, "", "auto")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda`` when present, else ``cpu``; otherwise the named device.

    Accepts ``cpu``, ``cuda``, ``cuda:N``, ``mps``. Raises ``ValueError`` naming the device when
    it was asked for but this machine (or this build of torch) has none.
    """
    import torch  # heavy: not for --help

    if isinstance(name, torch.device):
        name = str(name)
    if name in AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r}: not a device name (cpu, cuda, cuda:N, mps)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device is available (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine")
    return device


def _bf16_supported(device: torch.device) -> bool:
    import torch

    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (the AVX512-BF16 or AMX instructions, which
    torch's oneDNN uses); without, bf16 autocast on the CPU is emulated and slower than fp32. oneDNN's own
    ``_is_mkldnn_bf16_supported`` is not the test: it says yes on any AVX-512 CPU (Skylake / Cascade Lake
    Xeons), where bf16 is emulated."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """Weight dtype: ``None``/``"auto"`` -> bfloat16 on CUDA (float16 without bf16), float32 elsewhere.

    Names: ``float32`` | ``bfloat16`` | ``float16`` (or a ``torch.dtype``). ``ValueError`` otherwise.
    """
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name in AUTO:
        device = resolve_device(device)
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if _bf16_supported(device) else torch.float16
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or auto, got {name!r}")
    return getattr(torch, name)


def resolve_mixed_precision(name: str | None, device: str | torch.device | None = None) -> str:
    """Autocast mode for training: ``"auto"`` -> ``bf16`` on CUDA (``fp16`` without bf16), ``no`` elsewhere.

    Explicit values (``no`` | ``bf16`` | ``fp16``) are kept; ``fp16`` needs CUDA. ``False`` is ``no``
    (YAML 1.1 reads an unquoted ``no`` as false).
    """
    if name is False:
        return "no"
    if name in AUTO:
        device = resolve_device(device)
        if device.type != "cuda":
            return "no"
        return "bf16" if _bf16_supported(device) else "fp16"
    if name not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {name!r}")
    return name


def to_device(data, device: str | torch.device, non_blocking: bool = False):
    """``data`` with every tensor in it (dicts, lists, tuples, nested) moved to ``device``.

    The one helper through which batches reach a model: a CPU tensor left behind is a
    cross-device error on a GPU. Non-tensor values (ids, paths) pass through unchanged.
    """
    import torch

    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, Mapping):  # a processor's BatchFeature too: the result is a plain dict
        return {k: to_device(v, device, non_blocking) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a namedtuple
        return type(data)(*(to_device(v, device, non_blocking) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(v, device, non_blocking) for v in data)
    return data


def add_device_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``) with the same meaning in every command."""
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: cuda when present, else cpu)")
    if dtype:
        parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES],
                            help="weight dtype (default auto: bfloat16 on CUDA, float32 on CPU)")


def describe(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """``"cuda:0 (NVIDIA H100, bfloat16)"`` — for a tool's first line of output."""
    import torch

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)}"
        name += f", {str(dtype).removeprefix('torch.')})" if dtype is not None else ")"
    elif dtype is not None:
        name += f" ({str(dtype).removeprefix('torch.')})"
    return name
