"""What a resumed run needs: finding checkpoints, the trained weights in them, the RNG state, seeding,
the loss log cut back to the resumed step, and the loss plot written beside them.

A ``checkpoint-N`` is a model checkpoint like ``final/`` (``config.json``, ``model.safetensors`` of the
trained parts, the processor: ``from_pretrained``, ``llasm chat`` and ``llasm eval`` load it) plus what
a resume needs (optimizer, scheduler and RNG states). The trained weights are stored once: resume
reads them from ``model.safetensors``; only when that file cannot hold them as they are (a full save
with LoRA merged, tied names dropped) does ``trainable.safetensors`` hold them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llasm.checkpoint import WEIGHTS_NAME, write_checkpoint
from llasm.io import atomic_path, trim_step_log


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (temp dirs start with a dot and never match), oldest first."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.pt").exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as plain tensors and tuples, so they load with ``weights_only=True`` (no unpickling)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    """``[(step, loss), ...]`` -> a PNG line plot at ``path``."""
    import matplotlib  # heavy, and its backend is a process-wide choice: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def save_trainable(model, directory: Path) -> None:
    """Write ``model`` as a loadable checkpoint into ``directory`` and make sure its trainable tensors
    are there under their own names (else also in ``trainable.safetensors``)."""
    directory = Path(directory)
    write_checkpoint(model, directory)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(directory / WEIGHTS_NAME), "pt") as f:
        stored = set(f.keys())
    if not set(trainable) <= stored:
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable.items()},
                  str(directory / "trainable.safetensors"))


def load_trainable(model, directory: Path) -> None:
    """Copy the trainable tensors of a checkpoint (written by :func:`save_trainable`, or an older one
    with ``trainable.safetensors``) into ``model``; raises ``ValueError`` naming what does not match."""
    directory = Path(directory)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    own = directory / "trainable.safetensors"
    state = load_file(str(own if own.is_file() else directory / WEIGHTS_NAME))
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected) if own.is_file() else []  # model.safetensors also holds frozen parts
    if missing or extra:
        raise ValueError(f"{directory}: trainable parameters differ from this run's (missing {missing[:3]}, "
                         f"extra {extra[:3]}): was it made with another trainable / lora setting?")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name in expected:
            params[name].copy_(state[name])


def start_logs(out: Path, step: int) -> None:
    """Before a run at ``step`` logs into ``out``: ``losses.jsonl`` keeps the steps up to ``step``
    (:func:`llasm.io.trim_step_log`), and a run from step 0 removes an earlier run's TensorBoard event files (a resume's
    later steps are hidden by its writer's ``purge_step``), so TensorBoard shows this run alone whichever
    loader reads the folder (TensorBoard's fast loader does not honour ``purge_step``)."""
    trim_step_log(Path(out) / "losses.jsonl", step)
    if step == 0:
        for events in (Path(out) / "tensorboard").glob("events.out.tfevents.*"):
            events.unlink()
