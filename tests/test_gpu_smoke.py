"""bench/gpu_smoke.py: it says so when there is no GPU, and its --cpu dry run drives the same runs
(train under a launcher, chat, eval, stop and resume) on CPU processes and reports them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_training import env

SMOKE = ROOT / "bench" / "gpu_smoke.py"


def test_without_a_gpu_it_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the claim under test is about machines without one
    proc = subprocess.run([sys.executable, str(SMOKE), "--out", str(tmp_path)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU on this machine" in proc.stderr and "--cpu" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing run, nothing written


@pytest.mark.slow
def test_cpu_dry_run_reports_every_run(tmp_path):
    pytest.importorskip("deepspeed")
    proc = subprocess.run([sys.executable, str(SMOKE), "--cpu", "--only", "stage1", "--launchers", "zero3,single",
                           "--steps", "2", "--timeout", "400", "--out", str(tmp_path)], env=env(), capture_output=True,
                          text=True, timeout=1200)
    rows = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert [(r["name"], r["launcher"]) for r in rows] == [
        ("stage1", "zero3"), ("stage1", "single"), ("chat", "single"), ("eval", "single"),
        ("resume-a", "single"), ("resume-b", "single")]
    assert proc.returncode == 0 and all(r["ok"] for r in rows), proc.stdout[-3000:]
    assert all(r["s_per_step"] > 0 for r in rows if r["name"].startswith(("stage", "resume")))
    table = (tmp_path / "gpu_smoke.md").read_text()
    assert "| stage1 | zero3 | 2 | pass |" in table and "6 passed, 0 failed" in table
