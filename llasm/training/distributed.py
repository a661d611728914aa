"""What ranks must agree on: the DeepSpeed config filled from the training config, and, every
micro-batch, which model parts some rank needs.

Collectives pair up by order, not by name: DDP reduces gradients, ZeRO-2 reduces them in buckets,
ZeRO-3 all-gathers a module's weights when the module runs. A rank that skips a batch, or a part
(the audio tower when its clips are all cached, the adaptor when its batch is text only), while
the others run it leaves the collectives out of step and the job hangs until the watchdog kills
it. So before each micro-batch the ranks share :class:`BatchNeeds` in one small all-reduce; a
batch rejected on any rank is skipped on all, and a rank that lacks a part the others run passes
a placeholder through it with weight 0 (``placeholder_audio`` in the model's forward).
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from llasm.io import resolve_path


def deepspeed_json(path: str) -> dict:
    return json.loads(Path(resolve_path(path)).read_text())


def zero_stage(path: str | None) -> int:
    """The ZeRO stage of a DeepSpeed JSON (0 without one)."""
    if not path:
        return 0
    return int(deepspeed_json(path).get("zero_optimization", {}).get("stage", 0))


def deepspeed_config(path: str, train, world_size: int, mixed_precision: str) -> dict:
    """The DeepSpeed JSON at ``path`` with every ``"auto"`` filled from the training config, as
    transformers' ``HfTrainerDeepSpeedConfig`` does: batch sizes, accumulation, clipping, and the
    precision (``bf16.enabled`` / ``fp16.enabled``) from ``mixed_precision`` (``no`` | ``bf16`` |
    ``fp16``, already resolved). An explicit value that contradicts the training config raises
    ``ValueError`` naming both, instead of silently training in another precision."""
    ds = deepspeed_json(path)
    fill = {
        ("train_micro_batch_size_per_gpu",): train.batch_size,
        ("gradient_accumulation_steps",): train.grad_accum,
        ("train_batch_size",): train.batch_size * train.grad_accum * world_size,
        ("gradient_clipping",): train.max_grad_norm,
        ("bf16", "enabled"): mixed_precision == "bf16",
        ("fp16", "enabled"): mixed_precision == "fp16",
    }
    wrong = []
    for keys, value in fill.items():
        node = ds
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        given = node.get(keys[-1], "auto")
        if given == "auto":
            node[keys[-1]] = value
        elif given != value:
            wrong.append(f"{'.'.join(keys)}={given!r} but the training config gives {value!r}")
    if wrong:
        raise ValueError(f"{path}: " + "; ".join(wrong) + ' (set these to "auto" to take the training config)')
    return ds


@dataclass
class BatchNeeds:
    """What one rank's micro-batch needs: ``empty`` (every row rejected), ``audio`` (it has audio, so
    the adaptor runs), ``tower`` (the audio tower runs: audio not all in the encoder cache)."""

    empty: bool = False
    audio: bool = False
    tower: bool = False


def release_precision(mixed_precision: str, world_size: int) -> str:
    """``mixed_precision`` for a new ``Accelerator``, after forgetting a single process's earlier one.

    accelerate keeps one process-wide state and refuses a second precision in the same process
    ("AcceleratorState has already been initialized"), so ``train()`` twice in one Python process
    (stage 3 in bf16 after an fp32 run, as ``make speech-demo``'s tests do) would fail. With one process
    and no launcher there is nothing to keep: the state is reset as accelerate's own tests do. Under a
    launcher (``world_size`` > 1) the state is left alone and accelerate's error stands.
    """
    state = AcceleratorState._shared_state
    if world_size == 1 and state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=True)
    return mixed_precision


def agree(accelerator, needs: BatchNeeds) -> BatchNeeds:
    """Every rank's needs or-ed together (one all-reduce of three numbers; none on one process)."""
    if accelerator.num_processes == 1:
        return needs
    flags = torch.tensor([float(v) for v in astuple(needs)], device=accelerator.device)
    flags = accelerator.reduce(flags, "sum")
    return BatchNeeds(*(bool(v > 0) for v in flags.tolist()))


def end_distributed(barrier: bool = True) -> None:
    """Shut the process group down before exit (left to interpreter teardown, its threads can abort a finished
    run: ``terminate called without an active exception``); no barrier on an error path."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
