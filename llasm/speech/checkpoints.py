"""Resumable training checkpoints of the speech-output models (the unit HiFi-GAN's and the units -> mel
decoder's trainers): ``checkpoints/step_XXXXXXXX/{state.safetensors,state.json}``, written whole or
not at all (``io.atomic_dir``), no pickle (optimizer state flattened into safetensors + JSON).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llasm.io import atomic_dir, file_sha1
from llasm.settings import config_changes

# train settings that may change when a run continues (its length, bookkeeping, where it runs)
RESUME_FREE = tuple(f"train.{key}" for key in (
    "max_steps", "max_minutes", "output_dir", "resume", "progress", "log_every", "sample_every", "sample_seconds",
    "train_manifest",  # its content is compared instead
    "checkpoint_every", "keep_checkpoints", "num_threads", "device"))


def run_meta(section: str, model_config: dict, train_config) -> dict:
    """What a checkpoint records of the run that wrote it: the model's config (under ``section``, e.g.
    ``mel_decoder``), the ``train`` settings and the sha1 of ``train_config.train_manifest``."""
    return {"config": model_config, "section": section, "train": dataclasses.asdict(train_config),
            "manifest_sha1": file_sha1(train_config.train_manifest)}


def check_same_run(path: Path, meta: dict, now: dict) -> None:
    """Refuse to resume checkpoint ``path`` (its ``meta``) into a run (``now``: :func:`run_meta`) whose model
    config, train settings (but :data:`RESUME_FREE`) or manifest content differ: ``ValueError`` naming
    each change. Checkpoints older than these records are compared on the model config only."""
    section = now["section"]
    before, after = {section: meta["config"]}, {section: now["config"]}
    if "train" in meta:
        before["train"], after["train"] = meta["train"], now["train"]
    changes = config_changes(before, after, RESUME_FREE)
    if meta.get("manifest_sha1") not in (None, now["manifest_sha1"]):
        changes.append(f"train.train_manifest ({now['train']['train_manifest']}): its content changed")
    if changes:
        raise ValueError(f"{path}: written by a run with another config or data; resuming would mix them. What "
                         "changed:\n  " + "\n  ".join(changes) + "\n  Train into a new train.output_dir, or set "
                         "train.resume=never to start again there.")


def optimizer_to_flat(prefix: str, state: dict, tensors: dict, meta: dict) -> None:
    """Optimizer state_dict -> safetensors entries + JSON-able remainder (no pickle)."""
    meta[prefix] = {"param_groups": state["param_groups"], "scalars": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                meta[prefix]["scalars"].setdefault(str(index), {})[name] = value


def optimizer_from_flat(prefix: str, tensors: dict, meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_flat`: a state_dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith(prefix + ".state."):
            index, name = key[len(prefix) + 7 :].split(".", 1)
            state.setdefault(int(index), {})[name] = tensor
    for index, values in meta[prefix]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta[prefix]["param_groups"]]
    return {"state": state, "param_groups": groups}


def list_checkpoints(root: Path, complete: bool = True) -> list[Path]:
    """``step_N`` folders under ``root``, oldest (lowest N) first; ``complete=False`` also lists ones
    without both files (a checkpoint from a crashed writer of an older version, or a user's copy).
    Temporary folders (``io.atomic_dir``: a dot first) and other names never match."""
    found = []
    for path in Path(root).glob("step_*") if Path(root).is_dir() else ():
        match = re.fullmatch(r"step_(\d+)", path.name)
        if match and path.is_dir() and (not complete or (
                (path / "state.safetensors").exists() and (path / "state.json").exists())):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """Newest complete ``step_*`` folder under ``root`` (half-written ones never get a final name)."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: Path, step: int, tensors: dict, meta: dict, keep: int) -> Path:
    """Write ``root/step_{step:08d}`` atomically and prune all but the newest ``keep``."""
    final = root / f"step_{step:08d}"
    with atomic_dir(final) as temporary:
        save_file(tensors, str(temporary / "state.safetensors"))
        (temporary / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    older = [p for p in list_checkpoints(root, complete=False) if p != final]
    for stale in older[: max(0, len(older) - keep + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a checkpoint folder; ``FileNotFoundError`` when it is not one."""
    if not (path / "state.safetensors").exists() or not (path / "state.json").exists():
        raise FileNotFoundError(f"{path}: not a checkpoint (needs state.safetensors and state.json)")
    return load_file(str(path / "state.safetensors")), json.loads((path / "state.json").read_text(encoding="utf-8"))


def module_state(name: str, module: torch.nn.Module, tensors: dict) -> None:
    """Add ``module``'s state_dict to ``tensors`` under ``name.``."""
    for key, value in module.state_dict().items():
        tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()  # saved from any device


def load_module_state(name: str, module: torch.nn.Module, tensors: dict) -> None:
    prefix = name + "."
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
