"""What the arm benchmarks share (``bench/resynthesis.py``, ``bench/unit_head.py``): arms of dotted YAML
overrides, cumulative minute marks for learning curves, and the ratio cell against the first arm."""

from __future__ import annotations


def parse_arms(values: list[str]) -> list[tuple[str, list[str]]]:
    """``["NAME=OVERRIDE[,OVERRIDE]", ...]`` -> ``[(name, [override, ...]), ...]``; none: one ``default`` arm."""
    arms = []
    for value in values or ["default="]:
        name, _, overrides = value.partition("=")
        arms.append((name, [o for o in overrides.split(",") if o]))
    return arms


def legs(marks: list[float]) -> list[float]:
    """Minutes to train before each judging, for cumulative ``marks`` (ascending, > 0).

    Raises ValueError naming the marks when they are empty, not ascending or not above 0."""
    if not marks or any(b <= a for a, b in zip([0.0, *marks], marks)):
        raise ValueError(f"--at {marks}: give ascending minute marks above 0")
    return [b - a for a, b in zip([0.0, *marks], marks)]


def minute_marks(at: str | None, minutes: float) -> list[float]:
    """``--at "2.5,5,10"`` -> ``[2.5, 5.0, 10.0]``; without ``--at``, one mark at ``--minutes``."""
    marks = [float(m) for m in at.split(",")] if at else [minutes]
    legs(marks)
    return marks


def ratio_cell(row: dict[str, float], first: dict[str, float], langs=("en", "zh")) -> str:
    """``"0.93 / 1.10"``: each language's error over the first arm's (``-`` where either is missing or 0)."""
    return " / ".join(f"{row[lang] / first[lang]:.2f}" if first.get(lang) and lang in row else "-" for lang in langs)
