"""The training loop: one stage from a :class:`~llasm.training.config.TrainConfig`, on one process,
under ``torchrun``/``accelerate`` (DDP) or ``deepspeed`` (ZeRO-2/3).

Where things are:

* devices and precision: :mod:`llasm.device` resolves ``device:`` and ``train.mixed_precision``
  (CUDA and bf16 when present); :class:`Trainer` builds one ``accelerate.Accelerator``
  (``self.accelerator``; gloo for DeepSpeed on CPU) and every batch goes to ``self.device`` through
  :func:`llasm.device.to_device` in :meth:`Trainer.model_inputs`; DeepSpeed's ``"auto"`` values are
  filled from the training config (:func:`llasm.training.distributed.deepspeed_config`);
* collectives: every cross-rank step is a named method or an ``accelerator`` call in :meth:`fit` and the
  checkpoint methods (``agree``, ``_mean_across_ranks``, ``_check_finite``, ``wait_for_everyone``); the
  ranks agree on each micro-batch's needs first (:mod:`llasm.training.distributed`), so a batch rejected
  on one rank is skipped on all and a part one rank lacks still runs there with weight 0;
* the loss per objective: :mod:`llasm.training.losses`; trainability and learning rates:
  :mod:`llasm.training.parts`; resume state and RNG: :mod:`llasm.training.resume`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs
from tqdm.auto import tqdm
from transformers import get_scheduler

from llasm.builder import load_model
from llasm.checkpoint import write_checkpoint
from llasm.data.dataset import Collator, ConversationDataset, MixtureBatchSampler, Source
from llasm.data.shards import ShardedConversations, is_sharded
from llasm.device import resolve_device, resolve_mixed_precision, to_device
from llasm.io import atomic_dir, discard_earlier_checkpoints, llasm_home, read_jsonl, write_json
from llasm.training import describe, losses
from llasm.training.budget import TimeBudget, resume_fit
from llasm.training.config import OBJECTIVES, TrainConfig, load_config
from llasm.training.distributed import (
    BatchNeeds,
    agree,
    deepspeed_config,
    end_distributed,
    release_precision,
    zero_stage,
)
from llasm.training.encoder_cache import EncoderCache, model_key
from llasm.training.objectives import self_reply_sources
from llasm.training.parts import (
    apply_trainability,
    enable_gradient_checkpointing,
    freeze_frozen_parts,
    param_groups,
    trainability,
    upcast_trainable_parts,
)
from llasm.training.resume import (
    latest_checkpoint,
    list_checkpoints,
    load_trainable,
    plot_losses,
    rng_state,
    save_trainable,
    seed_everything,
    set_rng_state,
    start_logs,
)

log = logging.getLogger(__name__)


# -- the loop -----------------------------------------------------------------------------------
class NonFiniteLoss(FloatingPointError):
    """A loss that is NaN or infinite on some rank; the message names the step, rank and batch item ids."""


class Trainer:
    """One training run: build everything from a :class:`TrainConfig`, then :meth:`fit`."""

    def __init__(self, cfg: TrainConfig, model=None, processor=None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        # before anything loads: data, model path, output_dir's run (describe.py); only RANK 0 writes the rejects
        self.counts = describe.check_inputs(cfg, main_process=os.environ.get("RANK", "0") == "0",
                                            check_model=model is None)
        self.data_sha1 = describe.data_fingerprint(cfg)
        self.zero_stage = zero_stage(cfg.deepspeed)
        if cfg.objective.cache_states:
            self._check_cache_states()
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {cfg.device!r} (each rank takes the GPU of its "
                             "LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)")
        on_cpu = resolve_device(cfg.device).type == "cpu"  # raises when cuda is asked for and missing
        self.mixed_precision = resolve_mixed_precision(cfg.train.mixed_precision, "cpu" if on_cpu else "cuda")
        plugin = self._deepspeed_plugin() if cfg.deepspeed else None
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # no rank with audio: adaptor unused
        if plugin is not None and on_cpu:
            # accelerate only starts DeepSpeed when not told cpu=True; on CPU it must then be given gloo
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        self.accelerator = Accelerator(cpu=on_cpu and plugin is None, deepspeed_plugin=plugin, kwargs_handlers=handlers,
                                       gradient_accumulation_steps=cfg.train.grad_accum,
                                       mixed_precision=None if plugin is not None else
                                       release_precision(self.mixed_precision, int(os.environ.get("WORLD_SIZE", "1"))))
        self.device = self.accelerator.device  # this rank's: cuda:LOCAL_RANK on a GPU node
        self.is_main = self.accelerator.is_main_process
        seed_everything(cfg.seed)
        if model is None:
            model, processor = load_model(cfg.model)
        if cfg.unit_head and model.unit_head is None:
            model.add_unit_head(cfg.unit_head)
        self.processor = processor
        apply_trainability(model, cfg.trainable, cfg.lora)
        if plugin is None:  # DeepSpeed keeps its own fp32 master weights
            upcast = upcast_trainable_parts(model)
            if upcast and self.is_main:
                log.info("trained in fp32 (the model is %s): %s", model.dtype, ", ".join(upcast))
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.model = model
        self.cache = self._encoder_cache()
        self.model_key = model_key(model, processor)  # before ZeRO-3 partitions a random tower's weights
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.lr, cfg.train.part_lr),
                                      weight_decay=cfg.train.weight_decay)
        self.model.train()
        freeze_frozen_parts(model)
        # placed (and, under DeepSpeed, partitioned) before anything runs the model: self_reply generates
        self.engine, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.dataset = self._dataset()
        if isinstance(self.dataset, ShardedConversations):  # streamed shards batch themselves
            self.sampler = None
            self.batches_per_epoch = self.dataset.batches_per_epoch()
        else:
            self.sampler = MixtureBatchSampler(
                self.dataset, cfg.train.batch_size, seed=cfg.seed, group_size=cfg.data.group_size,
                samples_per_epoch=cfg.data.samples_per_epoch, rank=self.accelerator.process_index,
                world_size=self.accelerator.num_processes)
            self.batches_per_epoch = len(self.sampler.epoch_batches(0))
        steps_per_epoch = max(1, self.batches_per_epoch // cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        # the scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it per rank);
        # it sets the learning rates in the param groups the prepared optimizer shares
        self.scheduler = get_scheduler(cfg.train.scheduler, optimizer, cfg.train.warmup_steps, self.total_steps)
        # fitted_steps: the steps train.fit_steps_to_minutes fitted the run to (kept by its checkpoints)
        self.step, self.epoch, self.batch_in_epoch, self.fitted_steps = 0, 0, 0, None
        self.skipped_batches = 0  # rejected on some rank, so skipped by all
        self.losses: list[tuple[int, float]] = []
        # objective.cache_states: the frozen LLM's answer states, kept after their first use
        self.state_cache = losses.AnswerStateCache() if cfg.objective.cache_states else None
        # ce with a frozen LLM: the shared prompt prefix's keys and values, computed once (ZeRO partitions
        # the LLM, so not under DeepSpeed)
        lm_frozen = not any(p.requires_grad for p in model.language_model.parameters())
        # (nor with packed rows or checkpointed layers, which must not be handed a KV cache)
        self.prefix = (losses.SharedPrefix() if lm_frozen and not cfg.deepspeed and cfg.objective.type == "ce"
                       and not cfg.data.packing and not cfg.train.gradient_checkpointing else None)

    # -- setup helpers ---------------------------------------------------------------------
    def _check_cache_states(self) -> None:
        modes = trainability(self.cfg.trainable)
        if self.cfg.objective.type != "units" or any(modes[p] != "frozen" for p in ("audio_tower", "adaptor", "language_model")):
            raise ValueError("objective.cache_states needs objective.type units with audio_tower, adaptor and "
                             "language_model frozen (it reuses their outputs across epochs)")
        if self.zero_stage == 3:
            raise ValueError("objective.cache_states runs the frozen LLM outside the engine: not with ZeRO-3, "
                             "whose parameters are partitioned (use zero2.json)")

    def _deepspeed_plugin(self):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return DeepSpeedPlugin(hf_ds_config=deepspeed_config(self.cfg.deepspeed, self.cfg.train, world,
                                                              self.mixed_precision))

    def _encoder_cache(self):
        tower_trains = any(p.requires_grad for p in self.model.audio_tower.parameters())
        if not self.cfg.encoder_cache.enabled or tower_trains or self.model.config.audio_source != "whisper_encoder":
            return None
        return EncoderCache(self.cfg.encoder_cache.dir or os.path.join(llasm_home(), "encoder_cache"),
                            read_only=self.cfg.encoder_cache.read_only)

    def _dataset(self) -> ConversationDataset | ShardedConversations:
        sources = [Source(path=s["path"], weight=float(s.get("weight", 1.0)), name=s.get("name", ""))
                   for s in self.cfg.data.sources]
        if not sources:
            raise ValueError("data.sources is empty: give at least one JSONL")
        sharded = [is_sharded(s.path) for s in sources]
        if any(sharded):
            return self._sharded_dataset(sources, sharded)
        if self.cfg.objective.type not in OBJECTIVES:
            raise ValueError(f"objective.type must be ce, self_reply, kl or units, got {self.cfg.objective.type!r}")
        if self.cfg.objective.type == "self_reply":
            sources = self_reply_sources(sources, self.out, self.model, self.processor, self.cfg.objective,
                                         self.accelerator, synced=self.zero_stage == 3)
        if self.cfg.objective.type == "kl" and self.cfg.trainable.get("language_model") == "full":
            raise ValueError("objective kl needs a frozen (or LoRA) language_model as its teacher")
        if self.is_main:  # this run's rejects only: the dataset appends what it finds
            (self.out / "rejects.jsonl").unlink(missing_ok=True)
        return ConversationDataset(sources, self.processor, model_key=self.model_key,
                                   rejects_path=str(self.out / "rejects.jsonl"), max_length=self.cfg.data.max_length,
                                   with_teacher=self.cfg.objective.type == "kl",
                                   unit_langs=self.model.unit_head.config.languages if self.model.unit_head else None)

    def _sharded_dataset(self, sources: list[Source], sharded: list[bool]) -> ShardedConversations:
        if not all(sharded):
            raise ValueError("data.sources mixes shard folders and JSONL files: convert the JSONL ones with "
                             "`llasm shards` (" + ", ".join(s.path for s, x in zip(sources, sharded) if not x) + ")")
        if self.cfg.objective.type not in ("ce", "units"):
            raise ValueError(f"objective.type {self.cfg.objective.type} reads JSONL sources, not shard folders")
        cfg = self.cfg
        return ShardedConversations(sources, self.processor, cfg.train.batch_size, seed=cfg.seed,
                                    group_size=cfg.data.group_size, samples_per_epoch=cfg.data.samples_per_epoch,
                                    rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
                                    model_key=self.model_key, max_length=cfg.data.max_length,
                                    rejects_path=str(self.out / "rejects.jsonl"))

    def _loader(self, collate) -> torch.utils.data.DataLoader:
        """This epoch's batches from ``batch_in_epoch`` on (a resumed run starts mid-epoch)."""
        # its own generator: starting an iterator must not draw from the global RNG (dropout), or a
        # resumed run, which starts one mid-epoch, would diverge from an uninterrupted one
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.epoch)
        workers = self.cfg.data.num_workers
        if self.sampler is None:
            self.dataset.set_epoch(self.epoch, self.batch_in_epoch)
            self.dataset.collate = collate
            return torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=workers, generator=generator)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                           num_workers=workers, generator=generator)

    # -- one step --------------------------------------------------------------------------
    def needs(self, batch: dict) -> BatchNeeds:
        """What this rank's ``batch`` runs: nothing (all rejected), the adaptor, the audio tower."""
        audio = "input_features" in batch
        tower = audio and (self.cache is None or self.cache.missing(batch["audio_keys"]))
        return BatchNeeds(empty=bool(batch.get("empty")), audio=audio, tower=tower)

    def model_inputs(self, batch: dict, needs: BatchNeeds | None = None) -> dict:
        """The model's keyword inputs for a collated batch (``batch`` itself moved to this rank's device);
        with the encoder cache, the frozen tower's states replace the mel features. ``needs``: what any
        rank's batch runs (:func:`llasm.training.distributed.agree`); a part this batch lacks gets a
        zero-weighted placeholder pass, so every rank gathers and reduces the same weights."""
        batch.update(to_device({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, self.device))
        # packed rows (data.packing) carry position_ids and no attention_mask
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids") if k in batch}
        mine = self.needs(batch)
        if needs is not None and needs.tower and not mine.tower and self.zero_stage == 3:
            with torch.no_grad():  # ZeRO-3 gathers the frozen tower on every rank that runs it
                self.model.encode_audio(*self.model.placeholder_features())
        if mine.audio:
            if self.cache is not None:
                inputs["audio_encoder_outputs"] = self.cache.encode(
                    self.model, batch["audio_keys"], batch["input_features"], batch["feature_attention_mask"])
            else:
                inputs["input_features"] = batch["input_features"]
            inputs["feature_attention_mask"] = batch["feature_attention_mask"]
        elif needs is not None and needs.audio and self.accelerator.num_processes > 1:
            inputs["placeholder_audio"] = "audio_encoder_outputs" if self.cache is not None else "input_features"
        if "position_ids" in inputs:  # transformers reads packed rows' boundaries only without a KV cache
            inputs["use_cache"] = False
        return inputs

    def loss(self, batch: dict, needs: BatchNeeds | None = None) -> torch.Tensor:
        """This rank's loss on ``batch`` for ``objective.type`` (see :mod:`llasm.training.losses`)."""
        inputs, objective = self.model_inputs(batch, needs), self.cfg.objective
        if objective.type == "kl":
            return losses.ce_plus_kl(self.engine, self.model, inputs, batch, objective.kl_weight, objective.temperature)
        if objective.type == "units":  # autocast here too: the state cache runs the LLM outside the engine
            with self.accelerator.autocast():
                return losses.unit_ctc(self.engine, self.model, inputs, batch, self.processor.end_of_turn_ids,
                                       self.state_cache)
        if not self.cfg.train.fast_loss:
            return self.engine(**inputs).loss
        return losses.answer_ce(self.engine, self.model, inputs, self.prefix, batch["ids"])

    def _check_finite(self, loss: torch.Tensor, ids: list[str]) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() > 0:  # every rank stops; each says its own loss and batch (the bad one may be another's)
            raise NonFiniteLoss(f"non-finite loss at step {self.step + 1} on {int(bad.item())} of {self.accelerator.num_processes} "
                                f"rank(s); rank {self.accelerator.process_index}: loss {loss.item()}, batch item ids: {ids}")

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        resumed = self.maybe_resume()
        if self.is_main:
            start_logs(self.out, self.step)
            discard_earlier_checkpoints([] if resumed else list_checkpoints(self.out), self.out)
            describe.write_config(cfg, self.out)
        describe.describe_start(self, self.counts, resumed)
        first_step = self.step
        writer = self._tensorboard()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True)
        collate = Collator(self.processor, self.dataset, pack_length=cfg.data.max_length if cfg.data.packing else None)
        micro_losses: list[float] = []
        started, budget = time.time(), TimeBudget(cfg.train, first_step, fit=self.fitted_steps is None)
        out_of_time = False
        while self.step < self.total_steps and not out_of_time:
            used, resumed_mid_epoch = 0, self.batch_in_epoch > 0  # a resume at an epoch's end reads no batch
            for batch in self._loader(collate):
                self.batch_in_epoch += 1
                needs = agree(self.accelerator, self.needs(batch))
                if needs.empty:  # every item rejected on some rank (logged there): all ranks skip it together
                    self.skipped_batches += 1
                    continue
                used += 1
                with self.accelerator.accumulate(self.engine):
                    loss = self.loss(batch, needs)
                    self._check_finite(loss, batch["ids"])
                    self.accelerator.backward(loss)
                    micro_losses.append(loss.detach().float().item())
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                         cfg.train.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if not self.accelerator.sync_gradients:
                    continue
                lr = self.scheduler.get_last_lr()[0]  # what this step used; step() sets the next step's
                self.scheduler.step()
                self.step += 1
                value = self._mean_across_ranks(sum(micro_losses) / len(micro_losses))
                micro_losses = []
                self._log(value, lr, writer, bar)
                if self.step % cfg.train.save_every == 0 or self.step >= self.total_steps:  # the last step too, as
                    self.save_checkpoint()  # HF's Trainer: a rerun or a longer run continues from the end
                out_of_time = budget.after_step(self, bar)  # may fit the run's steps to its minutes, once
                if self.step >= self.total_steps or out_of_time:
                    break
            else:
                if used == 0 and not resumed_mid_epoch:  # a whole epoch of rejected rows: stop, do not loop forever
                    rejects = read_jsonl(self.out / "rejects.jsonl") if (self.out / "rejects.jsonl").exists() else []
                    raise describe.no_usable_rows(cfg, rejects, len(self.dataset), write=False)
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        bar.close()
        if self.cache is not None:
            self.cache.flush()
        elapsed = time.time() - started
        final = self.save_final()
        if writer is not None:
            writer.close()
        result = {"steps": self.step, "final": str(final), "losses": self.losses, "resumed_from": resumed,
                  "seconds": elapsed, "seconds_per_step": elapsed / max(1, self.step - first_step),
                  "skipped_batches": self.skipped_batches, "device": str(self.device),
                  "world_size": self.accelerator.num_processes, "mixed_precision": self.mixed_precision,
                  "peak_memory_gib": (torch.cuda.max_memory_allocated(self.device) / 2**30
                                      if self.device.type == "cuda" else None),  # rank 0's
                  "encoder_cache": None if self.cache is None else {  # this rank's chunks: read vs encoded now
                      "dir": str(self.cache.directory), "hits": self.cache.hits, "misses": self.cache.misses}}
        result["summary"] = describe.describe_end(self, result)
        if self.is_main:
            write_json(self.out / "train_summary.json", {k: v for k, v in result.items() if k not in ("losses", "summary")})
        return result

    def _mean_across_ranks(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.accelerator.device)
        return self.accelerator.reduce(t, "mean").item()

    def _tensorboard(self):
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter  # heavy (tensorboard), only on rank 0

        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)  # as start_logs: steps > this one go

    def _log(self, value: float, lr: float, writer, bar) -> None:
        self.losses.append((self.step, value))
        if not self.is_main:
            return
        with open(self.out / "losses.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "loss": value, "lr": lr}) + "\n")
        if self.step % self.cfg.train.log_every == 0:
            writer.add_scalar("train/loss", value, self.step)
            writer.add_scalar("train/lr", lr, self.step)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoint-N`` via a temp dir + rename, so a killed run never leaves half of one.

        Every rank writes its RNG state (and, under DeepSpeed, its shard) into the same temp dir; rank 0
        creates it, writes the rest and renames it once all ranks are done.
        """
        final = self.out / f"checkpoint-{self.step}"
        acc = self.accelerator
        with atomic_dir(final, temp=self.out / f".tmp-checkpoint-{self.step}", owner=self.is_main) as tmp:
            acc.wait_for_everyone()  # rank 0 made tmp
            if self.cache is not None:
                self.cache.flush()
            if acc.distributed_type.name == "DEEPSPEED":
                self.engine.save_checkpoint(str(tmp / "deepspeed"))
                self._write_model(tmp)  # loadable like final/
            elif self.is_main:
                save_trainable(self.model, tmp)  # a model checkpoint like final/, which resume reads too
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
            acc.wait_for_everyone()  # every rank wrote its part
            if self.is_main:
                torch.save({"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                            "scheduler": self.scheduler.state_dict(), "losses": self.losses, "fitted_steps": self.fitted_steps,
                            "config": dataclasses.asdict(self.cfg), "data_sha1": self.data_sha1}, tmp / "trainer_state.pt")
                describe.write_config(self.cfg, tmp)
        if self.is_main:
            self._prune()
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        keep = self.cfg.train.keep_checkpoints
        for old in list_checkpoints(self.out)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)

    def maybe_resume(self) -> str | None:
        if self.cfg.resume in (None, "none", "no", False):
            return None
        path = latest_checkpoint(self.out) if self.cfg.resume in ("auto", "force") else Path(self.cfg.resume)
        if path is None:
            return None
        acc = self.accelerator
        if acc.distributed_type.name == "DEEPSPEED":
            self.engine.load_checkpoint(str(path / "deepspeed"))
        else:
            load_trainable(self.model, path)
            # saved from the GPU: read onto the CPU (load_state_dict moves the state to each parameter's device)
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        resume_fit(self, trainer)  # a run fitted to its minutes keeps that schedule
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
        self.losses = [tuple(x) for x in trainer["losses"]]
        rng = path / f"rng-{acc.process_index}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
        return str(path)  # describe_start says so

    def save_final(self) -> Path:
        """``output_dir/final`` like ``save_pretrained`` (loads with ``from_pretrained``) + its
        ``train_config.yaml``, written atomically; plus the loss plot."""
        final = self.out / "final"
        self.accelerator.wait_for_everyone()
        with atomic_dir(final, temp=self.out / ".tmp-final", owner=self.is_main) as tmp:
            self.accelerator.wait_for_everyone()  # rank 0 made tmp
            self._write_model(tmp)
            if self.is_main:
                describe.write_config(self.cfg, tmp)
            self.accelerator.wait_for_everyone()
        if self.is_main:
            plot_losses(self.losses, self.out / "loss_curve.png")
        self.accelerator.wait_for_everyone()
        return final

    def _write_model(self, directory: Path) -> None:
        """The model's checkpoint files into ``directory``, by the main process; every rank calls this
        (ZeRO-3 partitions every weight, so all ranks gather them first)."""
        if self.zero_stage == 3:
            import deepspeed  # optional (llasm[train]); a ZeRO-3 run has it

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                if self.is_main:
                    write_checkpoint(self.model, directory)
        elif self.is_main:
            write_checkpoint(self.model, directory)


def train(cfg: TrainConfig | dict | str, overrides: list[str] | None = None, model=None, processor=None) -> dict:
    """Run one stage; returns ``{"steps", "final", "losses", ...}``."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg, overrides)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, model, processor).fit()


def main(args: list[str]) -> int:
    """The run behind ``llasm train CONFIG [k=v ...]`` (:mod:`llasm.training.cli` reads the arguments)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    first_on_node = os.environ.get("LOCAL_RANK", "0") == "0"  # says what every rank meets alike (torchrun)
    try:
        cfg = load_config(args[0], args[1:])
    except (ValueError, FileNotFoundError) as err:  # an unknown key or bad value, named with its file
        if first_on_node:
            print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except (NonFiniteLoss, describe.InputError) as err:
        if first_on_node or not getattr(err, "every_rank", False):
            print(f"stopped: {err}", file=sys.stderr)
        end_distributed(barrier=False)
        return 1
    end_distributed()
    return 0
