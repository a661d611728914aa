"""`LLASM_DEMO=tiny make demo`: the whole pipeline (TTS, warm start, stage 1, LoRA stage 2, eval, answers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "LLASM_DEMO": "tiny", "LLASM_DEMO_DIR": str(tmp_path / "demo")}
    run = subprocess.run([sys.executable, "-m", "llasm.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for step in ("speak the seed corpus", "warm start", "stage 1", "stage 2", "evaluation", "two spoken questions"):
        assert f"=== {step}" in out
    assert "[en] llasm:" in out and "[zh] llasm:" in out
    assert "en WER" in out and "zh CER" in out
    report = json.loads((tmp_path / "demo" / "eval" / "report.json").read_text())
    assert {"en", "zh"} <= set(report["results"]["llasm"])
    assert (tmp_path / "demo" / "eval" / "report.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "stage2" / "final" / "model.safetensors").exists()
    assert (tmp_path / "demo" / "stage1" / "loss_curve.png").exists()


def test_stage1_gets_what_is_left_of_the_budget():
    from dataclasses import replace

    from llasm.demo import PLANS

    plan = replace(PLANS["starter"], budget_minutes=26.0, reserve_minutes=7.5, stage1_minutes=5.0)
    assert plan.stage1_budget(9.0) == pytest.approx(9.5)  # 26 - 9 - 7.5
    assert plan.stage1_budget(16.0) == 5.0  # a slow machine still gets the floor
    assert replace(plan, budget_minutes=None).stage1_budget(9.0) == 5.0  # no budget: the fixed minutes
