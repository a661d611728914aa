"""Training library: typed config, per-component trainability, the accelerate loop, checkpoints.

A stage is a YAML (``configs/stage*.yaml``) read into :class:`TrainConfig` (``llasm/training/config.py``),
with dotted command-line overrides (``train.lr=1e-4``). Stages differ only there: which parts train
(``trainable``), the data mixture, the objective. ``train/train.py`` is the thin entry point.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llasm.data.dataset import Collator, ConversationDataset, MixtureBatchSampler, Source
from llasm.io import llasm_home, read_jsonl, write_jsonl
from llasm.io import resolve_path
from llasm.training.config import TrainConfig, load_config, load_model

log = logging.getLogger(__name__)
PARTS = ("audio_tower", "adaptor", "language_model", "unit_head")


# -- model parts --------------------------------------------------------------------------------
def apply_trainability(model, trainable: dict, lora: dict | None = None):
    """Set ``requires_grad`` per part: ``frozen`` | ``full`` | ``lora`` (language_model only).

    The ``<au_start>``/``<au_end>`` rows train with the adaptor unless ``audio_marker_embeddings``
    says otherwise.
    """
    modes = {"audio_tower": "frozen", "adaptor": "full", "language_model": "frozen", **trainable}
    modes.setdefault("audio_marker_embeddings", modes["adaptor"])
    if getattr(model, "unit_head", None) is not None:
        modes.setdefault("unit_head", "frozen")
    elif modes.get("unit_head", "frozen") != "frozen":
        raise ValueError("trainable.unit_head is set but the model has no unit head (give unit_head: {...})")
    else:
        modes.pop("unit_head", None)
    for part, mode in modes.items():
        if mode not in ("frozen", "full", "lora"):
            raise ValueError(f"trainable.{part} must be frozen, full or lora, got {mode!r}")
        if mode == "lora":
            if part != "language_model":
                raise ValueError(f"trainable.{part}: lora is only supported for the language_model")
            from llasm.lora import add_lora

            model.language_model.requires_grad_(False)
            add_lora(model, lora)
        else:
            getattr(model, part).requires_grad_(mode == "full")
    return model


def param_groups(model, lr: float, part_lr: dict) -> list[dict]:
    """Trainable parameters grouped by learning rate: ``part_lr`` overrides ``lr`` per top-level part."""
    parts = {name for name, _ in model.named_children()}
    unknown = sorted(set(part_lr) - parts)
    if unknown:
        raise ValueError(f"train.part_lr: unknown part(s) {unknown}; parts are {sorted(parts)}")
    rates = {part: float(rate) for part, rate in part_lr.items()}  # YAML reads 1e-5 as a string
    rates.setdefault("audio_marker_embeddings", rates.get("adaptor", lr))
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(rates.get(name.split(".", 1)[0], lr), []).append(param)
    return [{"params": params, "lr": rate} for rate, params in groups.items()]


def upcast_trainable_parts(model) -> list[str]:
    """Fully trained small parts (adaptor, audio-marker rows, unit head) of a bf16/fp16 model to fp32.

    Adam's updates shrink below bf16's resolution as the learning rate decays, so these parts keep
    fp32 weights (as PEFT keeps LoRA weights); the forward casts their inputs and outputs. The
    frozen parts and a fully trained LLM keep the model's dtype. Returns the parts upcast.
    """
    done = []
    for part in ("adaptor", "audio_marker_embeddings", "unit_head"):
        module = getattr(model, part, None)
        params = list(module.parameters()) if module is not None else []
        if params and all(p.requires_grad for p in params) and any(p.dtype in (torch.bfloat16, torch.float16)
                                                                   for p in params):
            module.float()
            done.append(part)
    return done


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# -- the loop -----------------------------------------------------------------------------------
class NonFiniteLoss(FloatingPointError):
    pass


class Trainer:
    """One training run: build everything from a :class:`TrainConfig`, then :meth:`fit`."""

    def __init__(self, cfg: TrainConfig, model=None, processor=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        if cfg.objective.cache_states:
            self._check_cache_states()
        plugin = self._deepspeed_plugin() if cfg.deepspeed else None
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # text-only batches skip the adaptor
        cpu = not torch.cuda.is_available()
        if plugin is not None and cpu:
            # accelerate only starts DeepSpeed when not told cpu=True; on CPU it must then be given gloo
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        self.accelerator = Accelerator(cpu=cpu and plugin is None, deepspeed_plugin=plugin, kwargs_handlers=handlers,
                                       gradient_accumulation_steps=cfg.train.grad_accum,
                                       mixed_precision=None if plugin is not None else cfg.train.mixed_precision)
        self.is_main = self.accelerator.is_main_process
        _seed_everything(cfg.seed)
        if model is None:
            model, processor = load_model(cfg.model)
        if cfg.unit_head and model.unit_head is None:
            from llasm.unit_head import CtcUnitHead

            model.config.unit_head = dict(cfg.unit_head)
            model.unit_head = CtcUnitHead(dict(cfg.unit_head), input_size=model.config.text_config.hidden_size)
        self.processor = processor
        apply_trainability(model, cfg.trainable, cfg.lora)
        if plugin is None:  # DeepSpeed keeps its own fp32 master weights
            upcast = upcast_trainable_parts(model)
            if upcast and self.is_main:
                log.info("trained in fp32 (the model is %s): %s", model.dtype, ", ".join(upcast))
        self.model = model
        self.cache = self._encoder_cache()
        self.dataset = self._dataset()
        self.sampler = MixtureBatchSampler(
            self.dataset, cfg.train.batch_size, seed=cfg.seed, group_size=cfg.data.group_size,
            samples_per_epoch=cfg.data.samples_per_epoch, rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes)
        self.batches_per_epoch = len(self.sampler.epoch_batches(0))
        steps_per_epoch = max(1, self.batches_per_epoch // cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.train.lr, cfg.train.part_lr),
                                           weight_decay=cfg.train.weight_decay)
        from transformers import get_scheduler

        # the scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it per rank)
        self.scheduler = get_scheduler(cfg.train.scheduler, self.optimizer, cfg.train.warmup_steps, self.total_steps)
        self.model.train()
        for part in PARTS:  # frozen parts stay in eval mode (no dropout)
            module = getattr(model, part)
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        self.engine, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.losses: list[tuple[int, float]] = []
        self.state_cache: dict[tuple, torch.Tensor] = {}  # objective.cache_states: (id, tokens) -> (n_answer, D)

    # -- setup helpers ---------------------------------------------------------------------
    def _check_cache_states(self) -> None:
        modes = {"audio_tower": "frozen", "adaptor": "full", "language_model": "frozen", **self.cfg.trainable}
        if self.cfg.objective.type != "units" or any(modes[p] != "frozen" for p in ("audio_tower", "adaptor", "language_model")):
            raise ValueError("objective.cache_states needs objective.type units with audio_tower, adaptor and "
                             "language_model frozen (it reuses their outputs across epochs)")
        if self._zero_stage() == 3:
            raise ValueError("objective.cache_states runs the frozen LLM outside the engine: not with ZeRO-3, "
                             "whose parameters are partitioned (use zero2.json)")

    def _deepspeed_plugin(self):
        from accelerate.utils import DeepSpeedPlugin

        ds = json.loads(Path(resolve_path(self.cfg.deepspeed)).read_text())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        t = self.cfg.train
        fill = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
                "train_batch_size": t.batch_size * t.grad_accum * world, "gradient_clipping": t.max_grad_norm}
        for key, value in fill.items():
            if ds.get(key, "auto") == "auto":
                ds[key] = value
        return DeepSpeedPlugin(hf_ds_config=ds)

    def _encoder_cache(self):
        tower_trains = any(p.requires_grad for p in self.model.audio_tower.parameters())
        if not self.cfg.encoder_cache.enabled or tower_trains or self.model.config.audio_source != "whisper_encoder":
            return None
        from llasm.training.encoder_cache import EncoderCache

        return EncoderCache(self.cfg.encoder_cache.dir or os.path.join(llasm_home(), "encoder_cache"))

    def _dataset(self) -> ConversationDataset:
        from llasm.training.encoder_cache import model_key

        sources = [Source(path=s["path"], weight=float(s.get("weight", 1.0)), name=s.get("name", ""))
                   for s in self.cfg.data.sources]
        if not sources:
            raise ValueError("data.sources is empty: give at least one JSONL")
        if self.cfg.objective.type not in ("ce", "self_reply", "kl", "units"):
            raise ValueError(f"objective.type must be ce, self_reply, kl or units, got {self.cfg.objective.type!r}")
        if self.cfg.objective.type == "self_reply":
            sources = self._self_reply_sources(sources)
        if self.cfg.objective.type == "kl" and self.cfg.trainable.get("language_model") == "full":
            raise ValueError("objective kl needs a frozen (or LoRA) language_model as its teacher")
        return ConversationDataset(sources, self.processor, model_key=model_key(self.model, self.processor),
                                   rejects_path=str(self.out / "rejects.jsonl"), max_length=self.cfg.data.max_length,
                                   with_teacher=self.cfg.objective.type == "kl")

    def _self_reply_sources(self, sources: list[Source]) -> list[Source]:
        """Replace each source by its self-reply version (made once, by rank 0, kept in output_dir)."""
        from llasm.training.objectives import precompute_self_replies

        out = []
        for i, source in enumerate(sources):
            target = self.out / f"self_replies-{i}-{Path(source.path).stem}.jsonl"
            if self.is_main and not target.exists():
                root = Path(source.path).resolve().parent
                rows = read_jsonl(source.path)
                for row in rows:  # the new file lives elsewhere: make audio paths absolute
                    row["audios"] = [str(root / a) for a in row.get("audios", [])]
                write_jsonl(target, precompute_self_replies(rows, self.model, self.processor,
                                                            self.cfg.objective.max_new_tokens))
            out.append(Source(str(target), source.weight, source.name))
        self.accelerator.wait_for_everyone()
        return out

    # -- one step --------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        if "input_features" in batch:
            if self.cache is not None:
                inputs["audio_encoder_outputs"] = self.cache.encode(
                    self.model, batch["audio_keys"], batch["input_features"], batch["feature_attention_mask"])
            else:
                inputs["input_features"] = batch["input_features"]
            inputs["feature_attention_mask"] = batch["feature_attention_mask"]
        inputs = {k: v.to(self.accelerator.device) for k, v in inputs.items()}
        if self.cfg.objective.type == "kl":
            from llasm.training.objectives import kl_loss

            output = self.engine(**inputs)
            teacher = self._teacher_logits(batch)
            return output.loss + self.cfg.objective.kl_weight * kl_loss(
                output.logits, inputs["labels"], teacher, batch["teacher_labels"].to(teacher.device),
                self.cfg.objective.temperature)
        if self.cfg.objective.type == "units":
            labels = inputs.pop("labels")
            ends = torch.tensor(sorted(self.processor.end_of_turn_ids), device=labels.device)
            inputs["unit_mask"] = (labels != -100) & ~torch.isin(labels, ends)
            inputs["unit_targets"] = batch["unit_targets"].to(labels.device)
            if self.cfg.objective.cache_states:
                rows, keep = self._answer_states(batch["ids"], inputs)
                return self.engine(answer_states=rows, answer_mask=keep, unit_targets=inputs["unit_targets"]).loss
            return self.engine(**inputs).loss
        if not self.cfg.train.fast_loss:
            return self.engine(**inputs).loss
        # The LM head (a vocabulary-sized matmul) runs only where an answer token is predicted:
        # positions p whose next label is supervised, in any row of the batch.
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        positions = (targets != -100).any(0).nonzero().squeeze(-1)  # (P,)
        if positions.numel() == 0:
            raise ValueError(f"batch {batch['ids']} has no supervised answer token (all labels are -100)")
        self._drop_unused_tail(inputs, int(positions.max()) + 1)
        start = self._shared_prefix(inputs, int(positions.min()))
        logits = self.engine(**inputs, logits_to_keep=positions - start).logits  # (B, P, V)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, positions].flatten(),
                                                 ignore_index=-100)

    def _drop_unused_tail(self, inputs: dict, keep: int) -> None:
        """Positions after the last one that predicts a label (the final end token as input, padding)
        cannot change the loss under causal attention: cut them, unless audio sits there. Exact."""
        ids = inputs["input_ids"]
        if keep >= ids.shape[1]:
            return
        cfg = self.model.config
        audio = torch.tensor([cfg.audio_start_token_id, cfg.audio_patch_token_id, cfg.audio_end_token_id],
                             device=ids.device)
        if torch.isin(ids[:, keep:], audio).any():
            return
        inputs["input_ids"], inputs["attention_mask"] = ids[:, :keep], inputs["attention_mask"][:, :keep]

    @torch.no_grad()
    def _shared_prefix(self, inputs: dict, limit: int) -> int:
        """With a frozen LLM, the tokens every row starts with (system prompt, template) before any
        audio give the same keys and values at every step: compute them once, reuse them as the
        KV cache, and run the trainable part on the rest. Exact; returns the prefix length."""
        lm_frozen = not any(p.requires_grad for p in self.model.language_model.parameters())
        if not lm_frozen or self.cfg.deepspeed or self.cfg.objective.type != "ce":
            return 0
        ids = inputs["input_ids"]  # (B, L), right padded
        cfg = self.model.config
        same = (ids == ids[:1]).all(0) & ~torch.isin(ids[0], torch.tensor(
            [cfg.audio_start_token_id, cfg.audio_patch_token_id, cfg.audio_end_token_id], device=ids.device))
        n = min(int(same.long().cumprod(0).sum()), limit)
        if n < 8:
            return 0
        key = tuple(ids[0, :n].tolist())
        if getattr(self, "_prefix_key", None) != key:  # one prefix per run in practice
            lm = self.model.language_model
            self._prefix_key, self._prefix_kv = key, lm(input_ids=ids[:1, :n], use_cache=True).past_key_values
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, layer in enumerate(self._prefix_kv.layers):  # (1, H, n, d) -> (B, H, n, d), views
            cache.update(layer.keys.expand(len(ids), -1, -1, -1), layer.values.expand(len(ids), -1, -1, -1), index)
        inputs["input_ids"] = ids[:, n:]
        inputs["past_key_values"] = cache  # attention_mask keeps its full length: prefix + rest
        return n

    @torch.no_grad()
    def _answer_states(self, ids: list[str], inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3 with ``objective.cache_states``: the frozen LLM's answer states of each
        conversation, computed at its first batch and kept; ``(rows (B, L_ans, D), keep (B, L_ans))``."""
        keys = [(i, hash(tuple(row[mask.bool()].tolist())))  # the id and the tokens: ids may repeat across files
                for i, row, mask in zip(ids, inputs["input_ids"], inputs["attention_mask"])]
        cache = self.state_cache
        if any(k not in cache for k in keys):
            model = self.model
            embeds = model.embed_inputs(inputs["input_ids"], inputs.get("input_features"),
                                        inputs.get("feature_attention_mask"), None, inputs.get("audio_encoder_outputs"))
            rows, keep = model.answer_states(embeds, inputs["attention_mask"], inputs["unit_mask"])
            for key, row, mask in zip(keys, rows, keep):
                cache[key] = row[mask].clone()
        states = [cache[k] for k in keys]
        lengths = torch.tensor([len(s) for s in states], device=states[0].device)
        rows = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        return rows, torch.arange(rows.shape[1], device=rows.device)[None] < lengths[:, None]

    @torch.no_grad()
    def _teacher_logits(self, batch) -> torch.Tensor:
        """The frozen LLM reading the transcript (LoRA switched off when present)."""
        llm = self.model.language_model
        lora = hasattr(llm, "disable_adapter_layers")
        if lora:
            llm.disable_adapter_layers()
        try:
            return llm(input_ids=batch["teacher_input_ids"].to(self.accelerator.device),
                       attention_mask=batch["teacher_attention_mask"].to(self.accelerator.device)).logits
        finally:
            if lora:
                llm.enable_adapter_layers()

    def _check_finite(self, loss: torch.Tensor, ids: list[str]) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() > 0:
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {self.step + 1} on rank "
                                f"{self.accelerator.process_index}; batch item ids: {ids}")

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        resumed = self.maybe_resume()
        writer = self._tensorboard()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", dynamic_ncols=True)
        collate = Collator(self.processor, self.dataset)
        micro_losses: list[float] = []
        started = time.time()
        out_of_time = False
        while self.step < self.total_steps and not out_of_time:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            # its own generator: starting an iterator must not draw from the global RNG (dropout), or a
            # resumed run, which starts one mid-epoch, would diverge from an uninterrupted one
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                                 num_workers=cfg.data.num_workers, generator=generator)
            for batch in loader:
                self.batch_in_epoch += 1
                if batch.get("empty"):  # every item rejected (already logged)
                    continue
                with self.accelerator.accumulate(self.engine):
                    loss = self.loss(batch)
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
                self.scheduler.step()
                self.step += 1
                value = self._mean_across_ranks(sum(micro_losses) / len(micro_losses))
                micro_losses = []
                self._log(value, writer, bar)
                if self.step % cfg.train.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if cfg.train.max_minutes is not None:
                    # every rank stops at the same step: the decision is averaged across ranks
                    late = float(time.time() - started > 60 * cfg.train.max_minutes)
                    out_of_time = self._mean_across_ranks(late) > 0
                    if out_of_time and self.is_main:
                        print(f"[train] stopping at step {self.step}: the {cfg.train.max_minutes} min budget is used")
                if self.step >= self.total_steps or out_of_time:
                    break
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        bar.close()
        if self.cache is not None:
            self.cache.flush()
        elapsed = time.time() - started
        final = self.save_final()
        if writer is not None:
            writer.close()
        return {"steps": self.step, "final": str(final), "losses": self.losses, "resumed_from": resumed,
                "seconds": elapsed}

    def _mean_across_ranks(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.accelerator.device)
        return self.accelerator.reduce(t, "mean").item()

    def _tensorboard(self):
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, value: float, writer, bar) -> None:
        self.losses.append((self.step, value))
        if not self.is_main:
            return
        lr = self.scheduler.get_last_lr()[0]
        with open(self.out / "losses.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "loss": value, "lr": lr}) + "\n")
        if self.step % self.cfg.train.log_every == 0:
            writer.add_scalar("train/loss", value, self.step)
            writer.add_scalar("train/lr", lr, self.step)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoint-N`` via a temp dir + rename, so a killed run never leaves half of one."""
        from safetensors.torch import save_file

        final = self.out / f"checkpoint-{self.step}"
        tmp = self.out / f".tmp-checkpoint-{self.step}"
        acc = self.accelerator
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if self.cache is not None:
            self.cache.flush()
        if acc.distributed_type.name == "DEEPSPEED":
            self.engine.save_checkpoint(str(tmp / "deepspeed"))
        elif self.is_main:
            state = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
            save_file(state, str(tmp / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
        acc.wait_for_everyone()
        if self.is_main:
            torch.save({"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                        "scheduler": self.scheduler.state_dict(), "losses": self.losses,
                        "config": dataclasses.asdict(self.cfg)}, tmp / "trainer_state.pt")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # the checkpoint appears whole or not at all
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
        path = latest_checkpoint(self.out) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return None
        from safetensors.torch import load_file

        acc = self.accelerator
        if acc.distributed_type.name == "DEEPSPEED":
            self.engine.load_checkpoint(str(path / "deepspeed"))
        else:
            state = load_file(str(path / "trainable.safetensors"))
            expected = set(trainable_names(self.model))
            if set(state) != expected:
                raise ValueError(f"{path}: trainable parameters differ from this run's "
                                 f"(missing {sorted(expected - set(state))[:3]}, extra {sorted(set(state) - expected)[:3]})")
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                for name, tensor in state.items():
                    params[name].copy_(tensor)
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        trainer = torch.load(path / "trainer_state.pt", weights_only=True)
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
        self.losses = [tuple(x) for x in trainer["losses"]]
        rng = path / f"rng-{acc.process_index}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=True))
        if self.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return str(path)

    def save_final(self) -> Path:
        """``output_dir/final`` via ``save_pretrained`` (loads with ``from_pretrained``), plus the loss plot."""
        final = self.out / "final"
        self.accelerator.wait_for_everyone()
        if self._zero_stage() == 3:  # ZeRO-3 partitions every weight: gather them on all ranks to save
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                if self.is_main:
                    self.model.save_pretrained(final)
        elif self.is_main:
            self.model.save_pretrained(final)
        if self.is_main:
            plot_losses(self.losses, self.out / "loss_curve.png")
        self.accelerator.wait_for_everyone()
        return final

    def _zero_stage(self) -> int:
        if not self.cfg.deepspeed:
            return 0
        return int(json.loads(Path(resolve_path(self.cfg.deepspeed)).read_text()).get("zero_optimization", {}).get("stage", 0))


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


def plot_losses(losses: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """RNG states as plain tensors and tuples, so they load with ``weights_only=True`` (no unpickling)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: TrainConfig | dict | str, overrides: list[str] | None = None, model=None, processor=None) -> dict:
    """Run one stage; returns ``{"steps", "final", "losses", ...}``."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg, overrides)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, model, processor).fit()


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    if not args or args[0] in ("-h", "--help"):
        print("usage: llasm train CONFIG [dotted.key=value ...]  (see train/train.py for launch commands)")
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args[0], args[1:])
    try:
        result = train(cfg)
    except NonFiniteLoss as err:
        print(f"stopped: {err}", file=sys.stderr)
        end_distributed(barrier=False)
        return 1
    end_distributed()
    print(f"done: {result['steps']} steps, final checkpoint in {result['final']}")
    return 0


def end_distributed(barrier: bool = True) -> None:
    """Shut the process group down before exit: left to interpreter teardown, its background threads can
    abort the process (``terminate called without an active exception``) after a finished run. No barrier
    on an error path, where another rank may never arrive."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
