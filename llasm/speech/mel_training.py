"""Training the units -> mel decoder of ``token2wav`` (``train/train_token2wav.py`` is the thin script).

Data: the unit vocoder's manifest, rows ``{"id", "audio", "units", "durations"}`` (deduplicated
units and their 50 Hz run lengths, ``data_prep/units.py manifest``). Targets are the log-mel of the
row's audio in the target vocoder's domain (:class:`llasm.speech.mel.MelConfig`: the audio is
resampled to its rate with soxr), computed once and kept in memory. Loss: L1 + L2 on the log-mel
with the units' true durations, plus the duration predictor's MSE on ``log(d + 1)``.

Output folder: ``checkpoints/step_N/`` (resumable), ``log.jsonl``, ``samples/step_N.{wav,png}``
(a training row spoken with *predicted* durations through the target vocoder, and its mel against
the target's) and, at the end, a token2wav directory (``token2wav.json`` + the decoder) that
:func:`llasm.speech.token2wav.load_token2wav` opens.

With ``mel_source: unit_selection`` and ``unit_selection.durations: recorded`` nothing is learned:
the run reads the target mels, builds the unit selection's corpus, writes one sample and saves the
token2wav (no decoder, no checkpoints; seconds to minutes for the mel features).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soxr
import torch
from tqdm.auto import tqdm

from llasm import settings
from llasm.audio import SAMPLING_RATE, load_audio, save_audio
from llasm.device import resolve_device, to_device
from llasm.io import atomic_path, discard_earlier_checkpoints, read_jsonl, trim_step_log
from llasm.speech import checkpoints
from llasm.speech.discriminators import duration_loss
from llasm.speech.mel import LogMel, unit_frame_of_mel, unit_frame_sums
from llasm.speech.mel_decoder import UnitMelDecoder, UnitMelDecoderConfig, mel_loss
from llasm.speech.token2wav import Token2WavConfig, UnitMelToken2Wav
from llasm.speech.unit_selection import UnitSelection
from llasm.speech.vocoder_config import FRAME_RATE

logger = logging.getLogger(__name__)


@dataclass
class MelTrainConfig:
    """Run control (the ``train:`` section of ``configs/token2wav_cpu.yaml``)."""

    train_manifest: str = "data/vocoder/train.jsonl"  # JSONL: id, audio, units, durations
    output_dir: str = "runs/token2wav"
    batch_size: int = 16
    segment_frames: int = 150  # training crop in 50 Hz unit frames (3 s)
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int | None = None
    max_minutes: float | None = None  # wall-clock bound of this run (a resumed run gets a fresh one)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500  # wav + mel PNG every N steps and at the end; 0 disables
    log_every: int = 20
    resume: str | None = "auto"  # "auto" (latest checkpoint in output_dir), "never", or a checkpoint dir
    seed: int = 1234
    num_threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    progress: bool = True
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N; see llasm.device


SECTIONS = {"token2wav": Token2WavConfig, "mel_decoder": UnitMelDecoderConfig, "train": MelTrainConfig}


def load_token2wav_configs(path: str | os.PathLike, overrides: Sequence[str] = ()
                           ) -> tuple[Token2WavConfig, UnitMelDecoderConfig, MelTrainConfig]:
    """Read a token2wav YAML (sections ``token2wav:``, ``mel_decoder:``, ``train:``) + dotted overrides
    (``train.max_steps=100``, ``mel_decoder.num_units=500``). Unknown keys are errors naming the file."""
    token2wav, decoder, train = settings.load_sections(path, SECTIONS, overrides)
    if token2wav.type != "unit_mel":
        raise ValueError(f"{path}: token2wav.type {token2wav.type!r}: this trainer trains unit_mel "
                         "(the unit HiFi-GAN trains with train/train_vocoder.py)")
    return token2wav, decoder, train


class UnitMelDataset:
    """Manifest rows + their target log-mels, cut into random crops aligned to unit frames.

    Batches are a pure function of (seed, step), so a resumed run sees the batches an
    uninterrupted one would. Rows whose audio cannot be read, or whose units are invalid, are kept
    out and listed in ``rejects`` (``{"id", "line", "reason"}``); no usable row is an error.
    """

    def __init__(self, manifest: str | os.PathLike, config: UnitMelDecoderConfig, seed: int = 0,
                 progress: bool = True):
        self.manifest = Path(manifest)
        if not self.manifest.exists():
            raise FileNotFoundError(f"{manifest}: token2wav training manifest not found")
        self.config, self.seed = config, seed
        self.log_mel = LogMel(config.mel)
        self.rows: list[dict] = []
        self.mels: list[np.ndarray] = []
        self.rejects: list[dict] = []
        for line, row in enumerate(tqdm(read_jsonl(self.manifest), desc="target mels", disable=not progress), 1):
            try:
                self.mels.append(self._target(row))
            except (ValueError, KeyError) as err:  # AudioError is a ValueError
                self.rejects.append({"id": row.get("id"), "line": line, "reason": str(err)})
                continue
            self.rows.append(row)
        if not self.rows:
            raise ValueError(f"{manifest}: no usable rows ({len(self.rejects)} rejected; first: "
                             f"{self.rejects[0]['reason'] if self.rejects else 'empty file'})")

    def _target(self, row: dict) -> np.ndarray:
        units, durations = np.asarray(row["units"]), np.asarray(row["durations"])
        if units.ndim != 1 or units.shape != durations.shape or units.size == 0:
            raise ValueError(f"units ({units.size}) and durations ({durations.size}) must be equal, non-empty lists")
        if units.min() < 0 or units.max() >= self.config.num_units:
            raise ValueError(f"unit ids must lie in [0, {self.config.num_units})")
        if durations.min() < 1:
            raise ValueError("durations must be >= 1 frame")
        path = Path(row["audio"])
        path = path if path.is_absolute() else self.manifest.parent / path
        audio = load_audio(path)
        rate = self.config.mel.sampling_rate
        if rate != SAMPLING_RATE:
            audio = soxr.resample(audio, SAMPLING_RATE, rate, quality="HQ")
        with torch.no_grad():
            return self.log_mel(audio).numpy().astype(np.float32)  # (T_mel, M)

    def __len__(self) -> int:
        return len(self.rows)

    def crop(self, index: int, rng: np.random.Generator, length: int) -> tuple[np.ndarray, ...]:
        """(units, durations, whole-unit mask, target mel) of a crop of ``length`` unit frames."""
        units, durations = np.asarray(self.rows[index]["units"]), np.asarray(self.rows[index]["durations"])
        frame_unit = np.repeat(np.arange(len(units)), durations)
        length = min(length, len(frame_unit))
        start = int(rng.integers(0, len(frame_unit) - length + 1))
        frame_unit = frame_unit[start: start + length]
        boundaries = np.flatnonzero(np.diff(frame_unit)) + 1
        first = frame_unit[np.r_[0, boundaries]]
        counts = np.diff(np.r_[0, boundaries, length])
        whole = counts == durations[first]  # units cut by the crop edges get no duration loss
        rate = self.config.mel.sampling_rate
        hop = self.config.mel.hop_size
        begin, frames = start * rate // (FRAME_RATE * hop), length * rate // (FRAME_RATE * hop)
        target = self.mels[index][begin: begin + frames]
        target = np.pad(target, ((0, frames - len(target)), (0, 0)), constant_values=self.config.mel.log_floor)
        return units[first], counts, whole, target

    def unit_mel_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit id, the sum of the target log-mel frames it covers ``(K, M)`` and their count ``(K,)``
        (each mel frame reads the 50 Hz unit frame :meth:`UnitMelDecoder.source_frames` gives it): the
        decoder's closed-form start, :meth:`UnitMelDecoder.init_unit_prior`."""
        c = self.config
        sums, counts = torch.zeros(c.num_units, c.mel.num_mels, dtype=torch.float64), torch.zeros(c.num_units)
        ids, frames = [], []
        for i, (row, mel) in enumerate(zip(self.rows, self.mels)):
            frame_units = np.repeat(np.asarray(row["units"]), row["durations"])
            source = unit_frame_of_mel(c.mel, 0, len(mel))
            keep = source < len(frame_units)
            ids.append(frame_units[source[keep]])
            frames.append(mel[keep])
            if len(ids) == 512 or i == len(self.rows) - 1:  # one (K, M) sum per chunk of clips, not per clip
                chunk_sums, chunk_counts = unit_frame_sums(np.concatenate(ids), np.concatenate(frames), c.num_units)
                sums += chunk_sums
                counts += chunk_counts
                ids, frames = [], []
        return sums.float(), counts

    def batch(self, step: int, batch_size: int, segment_frames: int) -> dict[str, torch.Tensor]:
        """Crops padded to one length: a padding unit (id 0, excluded from the losses) takes the rest."""
        rng = np.random.default_rng([self.seed, step])
        items = [self.crop(int(i), rng, segment_frames) for i in rng.integers(0, len(self.rows), batch_size)]
        width = max(len(u) for u, _, _, _ in items) + 1
        frames = max(int(d.sum()) for _, d, _, _ in items)
        mel_frames = max(len(t) for *_, t in items)
        batch = {"units": torch.zeros(len(items), width, dtype=torch.long),
                 "durations": torch.zeros(len(items), width, dtype=torch.long),
                 "duration_mask": torch.zeros(len(items), width, dtype=torch.bool),
                 "mel": torch.full((len(items), mel_frames, self.config.mel.num_mels), self.config.mel.log_floor),
                 "mel_mask": torch.zeros(len(items), mel_frames, dtype=torch.bool)}
        for b, (units, durations, whole, target) in enumerate(items):
            batch["units"][b, : len(units)] = torch.from_numpy(units)
            batch["durations"][b, : len(units)] = torch.from_numpy(durations)
            batch["durations"][b, len(units)] = frames - int(durations.sum())
            batch["duration_mask"][b, : len(units)] = torch.from_numpy(whole)
            batch["mel"][b, : len(target)] = torch.from_numpy(target)
            batch["mel_mask"][b, : len(target)] = True
        return batch


class UnitMelTrainer:
    """Trains :class:`UnitMelDecoder`; bounded by steps and/or minutes, resumable, logged, sampled."""

    def __init__(self, token2wav: Token2WavConfig, config: UnitMelDecoderConfig, train_config: MelTrainConfig,
                 dataset: UnitMelDataset | None = None):
        t = train_config
        # unit selection at recorded durations uses no decoder: there is nothing to train
        self.learns = token2wav.needs_decoder
        if self.learns and t.max_steps is None and t.max_minutes is None:
            raise ValueError("set train.max_steps and/or train.max_minutes (the run needs a bound)")
        if self.learns and t.max_steps is not None and t.warmup_steps > t.max_steps:
            logger.warning("train.warmup_steps %d > train.max_steps %d: the learning rate never reaches "
                           "train.learning_rate %g (at most %.3g); lower warmup_steps or train longer",
                           t.warmup_steps, t.max_steps, t.learning_rate, t.learning_rate * t.max_steps / t.warmup_steps)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.token2wav_config, self.config, self.train_config = token2wav, config, train_config
        self.output_dir = Path(t.output_dir)
        self.dataset = dataset or UnitMelDataset(t.train_manifest, config, seed=t.seed, progress=t.progress)
        torch.manual_seed(t.seed)
        self.device = resolve_device(t.device)  # the decoder and its batches; checkpoints on the CPU
        self.step = 0
        self.resumed_from: Path | None = None
        self._vocoder = None
        self._selection: UnitSelection | None = None
        self.model: UnitMelDecoder | None = None
        if not self.learns:
            return
        self.model = UnitMelDecoder(config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
        warmup = max(1, t.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        if config.unit_prior:  # a resumed run replaces this start with its checkpoint
            self.model.init_unit_prior(*self.dataset.unit_mel_sums())
        self._maybe_resume()

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        batch = to_device(batch, self.device)
        out = self.model(batch["units"], batch["durations"])
        frames = min(out["mel"].shape[1], batch["mel"].shape[1])
        loss_mel = mel_loss(out["mel"][:, :frames], batch["mel"][:, :frames], batch["mel_mask"][:, :frames])
        loss_duration = duration_loss(out["log_durations"], batch["durations"], batch["duration_mask"])
        loss = loss_mel + loss_duration
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step + 1}: loss is {loss.item()}; last checkpoint: "
                                     f"{checkpoints.latest_checkpoint(self.checkpoint_root) or 'none'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "mel": loss_mel.item(), "duration": loss_duration.item()}

    def train(self) -> list[dict]:
        """Run until ``max_steps`` or ``max_minutes``; returns this run's per-step losses; saves the token2wav."""
        t = self.train_config
        if not self.learns:  # the corpus is the model
            if t.sample_every:
                self.write_sample()
            self.token2wav().save_pretrained(self.output_dir)
            return []
        started, history = time.monotonic(), []
        last_saved = self.step if self.resumed_from else -1
        trim_step_log(self.output_dir / "log.jsonl", self.step)  # a resumed run logs its steps once
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not t.progress, desc="token2wav", unit="step")
        while not self._finished(started):
            losses = self.train_step(self.dataset.batch(self.step, t.batch_size, t.segment_frames))
            self.step += 1
            record = {"step": self.step, **losses, "lr": self.optimizer.param_groups[0]["lr"]}
            history.append(record)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == 1 or self._finished(started):  # the last step too
                bar.set_postfix(mel=f"{losses['mel']:.3f}", dur=f"{losses['duration']:.3f}")
                self._log(record)
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save_checkpoint()
                last_saved = self.step
            if t.sample_every and self.step % t.sample_every == 0:
                self.write_sample()
        bar.close()
        if last_saved != self.step:
            self.save_checkpoint()
        if t.sample_every and history and self.step % t.sample_every:  # the run's last state, heard and drawn
            self.write_sample()
        self.token2wav().save_pretrained(self.output_dir)
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

    def token2wav(self) -> UnitMelToken2Wav:
        """The model as it is now, with the configured mel vocoder (loaded once) and, for ``mel_source:
        unit_selection``, the unit selection over this run's training rows (built once)."""
        if self.token2wav_config.mel_source == "unit_selection" and self._selection is None:
            rows = self.dataset.rows
            self._selection = UnitSelection.from_corpus(
                [r["units"] for r in rows], [r["durations"] for r in rows], self.dataset.mels,
                self.config.num_units, self.config.mel, self.token2wav_config.unit_selection)
        t2w = UnitMelToken2Wav(self.model, self.token2wav_config, vocoder=self._vocoder, selection=self._selection)
        self._vocoder = t2w.vocoder
        return t2w

    def write_sample(self, index: int = 0) -> Path:
        """Speak row ``index`` without its durations (predicted, or the selected runs' recorded ones); write
        ``samples/step_N.wav`` and a mel PNG. (With ``mel_source: unit_selection`` a training row is mostly its
        own recording's frames again: the sample shows the durations and the joins, not how new units sound.)"""
        row, target = self.dataset.rows[index], self.dataset.mels[index]
        t2w = self.token2wav()
        spoken = t2w.log_mel(row["units"])
        audio = t2w.to_16k(t2w.vocoder(spoken))
        if self.model is not None:
            self.model.train()
        folder, name = self.output_dir / "samples", f"step_{self.step:08d}"
        save_audio(folder / f"{name}.wav", audio)
        source = "unit selection" if t2w.selection is not None else "decoder"
        kind = "recorded" if t2w.recorded_durations else "predicted"
        return plot_mels([("target", target), (f"{source}, {kind} durations, step {self.step}", spoken)],
                         folder / f"{name}.png")

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        meta: dict[str, Any] = {"step": self.step, "scheduler": self.scheduler.state_dict(),
                                **checkpoints.run_meta("mel_decoder", self.config.to_dict(), self.train_config)}
        checkpoints.module_state("model", self.model, tensors)
        checkpoints.optimizer_to_flat("optimizer", self.optimizer.state_dict(), tensors, meta)
        return checkpoints.save_checkpoint(self.checkpoint_root, self.step, tensors, meta,
                                           self.train_config.keep_checkpoints)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tensors, meta = checkpoints.load_checkpoint(path)
        checkpoints.check_same_run(path, meta, checkpoints.run_meta("mel_decoder", self.config.to_dict(), self.train_config))
        checkpoints.load_module_state("model", self.model, tensors)
        self.optimizer.load_state_dict(checkpoints.optimizer_from_flat("optimizer", tensors, meta))
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.resumed_from = int(meta["step"]), path

    def _maybe_resume(self) -> None:
        resume = self.train_config.resume
        if resume in (None, "", "never", "none"):
            discard_earlier_checkpoints(checkpoints.list_checkpoints(self.checkpoint_root, complete=False),
                                        self.checkpoint_root)
            return
        path = checkpoints.latest_checkpoint(self.checkpoint_root) if resume == "auto" else Path(resume)
        if path is not None:
            self.load_checkpoint(path)


def plot_mels(panels: list[tuple[str, np.ndarray]], path: Path) -> Path:
    """Log-mels ``(T, M)`` one above the other on one colour scale (the first panel's) -> PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.5 * len(panels)), squeeze=False)
    low, high = float(panels[0][1].min()), float(panels[0][1].max())
    for axis, (title, mel) in zip(axes[:, 0], panels):
        image = axis.imshow(np.asarray(mel).T, origin="lower", aspect="auto", interpolation="none", vmin=low, vmax=high)
        axis.set_title(title)
        axis.set_ylabel("mel band")
        figure.colorbar(image, ax=axis)
    axes[-1, 0].set_xlabel("frame")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path

