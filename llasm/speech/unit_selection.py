"""Units -> mel by unit selection: the voice's own recorded mel frames, chosen and joined.

A regression decoder (:mod:`llasm.speech.mel_decoder`) trained for CPU minutes averages the frames a
unit can stand for, and the vocoder then mumbles. Unit selection keeps real frames: the training
corpus (the token2wav manifest: each clip's deduplicated units, their 50 Hz run lengths and its
log-mel in the target vocoder's domain) is cut into *runs* (one deduplicated unit and the mel frames
it covers). To speak a unit sequence, each unit picks one run of the same unit id and the runs are
joined, the way a concatenative TTS picks recorded segments:

- **target cost** of a run for unit ``t``: ``context_weight`` per neighbour unit (``t - 1``, ``t + 1``)
  that differs from the run's neighbours in its clip (``context_match: acoustic``: times how unlike the
  two neighbours sound, :meth:`UnitSelection.unit_distances`), plus ``duration_weight * |log(source
  frames / target frames)|``; the ``candidates`` cheapest runs are kept (ties: corpus order);
- **join cost** between the runs of ``t`` and ``t + 1``: zero when they were adjacent in the corpus
  (a recorded stretch continues), otherwise ``break_cost + join_weight * RMS(log-mel of the last
  frame - log-mel of the first)``;
- the path minimizing the sum is searched with a **fixed lookahead**: the run of unit ``s`` is the
  first step of the best path over units ``s .. s + lookahead`` that starts from the run already
  chosen for ``s - 1`` (receding-horizon Viterbi). A choice then depends only on the units up to
  ``s + lookahead + 1``, so streaming chooses exactly what a whole-utterance call chooses.

Durations (``durations`` in the config): ``recorded`` (the default) speaks each chosen run's mel
frames as they were recorded, so no duration model is needed and the target cost has no duration
term; ``predicted`` takes them from the mel decoder's duration predictor, and 50 Hz durations given
to a call (e.g. the units' own run lengths) are always used: each chosen run's frames are then
stretched (nearest frame) to the mel frames its duration gives. Unit ids the corpus never saw speak
silence (``log_floor``; one mel frame when recorded). The mel goes to the same pretrained mel vocoder
as the decoder's (:mod:`llasm.speech.mel_vocoder`).

Design: Hunt & Black 1996 ("Unit selection in a concatenative speech synthesis system using a large
speech database": target + concatenation costs, Viterbi search); kNN-VC (Baas et al. 2023) for the
idea that a voice's own frames, matched by self-supervised features, are intelligible through a
pretrained vocoder. Saved as ``unit_selection.safetensors`` (the corpus frames, float16, and the run
table) beside the token2wav's other files.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llasm.io import atomic_path
from llasm.speech.mel import MelConfig, mel_frames, unit_frame_of_mel, unit_frame_sums  # noqa: F401  (re-exported)
from llasm.speech.vocoder_config import FRAME_RATE, unit_ids

WEIGHTS = "unit_selection.safetensors"
DURATIONS = ("recorded", "predicted")
CONTEXT_MATCHES = ("exact", "acoustic")


@dataclass
class UnitSelectionConfig:
    """The search's costs (``token2wav.unit_selection`` in YAML; saved in ``token2wav.json``)."""

    candidates: int = 150  # runs kept per unit, the cheapest by target cost
    context_weight: float = 1.0  # per neighbour unit (left, right) that differs from the run's
    duration_weight: float = 0.5  # times |log(source mel frames / target mel frames)|
    join_weight: float = 1.0  # times the RMS log-mel step across a join of non-adjacent runs
    break_cost: float = 1.0  # per join of runs that were not adjacent in the corpus
    lookahead: int = 3  # units ahead of a unit its choice looks at (0: greedy)
    # durations when a call gives none: recorded (each chosen run's own length) | predicted (the decoder's)
    durations: str = "recorded"
    # a neighbour that differs costs: exact, a whole context_weight; acoustic, its distance to the wanted
    # unit (:meth:`UnitSelection.unit_distances`), so a run recorded beside a similar sound ranks first
    context_match: str = "exact"

    def __post_init__(self) -> None:
        if self.durations not in DURATIONS:
            raise ValueError(f"unit_selection.durations must be one of {DURATIONS}, got {self.durations!r}")
        if self.context_match not in CONTEXT_MATCHES:
            raise ValueError(f"unit_selection.context_match must be one of {CONTEXT_MATCHES}, got {self.context_match!r}")
        if int(self.candidates) < 1:
            raise ValueError(f"unit_selection.candidates must be >= 1, got {self.candidates}")
        if int(self.lookahead) < 0:
            raise ValueError(f"unit_selection.lookahead must be >= 0, got {self.lookahead}")
        for name in ("context_weight", "duration_weight", "join_weight", "break_cost"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"unit_selection.{name} must be >= 0, got {getattr(self, name)}")


def rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` RMS distances between the rows of ``a`` and ``b`` (frames of one width)."""
    squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0) / a.shape[1])


def run_spans(mel: MelConfig, durations: Sequence[int], num_mel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per run (deduplicated unit), the ``[begin, end)`` of the mel frames that read its 50 Hz frames
    (:func:`unit_frame_of_mel`): ``begin = ceil(first 50 Hz frame * rate / (50 * hop))``, so a run's span
    depends only on the durations up to it. Spans are clipped to ``num_mel`` frames when given; a run
    may cover no mel frame (begin == end)."""
    edges = np.r_[0, np.cumsum(np.asarray(durations, dtype=np.int64))]
    edges = -(-edges * mel.sampling_rate // (FRAME_RATE * mel.hop_size))
    if num_mel is not None:
        edges = np.minimum(edges, num_mel)
    return edges[:-1], edges[1:]


class UnitSelection:
    """A corpus of runs and the search over it; :meth:`generate` speaks a unit sequence as log-mel.

    ``frames`` (F, num_mels) are the corpus's log-mel frames, clip after clip; run ``r`` covers
    ``frames[begin[r]:end[r]]``, has unit id ``unit[r]`` and belongs to clip ``clip[r]`` (runs of a clip
    are consecutive and in order). Build one with :meth:`from_corpus`.
    """

    def __init__(self, frames: np.ndarray, unit: np.ndarray, begin: np.ndarray, end: np.ndarray,
                 clip: np.ndarray, num_units: int, mel: MelConfig, config: UnitSelectionConfig | None = None):
        self.frames = np.asarray(frames, dtype=np.float16)
        self.unit, self.begin, self.end, self.clip = (np.asarray(a, dtype=np.int64) for a in (unit, begin, end, clip))
        self.num_units, self.mel, self.config = int(num_units), mel, config or UnitSelectionConfig()
        if self.frames.ndim != 2 or self.frames.shape[1] != mel.num_mels:
            raise ValueError(f"frames must be (F, {mel.num_mels}), got {self.frames.shape}")
        if not (len(self.unit) == len(self.begin) == len(self.end) == len(self.clip)):
            raise ValueError("unit, begin, end and clip must have one entry per run")
        if len(self.unit) and (self.unit.min() < 0 or self.unit.max() >= self.num_units):
            raise ValueError(f"run unit ids must lie in [0, {self.num_units})")
        if len(self.unit) and (self.begin.min() < 0 or self.end.max() > len(self.frames) or (self.end <= self.begin).any()):
            raise ValueError("every run must cover at least one frame inside frames")
        # a silent run for unit ids the corpus never saw: one log_floor frame, no neighbours
        self.silence = len(self.unit)
        self._frames = np.concatenate([self.frames, np.full((1, mel.num_mels), mel.log_floor, np.float16)])
        self._begin = np.r_[self.begin, len(self.frames)]
        self._end = np.r_[self.end, len(self.frames) + 1]
        self._clip = np.r_[self.clip, -1]
        same_prev = np.r_[False, self.clip[1:] == self.clip[:-1]]
        same_next = np.r_[self.clip[:-1] == self.clip[1:], False]
        self._prev = np.r_[np.where(same_prev, np.r_[-1, self.unit[:-1]], -1), -1]
        self._next = np.r_[np.where(same_next, np.r_[self.unit[1:], -1], -1), -1]
        self._order = np.argsort(self.unit, kind="stable")
        self._start = np.searchsorted(self.unit[self._order], np.arange(self.num_units + 1))
        self._distances: np.ndarray | None = None

    @classmethod
    def from_corpus(cls, units: Sequence[Sequence[int]], durations: Sequence[Sequence[int]],
                    mels: Sequence[np.ndarray], num_units: int, mel: MelConfig,
                    config: UnitSelectionConfig | None = None) -> "UnitSelection":
        """Clips' deduplicated units, their 50 Hz run lengths and log-mels ``(T_i, num_mels)`` -> the
        corpus. Runs that cover no mel frame (the 50 Hz -> mel rounding, or a log-mel shorter than the
        units) are left out."""
        frames, unit, begin, end, clip, offset = [], [], [], [], [], 0
        for index, (u, d, m) in enumerate(zip(units, durations, mels)):
            b, e = run_spans(mel, d, len(m))  # a clip's log-mel usually runs a frame past its units
            keep = e > b
            unit.append(np.asarray(u, dtype=np.int64)[keep])
            begin.append(b[keep] + offset)
            end.append(e[keep] + offset)
            clip.append(np.full(int(keep.sum()), index))
            frames.append(np.asarray(m, dtype=np.float16)[: int(e.max(initial=0))])
            offset += len(frames[-1])
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        frame_array = np.concatenate(frames) if frames else np.zeros((0, mel.num_mels), np.float16)
        return cls(frame_array, cat(unit, np.int64), cat(begin, np.int64), cat(end, np.int64), cat(clip, np.int64),
                   num_units, mel, config)

    @property
    def num_runs(self) -> int:
        return len(self.unit)

    # -- search ----------------------------------------------------------------------------------

    def search(self) -> "SelectionSearch":
        """A search over one utterance whose units may still be arriving (:class:`SelectionSearch`)."""
        return SelectionSearch(self)

    def unit_distances(self) -> np.ndarray:
        """``(num_units, num_units)`` float32 in [0, 1]: how unlike two units sound — the RMS distance
        between their mean log-mel frames over the corpus, divided by the median distance between two
        units and capped at 1 (a unit the corpus never saw is 1 from every other). Computed once."""
        if self._distances is None:
            lengths = self.end - self.begin
            frame_unit = np.repeat(self.unit, lengths)
            index = np.repeat(self.begin, lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            sums, counts = (t.numpy() for t in unit_frame_sums(frame_unit, self.frames[index], self.num_units))
            seen = counts > 0
            means = sums[seen] / counts[seen, None]
            distance = rms_distances(means, means)
            off_diagonal = distance[~np.eye(len(means), dtype=bool)]
            scale = float(np.median(off_diagonal)) if off_diagonal.size and np.median(off_diagonal) > 0 else 1.0
            self._distances = np.ones((self.num_units, self.num_units), np.float32)
            self._distances[np.ix_(seen, seen)] = np.minimum(distance / scale, 1.0)
            np.fill_diagonal(self._distances, 0.0)
        return self._distances

    def _context_cost(self, neighbours: np.ndarray, wanted: int) -> np.ndarray:
        cost = (neighbours != wanted).astype(np.float64)
        if self.config.context_match == "acoustic" and wanted >= 0:
            known = neighbours >= 0  # -1: the run sits at its clip's edge, a whole mismatch
            cost[known] = self.unit_distances()[wanted, neighbours[known]]
        return cost

    def candidates(self, unit: int, previous: int, following: int,
                   target_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The kept runs for one unit (``previous`` / ``following``: its neighbours, -1 at an edge) and
        their target costs (no duration term when ``target_frames`` is None: recorded durations)."""
        pool = self._order[self._start[unit]: self._start[unit + 1]]
        if len(pool) == 0:
            return np.array([self.silence]), np.zeros(1)
        cost = self.target_costs(pool, previous, following, target_frames)
        keep = np.argsort(cost, kind="stable")[: self.config.candidates]
        return pool[keep], cost[keep]

    def target_costs(self, runs: np.ndarray, previous: int, following: int, target_frames: int | None) -> np.ndarray:
        """``(len(runs),)`` target costs of corpus runs ``runs`` for a unit whose neighbours are ``previous`` /
        ``following`` (-1 at an edge): the context term, plus the duration term when ``target_frames`` is given."""
        c = self.config
        cost = c.context_weight * (self._context_cost(self._prev[runs], previous) + self._context_cost(self._next[runs], following))
        if target_frames is not None:
            length = (self._end[runs] - self._begin[runs]).astype(np.float64)
            cost = cost + c.duration_weight * np.abs(np.log(length / max(target_frames, 1)))
        return cost

    def join_costs(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(len(left), len(right)) costs of following run ``left[i]`` by run ``right[j]``."""
        c = self.config
        last = self._frames[self._end[left] - 1].astype(np.float32)
        first = self._frames[self._begin[right]].astype(np.float32)
        distance = rms_distances(last, first)
        adjacent = (self._clip[left][:, None] == self._clip[right][None]) & (left[:, None] + 1 == right[None])
        adjacent &= self._clip[left][:, None] >= 0
        return np.where(adjacent, 0.0, c.break_cost + c.join_weight * distance)

    # -- rendering -------------------------------------------------------------------------------

    def spans(self, path: Sequence[int], durations: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Per chosen run, the ``[begin, end)`` of its mel frames in the utterance, and the utterance's
        mel frames: with 50 Hz ``durations`` (one per run) the length regulator's (:func:`run_spans`,
        :func:`mel_frames`); without, each run at its recorded length."""
        path = np.asarray(path, dtype=np.int64)
        if durations is None:
            ends = np.cumsum(self._end[path] - self._begin[path])
            return ends - (self._end[path] - self._begin[path]), ends, int(ends[-1]) if len(ends) else 0
        durations = np.asarray(durations, dtype=np.int64)
        if len(path) != len(durations):
            raise ValueError(f"path ({len(path)}) and durations ({len(durations)}) must be equal")
        return (*run_spans(self.mel, durations), mel_frames(self.mel, int(durations.sum())))

    def render(self, path: Sequence[int], durations: Sequence[int] | None = None, mel_begin: int = 0,
               mel_end: int | None = None) -> np.ndarray:
        """Mel frames ``[mel_begin, mel_end)`` (default: all) of the utterance whose units chose runs
        ``path``, at 50 Hz ``durations`` (one per chosen unit) or, without, the runs' recorded lengths:
        ``(frames, num_mels)`` float32. Each frame depends only on its own run, so any window equals the
        same rows of the whole."""
        path = np.asarray(path, dtype=np.int64)
        if len(path) == 0:
            raise ValueError("no chosen runs to render")
        begins, ends, num_mel = self.spans(path, durations)
        mel_end = num_mel if mel_end is None else mel_end
        if num_mel == 0 or mel_end <= mel_begin:
            return np.zeros((0, self.mel.num_mels), np.float32)
        frame = np.arange(mel_begin, mel_end)
        run = np.searchsorted(ends, frame, side="right").clip(max=len(path) - 1)  # the run frame j reads
        chosen = path[run]
        source_length = self._end[chosen] - self._begin[chosen]
        target_length = np.maximum(ends[run] - begins[run], 1)
        offset = np.minimum((frame - begins[run]) * source_length // target_length, source_length - 1)
        return self._frames[self._begin[chosen] + offset].astype(np.float32)

    def generate(self, units: Sequence[int], durations: Sequence[int] | None = None) -> np.ndarray:
        """Deduplicated units (+ their 50 Hz frames; None: the chosen runs' recorded lengths) ->
        ``(T_mel, num_mels)`` float32 log-mel.

        Raises ``ValueError`` for no units, ids outside ``[0, num_units)`` or a durations list of another length.
        """
        return self.render(self.search().extend(units, durations, final=True), durations)

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``unit_selection.safetensors`` (frames float16 + the run table); the costs live in token2wav.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"frames": torch.from_numpy(self.frames), "unit": torch.from_numpy(self.unit),
                   "begin": torch.from_numpy(self.begin), "end": torch.from_numpy(self.end),
                   "clip": torch.from_numpy(self.clip)}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"num_units": str(self.num_units),
                                                  "mel": repr(dataclasses.asdict(self.mel))})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, config: UnitSelectionConfig | None = None
                        ) -> "UnitSelection":
        """Open ``unit_selection.safetensors`` (K and the mel domain are in its metadata);
        ``FileNotFoundError`` naming the directory without it."""
        path = Path(directory) / WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS} (token2wav.mel_source is unit_selection; "
                                    "train/train_token2wav.py writes it)")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = {k: v.numpy() for k, v in load_file(str(path)).items()}
        mel = MelConfig(**ast.literal_eval(meta["mel"]))
        return cls(t["frames"], t["unit"], t["begin"], t["end"], t["clip"], int(meta["num_units"]), mel, config)


class SelectionSearch:
    """The receding-horizon search over one utterance; units and durations may arrive in pieces.

    :meth:`extend` takes the whole unit list so far and the durations known so far (or None on every
    call: the chosen runs' recorded lengths), and returns the runs chosen so far (``path``). Without ``final``, unit ``s`` is chosen once units up to
    ``s + lookahead + 1`` (and durations up to ``s + lookahead``) are known; the choice is the one a
    single ``final`` call over the whole utterance makes (unless an ``eager`` call chose earlier units).
    """

    def __init__(self, selection: UnitSelection):
        self.selection = selection
        self.path: list[int] = []
        self._candidates: list[tuple[np.ndarray, np.ndarray]] = []
        self._joins: list[np.ndarray] = []  # _joins[t]: costs from unit t's candidates to unit t + 1's
        self._chosen: list[int] = []  # index of each chosen run among its unit's candidates
        self._given: bool | None = None  # whether calls give durations (None: no call yet)

    def _target_frames(self, durations: np.ndarray | None, t: int) -> int | None:
        if durations is None:
            return None
        begins, ends = run_spans(self.selection.mel, durations[: t + 1])
        return int(ends[t] - begins[t])

    def extend(self, units: Sequence[int], durations: Sequence[int] | None = None, final: bool = False,
               eager: bool = False) -> list[int]:
        """``eager``: also choose the units whose look-ahead has not all arrived, with the part that has
        (a stream's first chunk trades the search's full look-ahead for time; later units continue
        from those choices)."""
        sel, lookahead = self.selection, self.selection.config.lookahead
        units = unit_ids(units, sel.num_units)
        if durations is not None:
            durations = np.asarray(durations, dtype=np.int64).reshape(-1)
        if self._given is not None and self._given != (durations is not None):
            raise ValueError("give durations on every call of one search, or on none")
        self._given = durations is not None
        if final and durations is not None and len(durations) != len(units):
            raise ValueError(f"durations ({len(durations)}) must give one non-negative count per unit ({len(units)})")
        if durations is not None and len(durations) and durations.min() < 0:
            raise ValueError("durations must be one non-negative count per unit")
        if final and len(units) == 0:
            raise ValueError("no units to synthesize")
        # target costs need the unit's neighbours and its own duration (when given)
        costed = len(units) if final else len(units) - 1 if durations is None else min(len(units) - 1, len(durations))
        while len(self._candidates) < costed:
            t = len(self._candidates)
            previous = int(units[t - 1]) if t else -1
            following = int(units[t + 1]) if t + 1 < len(units) else -1
            self._candidates.append(sel.candidates(int(units[t]), previous, following,
                                                   self._target_frames(durations, t)))
            if t:
                self._joins.append(sel.join_costs(self._candidates[t - 1][0], self._candidates[t][0]))
        ready = costed if final or eager else costed - lookahead
        while len(self.path) < ready:
            s = len(self.path)
            horizon = min(costed, s + lookahead + 1)
            runs, cost = self._candidates[s]
            accumulated = cost + (self._joins[s - 1][self._chosen[s - 1]] if s else 0.0)
            origin = np.arange(len(runs))
            for t in range(s + 1, horizon):
                total = accumulated[:, None] + self._joins[t - 1]
                best = total.argmin(0)
                origin, accumulated = origin[best], total[best, np.arange(total.shape[1])] + self._candidates[t][1]
            self._chosen.append(int(origin[accumulated.argmin()]))
            self.path.append(int(runs[self._chosen[-1]]))
        return list(self.path)

    @property
    def cost(self) -> float:
        """Target plus join costs of the runs chosen so far (what the search minimizes)."""
        chosen = self._chosen
        target = sum(float(self._candidates[t][1][i]) for t, i in enumerate(chosen))
        return target + sum(float(self._joins[t][a, b]) for t, (a, b) in enumerate(zip(chosen, chosen[1:])))
