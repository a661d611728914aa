"""Checkpoints: safetensors only, trained parts + base ids by default, everything on ``merge``.

A ``trained_parts`` checkpoint holds the adaptor, the audio-token rows and whatever else trained
(LoRA weights, a fully tuned LLM, the unit head); loading rebuilds the frozen bases from the ids or
paths recorded in the config. A ``full`` checkpoint is a plain HF model directory.

Where the bases are is recorded three ways (:func:`base_locations`), so a checkpoint copied to
another folder or machine still finds them: the path or hub id as given, the path relative to the
checkpoint, and the path below ``$LLASM_HOME`` (the starter models). ``from_pretrained(dir,
audio_tower=..., language_model=...)`` points at them explicitly (:func:`resolve_base`).

Every checkpoint also carries ``llasm_auto.py`` and an ``auto_map`` in ``config.json`` (HF's
custom-model mechanism), so ``transformers.AutoModel.from_pretrained(dir, trust_remote_code=True)``
loads it without ``import llasm``; the file only imports the installed package.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import cached_file

from llasm.configuration import LlasmConfig
from llasm.io import atomic_dir, llasm_home, umask, write_text
from llasm.lora import add_lora, merge_lora
from llasm.processing import LlasmProcessor

WEIGHTS_NAME = "model.safetensors"
AUTO_MODULE = "llasm_auto"
# config.json's auto_map: transformers imports these from llasm_auto.py (trust_remote_code=True)
AUTO_MAP = {"AutoConfig": f"{AUTO_MODULE}.LlasmConfig", "AutoModel": f"{AUTO_MODULE}.LlasmForConditionalGeneration"}
AUTO_SOURCE = '''"""Lets transformers load this llasm checkpoint without ``import llasm``:

    AutoModel.from_pretrained(this_dir, trust_remote_code=True)

The code is the installed ``llasm`` package (pip install llasm); ``import llasm`` first needs no flag.
"""
from llasm.configuration import LlasmConfig  # noqa: F401
from llasm.modeling import LlasmForConditionalGeneration  # noqa: F401
'''
# the two bases a trained_parts checkpoint rebuilds: argument name -> (config field, what it is)
BASES = {"audio_tower": ("audio_model_name_or_path", "audio tower (Whisper)"),
         "language_model": ("text_model_name_or_path", "language model")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name) -> torch.dtype:
    """``"bfloat16"`` (or a ``torch.dtype``, or ``None`` for float32) -> the ``torch.dtype``."""
    if isinstance(name, torch.dtype) or name is None:
        return name or torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def save_checkpoint(model, save_directory, merge: bool = False) -> Path:
    """Write ``model`` (and its processor, when attached) into ``save_directory`` atomically."""
    target = Path(save_directory)
    with atomic_dir(target) as tmp:
        write_checkpoint(model, tmp, merge=merge)
    return target


def write_checkpoint(model, directory, merge: bool = False) -> str:
    """Write the checkpoint files into the existing ``directory`` (not atomic: the caller's temp dir,
    renamed beside where it will live, so relative base paths stay right). Returns the format written:
    ``"full"`` when ``merge`` or when a base has no id/path (random tiny models), else ``"trained_parts"``."""
    directory = Path(directory)
    bases_known = bool(model.config.audio_model_name_or_path and model.config.text_model_name_or_path)
    # after a trust_remote_code load, transformers marks the classes with _auto_class and would copy
    # their source files into every later save: llasm_auto.py already says where the code is
    saved_marks = [(c, c.__dict__.get("_auto_class")) for c in (type(model), type(model.config))]
    for c, _ in saved_marks:
        c._auto_class = None
    try:
        if merge or not bases_known:
            _save_full(model, directory)
            fmt = "full"
        else:
            config = copy.deepcopy(model.config)
            config.checkpoint_format = "trained_parts"
            config.base_locations = base_locations(config, directory)
            config.auto_map = dict(AUTO_MAP)
            config.save_pretrained(directory)
            save_file(model.trained_state_dict(), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
            fmt = "trained_parts"
    finally:
        for c, mark in saved_marks:
            c._auto_class = mark
    write_text(directory / f"{AUTO_MODULE}.py", AUTO_SOURCE)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    if getattr(model, "processor", None) is not None:
        model.processor.save_pretrained(directory)
    mode = 0o666 & ~umask()  # some writers (transformers' shards) make 0600 files
    for file in directory.iterdir():
        if file.is_file():
            file.chmod(mode)
    return fmt


def base_locations(config: LlasmConfig, directory) -> dict[str, list[str]]:
    """``{"audio_tower": [...], "language_model": [...]}``: where each base is, in the order loading
    tries them: the path or hub id as recorded (local paths made absolute), the path relative to
    ``directory`` (the checkpoint), and ``$LLASM_HOME/...`` when the base lies below it."""
    home = os.path.abspath(llasm_home())
    out = {}
    for part, (field, _) in BASES.items():
        given = getattr(config, field)
        if not given:
            continue
        if not os.path.exists(given):  # a hub id, or a path that is already gone: keep it as it is
            out[part] = [str(given)]
            continue
        path = os.path.abspath(given)
        found = [path, os.path.relpath(path, os.path.abspath(directory))]
        if os.path.commonpath([path, home]) == home:
            found.append("$LLASM_HOME/" + Path(os.path.relpath(path, home)).as_posix())
        out[part] = found
    return out


def resolve_base(part: str, config: LlasmConfig, checkpoint, override=None) -> str:
    """Where to load base ``part`` (``audio_tower`` | ``language_model``) of a trained_parts checkpoint
    from: ``override`` when given, else the first recorded location that exists here (absolute,
    relative to the checkpoint, below ``$LLASM_HOME``), else the recorded name when it can be a hub id.

    Raises ``FileNotFoundError`` naming the base, every place tried and how to point at it.
    """
    field, what = BASES[part]
    if override:
        override = os.fspath(override)
        if os.path.isabs(override) and not os.path.exists(override):
            raise FileNotFoundError(f"{part}={override}: no such file or directory")
        return override
    recorded = getattr(config, field)
    candidates = list((getattr(config, "base_locations", None) or {}).get(part) or [recorded])
    local = os.path.isdir(checkpoint)
    tried = []
    for candidate in candidates:
        if candidate.startswith("$LLASM_HOME/"):
            path = os.path.join(llasm_home(), candidate[len("$LLASM_HOME/"):])
        elif os.path.isabs(candidate):
            path = candidate
        elif local and candidate.startswith(("./", "../")):
            path = os.path.normpath(os.path.join(os.path.abspath(checkpoint), candidate))
        else:  # a hub id or a path relative to the working directory
            path = candidate
        if os.path.exists(path):
            return path
        tried.append(path)
    if recorded and not os.path.isabs(recorded) and not recorded.startswith((".", "$")):
        return recorded  # a hub id: from_pretrained finds it in the hub cache (or says why not)
    raise FileNotFoundError(
        f"{checkpoint}: this checkpoint holds only the trained parts and needs its {what} "
        f"{recorded!r}, which is not here (tried: {', '.join(dict.fromkeys(tried))}). Point at a copy: "
        f"from_pretrained({str(checkpoint)!r}, {part}=PATH_OR_HUB_ID), or --{part.replace('_', '-')} "
        "PATH on the command line.")


def _save_full(model, directory: Path) -> None:
    """Everything in one HF directory; LoRA is merged into the LLM first."""
    lm = model.language_model
    if model.config.lora:
        model = merge_lora(copy.deepcopy(model))
    original = model.config.checkpoint_format, getattr(model.config, "auto_map", None)
    model.config.checkpoint_format, model.config.auto_map = "full", dict(AUTO_MAP)
    try:
        PreTrainedModel.save_pretrained(model, directory, safe_serialization=True)
    finally:
        model.config.checkpoint_format, model.config.auto_map = original
    del lm


def load_checkpoint(cls, path, *, dtype=None, config=None, audio_tower=None, language_model=None, **kwargs):
    """Load either checkpoint format into ``cls`` (the model class); attaches ``model.processor`` when
    the directory has one. A ``trained_parts`` checkpoint rebuilds the bases with
    ``cls.from_base_models`` (found by :func:`resolve_base`; ``audio_tower`` / ``language_model``
    override where) and loads the trained tensors over them."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    kwargs.pop("trust_remote_code", None)  # AutoModel passes it on; the code is this package's
    config = config or LlasmConfig.from_pretrained(path, **hub_kwargs)
    dtype = torch_dtype(dtype if dtype not in (None, "auto") else None)
    if config.checkpoint_format == "full":
        model = PreTrainedModel.from_pretrained.__func__(cls, path, config=config, dtype=dtype, **kwargs)
    else:
        config.audio_model_name_or_path = resolve_base("audio_tower", config, path, audio_tower)
        config.text_model_name_or_path = resolve_base("language_model", config, path, language_model)
        model = cls.from_base_models(config, dtype=dtype)
        if config.lora:
            add_lora(model, config.lora)
        state = load_file(cached_file(path, WEIGHTS_NAME, **hub_kwargs))
        unexpected = load_into(model, state)
        if unexpected:
            raise ValueError(f"{path}: checkpoint has weights this model does not: {unexpected[:5]}")
    model.processor = _load_processor(path, hub_kwargs)
    if model.processor is not None and getattr(model.processor, "max_positions", None) is None:
        # checkpoints written before the processor kept it: the LLM's own limit
        model.processor.max_positions = getattr(config.text_config, "max_position_embeddings", None)
    model.eval()
    return model


def load_into(model, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``state`` over ``model``'s tensors of the same names; returns the names it does not have.

    Under ZeRO-3 (a model built inside ``deepspeed.zero.Init``, as transformers' ``from_pretrained`` does
    when a ZeRO-3 config is active) each rank holds an empty slice of every partitioned weight, so
    those are gathered, written on rank 0 and re-partitioned (``GatheredParameters(modifier_rank=0)``,
    like transformers' own ZeRO-3 loading); ordinary tensors are loaded on every rank as usual.
    """
    params = dict(model.named_parameters())
    partitioned = {n for n in state if hasattr(params.get(n), "ds_id")}
    if partitioned:
        import deepspeed  # optional (llasm[train]); partitioned parameters mean it is there

        with torch.no_grad():
            for name in sorted(partitioned):
                with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=0):
                    if torch.distributed.get_rank() == 0:
                        params[name].copy_(state[name])
    _, unexpected = model.load_state_dict({n: t for n, t in state.items() if n not in partitioned}, strict=False)
    return unexpected


def _load_processor(path, hub_kwargs):
    if Path(path).is_dir() and not (Path(path) / "processor_config.json").exists():
        return None
    try:
        return LlasmProcessor.from_pretrained(path, **hub_kwargs)
    except OSError:
        return None
