"""Training the unit vocoder: the log-mel, the unit/audio dataset and :class:`VocoderTrainer`
(``train/train_vocoder.py`` is the thin script around it).

The model and streaming synthesis live in :mod:`llasm.speech.vocoder`, its settings in
:mod:`llasm.speech.vocoder_config`, the discriminators and GAN losses in
:mod:`llasm.speech.discriminators`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.audio_utils import mel_filter_bank  # librosa's Slaney filterbank, no librosa

from llasm.audio import load_audio, save_audio
from llasm.device import describe, resolve_device, to_device
from llasm.io import atomic_path, discard_earlier_checkpoints, read_jsonl, trim_step_log
from llasm.speech import checkpoints
from llasm.speech.discriminators import (
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    duration_loss,
    feature_loss,
    generator_loss,
)
from llasm.speech.vocoder import UnitHifiGan
from llasm.speech.vocoder_config import FRAME_RATE, UnitVocoderConfig, VocoderTrainConfig


class MelSpectrogram(nn.Module):
    """HiFi-GAN's log-mel: reflect pad, |STFT| (center off), Slaney mel filterbank, log(clamp 1e-5)."""

    def __init__(self, config: UnitVocoderConfig):
        super().__init__()
        c = config
        if c.fmax > c.sampling_rate / 2:
            raise ValueError(f"fmax={c.fmax} above the Nyquist frequency {c.sampling_rate / 2}")
        basis = mel_filter_bank(c.n_fft // 2 + 1, c.num_mels, c.fmin, c.fmax, c.sampling_rate,
                                norm="slaney", mel_scale="slaney")  # fmt: skip
        self.register_buffer("mel_basis", torch.from_numpy(basis.T).float(), persistent=False)  # (M, F)
        self.register_buffer("window", torch.hann_window(c.win_size), persistent=False)
        self.n_fft, self.hop_size, self.win_size = c.n_fft, c.hop_size, c.win_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # (B, S) or (B, 1, S) -> (B, M, S // hop)
        audio = audio.reshape(audio.shape[0], -1)
        pad = (self.n_fft - self.hop_size) // 2
        audio = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            audio, self.n_fft, self.hop_size, self.win_size, self.window, center=False, return_complex=True
        )
        magnitude = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # (B, F, frames)
        return torch.log(torch.clamp(self.mel_basis @ magnitude, min=1e-5))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class UnitAudioDataset:
    """Rows ``{"id", "audio", "units", "durations"}`` cut into random segments aligned to unit frames.

    ``units`` are deduplicated unit ids and ``durations`` their lengths in 50 Hz frames, so the
    audio should hold about ``320 * sum(durations)`` samples (it is trimmed or zero-padded to that).
    Batches are a pure function of (seed, step): the epoch permutation comes from
    ``default_rng([seed, epoch])`` and the crops from ``default_rng([seed, step, 1])``, so a
    resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, manifest: str | os.PathLike, config: UnitVocoderConfig, seed: int = 0):
        self.manifest = Path(manifest)
        if not self.manifest.exists():
            raise FileNotFoundError(f"{manifest}: vocoder training manifest not found")
        self.rows = read_jsonl(self.manifest)
        if not self.rows:
            raise ValueError(f"{manifest}: no rows")
        self.hop = config.samples_per_frame
        self.segment_frames = config.segment_size // self.hop
        self.sampling_rate = config.sampling_rate
        self.seed = seed
        for lineno, row in enumerate(self.rows, 1):
            self._check(row, lineno, config.num_units)

    def _check(self, row: dict, lineno: int, num_units: int) -> None:
        where = f"{self.manifest}:{lineno} ({row.get('id', '?')})"
        missing = [k for k in ("audio", "units", "durations") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        units, durations = np.asarray(row["units"]), np.asarray(row["durations"])
        if units.ndim != 1 or units.shape != durations.shape or units.size == 0:
            raise ValueError(
                f"{where}: units ({units.size}) and durations ({durations.size}) must be equal, non-empty lists"
            )
        if units.min() < 0 or units.max() >= num_units:
            raise ValueError(f"{where}: unit ids must lie in [0, {num_units})")
        if durations.min() < 1:
            raise ValueError(f"{where}: durations must be >= 1 frame")
        path = Path(row["audio"])
        if not path.is_absolute():  # relative audio paths are relative to the manifest
            row["audio"] = str(self.manifest.parent / path)

    def __len__(self) -> int:
        return len(self.rows)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.rows) // batch_size)

    def batch(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Batch for 0-based ``step``: units/durations (B, U_max) padded with 0, mask, audio (B, segment)."""
        per_epoch = self.steps_per_epoch(batch_size)
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        if len(order) < batch_size:
            indices = np.resize(order, batch_size)
        else:
            indices = order[position * batch_size : (position + 1) * batch_size]
        rng = np.random.default_rng([self.seed, step, 1])
        items = [self.segment(int(i), rng) for i in indices]
        width = max(len(units) for units, _, _, _ in items)
        units = torch.zeros(len(items), width, dtype=torch.long)
        durations = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.bool)
        for b, (u, d, m, _) in enumerate(items):
            units[b, : len(u)] = torch.from_numpy(u)
            durations[b, : len(d)] = torch.from_numpy(d)
            mask[b, : len(m)] = torch.from_numpy(m)
        audio = torch.from_numpy(np.stack([a for _, _, _, a in items]))
        return {"units": units, "durations": durations, "duration_mask": mask, "audio": audio}

    def segment(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One crop: (units, durations, whole-unit mask, audio) covering ``segment_frames`` frames."""
        row = self.rows[index]
        units = np.asarray(row["units"], dtype=np.int64)
        durations = np.asarray(row["durations"], dtype=np.int64)
        total = int(durations.sum())
        length = self.segment_frames
        start = int(rng.integers(0, total - length + 1)) if total > length else 0
        # unit index of every frame in the crop, then back to (unit, count) runs
        frame_unit = np.repeat(np.arange(len(units)), durations)[start : start + length]
        boundaries = np.flatnonzero(np.diff(frame_unit)) + 1
        first = frame_unit[np.r_[0, boundaries]]
        counts = np.diff(np.r_[0, boundaries, len(frame_unit)])
        seg_units, seg_durations = units[first], counts
        whole = counts == durations[first]  # units cut by the crop edges get no duration loss
        audio = self._read(row, start * self.hop, min(total, start + length) * self.hop)
        if total < length:  # short utterance: pad with silence on unit 0, excluded from the loss
            seg_units = np.r_[seg_units, 0]
            seg_durations = np.r_[seg_durations, length - total]
            whole = np.r_[whole, False]
        audio = np.pad(audio, (0, length * self.hop - len(audio)))
        return seg_units, seg_durations, whole, audio.astype(np.float32)

    def _read(self, row: dict, begin: int, end: int) -> np.ndarray:
        path = row["audio"]
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(f"{path}: cannot read audio ({err})") from None
        if info.samplerate == self.sampling_rate:  # read just the crop
            audio, _ = sf.read(path, start=begin, stop=end, dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
        else:
            audio = load_audio(path)[begin:end]
        return np.pad(audio, (0, max(0, end - begin - len(audio))))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class VocoderTrainer:
    """HiFi-GAN training of :class:`UnitHifiGan` with MPD + MSD; resumable, bounded, logged.

    Output folder: ``checkpoints/step_XXXXXXXX/{state.safetensors,state.json}`` (models,
    optimizers, schedulers, step, torch RNG; written to a temp folder and renamed), ``log.jsonl``,
    ``samples/step_XXXXXXXX.{wav,png}`` and, at the end, ``vocoder.safetensors`` +
    ``vocoder_config.json`` for :meth:`UnitHifiGan.from_pretrained`.
    """

    def __init__(
        self, config: UnitVocoderConfig, train_config: VocoderTrainConfig, dataset: UnitAudioDataset | None = None
    ):
        self.config, self.train_config = config, train_config
        t = train_config
        if t.max_steps is None and t.max_minutes is None:
            raise ValueError("set train.max_steps and/or train.max_minutes (the run needs a bound)")
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.output_dir = Path(t.output_dir)
        self.dataset = dataset or UnitAudioDataset(t.train_manifest, config, seed=t.seed)
        torch.manual_seed(t.seed)
        self.device = resolve_device(t.device)  # models, batches and losses live here; checkpoints on the CPU
        self.generator = UnitHifiGan(config).to(self.device)
        self.mpd = MultiPeriodDiscriminator(divisor=config.discriminator_channel_divisor).to(self.device)
        self.msd = MultiScaleDiscriminator(divisor=config.discriminator_channel_divisor).to(self.device)
        self.mel = MelSpectrogram(config).to(self.device)
        betas = tuple(config.adam_betas)
        adam = dict(lr=config.learning_rate, betas=betas, weight_decay=config.weight_decay)
        self.optim_g = torch.optim.AdamW(self.generator.parameters(), **adam)
        self.optim_d = torch.optim.AdamW(list(self.mpd.parameters()) + list(self.msd.parameters()), **adam)
        self.scheduler_g = torch.optim.lr_scheduler.ExponentialLR(self.optim_g, gamma=config.lr_decay)
        self.scheduler_d = torch.optim.lr_scheduler.ExponentialLR(self.optim_d, gamma=config.lr_decay)
        self.step = 0
        self.resumed_from: Path | None = None
        self._maybe_resume()

    # -- one step --------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One discriminator + one generator update on ``batch``; raises on a non-finite loss."""
        step = self.step + 1
        for module in (self.generator, self.mpd, self.msd):
            module.train()
        batch = to_device(batch, self.device)
        zero = torch.zeros((), device=self.device)
        y = batch["audio"].unsqueeze(1)  # (B, 1, S)
        y_hat = self.generator(batch["units"], batch["durations"])  # (B, 1, S)
        if y_hat.shape != y.shape:
            raise RuntimeError(f"step {step}: generator output {tuple(y_hat.shape)} != target {tuple(y.shape)}")
        y_mel, y_hat_mel = self.mel(y), self.mel(y_hat)  # (B, M, frames)

        gan = step > self.config.gan_start_step
        loss_d = zero
        if gan:  # discriminators on the detached generator output
            self.optim_d.zero_grad(set_to_none=True)
            real, fake, _, _ = self.mpd(y, y_hat.detach())
            loss_d = discriminator_loss(real, fake)
            real, fake, _, _ = self.msd(y, y_hat.detach())
            loss_d = loss_d + discriminator_loss(real, fake)
            self._check_finite(step, "discriminator", loss_d)
            loss_d.backward()
            self.optim_d.step()

        # generator: adversarial + feature matching + mel L1 + duration
        self.optim_g.zero_grad(set_to_none=True)
        loss_mel = F.l1_loss(y_hat_mel, y_mel)
        loss_adv = loss_fm = zero
        if gan:
            _, fake_p, real_maps_p, fake_maps_p = self.mpd(y, y_hat)
            _, fake_s, real_maps_s, fake_maps_s = self.msd(y, y_hat)
            loss_adv = generator_loss(fake_p) + generator_loss(fake_s)
            loss_fm = feature_loss(real_maps_p, fake_maps_p) + feature_loss(real_maps_s, fake_maps_s)
        loss_g = loss_adv + loss_fm + self.config.mel_loss_weight * loss_mel
        loss_dur = zero
        if self.generator.duration_predictor is not None:
            log_durations = self.generator.log_durations(batch["units"])  # (B, U)
            loss_dur = duration_loss(log_durations, batch["durations"], batch["duration_mask"])
            loss_g = loss_g + self.config.duration_loss_weight * loss_dur
        self._check_finite(step, "generator", loss_g)
        loss_g.backward()
        self.optim_g.step()
        return {
            "loss_g": loss_g.item(), "loss_d": loss_d.item(), "mel_l1": loss_mel.item(),
            "adv": loss_adv.item(), "fm": loss_fm.item(), "dur": loss_dur.item(),
        }  # fmt: skip

    def _check_finite(self, step: int, name: str, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            latest = self.latest_checkpoint()
            raise FloatingPointError(
                f"step {step}: {name} loss is {loss.item()} (NaN/inf); training stopped. "
                f"Last checkpoint: {latest or 'none'}; try a lower learning_rate or check the audio."
            )

    # -- loop ----------------------------------------------------------------------------------

    def train(self) -> list[dict]:
        """Run until ``max_steps`` or ``max_minutes``; returns the per-step losses of this run."""
        t = self.train_config
        started = time.monotonic()
        history: list[dict] = []
        per_epoch = self.dataset.steps_per_epoch(t.batch_size)
        last_saved = self.step if self.resumed_from else -1
        trim_step_log(self.output_dir / "log.jsonl", self.step)  # a resumed run logs its steps once
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not t.progress, desc=f"vocoder on {describe(self.device)}",
                   unit="step")
        while not self._finished(started):
            losses = self.train_step(self.dataset.batch(self.step, t.batch_size))
            self.step += 1
            if self.step % per_epoch == 0:  # HiFi-GAN decays the learning rate once per epoch
                self.scheduler_g.step()
                if self.step > self.config.gan_start_step:  # the discriminators' epochs start with the GAN
                    self.scheduler_d.step()
            record = {"step": self.step, **losses, "lr": self.optim_g.param_groups[0]["lr"]}
            history.append(record)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == 1 or self._finished(started):  # the last step too
                bar.set_postfix(mel=f"{losses['mel_l1']:.3f}", g=f"{losses['loss_g']:.2f}", d=f"{losses['loss_d']:.2f}")
                self._log(record)
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save_checkpoint()
                last_saved = self.step
            if t.sample_every and self.step % t.sample_every == 0:
                self.write_sample()
        bar.close()
        if last_saved != self.step:
            self.save_checkpoint()
        self.generator.save_pretrained(self.output_dir)
        return history

    def _finished(self, started: float) -> bool:
        t = self.train_config
        if t.max_steps is not None and self.step >= t.max_steps:
            return True
        return t.max_minutes is not None and time.monotonic() - started >= 60 * t.max_minutes

    def _log(self, record: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- samples ---------------------------------------------------------------------------------

    def write_sample(self) -> Path:
        """Vocode the first manifest row (ground-truth durations); write a wav and a target-vs-generated mel PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        row = self.dataset.rows[0]
        max_frames = max(1, int(self.train_config.sample_seconds * FRAME_RATE))
        durations = np.asarray(row["durations"], dtype=np.int64)
        keep = max(1, int(np.searchsorted(np.cumsum(durations), max_frames, side="right")))
        units, durations = np.asarray(row["units"])[:keep], durations[:keep]
        hop = self.config.samples_per_frame
        target = self.dataset._read(row, 0, int(durations.sum()) * hop)
        generated = self.generator.synthesize(units, durations)
        folder = self.output_dir / "samples"
        name = f"step_{self.step:08d}"
        save_audio(folder / f"{name}.wav", generated, self.config.sampling_rate)
        if not (folder / "target.wav").exists():
            save_audio(folder / "target.wav", target, self.config.sampling_rate)
        with torch.no_grad():
            mels = [self.mel(torch.from_numpy(a)[None].to(self.device))[0].cpu().numpy() for a in (target, generated)]
        figure, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
        low, high = float(mels[0].min()), float(mels[0].max())  # one colour scale for both panels
        for axis, mel, title in zip(axes, mels, ("target", f"generated (step {self.step})")):
            image = axis.imshow(mel, origin="lower", aspect="auto", interpolation="none", vmin=low, vmax=high)
            axis.set_title(title)
            figure.colorbar(image, ax=axis)
        figure.tight_layout()
        png = folder / f"{name}.png"
        with atomic_path(png) as tmp:
            figure.savefig(tmp, format="png")
        plt.close(figure)
        return png

    # -- checkpoints -----------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """Newest complete checkpoint folder (half-written ones never get a final name)."""
        return checkpoints.latest_checkpoint(self.checkpoint_root)

    def save_checkpoint(self) -> Path:
        """``step_N/`` (weights, optimisers, schedulers, RNG) written whole or not at all; older ones pruned."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"step": self.step,
                                **checkpoints.run_meta("vocoder", self.config.to_dict(), self.train_config)}
        for name, module in (("generator", self.generator), ("mpd", self.mpd), ("msd", self.msd)):
            checkpoints.module_state(name, module, tensors)
        checkpoints.optimizer_to_flat("optim_g", self.optim_g.state_dict(), tensors, meta)
        checkpoints.optimizer_to_flat("optim_d", self.optim_d.state_dict(), tensors, meta)
        meta["scheduler_g"] = self.scheduler_g.state_dict()
        meta["scheduler_d"] = self.scheduler_d.state_dict()
        tensors["rng.torch"] = torch.get_rng_state()
        return checkpoints.save_checkpoint(self.checkpoint_root, self.step, tensors, meta,
                                           self.train_config.keep_checkpoints)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tensors, meta = checkpoints.load_checkpoint(path)
        checkpoints.check_same_run(path, meta, checkpoints.run_meta("vocoder", self.config.to_dict(), self.train_config))
        for name, module in (("generator", self.generator), ("mpd", self.mpd), ("msd", self.msd)):
            checkpoints.load_module_state(name, module, tensors)
        self.optim_g.load_state_dict(checkpoints.optimizer_from_flat("optim_g", tensors, meta))
        self.optim_d.load_state_dict(checkpoints.optimizer_from_flat("optim_d", tensors, meta))
        self.scheduler_g.load_state_dict(meta["scheduler_g"])
        self.scheduler_d.load_state_dict(meta["scheduler_d"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])
        self.resumed_from = path

    def _maybe_resume(self) -> None:
        resume = self.train_config.resume
        if resume in (None, "", "never", "none", False):
            discard_earlier_checkpoints(checkpoints.list_checkpoints(self.checkpoint_root, complete=False),
                                        self.checkpoint_root)
            return
        path = self.latest_checkpoint() if resume == "auto" else Path(resume)
        if path is None:
            return
        if not (path / "state.safetensors").exists():
            raise FileNotFoundError(f"{path}: not a vocoder checkpoint (no state.safetensors)")
        self.load_checkpoint(path)
