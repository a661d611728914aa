"""What a training run says about itself, and the checks made before any model loads.

* :func:`check_inputs` (the first thing a :class:`~llasm.training.trainer.Trainer` does): the model
  path, the DeepSpeed JSON, the objective, every data source (found, readable, rows usable without
  decoding audio) and whether ``output_dir`` holds a run this config may continue
  (:func:`check_resume`). Everything wrong is reported at once, as one :class:`InputError`; a data set
  with no usable row stops here, naming the rejects file and the first reasons.
* :func:`describe_start`: the resolved config, rows per source, trainable parameters per part, the
  step count, and warnings for settings that cannot work (warmup longer than the run, a learning
  rate of 0, a batch larger than the data, no checkpoint before the end).
* :func:`describe_end`: the final loss, the time and where everything is.
* :func:`write_config`: ``train_config.yaml`` (the resolved config, loadable by ``llasm train``) in
  ``output_dir`` and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import yaml

from llasm.builder import load_spec
from llasm.data.dataset import Source, check_row
from llasm.data.records import read_rows
from llasm.data.shards import INDEX, is_sharded, read_index
from llasm.io import file_sha1, llasm_home, read_jsonl, resolve_path, write_jsonl, write_text
from llasm.settings import config_changes, did_you_mean
from llasm.training.config import OBJECTIVES, TrainConfig
from llasm.training.parts import PARTS
from llasm.training.resume import latest_checkpoint
from llasm.unit_head import UnitHeadConfig

CONFIG_NAME = "train_config.yaml"
# keys that may change between a run and its continuation: where and how often things are written,
# how long this sitting or the whole run may take (a longer run is what a resume is often for; the
# learning-rate schedule then follows the new length), how the resume itself is asked for
RESUME_FREE = ("resume", "output_dir", "data.num_workers", "train.log_every", "train.save_every",
               "train.keep_checkpoints", "train.max_minutes", "train.max_steps", "train.epochs", "encoder_cache.dir",
               "train.fit_steps_to_minutes")
SHOW_REASONS = 5
SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Source))  # what a data.sources entry may say


class InputError(ValueError):
    """A training input that cannot work; the message names it and what to do about it. ``every_rank``:
    raised by a check every rank makes alike (:func:`check_inputs`), so one rank per node says it."""

    every_rank = False


@dataclasses.dataclass
class SourceCount:
    """One data source as :func:`check_inputs` found it."""

    name: str
    path: str
    weight: float
    rows: int
    usable: int
    rejects: list[dict]  # {"id", "reason"}, every one


# -- before the model loads ------------------------------------------------------------------------
def check_inputs(cfg: TrainConfig, main_process: bool = True, check_model: bool = True) -> list[SourceCount]:
    """Check what a run needs before any model loads; returns the rows per source.

    Raises :class:`InputError` listing every problem: a model that is neither a checkpoint directory
    nor a model YAML (unless ``check_model`` is off: the caller hands the model in), a missing
    DeepSpeed JSON, an unknown objective, a data source that is missing or unreadable, no usable row
    at all (the rejects are written to ``output_dir/rejects.jsonl`` by the main process first), or an
    ``output_dir`` whose run used another config (:func:`check_resume`).
    """
    try:
        return _check_inputs(cfg, main_process, check_model)
    except InputError as err:
        err.every_rank = True
        raise


def _check_inputs(cfg: TrainConfig, main_process: bool, check_model: bool) -> list[SourceCount]:
    problems = []
    model = resolve_path(cfg.model)
    usable_model = os.path.isfile(os.path.join(model, "config.json")) or (
        model.endswith((".yaml", ".yml")) and os.path.isfile(model))
    if check_model and not usable_model:
        hint = ""
        if os.path.isfile(os.path.join(model, "final", "config.json")):
            hint = f" (the run's checkpoint is {os.path.join(cfg.model, 'final')})"
        problems.append(f"model: {cfg.model} is neither a checkpoint directory (with config.json) nor a model "
                        f"YAML{hint}")
    elif check_model and not os.path.isfile(os.path.join(model, "config.json")):
        try:  # the model YAML's own keys and values, before anything loads
            load_spec(model)
        except (TypeError, ValueError) as err:
            problems.append(f"model: {err}")
    cache_dir = cfg.encoder_cache.dir or os.path.join(llasm_home(), "encoder_cache")
    if cfg.encoder_cache.enabled and cfg.encoder_cache.read_only and not os.path.isdir(cache_dir):
        problems.append(f"encoder_cache.read_only needs the cache built beforehand (llasm encoder-cache), but "
                        f"encoder_cache.dir {cache_dir} is not a directory")
    if cfg.deepspeed and not os.path.isfile(resolve_path(cfg.deepspeed)):
        problems.append(f"deepspeed: {cfg.deepspeed} not found")
    if cfg.data.packing and cfg.objective.type != "ce":
        problems.append(f"data.packing works with objective.type ce only, got {cfg.objective.type}")
    elif cfg.data.packing and not cfg.data.max_length:
        problems.append("data.packing needs data.max_length (the length of a packed row)")
    if cfg.train.fit_steps_to_minutes and not cfg.train.max_minutes:
        problems.append("train.fit_steps_to_minutes needs train.max_minutes (the minutes to fit the run's steps to)")
    if cfg.objective.type not in OBJECTIVES:
        problems.append(f"objective.type must be one of {', '.join(OBJECTIVES)}, got {cfg.objective.type!r}")
    if cfg.unit_head:  # its settings are checked again when the head is built, after the LLM loaded
        try:
            UnitHeadConfig.from_dict(dict(cfg.unit_head))
        except (TypeError, ValueError) as err:
            problems.append(str(err))
    for part in cfg.trainable or {}:  # a plain dict in the YAML: its keys are checked here, before the model loads
        if part not in PARTS:
            problems.append(f"trainable.{part}: not a part of the model{did_you_mean(part, PARTS, 'trainable.')}; "
                            f"parts: {list(PARTS)}")
    if not cfg.data.sources:
        problems.append("data.sources is empty: give at least one JSONL (or Alpaca / ShareGPT JSON)")
    counts = []
    for i, source in enumerate(cfg.data.sources):
        if not isinstance(source, dict):
            problems.append(f"data.sources[{i}] must be a mapping ({{path: ..., weight: ..., name: ...}}), got {source!r}")
            continue
        for key in sorted(set(source) - set(SOURCE_KEYS)):
            problems.append(f"data.sources[{i}]: unknown key '{key}'{did_you_mean(key, SOURCE_KEYS)}; "
                            f"known: {list(SOURCE_KEYS)}")
        path = source.get("path")
        if not path:
            problems.append(f"data.sources[{i}] has no path")
            continue
        if is_sharded(path):  # a shard folder (`llasm shards`): rows were checked when it was written
            try:
                rows = sum(read_index(path)["num_rows"])
            except (ValueError, KeyError, OSError) as err:
                problems.append(f"data.sources[{i}].path: {err}")
                continue
            counts.append(SourceCount(source.get("name") or Path(path).stem, path, float(source.get("weight", 1.0)),
                                      rows, rows, []))
            continue
        if not os.path.isfile(path):
            problems.append(f"data.sources[{i}].path: {path} not found (relative paths start at the working "
                            f"directory, {os.getcwd()})")
            continue
        try:
            rows = read_rows(path)
        except (ValueError, UnicodeDecodeError) as err:
            problems.append(f"data.sources[{i}].path: {err}")
            continue
        root = str(Path(path).parent)
        rejects = []
        for row in rows:
            reason = check_row(row, root)
            if reason:
                rejects.append({"id": row.get("id"), "reason": reason, "source": path})
        counts.append(SourceCount(source.get("name") or Path(path).stem, path, float(source.get("weight", 1.0)),
                                  len(rows), len(rows) - len(rejects), rejects))
    if problems:
        raise InputError("cannot train:\n  - " + "\n  - ".join(problems))
    if counts and not any(c.usable for c in counts):
        raise no_usable_rows(cfg, [r for c in counts for r in c.rejects], sum(c.rows for c in counts),
                             write=main_process)
    check_resume(cfg)
    return counts


def no_usable_rows(cfg: TrainConfig, rejects: list[dict], rows: int, write: bool = True) -> InputError:
    """The error for a data set none of whose rows can be used: it names the rejects file (written
    here when ``write``) and the first reasons. Also raised when every row fails while loading."""
    path = Path(cfg.output_dir) / "rejects.jsonl"
    if write and rejects:
        write_jsonl(path, rejects)
    first = "\n".join(f"    {r.get('id')}: {r.get('reason')}" for r in rejects[:SHOW_REASONS])
    roots = ", ".join(sorted({str(Path(s["path"]).resolve().parent) for s in cfg.data.sources if s.get("path")}))
    return InputError(
        f"no usable row in data.sources: all {rows} rows were rejected (every reason: {path}). The first:\n{first}\n"
        f"  Audio paths in a row are relative to its JSONL file's folder ({roots}).")


def data_fingerprint(cfg: TrainConfig) -> dict[str, str]:
    """``{source path: sha1 of its bytes}``: a continuation must read the same data."""
    # a shard folder's index names its files, rows and source: it stands for the folder
    return {source["path"]: file_sha1(Path(source["path"]) / INDEX if is_sharded(source["path"]) else source["path"])
            for source in cfg.data.sources}


def saved_run(directory: Path) -> tuple[dict | None, dict]:
    """``(config, data fingerprint)`` a checkpoint or output_dir was written with (``None`` when unknown)."""
    directory = Path(directory)
    config, data = None, {}
    if (directory / CONFIG_NAME).is_file():
        config = yaml.safe_load((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    state = directory / "trainer_state.pt"
    if state.is_file():
        trainer = torch.load(state, weights_only=True)
        config = config or trainer.get("config")
        data = trainer.get("data_sha1", {})
    return config, data


def check_resume(cfg: TrainConfig) -> None:
    """Refuse to continue a run whose config or data changed (``resume: auto``), naming what changed.

    The run is the newest checkpoint in ``output_dir``, or, when there is none, a finished run's
    ``train_config.yaml`` beside ``final/`` (which this run would overwrite). ``resume: force`` continues
    anyway; ``resume: none`` or a new ``output_dir`` start afresh. Raises :class:`InputError`.
    """
    if cfg.resume != "auto":
        return
    out = Path(cfg.output_dir)
    checkpoint = latest_checkpoint(out)
    where = checkpoint if checkpoint is not None else out
    if checkpoint is None and not (out / "final").is_dir():
        return
    before, data_before = saved_run(where)
    if before is None:
        return
    changes = config_changes(before, dataclasses.asdict(cfg), RESUME_FREE)
    if data_before:
        now = data_fingerprint(cfg)
        changes += [f"data {path}: its content changed" for path, sha in now.items()
                    if path in data_before and data_before[path] != sha]
    if changes:
        what = f"continue {checkpoint}" if checkpoint is not None else f"overwrite the finished run in {out}"
        raise InputError(
            f"output_dir {out} holds a run made with another config; resume: auto would {what}. What changed:\n  "
            + "\n  ".join(changes) + "\n  Train into a new output_dir, or set resume: force (continue it anyway) "
            "or resume: none (start again here).")


def write_config(cfg: TrainConfig, directory) -> Path:
    """``directory/train_config.yaml``: the resolved config, which ``llasm train`` reads back as it is — with
    ``resume: auto``, so rerunning the file continues this run (``resume: none`` would start it again and remove
    its checkpoints)."""
    text = yaml.safe_dump(dataclasses.asdict(cfg) | {"resume": "auto"}, sort_keys=False, allow_unicode=True)
    return write_text(Path(directory) / CONFIG_NAME, text)


# -- at the start and the end of the run -----------------------------------------------------------
def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def parameters_per_part(model) -> dict[str, tuple[int, int]]:
    """``{part: (trainable, total)}`` over the model's top-level parts (LoRA counts in language_model)."""
    out: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        counts = out.setdefault(name.split(".")[0], [0, 0])
        counts[1] += p.numel()
        if p.requires_grad:
            counts[0] += p.numel()
    return {part: (t, n) for part, (t, n) in out.items()}


def lr_factors(scheduler, steps: int) -> list[float] | None:
    """The schedule's factor of each step's learning rate (step ``k`` uses ``lr * f[k - 1]``), or
    ``None`` for a scheduler that is not a plain per-step lambda."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return None
    return [float(lambdas[0](k)) for k in range(steps)]


def warnings_for(cfg: TrainConfig, total_steps: int, usable_rows: int, world: int, factors, start: int = 0) -> list[str]:
    """Settings that cannot do what they say, in words (empty when all is well); ``start``: the step a
    resumed run goes on from."""
    t = cfg.train
    out = []
    if t.lr <= 0:
        out.append(f"train.lr is {t.lr}: nothing trains")
    out += [f"train.part_lr.{part} is {lr}: {part} does not train" for part, lr in t.part_lr.items() if lr <= 0]
    if factors and t.lr > 0:
        peak = max(factors)
        if t.warmup_steps >= total_steps:
            out.append(f"train.warmup_steps {t.warmup_steps} >= the run's {total_steps} steps: the learning rate "
                       f"never reaches train.lr {t.lr:g} (at most {t.lr * peak:.3g}); lower warmup_steps or train longer")
        zero = [k + 1 for k, f in enumerate(factors) if f == 0 and not (k == 0 and t.warmup_steps > 0)]
        if zero:
            out.append(f"the learning rate is 0 at {len(zero)} of {total_steps} steps (from step {zero[0]}; "
                       f"scheduler {t.scheduler}): those steps change nothing")
    if usable_rows < t.batch_size * world:
        out.append(f"train.batch_size {t.batch_size} x {world} process(es) > the {usable_rows} usable rows: every "
                   f"step sees the whole data set (smaller batches give more steps)")
    next_save = (start // t.save_every + 1) * t.save_every
    if start < total_steps and next_save >= total_steps:
        out.append(f"train.save_every {t.save_every}: no checkpoint between step {start} and the run's end at step "
                   f"{total_steps}, so a stopped run starts again from step {start}"
                   + (" (the checkpoint it resumed from)" if start else ""))
    return out


def describe_start(trainer, counts: list[SourceCount], resumed: str | None) -> list[str]:
    """Print what the run is about to do (main process); returns the warnings."""
    cfg, out = trainer.cfg, trainer.out
    dataset = trainer.dataset
    world = trainer.accelerator.num_processes
    kept = [c.usable for c in counts]  # shard folders: their rows were checked when the folder was written
    if hasattr(dataset, "source_of"):  # JSONL sources, loaded: what survived the checks, per source
        kept = [0] * len(counts)
        for s in dataset.source_of:
            kept[s] += 1
    warnings = warnings_for(cfg, trainer.total_steps, sum(kept), world,
                            lr_factors(trainer.scheduler, trainer.total_steps), start=trainer.step)
    if not trainer.is_main:
        return warnings
    lines = [f"[train] config ({out / CONFIG_NAME}):"]
    compact = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=None,
                             width=110)  # a section's keys on a line or two
    lines += ["    " + line for line in compact.rstrip().splitlines()]
    total_weight = sum(c.weight for c in counts) or 1.0
    lines.append("[train] data:")
    for c, n in zip(counts, kept):
        rejected = c.rows - n
        lines.append(f"    {c.name}: {n} of {c.rows} rows usable"
                     + (f" ({rejected} rejected, see {out / 'rejects.jsonl'})" if rejected else "")
                     + f", weight {c.weight:g} ({100 * c.weight / total_weight:.0f} % of draws) <- {c.path}")
    lines.append("[train] trainable parameters:")
    for part, (trainable, total) in parameters_per_part(trainer.model).items():
        lines.append(f"    {part}: {_human(trainable)} of {_human(total)}" + ("" if trainable else " (frozen)"))
    t = cfg.train
    lines.append(f"[train] {trainer.total_steps} steps: {trainer.batches_per_epoch} batches of {t.batch_size} per epoch "
                 f"and process, {t.grad_accum} per step, {world} process(es)"
                 + (f", max_steps {t.max_steps}" if t.max_steps else f", {t.epochs} epoch(s)")
                 + (f", at most {t.max_minutes} min" if t.max_minutes else "")
                 + f"; lr {t.lr:g} ({t.scheduler}, warmup {t.warmup_steps})")
    if resumed:
        lines.append(f"[train] resumed from {resumed} at step {trainer.step}"
                     + (": the run had finished, nothing to train (final/ is written again)"
                        if trainer.step >= trainer.total_steps else ""))
        before, _ = saved_run(Path(resumed))
        longer = [c for c in config_changes({"train": (before or {}).get("train", {})}, {"train": dataclasses.asdict(t)},
                                            free=()) if c.startswith(("train.max_steps", "train.epochs"))]
        if longer:
            factors = lr_factors(trainer.scheduler, trainer.total_steps)
            now = (f" (step {trainer.step + 1}: lr {t.lr * factors[trainer.step]:.3g})"
                   if factors and trainer.step < len(factors) else "")
            lines.append(f"[train] note: the run's length changed ({'; '.join(longer)}): the learning-rate "
                         f"schedule follows the new length from here{now}")
    lines += [f"[train] warning: {w}" for w in warnings]
    print("\n".join(lines), flush=True)
    return warnings


def describe_end(trainer, result: dict) -> str:
    """The closing summary (printed by the main process): steps, time, final loss, where things are."""
    out = trainer.out
    losses = [v for _, v in trainer.losses]
    lines = [f"[train] done: {result['steps']} steps in {result['seconds'] / 60:.1f} min"
             + (f" (resumed from {result['resumed_from']})" if result.get("resumed_from") else "")]
    if result.get("seconds_per_step"):
        memory = result.get("peak_memory_gib")
        lines.append(f"    {result['seconds_per_step']:.2f} s/step on {result.get('device')}"
                     + (f", peak GPU memory {memory:.2f} GiB (rank 0)" if memory is not None else ""))
    cache = result.get("encoder_cache")
    if cache and cache["hits"] + cache["misses"]:
        lines.append(f"    encoder cache {cache['dir']}: {cache['hits']} audio chunks read, {cache['misses']} encoded "
                     "during the run (this process)")
    if losses:
        tail = losses[-10:]
        lines.append(f"    final loss {losses[-1]:.4f} (mean of the last {len(tail)} steps {sum(tail) / len(tail):.4f}; "
                     f"first step {losses[0]:.4f})")
        if not all(math.isfinite(v) for v in tail):
            lines.append("    warning: the last losses are not finite")
    lines.append(f"    model:   {result['final']}  (llasm chat --model {result['final']})")
    for label, name in (("config", CONFIG_NAME), ("losses", "losses.jsonl"), ("plot", "loss_curve.png"),
                        ("tensorboard", "tensorboard")):
        if (out / name).exists():
            lines.append(f"    {label + ':':<8} {out / name}")
    rejects = out / "rejects.jsonl"
    if rejects.is_file():
        lines.append(f"    rejects: {rejects} ({len(read_jsonl(rejects))} rows)")
    text = "\n".join(lines)
    if trainer.is_main:
        print(text, flush=True)
    return text
