"""A run's wall-clock budget (``train.max_minutes``): when it is spent, and how many steps fit in it.

A run bounded by minutes stops wherever the minutes end; a learning-rate schedule that anneals over
``max_steps`` then stops part-way, its rate still high, on a machine slower than the one the steps
were counted on (the speech demo's unit head on a CPU without AVX-512: docs/experiments/token2wav.md).
``train.fit_steps_to_minutes`` measures the run's own seconds per step over its first steps and
sets the run's steps (and the schedule's horizon) to those that fit in the minutes left, so the
schedule ends inside the budget on any machine. It never lengthens a run past ``max_steps`` / its
epochs. The same idea as budgeted training's schedules that anneal by the budget, not by a step
count fixed in advance (Li et al., 2020, "Budgeted Training: Rethinking Deep Neural Network Training
Under Resource Constraints").
"""

from __future__ import annotations

import time
import warnings

from transformers import get_scheduler

MEASURE_STEPS = 20  # steps timed, after the run's first (which pays for allocations and cold caches)
MARGIN = 0.97  # of the minutes left: the final save and step-to-step spread
REFIT_AT = (0.25, 0.5)  # of the fitted steps: fit again from the longer measurement (small late changes only)


def reschedule(scheduler, train, total_steps: int, step: int):
    """``train.scheduler`` (with ``train.warmup_steps``) over ``total_steps`` on ``scheduler``'s optimizer, at
    ``step`` steps done: the optimizer's learning rates are set to what step ``step + 1`` uses (as after
    ``scheduler.step()``). ``train``: the run's :class:`~llasm.training.config.OptimConfig`."""
    new = get_scheduler(train.scheduler, scheduler.optimizer, min(train.warmup_steps, total_steps), total_steps)
    new.last_epoch = step - 1
    with warnings.catch_warnings():  # the optimizer has stepped, just not since this scheduler was made
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        new.step()
    return new


def resume_fit(trainer, state: dict) -> None:
    """A resumed run whose checkpoint ``state`` (``trainer_state.pt``) was fitted to its minutes keeps that
    step count and schedule (its sitting measures nothing again); called before the scheduler's state loads."""
    trainer.fitted_steps = state.get("fitted_steps")
    if trainer.fitted_steps is not None:
        trainer.total_steps = min(trainer.total_steps, trainer.fitted_steps)
        trainer.scheduler = reschedule(trainer.scheduler, trainer.cfg.train, trainer.total_steps, state["step"])


class TimeBudget:
    """``train.max_minutes`` of wall time from now (``None``: unbounded); with ``train.fit_steps_to_minutes``
    and ``fit``, the seconds per step after ``first_step`` (the step this sitting starts from) are measured
    and the run's steps fitted to the minutes (``fit=False``: a resumed run already fitted). The count is
    fitted ``MEASURE_STEPS`` steps in and again at ``REFIT_AT`` of the way (the first steps can run slower or
    faster than the rest), from the pace since the first step; at most the run's own step count."""

    def __init__(self, train, first_step: int, fit: bool = True):
        self.minutes, self.first_step = train.max_minutes, first_step
        self.fit = bool(fit and train.fit_steps_to_minutes) and self.minutes is not None
        self.started = time.monotonic()
        self.mark: float | None = None  # when the first timed step began
        self.next_check = first_step + 1 + MEASURE_STEPS
        self.refits = list(REFIT_AT)
        self.cap: int | None = None

    def spent(self) -> bool:
        return self.minutes is not None and time.monotonic() - self.started > 60 * self.minutes

    def steps_that_fit(self, step: int, cap: int) -> int | None:
        """Called after each optimizer step with the steps done: at a check, the step count that fits in the
        minutes left at the pace since the first step (at least ``step + 1``, at most ``cap``), else ``None``."""
        if not self.fit:
            return None
        now = time.monotonic()
        if step == self.first_step + 1:
            self.mark = now
        if self.mark is None or step != self.next_check:
            return None
        per_step = (now - self.mark) / (step - self.first_step - 1)
        left = MARGIN * 60 * self.minutes - (now - self.started)
        return min(cap, step + max(1, int(left / per_step)))

    def checked(self, fits: int) -> None:
        """The count every rank agreed on: the next check comes at the next of ``REFIT_AT`` of it."""
        while self.refits and int(self.refits[0] * fits) <= self.next_check:
            self.refits.pop(0)
        if self.refits:
            self.next_check = int(self.refits.pop(0) * fits)
        else:
            self.fit = False

    def after_step(self, trainer, bar=None) -> bool:
        """The trainer's hook after each optimizer step, on every rank: fit its steps at the checks (every
        rank takes the mean of the ranks' counts, so all keep the same schedule and check at the same
        steps), then whether the minutes are spent (every rank stops at the same step: the decision is
        averaged across ranks)."""
        if self.minutes is None:
            return False
        self.cap = self.cap or trainer.total_steps  # the run's own count, before any fit
        fits = self.steps_that_fit(trainer.step, self.cap)
        if fits is not None:
            fits = int(trainer._mean_across_ranks(float(fits)))
            self.checked(fits)
            if fits != trainer.total_steps:
                t = trainer.cfg.train
                if trainer.is_main:
                    print(f"\n[train] {self.minutes:.3g} min fit {fits} steps at this run's pace (steps "
                          f"{self.first_step + 2}-{trainer.step}): the run and its {t.scheduler} schedule end at "
                          f"step {fits}, not {trainer.total_steps} (train.fit_steps_to_minutes)", flush=True)
                trainer.scheduler = reschedule(trainer.scheduler, t, fits, trainer.step)
                trainer.total_steps = trainer.fitted_steps = fits
                if bar is not None:
                    bar.total = fits
                    bar.refresh()
        out = trainer._mean_across_ranks(float(self.spent())) > 0
        if out and trainer.is_main:
            print(f"[train] stopping at step {trainer.step}: the {self.minutes:.3g} min budget is used")
        return out
